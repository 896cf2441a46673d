"""ADD at real scale on the hub architectures (:mod:`addlib.course.rehearsal`, random weights): time and memory of each
memory option, and a trained student's CLIP score and FID against its teacher (notebook 06)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from addlib.bench.evaluation import CLIP_MODEL
from addlib.bench.tables import print_table
from addlib.course.rehearsal import MEMORY_OPTIONS
from addlib.utils.commands import at_least


def bench_rehearsal(args: argparse.Namespace) -> list[dict]:
    """ADD at real scale on the rehearsal models (:mod:`addlib.course.rehearsal`: the hub architectures, random weights):
    seconds per step and peak memory for each memory option, the student's one-step sampling time, and the
    one-step stream's frames per second with TAESD. Each measurement runs in a fresh process, so each peak is its
    own; the rows are timed round by round (A B C D E, A B C D E), and each row's time relative to the first is
    taken within a round, as the machine's speed drifts between rounds. Returns the training rows."""
    from addlib.course.rehearsal import build, in_fresh_process, measure_stream, measure_training, memory_option_changes
    from addlib.discriminator import DINOV2_ID

    cuda = torch.cuda.is_available()
    teacher = args.teacher or ("stabilityai/stable-diffusion-2-1-base" if cuda else "nota-ai/bk-sdm-tiny")
    resolution, batch_size = args.resolution or (512 if cuda else 64), args.batch_size or (4 if cuda else 1)
    steps = args.steps or (3 if cuda else 1)
    dinov2, taesd = DINOV2_ID, "madebyollin/taesd"
    folders = {model: str(build(model, args.out)) for model in (teacher, dinov2, taesd, args.stream_model)}
    base = dict(teacher=folders[teacher], feature_network=folders[dinov2], resolution=resolution,
                batch_size=batch_size, dataset="shapes")  # any images cost the same; generating them is not timed
    runs = {option: [] for option in args.options}
    for _ in range(args.rounds):
        for option in args.options:
            sample_images = args.sample_images if option == args.options[-1] else 0
            runs[option].append(in_fresh_process(measure_training, base | memory_option_changes(option, folders[taesd]),
                                                 steps, sample_images, args.count_flops))
    first = runs[args.options[0]]
    rows = [{"memory options": option,
             "s/step": f"{sum(r['seconds'] for r in results) / len(results):.2f}",
             f"time vs {args.options[0]!r}": f"{_mean_ratio(results, first):.2f}",
             "peak memory (GiB)": f"{max(r['peak'] for r in results):.1f}",
             **({"TFLOP/step": f"{results[0]['flops'] / 1e12:.2f}"} if args.count_flops else {})}
            for option, results in runs.items()]
    streams = [in_fresh_process(measure_stream, folders[args.stream_model], folders[taesd], resolution, args.num_frames)
               for _ in range(args.rounds)]
    where = (f"{torch.cuda.get_device_name()}, peak memory allocated by torch" if cuda
             else f"CPU, {torch.get_num_threads()} threads, peak resident memory of the process")
    print(f"ADD on {teacher}'s architecture (random weights), DINOv2-S, {resolution}x{resolution}, batch {batch_size}, "
          f"mean of {args.rounds} rounds of {steps} timed steps after a warm-up; {where}")
    print_table(rows)
    sampled = runs[args.options[-1]]
    print(f"\nthe exported student ({args.options[-1]}), one step at {resolution}x{resolution}: "
          f"{sum(r['sample_seconds'] for r in sampled) / len(sampled):.3f} s per image")
    print(f"{args.stream_model}'s architecture streaming one img2img step with TAESD at {resolution}x{resolution}: "
          f"{max(s['fps'] for s in streams):.1f} fps (best of {args.rounds}), peak "
          f"{max(s['peak'] for s in streams):.1f} GiB")
    return rows


def bench_quality(args: argparse.Namespace) -> list[dict]:
    """A real-scale student against its teacher (:func:`addlib.bench.evaluation.evaluate`): CLIP score, FD_CLIP and FID
    on held-out prompts, against a folder of reference images, with seconds per image. Returns the rows."""
    from addlib.bench.evaluation import evaluate
    from addlib.course.rehearsal import random_weights
    from addlib.datasets import image_sequence
    from addlib.generate import read_prompts
    from addlib.loading import is_hub_id, load_pipeline
    from addlib.pipeline import image_size

    if not Path(args.clip_model).exists() and not is_hub_id(args.clip_model):  # a mistyped folder, not a hub id
        raise ValueError(f"--clip-model {args.clip_model}: no such folder, and not a hub id; give a CLIP folder "
                         f"(python -m addlib.course.rehearsal builds one) or a hub id such as {CLIP_MODEL}")
    teacher, student = load_pipeline(args.teacher), load_pipeline(args.student)
    resolution = args.resolution or image_size(teacher)
    prompts = read_prompts(args.prompts)[:args.num_prompts]
    reference = image_sequence(args.reference, resolution)
    rows, _, skipped = evaluate(teacher, student, prompts, reference, clip_model=args.clip_model,
                                inception_weights=args.inception_weights, resolution=resolution,
                                guidance_scale=args.guidance_scale, seed=args.seed, batch_size=args.batch_size)
    print(f"{len(prompts)} prompts of {args.prompts}, {len(reference)} reference images of {args.reference}, "
          f"{resolution}x{resolution}, sampling seed {args.seed}, CLIP {args.clip_model}, {teacher.device}")
    print_table(rows)
    for line in skipped:
        print(line)
    if any(random_weights(path) for path in (args.teacher, args.student, args.clip_model)):
        print("random weights (rehearsal models): these scores measure nothing but that the code runs")
    return rows


def _mean_ratio(results: list[dict], reference: list[dict]) -> float:
    """The mean over rounds of each round's seconds over the reference row's seconds in the same round."""
    return sum(r["seconds"] / f["seconds"] for r, f in zip(results, reference)) / len(reference)


def add_parsers(subcommands) -> None:
    """The subcommands rehearsal and quality."""
    rehearsal = subcommands.add_parser("rehearsal", help="ADD and streaming on the hub architectures, random weights")
    rehearsal.add_argument("--teacher", help="hub id of the teacher's architecture (default: SD 2.1-base on CUDA, "
                                             "BK-SDM-Tiny on a CPU)")
    rehearsal.add_argument("--stream-model", default="stabilityai/sd-turbo", help="hub id of the streamed model")
    rehearsal.add_argument("--resolution", type=at_least(8), help="default: 512 on CUDA, 64 on a CPU")
    rehearsal.add_argument("--batch-size", type=at_least(1), help="default: 4 on CUDA, 1 on a CPU")
    rehearsal.add_argument("--steps", type=at_least(1), help="timed steps per row (default: 3 on CUDA, 1 on a CPU)")
    rehearsal.add_argument("--rounds", type=at_least(1), default=2)
    rehearsal.add_argument("--options", nargs="+", default=list(MEMORY_OPTIONS), choices=MEMORY_OPTIONS,
                           help="memory options to time, each with the ones before it in this list")
    rehearsal.add_argument("--sample-images", type=at_least(1), default=4)
    rehearsal.add_argument("--count-flops", action="store_true", help="also count one step's floating-point operations")
    rehearsal.add_argument("--num-frames", type=at_least(2), default=8)
    rehearsal.add_argument("--out", type=Path, default=Path("runs/rehearsal"), help="where the models are built")
    rehearsal.set_defaults(run=bench_rehearsal)

    quality = subcommands.add_parser("quality", help="CLIP score and FID of a real-scale student and its teacher")
    quality.add_argument("--teacher", default="nota-ai/bk-sdm-tiny", help="pipeline folder or hub id")
    quality.add_argument("--student", required=True, help="pipeline folder of the distilled student")
    quality.add_argument("--reference", required=True, type=Path,
                         help="a folder of reference images for FID, e.g. the teacher's generated training data")
    quality.add_argument("--prompts", default="held_out", help="a prompt file (one per line), or a shipped one")
    quality.add_argument("--num-prompts", type=at_least(2), default=50, help="at most this many (at least 2)")
    quality.add_argument("--clip-model", default=CLIP_MODEL, help="CLIP folder or hub id, for the CLIP score")
    quality.add_argument("--inception-weights", help="a local file of FID's Inception weights (default: fetched)")
    quality.add_argument("--resolution", type=at_least(8), help="default: the UNet's own")
    quality.add_argument("--guidance-scale", type=float, default=7.5, help="the teacher's, at 25 steps")
    quality.add_argument("--batch-size", type=at_least(1), default=8)
    quality.add_argument("--seed", type=int, default=0)
    quality.set_defaults(run=bench_quality)
