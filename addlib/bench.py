"""Benchmarks: the course's speed and quality figures, each printed as a GitHub-markdown table.

Run a subcommand from the repository root, e.g.::

    python -m addlib.bench shapes                              # make_shapes, 10,000 images at 32 and 64 pixels
    python -m addlib.bench shapes --num-images 1000 --resolutions 32
    python -m addlib.bench teacher                             # quality and speed against sampling steps

One function per subcommand; each builds a list of rows (dicts with the same keys) and hands it to
:func:`print_table`, so the tables in the notebooks and docs can be pasted straight from the terminal.
"""

from __future__ import annotations

import argparse
import time

import torch

from addlib.miniature import TEACHER_DIR
from addlib.shapes import ATTRIBUTES, make_shapes


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
        rows.append(
            {
                "resolution": resolution,
                "images": args.num_images,
                "seconds": f"{seconds:.3f}",
                "images/s": f"{args.num_images / seconds:,.0f}",
            }
        )
    print_table(rows)


def _quality_row(images, prompts, reference, classifier) -> dict:
    """Prompt accuracy (joint, then per attribute) and shapes-FID against ``reference`` real images."""
    from addlib.metrics import prompt_accuracy, shapes_fid

    accuracy = prompt_accuracy(images, prompts, classifier)
    return {"joint acc": f"{accuracy['joint']:.3f}",
            **{name: f"{accuracy[name]:.3f}" for name in ATTRIBUTES},
            "shapes-FID": f"{shapes_fid(images, reference, classifier):.2f}"}


def bench_teacher(args: argparse.Namespace) -> None:
    """Quality and wall time of the teacher against DDIM steps, with and without guidance (notebook 02)."""
    from addlib.evaluators import load_attribute_classifier
    from addlib.metrics import REFERENCE_SEED
    from addlib.miniature import load_pipeline
    from addlib.sampling import sample

    torch.manual_seed(0)
    pipe, classifier = load_pipeline(args.model), load_attribute_classifier()
    # The prompts are the captions of held-out real images; FID compares against a second, disjoint real set,
    # and the first set against it gives the real-vs-real floor at the same sample sizes.
    real, prompts, _ = make_shapes(args.num_images, seed=REFERENCE_SEED)
    reference, _, _ = make_shapes(args.num_images, seed=REFERENCE_SEED, start=args.num_images)
    with torch.no_grad():  # the VAE alone, no diffusion: the ceiling of anything decoded by it
        round_trip = pipe.vae.decode(pipe.vae.encode(real).latent_dist.mean).sample.clamp(-1, 1)
    rows = [{"model": "real images", "steps": "-", "guidance": "-",
             **_quality_row(real, prompts, reference, classifier), "s/image": "-"},
            {"model": "VAE round trip", "steps": "-", "guidance": "-",
             **_quality_row(round_trip, prompts, reference, classifier), "s/image": "-"}]
    for guidance in args.guidance_scales:
        for steps in args.steps:
            start = time.perf_counter()
            images = sample(pipe, prompts, steps, guidance_scale=guidance, seed=args.seed)
            seconds = (time.perf_counter() - start) / len(prompts)
            rows.append({"model": "teacher", "steps": steps, "guidance": guidance,
                         **_quality_row(images, prompts, reference, classifier), "s/image": f"{seconds:.4f}"})
    print(f"{args.num_images} prompts (captions of shapes seed {REFERENCE_SEED}), sampling seed {args.seed}, "
          f"DDIM, {torch.get_num_threads()} threads, {pipe.device}")
    print_table(rows)


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run the chosen benchmark."""
    parser = argparse.ArgumentParser(prog="python -m addlib.bench", description=__doc__.splitlines()[0])
    subcommands = parser.add_subparsers(dest="benchmark", required=True)

    shapes = subcommands.add_parser("shapes", help="time make_shapes, the captioned-shapes renderer")
    shapes.add_argument("--num-images", type=int, default=10_000)
    shapes.add_argument("--resolutions", type=int, nargs="+", default=[32, 64])
    shapes.set_defaults(run=bench_shapes)

    teacher = subcommands.add_parser("teacher", help="prompt accuracy, shapes-FID and time against DDIM steps")
    teacher.add_argument("--model", default=str(TEACHER_DIR), help="pipeline folder or hub id")
    teacher.add_argument("--num-images", type=int, default=512)
    teacher.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8, 25, 50])
    teacher.add_argument("--guidance-scales", type=float, nargs="+", default=[1.0, 3.0])
    teacher.add_argument("--seed", type=int, default=1)
    teacher.set_defaults(run=bench_teacher)

    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
