"""Benchmarks: the course's speed and quality figures, each printed as a GitHub-markdown table.

Run a subcommand from the repository root, e.g.::

    python -m addlib.bench shapes                              # make_shapes, 10,000 images at 32 and 64 pixels
    python -m addlib.bench shapes --num-images 1000 --resolutions 32
    python -m addlib.bench teacher                             # quality and speed against sampling steps
    python -m addlib.bench add                                 # the students against the teacher
    python -m addlib.bench curve --discriminator ladd          # a student's quality every 100 steps of training
    python -m addlib.bench probe                               # what ADD's and LADD's discriminators can see
    python -m addlib.bench heads                               # how well fresh heads tell the student's fakes
    python -m addlib.bench health data/student                 # the discriminator's health in a finished run
    python -m addlib.bench stream                              # streaming: naive loop, Stream Batch, filter, tiny VAE
    python -m addlib.bench rehearsal                           # ADD's memory options at real scale, random weights
    python -m addlib.bench quality --student runs/add-sd/student --reference runs/generated/...   # CLIP score, FID

One function per subcommand, in a module per kind of measurement (:mod:`~addlib.bench.quality`,
:mod:`~addlib.bench.discriminators`, :mod:`~addlib.bench.streaming`, :mod:`~addlib.bench.real_scale`); each builds
a list of rows (dicts with the same keys), prints it with :func:`~addlib.bench.tables.print_table`, so the tables
in the notebooks and docs can be pasted straight from the terminal, and returns it. The course's targets are one
table, in :mod:`~addlib.bench.tables`.

The measurements the benches (and the notebooks) are made of live here too:

    metrics      prompt accuracy and shapes-FID on the miniature
    evaluation   CLIP score, FID and FD_CLIP at real scale
    preference   the paper's user study in miniature: two-alternative choices, win rates, an automatic judge
    timing       frames per second, and the compute bound a stream approaches
"""

from __future__ import annotations

from addlib.bench.tables import print_table
from addlib.utils.commands import OneLineParser

__all__ = ["main", "print_table"]


def main(argv: list[str] | None = None) -> list[dict] | None:
    """Parse the command line and run the chosen benchmark; a benchmark that returns its rows passes them on."""
    # Here, not at the top: the metrics below import this package, and need none of the benches' imports.
    from addlib.bench import discriminators, quality, real_scale, streaming

    parser = OneLineParser(prog="python -m addlib.bench", description=__doc__.splitlines()[0])
    subcommands = parser.add_subparsers(dest="benchmark", required=True)
    for module in (quality, discriminators, streaming, real_scale):
        module.add_parsers(subcommands)
    args = parser.parse_args(argv)
    return args.run(args)
