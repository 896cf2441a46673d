"""ADD at real scale on the hub architectures (:mod:`addlib.course.rehearsal`, random weights): time and memory of each
memory option, and a trained student's CLIP score and FID against its teacher (notebook 06)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from addlib.bench.evaluation import CLIP_MODEL
from addlib.bench.tables import print_table
from addlib.loading import BK_SDM_TINY_ID, SD21_BASE_ID, SD_TURBO_ID, TAESD_ID
from addlib.utils.commands import at_least

# What a small card adds, one option after another (notebook 06's table): each row keeps the ones above it.
MEMORY_OPTIONS = ("none", "half precision", "+ LoRA", "+ gradient checkpointing", "+ TAESD")


def memory_option_changes(option: str, tiny_vae: str) -> dict:
    """The ``Config`` fields of ``option`` and of every option before it in ``MEMORY_OPTIONS``. Half precision
    is fp16 on a CUDA GPU and bf16 on a CPU, which has no fp16 autocast (accelerate would train in fp32)."""
    half = "fp16" if torch.cuda.is_available() else "bf16"
    steps = [{}, {"mixed_precision": half}, {"lora_rank": 8}, {"gradient_checkpointing": True}, {"tiny_vae": tiny_vae}]
    changes = {}
    for step in steps[:MEMORY_OPTIONS.index(option) + 1]:
        changes |= step
    return changes


def _peak_memory() -> float:
    """GiB: what torch allocated on the GPU at most since the last reset, or on a CPU the process's peak resident
    set (libraries and loading included: a CPU keeps no finer account)."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def measure_training(changes: dict, steps: int, sample_images: int = 0, count_flops: bool = False) -> dict:
    """Seconds per ADD step and peak memory of ``Config.stable_diffusion(**changes)``, after one untimed warm-up
    step; with ``sample_images``, also seconds per one-step image of the exported student; with ``count_flops``,
    the floating-point operations of one more step (torch's FlopCounterMode: matrix products and convolutions;
    R1's second backward through the heads left out).
    Run it in a fresh process (:func:`in_fresh_process`), so that the peak is this configuration's alone."""
    import time

    from accelerate import Accelerator

    from addlib.add_trainer import ADDTrainer, student_pipeline
    from addlib.bench.timing import synchronize
    from addlib.sampling import sample
    from addlib.train_add import Config

    config = Config.stable_diffusion(**changes)
    trainer = ADDTrainer.from_config(config, Accelerator(mixed_precision=config.mixed_precision))
    device = trainer.accelerator.device
    trainer.step(0)
    synchronize(device)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for step in range(1, steps + 1):
        trainer.step(step)
    synchronize(device)
    result = {"seconds": (time.perf_counter() - start) / steps, "peak": _peak_memory()}
    if count_flops:  # without R1: the counter cannot follow autograd.grad, and R1 runs through the small heads alone
        import dataclasses

        from torch.utils.flop_counter import FlopCounterMode

        trainer.config = dataclasses.replace(config, r1_weight=0.0)
        with FlopCounterMode(display=False) as counter:
            trainer.step(steps + 1)
        result["flops"] = counter.get_total_flops()
    if sample_images:
        student, prompts = student_pipeline(trainer), ["a photo of a red bicycle"] * sample_images
        sample(student, prompts[:1], 1, sampler="add", height=config.resolution, width=config.resolution)  # warm-up
        synchronize(device)
        start = time.perf_counter()
        sample(student, prompts, 1, sampler="add", height=config.resolution, width=config.resolution)
        synchronize(device)
        result["sample_seconds"] = (time.perf_counter() - start) / sample_images
    return result


def measure_stream(model: str, tiny_vae: str, resolution: int, num_frames: int) -> dict:
    """One-step img2img stream (t = 499) of ``model`` decoding with ``tiny_vae``: frames per second and peak
    memory, in half precision on a GPU. Run it in a fresh process too."""
    from addlib.bench.timing import frames_per_second
    from addlib.loading import load_pipeline, load_tiny_vae
    from addlib.shapes import moving_shapes
    from addlib.stream import StreamDiffusion

    cuda = torch.cuda.is_available()
    pipe = load_pipeline(model, dtype=torch.float16 if cuda else torch.float32)
    vae = load_tiny_vae(tiny_vae, device=pipe.device, dtype=pipe.unet.dtype)
    frames, _ = moving_shapes(num_frames, resolution=resolution, index=3)

    def make():
        stream = StreamDiffusion(pipe, [2], num_inference_steps=4, vae=vae, height=resolution, width=resolution)
        stream.prepare("a red ball rolling on a wooden floor")
        stream(frames[0].to(pipe.device))  # warm-up
        return lambda frame: stream(frame.to(pipe.device))

    fps, _ = frames_per_second(make, frames, 1, pipe.device)
    return {"fps": fps, "peak": _peak_memory()}


def in_fresh_process(function, *args):
    """``function(*args)`` in a new Python process (spawned: no state shared with this one), its result back."""
    import multiprocessing

    pool = multiprocessing.get_context("spawn").Pool(1)
    try:
        return pool.apply(function, args)
    finally:  # closed and joined, not terminated: a killed worker would leak its semaphore
        pool.close()
        pool.join()


def bench_rehearsal(args: argparse.Namespace) -> list[dict]:
    """ADD at real scale on the rehearsal models (:mod:`addlib.course.rehearsal`: the hub architectures, random
    weights): seconds per step and peak memory for each memory option, the student's one-step sampling time, and the
    one-step stream's frames per second with TAESD. Each measurement runs in a fresh process, so each peak is its
    own; the rows are timed round by round (A B C D E, A B C D E), and each row's time relative to the first is
    taken within a round, as the machine's speed drifts between rounds. Returns the training rows."""
    from addlib.course.rehearsal import build
    from addlib.discriminator import DINOV2_ID

    cuda = torch.cuda.is_available()
    teacher = args.teacher or (SD21_BASE_ID if cuda else BK_SDM_TINY_ID)
    resolution, batch_size = args.resolution or (512 if cuda else 64), args.batch_size or (4 if cuda else 1)
    steps = args.steps or (3 if cuda else 1)
    dinov2, taesd = DINOV2_ID, TAESD_ID
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
    from addlib.bench.evaluation import check_inception_weights, evaluate
    from addlib.course.rehearsal import random_weights
    from addlib.datasets import image_sequence
    from addlib.generate import read_prompts
    from addlib.loading import is_hub_id, load_pipeline
    from addlib.pipeline import image_size

    if not Path(args.clip_model).exists() and not is_hub_id(args.clip_model):  # a mistyped folder, not a hub id
        raise ValueError(f"--clip-model {args.clip_model}: no such folder, and not a hub id; give a CLIP folder "
                         f"(python -m addlib.course.rehearsal builds one) or a hub id such as {CLIP_MODEL}")
    check_inception_weights(args.inception_weights)
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
    rehearsal.add_argument("--stream-model", default=SD_TURBO_ID, help="hub id of the streamed model")
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
    quality.add_argument("--teacher", default=BK_SDM_TINY_ID, help="pipeline folder or hub id")
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
