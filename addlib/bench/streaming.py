"""Streaming img2img (notebook 07): a naive diffusers loop, the stream with each of StreamDiffusion's techniques,
and the compute bound they approach; frame rates, frame times and the time to the first frame."""

from __future__ import annotations

import argparse
import functools

import torch
from tqdm import tqdm  # a text bar: in a notebook its last state stays in the saved output

from addlib.bench.tables import (
    FILTER_SHARE_OF_EXPECTED,
    STREAM_SHARE_OF_BOUND,
    STREAM_TOLERANCES,
    print_table,
    verdict,
)
from addlib.bench.timing import compute_bound, max_difference, time_frames
from addlib.loading import STUDENT_DIR, TINY_VAE_DIR
from addlib.stream import COMPILE_MODES
from addlib.utils.commands import at_least


def bench_stream(args: argparse.Namespace) -> list[dict]:
    """Frames per second and latency of streaming img2img (notebook 07): a naive diffusers loop, the stream
    class with each of StreamDiffusion's techniques, and the compute bound they approach (targets below).
    Returns the table's rows, for a plot."""
    from addlib.loading import load_pipeline, load_tiny_vae
    from addlib.shapes import moving_shapes
    from addlib.stream import StreamDiffusion, diffusers_img2img, where_paths_part

    torch.manual_seed(0)
    pipe = load_pipeline(args.model, dtype=getattr(torch, args.dtype))
    _check_stream_options(args, pipe)
    moving, _ = moving_shapes(args.num_frames, resolution=args.resolution, index=args.scene)
    static, _ = moving_shapes(args.num_frames, resolution=args.resolution, index=args.scene, hold=args.hold)
    one, many = [args.t_index], args.t_index_list
    timesteps = {tuple(index): StreamDiffusion(pipe, index).timesteps for index in (one, many)}
    rows, streams = [], []  # the table, and every stream built, for the filter's count of skipped frames
    setups = 9 + 2 * bool(args.tiny_vae) + bool(args.compile_mode) * (1 + bool(args.tiny_vae))
    progress = tqdm(total=setups, desc="timing the stream setups", unit="setup")

    stream = functools.partial(_stream_maker, pipe, args, moving[0], streams)

    def naive(t_index_list):
        return lambda: diffusers_img2img(pipe, args.prompt, timesteps[tuple(t_index_list)], seed=args.seed)

    def measure(name, t_index_list, make, frames=moving, reference=None, **shape):
        timed = time_frames(make, frames, args.repeats, pipe.device)
        rows.append(_stream_row(name, timesteps[tuple(t_index_list)], timed, reference, **shape))
        progress.update()
        return timed.outputs

    t0 = int(timesteps[tuple(one)][0])
    measure("compute bound: encode + UNet + decode", one, compute_bound(pipe, pipe.vae, 1, t0))
    measure(f"compute bound, {len(many)} UNet rows", many, compute_bound(pipe, pipe.vae, len(many), t0),
            rows_per_call=len(many))
    reference = one_step_reference = measure("naive diffusers img2img loop", one, naive(one))
    measure("stream", one, stream(one), reference=reference)
    reference = measure("naive diffusers img2img loop", many, naive(many), calls=len(many))
    measure("stream, no Stream Batch", many, stream(many, batch=False), calls=len(many), reference=reference)
    measure("stream, Stream Batch", many, stream(many), rows_per_call=len(many), latency=len(many) - 1,
            reference=reference)
    measure("stream, static clip", one, stream(one), frames=static)
    measure("stream + similarity filter, static clip", one, stream(one, threshold=args.threshold), frames=static)
    skipped = streams[-1].skipped_frames / args.num_frames
    rows[-1]["setup"] += f" ({skipped:.0%} skipped)"
    if args.tiny_vae:
        tiny = load_tiny_vae(args.tiny_vae, device=pipe.device, dtype=pipe.unet.dtype)
        measure("compute bound, tiny VAE", one, compute_bound(pipe, tiny, 1, t0))
        measure("stream + tiny VAE", one, stream(one, vae=tiny))
    if args.compile_mode:
        measure(f"stream, compiled ({args.compile_mode})", one, stream(one, compile_mode=args.compile_mode),
                reference=one_step_reference)
        if args.tiny_vae:
            measure(f"stream + tiny VAE, compiled ({args.compile_mode})", one,
                    stream(one, vae=tiny, compile_mode=args.compile_mode))
    progress.close()
    stages = where_paths_part(pipe, moving[0], args.prompt, one, seed=args.seed) if args.stages else None
    _print_stream_table(args, rows, skipped, pipe.device, pipe.unet.dtype, stages)
    return rows


def _check_stream_options(args: argparse.Namespace, pipe) -> None:
    """Refuse, in one line, options no setup of the bench can run, before any is timed."""
    from addlib.pipeline import check_image_size, vae_factor
    from addlib.stream import SimilarityFilter

    if args.num_frames < len(args.t_index_list):  # Stream Batch's outputs lag its inputs by len - 1 frames
        raise ValueError(f"--num-frames {args.num_frames} leaves no output of the {len(args.t_index_list)}-step "
                         f"stream to compare; stream at least {len(args.t_index_list)} frames")
    check_image_size("--resolution", args.resolution, vae_factor(pipe.vae))
    SimilarityFilter(args.threshold, args.max_skip_frame)  # the filter's own checks of its options


def _stream_maker(pipe, args: argparse.Namespace, first_frame: torch.Tensor, built: list, t_index_list: list[int],
                  batch: bool = True, vae=None, threshold: float | None = None, compile_mode: str | None = None):
    """What builds one stream setup of the bench, prepared and warmed up on ``first_frame``; each stream it builds
    joins ``built``."""
    from addlib.stream import StreamDiffusion

    def make():
        stream = StreamDiffusion(pipe, t_index_list, use_denoising_batch=batch, vae=vae, height=args.resolution,
                                 width=args.resolution, seed=args.seed, compile_mode=compile_mode)
        stream.prepare(args.prompt)
        stream.warmup(first_frame)
        if threshold is not None:
            stream.enable_similarity_filter(threshold, args.max_skip_frame)
        built.append(stream)
        return stream
    return make


def _stream_row(name: str, timesteps, timed, reference, calls: int = 1, rows_per_call: int = 1,
                latency: int = 0) -> dict:
    """One row of the stream table: ``timed`` (:class:`~addlib.bench.timing.FrameTimes`) and, with a
    ``reference``, how far its outputs are from it."""
    difference = "-" if reference is None else f"{max_difference(timed.outputs, reference, latency):.1e}"
    fps = f"{timed.fps:.1f}" if timed.fps >= 1 else f"{timed.fps:.2g}"  # a CPU at 512 pixels: 0.036, not 0.0
    return {"setup": name, "timesteps": ",".join(str(int(t)) for t in timesteps), "UNet calls/frame": calls,
            "rows/call": rows_per_call, "fps": fps, "p50 ms": f"{1000 * timed.percentile(50):.2f}",
            "p99 ms": f"{1000 * timed.percentile(99):.2f}", "first frame ms": f"{1000 * timed.first_frame:.0f}",
            "latency (frames)": latency, "max abs diff vs naive": difference}


def _print_stream_table(args: argparse.Namespace, rows: list[dict], skipped: float, device, dtype,
                        stages: list[dict] | None = None) -> None:
    """The stream table with its settings, then the course's targets for streaming: the 1-step stream at 90% of
    the compute bound or more; its outputs equal the naive loop's; Stream Batch faster than the same steps one
    after another; the filter's speed-up that of the frames skipped. Then, if given, the ``stages`` table
    (:func:`~addlib.stream.where_paths_part`)."""
    print(f"{args.num_frames} frames of {args.resolution}x{args.resolution} moving shapes (static clip: the shape "
          f"moves every {args.hold} frames), prompt {args.prompt!r}, seed {args.seed}, best of {args.repeats} "
          f"passes, {torch.get_num_threads()} threads, {device}, {dtype}; p50 / p99: the median and 99th-percentile "
          f"frame time over every pass; first frame: from the set-up (prepare, warm-up) to the first output")
    print_table(rows)
    fps = {row["setup"].split(" (")[0]: float(row["fps"]) for row in rows}
    bound = fps["stream"] / fps["compute bound: encode + UNet + decode"]
    print(f"\nstream (1 step): {bound:.0%} of the compute bound (target: at least {STREAM_SHARE_OF_BOUND:.0%}): "
          f"{verdict(bound >= STREAM_SHARE_OF_BOUND)}")
    differences = [float(row["max abs diff vs naive"]) for row in rows if row["max abs diff vs naive"] != "-"]
    precision, tolerance = STREAM_TOLERANCES[dtype]
    print(f"outputs against the naive loop: max abs diff {max(differences):.1e} (target: {precision} tolerance, "
          f"{tolerance:g}): {verdict(max(differences) <= tolerance)}")
    batch, sequential = fps["stream, Stream Batch"], fps["stream, no Stream Batch"]
    print(f"Stream Batch: {batch / sequential:.2f}x the same steps one after another (target: faster): "
          f"{verdict(batch > sequential)}")
    gain, expected = fps["stream + similarity filter, static clip"] / fps["stream, static clip"], 1 / (1 - skipped)
    print(f"similarity filter on the static clip: {gain:.2f}x fps, {skipped:.0%} skipped, so 1 / (1 - skipped) = "
          f"{expected:.2f}x expected (target: within {1 - FILTER_SHARE_OF_EXPECTED:.0%}): "
          f"{verdict(gain >= FILTER_SHARE_OF_EXPECTED * expected)}")
    if stages is not None:
        print(f"\nwhere the one-step stream and the naive loop part, stage by stage (frame 0, t_index {args.t_index}):")
        print_table(stages)


def add_parsers(subcommands) -> None:
    """The subcommand stream."""
    stream = subcommands.add_parser("stream", help="frames per second and latency of streaming img2img")
    stream.add_argument("--model", default=str(STUDENT_DIR), help="pipeline folder or hub id")
    stream.add_argument("--tiny-vae", default=str(TINY_VAE_DIR), help="AutoencoderTiny folder or hub id; '' for none")
    stream.add_argument("--prompt", default="a blue triangle on a white background")
    stream.add_argument("--t-index", type=int, default=2, help="the one-step stream's index (2: t = 499)")
    stream.add_argument("--t-index-list", type=int, nargs="+", default=[1, 2, 3], help="the multi-step stream's")
    stream.add_argument("--num-frames", type=at_least(1), default=100)
    stream.add_argument("--resolution", type=at_least(1), default=32)
    stream.add_argument("--scene", type=int, default=3, help="which shapes scene moves")
    stream.add_argument("--hold", type=at_least(1), default=10, help="the static clip moves every HOLD frames")
    stream.add_argument("--threshold", type=float, default=0.98, help="the similarity filter's eta")
    stream.add_argument("--max-skip-frame", type=at_least(0), default=10)
    stream.add_argument("--repeats", type=at_least(1), default=3)
    stream.add_argument("--seed", type=int, default=0)
    stream.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                        help="the pipeline's weights (float16 on a GPU, as StreamDiffusion runs)")
    stream.add_argument("--compile-mode", choices=COMPILE_MODES,
                        help="add rows for the one-step stream compiled with torch.compile in this mode "
                             "(reduce-overhead: CUDA graphs on a GPU); its first frame includes the compilation")
    stream.add_argument("--stages", action="store_true",
                        help="also show where the one-step stream and the naive loop part, stage by stage")
    stream.set_defaults(run=bench_stream)
