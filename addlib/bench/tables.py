"""The course's targets, and the markdown tables every benchmark prints its rows as."""

from __future__ import annotations

import torch

# The course's targets, in one place; each bench prints its figures against them. A student at one step against
# the teacher's 25 guided steps: joint accuracy within this much of theirs, shapes-FID at most this many times
# theirs, at most this share of images with two shapes (at four steps: at least theirs in both). The one-step
# stream: at least this share of the compute bound; the similarity filter: at least this share of the speed-up
# its skipped frames allow; the stream's images against diffusers' loop, on [-1, 1]: within its precision's
# tolerance (float32 rounds at 6e-8, float16 at 5e-4, bfloat16 at 4e-3, and the two paths round the scheduler's
# arithmetic differently).
ONE_STEP_ACCURACY_GAP, ONE_STEP_FID_RATIO, ONE_STEP_SEVERAL_SHAPES = 0.03, 1.2, 0.02
STREAM_SHARE_OF_BOUND, FILTER_SHARE_OF_EXPECTED = 0.9, 0.9
STREAM_TOLERANCES = {torch.float32: ("float", 1e-4), torch.float16: ("float16", 1e-2),
                     torch.bfloat16: ("bfloat16", 3e-2)}


def verdict(ok: bool) -> str:
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
