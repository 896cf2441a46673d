"""The miniature's quality benchmarks: the shapes renderer's speed, the teacher against its sampling steps, the
distilled students against the teacher (notebooks 02, 05 and 08) and a student's quality over its training, by
prompt accuracy and shapes-FID."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from tqdm import tqdm  # a text bar: in a notebook its last state stays in the saved output

from addlib.bench.tables import (
    ONE_STEP_ACCURACY_GAP,
    ONE_STEP_FID_RATIO,
    ONE_STEP_SEVERAL_SHAPES,
    print_table,
    verdict,
)
from addlib.loading import LADD_STUDENT_DIR, STUDENT_DIR, TEACHER_DIR, TINY_VAE_DIR
from addlib.shapes import ATTRIBUTES, SEEDS, make_shapes
from addlib.utils.commands import at_least
from addlib.utils.checkpoints import check_run_dir

# Students trained like the shipped one but for one change (docs/benchmarks.md): the loss ablation of ADD's
# Table 1d, and LADD's setting, the teacher's own images in place of real ones, with and without L_distill.
VARIANTS = {**{f"ablation: {name}": Path("runs/ablation") / name
               for name in ("adversarial-only", "distillation-only", "both")},
            **{f"teacher's images: {name}": Path("runs/synthetic") / name for name in ("both", "adversarial-only")}}


def bench_shapes(args: argparse.Namespace) -> list[dict]:
    """Time :func:`addlib.shapes.make_shapes` at each resolution (drawing, rendering and captions). Returns the
    table's rows."""
    rows = []
    for resolution in args.resolutions:
        make_shapes(64, resolution=resolution)  # warm-up: the first call pays for torch's lazy initialisation
        start = time.perf_counter()
        make_shapes(args.num_images, resolution=resolution)
        seconds = time.perf_counter() - start
        rows.append({"resolution": resolution, "images": args.num_images, "seconds": f"{seconds:.3f}",
                     "images/s": f"{args.num_images / seconds:,.0f}"})
    print_table(rows)
    return rows


def quality_row(images, prompts, reference, classifier) -> dict:
    """Prompt accuracy (joint, closed-world joint, then per attribute), how many images the classifier refuses
    and hold several shapes, and shapes-FID against ``reference`` real images."""
    from addlib.bench.metrics import prompt_accuracy, shapes_fid

    accuracy = prompt_accuracy(images, prompts, classifier)
    return {"joint acc": f"{accuracy['joint']:.3f}", "closed-world": f"{accuracy['closed-world joint']:.3f}",
            # "-" for an attribute no prompt of a small set names
            **{name: f"{accuracy[name]:.3f}" if name in accuracy else "-" for name in ATTRIBUTES},
            "none of these": f"{accuracy['none of these']:.3f}", "2+ shapes": f"{accuracy['several shapes']:.3f}",
            "shapes-FID": f"{shapes_fid(images, reference, classifier):.2f}"}


def evaluation_set(num_images: int, seed: int):
    """The prompts of every quality bench and FID's reference: the captions of held-out real images (shapes
    ``seed``, the benchmark's REFERENCE_SEED unless chosen), and a second, disjoint real set; the first set
    against it gives the real-vs-real floor."""
    real, prompts, _ = make_shapes(num_images, seed=seed)
    reference, _, _ = make_shapes(num_images, seed=seed, start=num_images)
    return real, prompts, reference


def _sampled_row(pipe, prompts, reference, classifier, steps: int, guidance: float, seed: int,
                 sampler: str = "ddim") -> dict:
    """Quality and seconds per image of ``steps`` sampling steps of ``pipe`` on ``prompts``."""
    from addlib.bench.timing import timed_sample

    images, seconds = timed_sample(pipe, prompts, steps, guidance_scale=guidance, seed=seed, sampler=sampler)
    return {"steps": steps, "guidance": guidance, **quality_row(images, prompts, reference, classifier),
            "s/image": f"{seconds:.4f}"}


def _unsampled_row(name: str, images, prompts, reference, classifier) -> dict:
    """A row for images no sampler made (real ones, VAE round trips): quality only."""
    return {"model": name, "steps": "-", "guidance": "-", **quality_row(images, prompts, reference, classifier),
            "s/image": "-"}


def bench_teacher(args: argparse.Namespace) -> list[dict]:
    """Quality and wall time of the teacher against DDIM steps, with and without guidance (notebook 02). Returns
    the table's rows."""
    from addlib.evaluators import load_attribute_classifier
    from addlib.loading import load_pipeline, load_tiny_vae

    torch.manual_seed(0)
    pipe, classifier = load_pipeline(args.model), load_attribute_classifier()
    real, prompts, reference = evaluation_set(args.num_images, args.prompts_seed)
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
    return rows


# A student's row names the discriminator its recipe trained it with.
STUDENT_LABELS = {"add": "ADD student", "ladd": "LADD student", "add+ladd": "ADD + LADD student"}


def _student_label(folder: str) -> str:
    recipe = Path(folder) / "recipe.json"
    discriminator = json.loads(recipe.read_text())["config"].get("discriminator", "add") if recipe.exists() else None
    return STUDENT_LABELS.get(discriminator, f"student: {Path(folder).name}")


def bench_add(args: argparse.Namespace) -> list[dict]:
    """The distilled students (the shipped one, and LADD's where it exists) against the teacher, and students
    trained with one change (notebooks 05 and 08; the course's targets below). Returns the table's rows."""
    from addlib.evaluators import load_attribute_classifier
    from addlib.loading import load_pipeline

    missing = [folder for folder in args.ablations if not (Path(folder) / "model_index.json").exists()]
    if missing and args.ablations != [str(folder) for folder in VARIANTS.values()]:  # named, not the defaults
        raise ValueError(f"--ablations {missing[0]}: no pipeline folder there (model_index.json); give the output "
                         f"folder of a train_add run")
    torch.manual_seed(0)
    teacher, classifier = load_pipeline(args.teacher), load_attribute_classifier()
    real, prompts, reference = evaluation_set(args.num_images, args.prompts_seed)
    # (model, pipeline, steps, guidance, sampler) of each row; the students sample as ADD
    runs = [("teacher (DDIM)", teacher, steps, guidance, "ddim")
            for steps, guidance in ((1, 1.0), (4, 1.0), (25, args.teacher_guidance))]
    students = {}
    for folder in (folder for folder in (args.student, args.ladd_student) if folder):
        label = _student_label(folder)  # two students of one recipe are told apart by their folders
        students[f"{label}: {Path(folder).name}" if label in students else label] = folder
    runs += [(label, load_pipeline(folder), steps, 1.0, "add") for label, folder in students.items()
             for steps in (1, 2, 4)]
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
    return rows


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
              f"{ONE_STEP_ACCURACY_GAP} = {lowest:.3f}): {verdict(one[0] >= lowest)}; FID {one[1]:.1f} vs teacher "
              f"{fid:.1f} (target: at most {ONE_STEP_FID_RATIO}x = {highest:.1f}): {verdict(one[1] <= highest)}; "
              f"two or more shapes {one[2]:.1%} (target: at most {ONE_STEP_SEVERAL_SHAPES:.0%}): "
              f"{verdict(one[2] <= ONE_STEP_SEVERAL_SHAPES)}")
        print(f"{student} 4 steps: accuracy {four[0]:.3f} vs teacher {accuracy:.3f}, FID {four[1]:.1f} vs "
              f"{fid:.1f} (target: at least the teacher's on both): "
              f"{verdict(four[0] >= accuracy and four[1] <= fid)}")


def bench_curve(args: argparse.Namespace) -> list[dict]:
    """How a student's quality grows over training: ADD with ``--discriminator``'s heads (train_add's recipe,
    ``--steps`` long), its EMA student scored every ``--every`` steps at one sampling step and four on
    ``--num-images`` prompts of shapes seed ``--prompts-seed`` (the second prompt set by default: for choosing
    checkpoints, never the benchmark's). ``--decay-from STEP`` lowers the student's learning rate linearly from
    its value at STEP to 0 at the last step (a warm-up-stable-decay schedule). The run checkpoints in
    ``--run-dir`` at every score, its rows with it, so an interrupted curve goes on with ``--resume``; the
    trainer's step-indexed draws make every row the same as a straight ``train_add`` run's at that step."""
    from addlib.add_trainer import ADDTrainer, student_pipeline
    from addlib.evaluators import load_attribute_classifier
    from addlib.train_add import Config
    from addlib.utils.runs import Run, set_lr

    config = Config(discriminator=args.discriminator, steps=args.steps, checkpoint_every=args.every)
    if args.decay_from is not None and not 0 <= args.decay_from < config.steps:
        raise ValueError(f"--decay-from must be a step in 0..{config.steps - 1}, got {args.decay_from}")
    check_run_dir(args.run_dir, args.resume)
    trainer = ADDTrainer.from_config(config)
    run = Run(args.run_dir, trainer.modules(), trainer.optimizers(), config, args.resume, step=0, curve=[],
              decay_from=args.decay_from)
    if run.state["decay_from"] != args.decay_from:
        raise ValueError(f"{args.run_dir} was trained with --decay-from {run.state['decay_from']}, not "
                         f"{args.decay_from}; resume with the same options or give another --run-dir")
    classifier = load_attribute_classifier()
    _, prompts, reference = evaluation_set(args.num_images, args.prompts_seed)

    def score_and_checkpoint() -> None:
        pipe, row = student_pipeline(trainer), {"step": run.state["step"]}
        for steps in (1, 4):
            quality = _sampled_row(pipe, prompts, reference, classifier, steps, 1.0, args.seed, sampler="add")
            row |= {f"{steps} step{'s' * (steps > 1)}: {name}": quality[name]
                    for name in ("joint acc", "2+ shapes", "shapes-FID")}
        run.state["curve"].append(row)
        run.checkpoint()

    for step in run.steps("step", config.steps, f"{args.discriminator} curve"):
        if args.decay_from is not None and step >= args.decay_from:
            set_lr(trainer.student_optimizer, config.lr * (config.steps - step) / (config.steps - args.decay_from))
        trainer.step(step)
        run.advance(step, args.every, None, score_and_checkpoint)
    print(f"the EMA student of `python -m addlib.train_add --discriminator {args.discriminator}` every {args.every} "
          f"steps, on {args.num_images} prompts of shapes seed {args.prompts_seed}, sampling seed {args.seed}")
    print_table(run.state["curve"])
    return run.state["curve"]


def _add_evaluation_set(parser: argparse.ArgumentParser) -> None:
    """The options of :func:`evaluation_set` and of the sampling seed, shared by the quality benchmarks."""
    from addlib.bench.metrics import REFERENCE_SEED

    parser.add_argument("--num-images", type=at_least(2), default=512, help="at least 2, for FID")
    parser.add_argument("--seed", type=int, default=1, help="the sampling seed")
    parser.add_argument("--prompts-seed", type=int, default=REFERENCE_SEED,
                        help=f"shapes seed of the prompts and of FID's real images (the benchmark's: "
                             f"{REFERENCE_SEED}); another gives an independent set, to choose between runs "
                             f"without tuning on the benchmark (default: %(default)s)")


def add_parsers(subcommands) -> None:
    """The subcommands shapes, teacher, add and curve."""
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

    curve = subcommands.add_parser("curve", help="a student's quality every few steps of its training")
    curve.add_argument("--discriminator", default="add", help="train_add's --discriminator (default: %(default)s)")
    curve.add_argument("--steps", type=at_least(1), default=1000, help="training steps")
    curve.add_argument("--every", type=at_least(1), default=100, help="score (and checkpoint) every this many steps")
    curve.add_argument("--decay-from", type=int, default=None, help="decay the student's lr linearly from this step")
    curve.add_argument("--run-dir", type=Path, default=Path("runs/curve"), help="checkpoints, with the rows")
    curve.add_argument("--resume", action="store_true", help="go on from the checkpoint in --run-dir")
    _add_evaluation_set(curve)
    curve.set_defaults(run=bench_curve, prompts_seed=SEEDS["second_reference"])
