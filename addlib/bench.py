"""Benchmarks: the course's speed and quality figures, each printed as a GitHub-markdown table.

Run a subcommand from the repository root, e.g.::

    python -m addlib.bench shapes                              # make_shapes, 10,000 images at 32 and 64 pixels
    python -m addlib.bench shapes --num-images 1000 --resolutions 32

One function per subcommand; each builds a list of rows (dicts with the same keys) and hands it to
:func:`print_table`, so the tables in the notebooks and docs can be pasted straight from the terminal.
"""

from __future__ import annotations

import argparse
import time

from addlib.shapes import make_shapes


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


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run the chosen benchmark."""
    parser = argparse.ArgumentParser(prog="python -m addlib.bench", description=__doc__.splitlines()[0])
    subcommands = parser.add_subparsers(dest="benchmark", required=True)

    shapes = subcommands.add_parser("shapes", help="time make_shapes, the captioned-shapes renderer")
    shapes.add_argument("--num-images", type=int, default=10_000)
    shapes.add_argument("--resolutions", type=int, nargs="+", default=[32, 64])
    shapes.set_defaults(run=bench_shapes)

    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
