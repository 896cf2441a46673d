"""Benchmarks: the course's speed and quality figures, each printed as a GitHub-markdown table.

Run a subcommand from the repository root, e.g.::

    python -m addlib.bench shapes                              # make_shapes, 10,000 images at 32 and 64 pixels
    python -m addlib.bench shapes --num-images 1000 --resolutions 32
    python -m addlib.bench teacher                             # quality and speed against sampling steps
    python -m addlib.bench add                                 # the ADD student against the teacher
    python -m addlib.bench probe                               # what ADD's and LADD's discriminators can see
    python -m addlib.bench heads                               # how well fresh heads tell the student's fakes
    python -m addlib.bench health data/student                 # the discriminator's health in a finished run
    python -m addlib.bench stream                              # streaming: naive loop, Stream Batch, filter, tiny VAE
    python -m addlib.bench rehearsal                           # ADD's memory options at real scale, random weights
    python -m addlib.bench quality --student runs/add-sd/student --reference runs/generated/...   # CLIP score, FID

One function per subcommand; each builds a list of rows (dicts with the same keys) and hands it to
:func:`print_table`, so the tables in the notebooks and docs can be pasted straight from the terminal.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from tqdm import tqdm  # a text bar: in a notebook its last state stays in the saved output

from addlib.errors import OneLineParser, at_least, run_command
from addlib.evaluation import CLIP_MODEL
from addlib.loading import LADD_STUDENT_DIR, STUDENT_DIR, TEACHER_DIR, TINY_VAE_DIR
from addlib.probe import HEADS_SWEEP
from addlib.rehearsal import MEMORY_OPTIONS
from addlib.shapes import ATTRIBUTES, make_shapes
from addlib.stream import COMPILE_MODES
from addlib.timing import compute_bound, max_difference, time_frames


# Students trained like the shipped one but for one change (docs/benchmarks.md): the loss ablation of ADD's
# Table 1d, and LADD's setting, the teacher's own images in place of real ones, with and without L_distill.
VARIANTS = {**{f"ablation: {name}": Path("runs/ablation") / name
               for name in ("adversarial-only", "distillation-only", "both")},
            **{f"teacher's images: {name}": Path("runs/synthetic") / name for name in ("both", "adversarial-only")}}


def _verdict(ok: bool) -> str:
    return "yes" if ok else "no"


def print_table(rows: list[dict]) -> None:
    """Print ``rows`` as a GitHub-markdown table, one column per key of the first row."""
    if not rows:
        return
    columns = list(rows[0])
    cells = [[str(row[column]) for column in columns] for row in rows]
    widths = [max(len(column), *(len(line[i]) for line in cells)) for i, column in enumerate(columns)]
    print("| " + " | ".join(column.ljust(width) for column, width in zip(columns, widths)) + " |")
    print("|" + "|".join("-" * (width + 2) for width in widths) + "|")
    for line in cells:
        print("| " + " | ".join(cell.rjust(width) for cell, width in zip(line, widths)) + " |")


def bench_shapes(args: argparse.Namespace) -> None:
    """Time :func:`addlib.shapes.make_shapes` at each resolution (drawing, rendering and captions)."""
    rows = []
    for resolution in args.resolutions:
        make_shapes(64, resolution=resolution)  # warm-up: the first call pays for torch's lazy initialisation
        start = time.perf_counter()
        make_shapes(args.num_images, resolution=resolution)
        seconds = time.perf_counter() - start
        rows.append({"resolution": resolution, "images": args.num_images, "seconds": f"{seconds:.3f}",
                     "images/s": f"{args.num_images / seconds:,.0f}"})
    print_table(rows)


def _quality_row(images, prompts, reference, classifier) -> dict:
    """Prompt accuracy (joint, closed-world joint, then per attribute), how many images the classifier refuses
    and hold several shapes, and shapes-FID against ``reference`` real images."""
    from addlib.metrics import prompt_accuracy, shapes_fid

    accuracy = prompt_accuracy(images, prompts, classifier)
    return {"joint acc": f"{accuracy['joint']:.3f}", "closed-world": f"{accuracy['closed-world joint']:.3f}",
            # "-" for an attribute no prompt of a small set names
            **{name: f"{accuracy[name]:.3f}" if name in accuracy else "-" for name in ATTRIBUTES},
            "none of these": f"{accuracy['none of these']:.3f}", "2+ shapes": f"{accuracy['several shapes']:.3f}",
            "shapes-FID": f"{shapes_fid(images, reference, classifier):.2f}"}


def _evaluation_set(num_images: int, seed: int):
    """The prompts of every quality bench and FID's reference: the captions of held-out real images (shapes
    ``seed``, the benchmark's REFERENCE_SEED unless chosen), and a second, disjoint real set; the first set
    against it gives the real-vs-real floor."""
    real, prompts, _ = make_shapes(num_images, seed=seed)
    reference, _, _ = make_shapes(num_images, seed=seed, start=num_images)
    return real, prompts, reference


def _sampled_row(pipe, prompts, reference, classifier, steps: int, guidance: float, seed: int,
                 sampler: str = "ddim") -> dict:
    """Quality and seconds per image of ``steps`` sampling steps of ``pipe`` on ``prompts``."""
    from addlib.sampling import sample

    start = time.perf_counter()
    images = sample(pipe, prompts, steps, guidance_scale=guidance, seed=seed, sampler=sampler)
    seconds = (time.perf_counter() - start) / len(prompts)
    return {"steps": steps, "guidance": guidance, **_quality_row(images, prompts, reference, classifier),
            "s/image": f"{seconds:.4f}"}


def _unsampled_row(name: str, images, prompts, reference, classifier) -> dict:
    """A row for images no sampler made (real ones, VAE round trips): quality only."""
    return {"model": name, "steps": "-", "guidance": "-", **_quality_row(images, prompts, reference, classifier),
            "s/image": "-"}


def bench_teacher(args: argparse.Namespace) -> None:
    """Quality and wall time of the teacher against DDIM steps, with and without guidance (notebook 02)."""
    from addlib.evaluators import load_attribute_classifier
    from addlib.loading import load_pipeline, load_tiny_vae

    torch.manual_seed(0)
    pipe, classifier = load_pipeline(args.model), load_attribute_classifier()
    real, prompts, reference = _evaluation_set(args.num_images, args.prompts_seed)
    with torch.no_grad():  # the VAE alone, no diffusion: the ceiling of anything decoded by it
        on_device = real.to(pipe.device)
        round_trips = {"VAE round trip": pipe.vae.decode(pipe.vae.encode(on_device).latent_dist.mean).sample}
        if args.model == str(TEACHER_DIR) and TINY_VAE_DIR.exists():
            tiny = load_tiny_vae(device=pipe.device)
            round_trips["tiny VAE round trip"] = tiny.decode(tiny.encode(on_device).latents).sample
    rows = [_unsampled_row("real images", real, prompts, reference, classifier),
            *(_unsampled_row(name, images.clamp(-1, 1), prompts, reference, classifier)
              for name, images in round_trips.items())]
    for guidance in args.guidance_scales:
        for steps in args.steps:
            rows.append({"model": "teacher", **_sampled_row(pipe, prompts, reference, classifier, steps, guidance,
                                                             args.seed)})
    print(f"{args.num_images} prompts (captions of shapes seed {args.prompts_seed}), sampling seed {args.seed}, "
          f"DDIM, {torch.get_num_threads()} threads, {pipe.device}")
    print_table(rows)


# A student's row names the discriminator its recipe trained it with.
STUDENT_LABELS = {"add": "ADD student", "ladd": "LADD student", "add+ladd": "ADD + LADD student"}


def _student_label(folder: str) -> str:
    recipe = Path(folder) / "recipe.json"
    discriminator = json.loads(recipe.read_text())["config"].get("discriminator", "add") if recipe.exists() else None
    return STUDENT_LABELS.get(discriminator, f"student: {Path(folder).name}")


def bench_add(args: argparse.Namespace) -> None:
    """The distilled students (the shipped one, and LADD's where it exists) against the teacher, and students
    trained with one change (notebooks 05 and 08; the course's targets below)."""
    from addlib.evaluators import load_attribute_classifier
    from addlib.loading import load_pipeline

    torch.manual_seed(0)
    teacher, classifier = load_pipeline(args.teacher), load_attribute_classifier()
    real, prompts, reference = _evaluation_set(args.num_images, args.prompts_seed)
    # (model, pipeline, steps, guidance, sampler) of each row; the students sample as ADD
    runs = [("teacher (DDIM)", teacher, steps, guidance, "ddim")
            for steps, guidance in ((1, 1.0), (4, 1.0), (25, args.teacher_guidance))]
    students = {}
    for folder in (folder for folder in (args.student, args.ladd_student) if folder):
        label = _student_label(folder)  # two students of one recipe are told apart by their folders
        students[f"{label}: {Path(folder).name}" if label in students else label] = folder
    runs += [(label, load_pipeline(folder), steps, 1.0, "add") for label, folder in students.items()
             for steps in (1, 2, 4)]
    missing = [folder for folder in args.ablations if not (Path(folder) / "model_index.json").exists()]
    labels = {str(path): label for label, path in VARIANTS.items()}
    for folder in (folder for folder in args.ablations if folder not in missing):
        variant, label = load_pipeline(folder), labels.get(str(Path(folder)), f"ablation: {Path(folder).name}")
        runs += [(label, variant, steps, 1.0, "add") for steps in (1, 4)]
    rows = [_unsampled_row("real images", real, prompts, reference, classifier)]
    for model, pipe, steps, guidance, sampler in tqdm(runs, desc="sampling and scoring", unit="row"):
        rows.append({"model": model, **_sampled_row(pipe, prompts, reference, classifier, steps, guidance,
                                                     args.seed, sampler)})
    print(f"{args.num_images} prompts (captions of shapes seed {args.prompts_seed}), sampling seed {args.seed}, "
          f"{torch.get_num_threads()} threads, {teacher.device}; the student samples as ADD (x0, noised afresh)")
    print_table(rows)
    _print_add_targets(rows, list(students))
    for folder in missing:
        print(f"(no ablation student in {folder}: train it with the command in docs/benchmarks.md)")


# The course's one-step targets for a student against the teacher's 25 guided steps: joint accuracy within this
# much of theirs, shapes-FID at most this many times theirs, and at most this share of images with two shapes.
ONE_STEP_ACCURACY_GAP, ONE_STEP_FID_RATIO, ONE_STEP_SEVERAL_SHAPES = 0.03, 1.2, 0.02


def _print_add_targets(rows: list[dict], students: list[str]) -> None:
    """Each student's figures against the course's targets: at 1 step, those above; at 4 steps, at least as good
    as the teacher's 25 guided steps on accuracy and FID."""
    def figures(model: str, steps: int) -> tuple[float, float, float]:
        row = next(r for r in rows if r["model"] == model and r["steps"] == steps)
        return float(row["joint acc"]), float(row["shapes-FID"]), float(row["2+ shapes"])
    accuracy, fid, _ = figures("teacher (DDIM)", 25)
    lowest, highest = accuracy - ONE_STEP_ACCURACY_GAP, ONE_STEP_FID_RATIO * fid
    print()
    for student in students:
        one, four = figures(student, 1), figures(student, 4)
        print(f"{student} 1 step: accuracy {one[0]:.3f} vs teacher {accuracy:.3f} (target: within "
              f"{ONE_STEP_ACCURACY_GAP} = {lowest:.3f}): {_verdict(one[0] >= lowest)}; FID {one[1]:.1f} vs teacher "
              f"{fid:.1f} (target: at most {ONE_STEP_FID_RATIO}x = {highest:.1f}): {_verdict(one[1] <= highest)}; "
              f"two or more shapes {one[2]:.1%} (target: at most {ONE_STEP_SEVERAL_SHAPES:.0%}): "
              f"{_verdict(one[2] <= ONE_STEP_SEVERAL_SHAPES)}")
        print(f"{student} 4 steps: accuracy {four[0]:.3f} vs teacher {accuracy:.3f}, FID {four[1]:.1f} vs "
              f"{fid:.1f} (target: at least the teacher's on both): "
              f"{_verdict(four[0] >= accuracy and four[1] <= fid)}")


@torch.no_grad()
def bench_probe(args: argparse.Namespace) -> list[dict]:
    """Linear probes of the shape of small shapes (held-out seed 9) in the two discriminators' features: the
    TinyViT's tokens that ADD's heads read (its CLS, and its patch tokens pooled), and the teacher UNet's
    blocks that LADD's read, on latents re-noised to each of ``args.timesteps`` with the empty prompt."""
    from addlib.evaluators import load_feature_network
    from addlib.forward_process import add_noise
    from addlib.latent_discriminator import teacher_tokens, unet_blocks
    from addlib.loading import load_pipeline
    from addlib.probe import linear_probe, pooled_tokens
    from addlib.sampling import text_encoder_output
    from addlib.shapes import SEEDS, SIZES

    vit, teacher = load_feature_network(), load_pipeline()
    num_timesteps = len(teacher.scheduler.alphas_cumprod)
    if any(not 0 <= t < num_timesteps for t in args.timesteps):
        raise ValueError(f"--timesteps must lie in 0..{num_timesteps - 1} (the teacher's), got {args.timesteps}")
    images, _, labels = make_shapes(args.num_images, seed=SEEDS["held_out"])
    small = labels[:, 2] == SIZES.index("small")
    images, shapes = images[small], labels[small, 0]
    layers = list(range(1, vit.num_layers, 2))
    rows = []
    for layer, tokens in zip(layers, vit.features(images, layers)):
        rows.append({"features": f"TinyViT block {layer}, CLS", **{f"t = {t}": "" for t in args.timesteps},
                     "clean image": f"{linear_probe(tokens[:, 0], shapes):.3f}"})
        rows.append({"features": f"TinyViT block {layer}, patches", **{f"t = {t}": "" for t in args.timesteps},
                     "clean image": f"{linear_probe(pooled_tokens(tokens[:, 1:]), shapes):.3f}"})
    latents = teacher.vae.encode(images.to(teacher.device)).latent_dist.mean * teacher.vae.config.scaling_factor
    empty = text_encoder_output(teacher, [""])[0].expand(len(images), -1, -1)  # the prompt must not name the shape
    blocks = list(unet_blocks(teacher.unet))
    read = {block: {} for block in blocks}
    generator = torch.Generator().manual_seed(args.seed)
    noise = torch.randn(latents.shape, generator=generator).to(latents)  # one draw, every t
    for t in tqdm(args.timesteps, desc="noise levels"):
        timesteps = torch.full((len(images),), t)
        noisy = add_noise(latents, noise, timesteps, teacher.scheduler.alphas_cumprod)
        for block, tokens in zip(blocks, teacher_tokens(teacher.unet, blocks, noisy, timesteps, empty)):
            read[block][f"t = {t}"] = f"{linear_probe(pooled_tokens(tokens), shapes):.3f}"
    rows += [{"features": f"teacher UNet {block}", **read[block], "clean image": ""} for block in blocks]
    print(f"shape of {len(shapes)} small shapes (shapes seed {SEEDS['held_out']}), logistic regression on 70%, "
          f"accuracy on the other 30% (chance 0.333); tokens pooled by mean and max")
    print_table(rows)
    return rows


def bench_heads(args: argparse.Namespace) -> list[dict]:
    """Fresh discriminators, one per setting of :data:`addlib.probe.HEADS_SWEEP` (a change from the shipped
    recipe), each trained alone to tell real shapes from the student's one-step fakes of their captions, and
    scored on held-out images (shapes seed ``held_out``): how much each discriminator can see."""
    from addlib.loading import load_pipeline
    from addlib.probe import HEADS_SWEEP, heads_probe, one_step_pool
    from addlib.shapes import SEEDS
    from addlib.train_add import Config, make_discriminator

    unknown = [name for name in args.settings if name not in HEADS_SWEEP]
    if unknown:
        raise ValueError(f"unknown setting {unknown[0]!r}; choose from: {'; '.join(HEADS_SWEEP)}")
    teacher, student = load_pipeline(args.teacher, device="cpu"), load_pipeline(args.student, device="cpu")
    for part in (teacher.unet, teacher.vae, teacher.text_encoder, student.unet):
        part.requires_grad_(False)
    train = one_step_pool(teacher, student.unet, args.num_images, SEEDS["add"])
    held_out = one_step_pool(teacher, student.unet, args.held_out, SEEDS["held_out"])
    rows = []
    for name in tqdm(args.settings, desc="discriminators"):
        config = Config(**HEADS_SWEEP[name])
        config.check()
        torch.manual_seed(args.seed)  # the heads' initial weights
        discriminator = make_discriminator(config, teacher)
        optimizer = torch.optim.Adam(discriminator.heads.parameters(), lr=config.discriminator_lr,
                                     betas=(config.adam_beta1, config.adam_beta2))
        start = time.perf_counter()
        result = heads_probe(discriminator, optimizer, train, held_out, config.r1_weight, args.steps,
                             config.batch_size, args.seed)
        rows.append({"discriminator": name, "held-out accuracy": f"{result['held_out_accuracy']:.3f}",
                     "real above its fake": f"{result['pairs']:.3f}", "score gap": f"{result['held_out_gap']:.2f}",
                     "right fake above wrong": f"{result['right_above_wrong']:.3f}",
                     "hinge (last fifth)": f"{result['train_hinge']:.2f}",
                     "hinge at chance": f"{result['hinge_at_chance']:.0f}",
                     "seconds": f"{time.perf_counter() - start:.0f}"})
    print(f"fresh heads trained alone for {args.steps} steps of {Config().batch_size} on {args.num_images} real shapes "
          f"against {args.student}'s one-step fakes; accuracy on {args.held_out} held-out pairs (shapes seed "
          f"{SEEDS['held_out']}), 0.5 at chance; {int((~held_out.fake_right).sum())} of the held-out fakes are wrong "
          f"by the evaluator")
    print_table(rows)
    return rows


def bench_health(args: argparse.Namespace) -> list[dict]:
    """The health of finished ADD runs, from the measurements their trainer logged (``loss_log.json`` in each
    folder): the discriminator's held-out accuracy over the first tenth of the run and over its second half,
    the hinge over its chance value, and the median ratio of the gradients the adversarial and the distillation
    terms put on the student."""
    import json
    import statistics

    from addlib.runs import health_entries

    rows = []
    for folder in args.runs:
        path = Path(folder) / "loss_log.json"
        if not path.exists():
            raise ValueError(f"no loss_log.json in {folder}; give the output folder of a train_add run")
        log = health_entries(json.loads(path.read_text()), str(path))
        first, second = log[:max(1, len(log) // 10)], log[len(log) // 2:]
        ratio = statistics.median(e["grad_adversarial"] / max(e["grad_distillation"], 1e-12) for e in log)
        rows.append({"run": Path(folder).name, "entries": len(log),
                     "accuracy, first tenth": f"{statistics.mean(e['held_out_accuracy'] for e in first):.3f}",
                     "accuracy, second half": f"{statistics.mean(e['held_out_accuracy'] for e in second):.3f}",
                     "hinge / chance, second half":
                         f"{statistics.mean(e['hinge'] / e['hinge_at_chance'] for e in second):.3f}",
                     "gradient adversarial / distillation": f"{ratio:.2f}"})
    print("the discriminator's accuracy on held-out real images against the student's one-step fakes (0.5 at "
          "chance), its hinge over the hinge of heads that say 0 to everything, and the median ratio of the "
          "gradient norms each loss put on the student")
    print_table(rows)
    return rows


def bench_stream(args: argparse.Namespace) -> list[dict]:
    """Frames per second and latency of streaming img2img (notebook 07): a naive diffusers loop, the stream
    class with each of StreamDiffusion's techniques, and the compute bound they approach (targets below).
    Returns the table's rows, for a plot."""
    from addlib.loading import load_pipeline, load_tiny_vae
    from addlib.shapes import moving_shapes
    from addlib.stream import StreamDiffusion, diffusers_img2img, where_paths_part

    if args.num_frames < len(args.t_index_list):  # Stream Batch's outputs lag its inputs by len - 1 frames
        raise ValueError(f"--num-frames {args.num_frames} leaves no output of the {len(args.t_index_list)}-step "
                         f"stream to compare; stream at least {len(args.t_index_list)} frames")
    torch.manual_seed(0)
    pipe = load_pipeline(args.model, dtype=getattr(torch, args.dtype))
    device = pipe.device
    moving, _ = moving_shapes(args.num_frames, resolution=args.resolution, index=args.scene)
    static, _ = moving_shapes(args.num_frames, resolution=args.resolution, index=args.scene, hold=args.hold)
    one, many = [args.t_index], args.t_index_list
    timesteps = {len(one): StreamDiffusion(pipe, one).timesteps, len(many): StreamDiffusion(pipe, many).timesteps}
    rows, streams = [], []  # the table, and every stream built, for the filter's count of skipped frames
    setups = 9 + 2 * bool(args.tiny_vae) + bool(args.compile_mode) * (1 + bool(args.tiny_vae))
    progress = tqdm(total=setups, desc="timing the stream setups", unit="setup")

    def stream(t_index_list, batch=True, vae=None, threshold=None, compile_mode=None):
        def make():
            s = StreamDiffusion(pipe, t_index_list, use_denoising_batch=batch, vae=vae, height=args.resolution,
                                width=args.resolution, seed=args.seed, compile_mode=compile_mode)
            s.prepare(args.prompt)
            s.warmup(moving[0])
            if threshold is not None:
                s.enable_similarity_filter(threshold, args.max_skip_frame)
            streams.append(s)
            return s
        return make

    def naive(t_index_list):
        return lambda: diffusers_img2img(pipe, args.prompt, timesteps[len(t_index_list)], seed=args.seed)

    def measure(name, t_index_list, make, frames=moving, rows_per_call=1, calls=1, latency=0, reference=None):
        timed = time_frames(make, frames, args.repeats, device)
        difference = "-" if reference is None else f"{max_difference(timed.outputs, reference, latency):.1e}"
        rows.append({"setup": name, "timesteps": ",".join(str(int(t)) for t in timesteps[len(t_index_list)]),
                     "UNet calls/frame": calls, "rows/call": rows_per_call, "fps": f"{timed.fps:.1f}",
                     "p50 ms": f"{1000 * timed.percentile(50):.2f}", "p99 ms": f"{1000 * timed.percentile(99):.2f}",
                     "first frame ms": f"{1000 * timed.first_frame:.0f}", "latency (frames)": latency,
                     "max abs diff vs naive": difference})
        progress.update()
        return timed.outputs

    t0 = int(timesteps[1][0])
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
        tiny = load_tiny_vae(args.tiny_vae, device=device, dtype=pipe.unet.dtype)
        measure("compute bound, tiny VAE", one, compute_bound(pipe, tiny, 1, t0))
        measure("stream + tiny VAE", one, stream(one, vae=tiny))
    if args.compile_mode:
        measure(f"stream, compiled ({args.compile_mode})", one, stream(one, compile_mode=args.compile_mode),
                reference=one_step_reference)
        if args.tiny_vae:
            measure(f"stream + tiny VAE, compiled ({args.compile_mode})", one,
                    stream(one, vae=tiny, compile_mode=args.compile_mode))
    progress.close()
    _print_stream_table(args, rows, skipped, device, pipe.unet.dtype)
    if args.stages:
        print(f"\nwhere the one-step stream and the naive loop part, stage by stage (frame 0, t_index {args.t_index}):")
        print_table(where_paths_part(pipe, moving[0], args.prompt, one, seed=args.seed))
    return rows


# The stream against diffusers' loop, on images in [-1, 1]: float32 rounds at 6e-8, float16 at 5e-4 and bfloat16
# at 4e-3 (half a unit in the last place at 1), and the two paths round the scheduler's arithmetic differently.
STREAM_TOLERANCES = {torch.float32: ("float", 1e-4), torch.float16: ("float16", 1e-2),
                     torch.bfloat16: ("bfloat16", 3e-2)}


def _print_stream_table(args: argparse.Namespace, rows: list[dict], skipped: float, device, dtype) -> None:
    """The stream table with its settings, then the course's targets for streaming: the 1-step stream at 90% of
    the compute bound or more; its outputs equal the naive loop's; Stream Batch faster than the same steps one
    after another; the filter's speed-up that of the frames skipped."""
    print(f"{args.num_frames} frames of {args.resolution}x{args.resolution} moving shapes (static clip: the shape "
          f"moves every {args.hold} frames), prompt {args.prompt!r}, seed {args.seed}, best of {args.repeats} "
          f"passes, {torch.get_num_threads()} threads, {device}, {dtype}; p50 / p99: the median and 99th-percentile "
          f"frame time over every pass; first frame: from the set-up (prepare, warm-up) to the first output")
    print_table(rows)
    fps = {row["setup"].split(" (")[0]: float(row["fps"]) for row in rows}
    bound = fps["stream"] / fps["compute bound: encode + UNet + decode"]
    print(f"\nstream (1 step): {bound:.0%} of the compute bound (target: at least 90%): {_verdict(bound >= 0.9)}")
    differences = [float(row["max abs diff vs naive"]) for row in rows if row["max abs diff vs naive"] != "-"]
    precision, tolerance = STREAM_TOLERANCES[dtype]
    print(f"outputs against the naive loop: max abs diff {max(differences):.1e} (target: {precision} tolerance, "
          f"{tolerance:g}): {_verdict(max(differences) <= tolerance)}")
    batch, sequential = fps["stream, Stream Batch"], fps["stream, no Stream Batch"]
    print(f"Stream Batch: {batch / sequential:.2f}x the same steps one after another (target: faster): "
          f"{_verdict(batch > sequential)}")
    gain, expected = fps["stream + similarity filter, static clip"] / fps["stream, static clip"], 1 / (1 - skipped)
    print(f"similarity filter on the static clip: {gain:.2f}x fps, {skipped:.0%} skipped, so 1 / (1 - skipped) = "
          f"{expected:.2f}x expected (target: within 10%): {_verdict(gain >= 0.9 * expected)}")


def bench_rehearsal(args: argparse.Namespace) -> list[dict]:
    """ADD at real scale on the rehearsal models (:mod:`addlib.rehearsal`: the hub architectures, random weights):
    seconds per step and peak memory for each memory option, the student's one-step sampling time, and the
    one-step stream's frames per second with TAESD. Each measurement runs in a fresh process, so each peak is its
    own; the rows are timed round by round (A B C D E, A B C D E), and each row's time relative to the first is
    taken within a round, as the machine's speed drifts between rounds. Returns the training rows."""
    from addlib.rehearsal import (
        build,
        in_fresh_process,
        measure_stream,
        measure_training,
        memory_option_changes,
    )

    cuda = torch.cuda.is_available()
    teacher = args.teacher or ("stabilityai/stable-diffusion-2-1-base" if cuda else "nota-ai/bk-sdm-tiny")
    resolution, batch_size = args.resolution or (512 if cuda else 64), args.batch_size or (4 if cuda else 1)
    steps = args.steps or (3 if cuda else 1)
    dinov2, taesd = "facebook/dinov2-small", "madebyollin/taesd"
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
    """A real-scale student against its teacher (:func:`addlib.evaluation.evaluate`): CLIP score, FD_CLIP and FID
    on held-out prompts, against a folder of reference images, with seconds per image. Returns the rows."""
    from addlib.datasets import image_sequence
    from addlib.evaluation import evaluate
    from addlib.generate import read_prompts
    from addlib.loading import load_pipeline
    from addlib.rehearsal import random_weights
    from addlib.sampling import image_size

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


def _add_evaluation_set(parser: argparse.ArgumentParser) -> None:
    """The options of :func:`_evaluation_set` and of the sampling seed, shared by the quality benchmarks."""
    from addlib.metrics import REFERENCE_SEED

    parser.add_argument("--num-images", type=at_least(2), default=512, help="at least 2, for FID")
    parser.add_argument("--seed", type=int, default=1, help="the sampling seed")
    parser.add_argument("--prompts-seed", type=int, default=REFERENCE_SEED,
                        help=f"shapes seed of the prompts and of FID's real images (the benchmark's: "
                             f"{REFERENCE_SEED}); another gives an independent set, to choose between runs "
                             f"without tuning on the benchmark")


def _miniature_benchmarks(subcommands) -> None:
    """The subcommands that measure the miniature: shapes, teacher, add, probe, stream."""
    shapes = subcommands.add_parser("shapes", help="time make_shapes, the captioned-shapes renderer")
    shapes.add_argument("--num-images", type=at_least(1), default=10_000)
    shapes.add_argument("--resolutions", type=at_least(1), nargs="+", default=[32, 64])
    shapes.set_defaults(run=bench_shapes)

    teacher = subcommands.add_parser("teacher", help="prompt accuracy, shapes-FID and time against DDIM steps")
    teacher.add_argument("--model", default=str(TEACHER_DIR), help="pipeline folder or hub id")
    teacher.add_argument("--steps", type=at_least(1), nargs="+", default=[1, 2, 4, 8, 25, 50])
    teacher.add_argument("--guidance-scales", type=float, nargs="+", default=[1.0, 3.0])
    _add_evaluation_set(teacher)
    teacher.set_defaults(run=bench_teacher)

    add = subcommands.add_parser("add", help="the distilled students against the teacher, and ablations")
    add.add_argument("--teacher", default=str(TEACHER_DIR), help="pipeline folder or hub id")
    add.add_argument("--student", default=str(STUDENT_DIR), help="pipeline folder of the distilled student")
    add.add_argument("--ladd-student", default=str(LADD_STUDENT_DIR),
                     help="pipeline folder of a second student (by default LADD's heads alone); '' for none")
    add.add_argument("--ablations", nargs="*", default=[str(f) for f in VARIANTS.values()],
                     help="student folders trained with one change (a loss weight, the data)")
    add.add_argument("--teacher-guidance", type=float, default=3.0)
    _add_evaluation_set(add)
    add.set_defaults(run=bench_add)

    probe = subcommands.add_parser("probe", help="linear probes of small shapes in ADD's and LADD's features")
    probe.add_argument("--num-images", type=at_least(20), default=3000, help="of which about half are small")
    probe.add_argument("--timesteps", type=int, nargs="+", default=[0, 100, 249, 499, 749])
    probe.add_argument("--seed", type=int, default=0, help="the re-noising's")
    probe.set_defaults(run=bench_probe)

    heads = subcommands.add_parser("heads", help="how well fresh discriminator heads tell the student's fakes")
    heads.add_argument("--teacher", default=str(TEACHER_DIR), help="pipeline folder or hub id")
    heads.add_argument("--student", default=str(STUDENT_DIR), help="pipeline folder of the student whose fakes")
    heads.add_argument("--settings", nargs="+", default=list(HEADS_SWEEP), metavar="NAME",
                       help="the discriminators to train, by name: " + "; ".join(HEADS_SWEEP))
    heads.add_argument("--num-images", type=at_least(2), default=2048, help="real images (and fakes) to train on")
    heads.add_argument("--held-out", type=at_least(2), default=512, help="held-out pairs to score")
    heads.add_argument("--steps", type=at_least(1), default=300)
    heads.add_argument("--seed", type=int, default=0, help="the heads' initial weights and batches")
    heads.set_defaults(run=bench_heads)

    health = subcommands.add_parser("health", help="the discriminator's health in finished ADD runs, from their logs")
    health.add_argument("runs", nargs="+", metavar="FOLDER", help="output folders of train_add runs")
    health.set_defaults(run=bench_health)

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


def _real_scale_benchmarks(subcommands) -> None:
    """The subcommands that measure the hub architectures: rehearsal, quality."""
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


def main(argv: list[str] | None = None) -> list[dict] | None:
    """Parse the command line and run the chosen benchmark; a benchmark that returns its rows passes them on."""
    parser = OneLineParser(prog="python -m addlib.bench", description=__doc__.splitlines()[0])
    subcommands = parser.add_subparsers(dest="benchmark", required=True)
    _miniature_benchmarks(subcommands)
    _real_scale_benchmarks(subcommands)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    run_command(main)
