"""Every command's line, and the trainers' configurations: checked as they are built, an option per field.

A ``python -m addlib.*`` command prints an error the library raised on purpose as one line and exits with
status 2, as argparse does for a bad option (:func:`run_command`); anything else that goes wrong inside the
library is a bug, and keeps its traceback.

A trainer's ``Config`` is a :class:`TrainingConfig`: a dataclass whose fields' comments are its documentation
(``--help`` reads them, :func:`field_comments`), refused in one line as it is built when a field is of the wrong
type or out of the range its name implies (:func:`check_config`) or breaks the trainer's own rules (its
``check``). :func:`parse_run_arguments` turns a command line into one, and :func:`command_line` a run's
configuration back into the command that repeats it.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import math
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

from addlib.utils.checkpoints import check_run_dir
from addlib.utils.errors import check_folder

PACKAGE_DIR = Path(__file__).resolve().parents[1]


class OneLineParser(argparse.ArgumentParser):
    """argparse's parser, whose errors are one line: the usage it would print first is one ``--help`` away."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def at_least(lowest: int):
    """An argparse ``type`` for an integer option of at least ``lowest``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < lowest:
            raise argparse.ArgumentTypeError(f"must be an integer of at least {lowest}, got {text!r}")
        return value
    return parse


def run_command(main):
    """Run a command's ``main()`` and return what it returns; an error the library raised on purpose prints as
    one line, status 2.

    "On purpose" means by a ``raise`` statement of ``addlib`` itself (the last frame of the traceback); an error
    from deeper down, or one Python raised on a line of the library, is a bug, and keeps its traceback.
    """
    try:
        return main()
    except (ValueError, TypeError, OSError, RuntimeError, FloatingPointError, ImportError) as error:
        frame = traceback.extract_tb(error.__traceback__)[-1]
        if PACKAGE_DIR not in Path(frame.filename).resolve().parents or not (frame.line or "").startswith("raise "):
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


# What each kind of training-configuration field may hold, recognised by its name. A value outside its range
# would not fail, it would quietly train nothing (0 steps), diverge (a decay of 2) or divide by zero.
_RANGES = (
    (lambda name: name == "warmup_steps", "at least 0", lambda v: v >= 0),
    (lambda name: name.endswith(("steps", "batch_size", "checkpoint_every", "resolution", "images", "prompts",
                                 "width")),
     "at least 1", lambda v: v >= 1),
    (lambda name: name.endswith("lr") or name == "grad_clip", "above 0", lambda v: v > 0),
    (lambda name: name.endswith("_prob"), "in [0, 1]", lambda v: 0 <= v <= 1),
    (lambda name: name in ("ema_decay", "adam_beta1", "adam_beta2"), "in [0, 1)", lambda v: 0 <= v < 1),
    (lambda name: name.endswith(("weight", "noise", "std", "jitter")), "at least 0", lambda v: v >= 0),
)


def check_config(config) -> None:
    """Refuse a training configuration field of the wrong type or outside the range its kind allows.

    Every trainer's ``Config`` is a dataclass: an ``int`` field must hold an integer, a ``float`` field a number,
    and each numeric field the range its name implies (steps and batch sizes at least 1, learning rates above 0,
    probabilities in [0, 1], decays and Adam's betas in [0, 1), loss weights at least 0).
    """
    for field in dataclasses.fields(config):
        name, value, default = field.name, getattr(config, field.name), field.default
        option = f"{name} (--{name.replace('_', '-')})"
        if isinstance(default, bool) or isinstance(default, str):
            if type(value) is not type(default):
                raise ValueError(f"{option} must be a {type(default).__name__}, got {value!r}")
            continue
        integer = isinstance(default, int)
        if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
            raise ValueError(f"{option} must be {'an integer' if integer else 'a number'}, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"{option} is {value}; give a finite number")
        for applies, allowed, holds in _RANGES:
            if applies(name):
                if not holds(value):
                    raise ValueError(f"{option} must be {allowed}, got {value}")
                break


@dataclass
class TrainingConfig:
    """The base of every trainer's ``Config``: checked once, where it is built (``Config(...)``,
    ``dataclasses.replace``, a command line), so a bad value fails where it was written rather than steps into a
    run. :func:`check_config` checks each field; a trainer adds its own rules in :meth:`check`."""

    def __post_init__(self) -> None:
        check_config(self)
        self.check()

    def check(self) -> None:
        """A trainer's own rules, beyond each field's range: none here."""


def field_comments(config_class: type) -> dict[str, str]:
    """Each field's comment in the source of a ``Config`` dataclass: the one on its line, else the comment lines
    right above it. The comments document the configuration once; ``--help`` reads them from there."""
    comments, block = {}, ""
    for line in inspect.getsource(config_class).splitlines()[1:]:
        code, _, comment = line.strip().partition("#")
        if code.startswith(("def ", "@")):  # the fields are over
            break
        if not code:  # a comment line starts a block or goes on with one; a blank line ends it
            block = f"{block} {comment.strip()}".strip() if comment else ""
            continue
        name = code.split(":")[0].strip()
        if name.isidentifier() and ":" in code:
            comments[name] = comment.strip() or block
        block = ""
    return comments


def add_config_options(parser: argparse.ArgumentParser, config_class: type) -> None:
    """One ``--option`` per field of a training ``Config`` dataclass, defaulting to the field's default and
    described by its comment (:func:`field_comments`)."""
    comments = field_comments(config_class)
    for field in dataclasses.fields(config_class):
        option = f"--{field.name.replace('_', '-')}"
        text = comments.get(field.name, "").replace("%", "%%")  # argparse formats help with %
        described = f"{text} (default: %(default)r)" if text else "(default: %(default)r)"
        if isinstance(field.default, bool):  # --flag / --no-flag: bool("False") would be True
            parser.add_argument(option, action=argparse.BooleanOptionalAction, default=field.default, help=text)
        else:
            parser.add_argument(option, type=type(field.default), default=field.default, help=described)


def command_line(module: str, config: dict) -> str:
    """The command that repeats a run with configuration ``config``, for its recipe."""
    def option(name: str, value) -> str:
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            return flag if value else "--no-" + flag[2:]
        return f"{flag} {value!r}" if value == "" else f"{flag} {value}"
    return f"python -m {module} " + " ".join(option(k, v) for k, v in config.items())


def parse_run_arguments(parser: argparse.ArgumentParser, argv: list[str] | None, config_class: type, out: Path,
                        run_dir: Path, presets: dict[str, dict] | None = None) -> tuple:
    """Parse a training command line: the config's options, then ``--out``, ``--run-dir`` and ``--resume``, and
    ``--preset NAME`` when ``presets`` (name -> field values) are given: the preset's values replace the config's
    defaults, and any option given on the command line replaces those.

    Returns ``(config, out, run_dir, resume)``. The config checks itself as it is built (:class:`TrainingConfig`),
    so a bad value is the error a user sees. Starting afresh in a
    run folder that holds a checkpoint is refused, so a finished or interrupted run is never overwritten by
    accident.
    """
    add_config_options(parser, config_class)
    if presets:
        parser.add_argument("--preset", choices=list(presets), default=next(iter(presets)),
                            help="a named configuration to start from (default: %(default)s)")
        parser.set_defaults(**presets[parser.parse_known_args(argv)[0].preset])
    parser.add_argument("--out", type=Path, default=out, help="where the trained model goes")
    parser.add_argument("--run-dir", type=Path, default=run_dir, help="checkpoints and logs")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint in --run-dir")
    args = vars(parser.parse_args(argv))
    out, run_dir, resume = args.pop("out"), args.pop("run_dir"), args.pop("resume")
    args.pop("preset", None)
    try:
        config = config_class(**args)  # a TrainingConfig checks itself as it is built
        check_folder("--out", out)
        check_run_dir(run_dir, resume)
    except ValueError as error:
        parser.error(str(error))
    # An option set on the command line to a value this run never reads is refused; left at its default it is
    # not, so the commands that older recipes recorded, every field written out, still run.
    given = {token.split("=")[0] for token in (sys.argv[1:] if argv is None else argv) if token.startswith("--")}
    defaults = {field.name: field.default for field in dataclasses.fields(config_class)}
    for name, why in getattr(config, "ignored", dict)().items():
        option = f"--{name.replace('_', '-')}"
        if (option in given or f"--no-{option[2:]}" in given) and getattr(config, name) != defaults[name]:
            parser.error(f"{option} has no effect in this run: {why}")
    return config, out, run_dir, resume
