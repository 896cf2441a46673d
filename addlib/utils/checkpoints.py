"""Training checkpoints in safetensors (no pickle): models, optimiser state and progress, for exact resumes.

A checkpoint is two files in a run folder: ``checkpoint.safetensors`` (every tensor: module weights and the
optimisers' moment estimates) and ``checkpoint.json`` (everything else: step, config, optimiser
hyper-parameters, the loss log). The JSON is written last, so a run killed while saving keeps the last
checkpoint whole.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from addlib.utils.errors import check_config


def save_checkpoint(run_dir: Path, modules: dict, optimizers: dict, state: dict) -> None:
    """Save ``modules`` and ``optimizers`` (name -> object) and the JSON-able ``state`` to ``run_dir``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    tensors, optimizer_meta = {}, {}
    for name, module in modules.items():
        tensors |= {f"module.{name}.{k}": v.detach().contiguous() for k, v in module.state_dict().items()}
    for name, optimizer in optimizers.items():
        saved = optimizer.state_dict()
        for index, param_state in saved["state"].items():
            for key, value in param_state.items():
                tensors[f"optimizer.{name}.{index}.{key}"] = torch.as_tensor(value).contiguous()
        optimizer_meta[name] = saved["param_groups"]
    # Write to temporary names and rename: the old checkpoint stays whole until the new one is.
    save_file(tensors, run_dir / "checkpoint.safetensors.tmp")
    (run_dir / "checkpoint.json.tmp").write_text(json.dumps({"state": state, "optimizers": optimizer_meta}))
    os.replace(run_dir / "checkpoint.safetensors.tmp", run_dir / "checkpoint.safetensors")
    os.replace(run_dir / "checkpoint.json.tmp", run_dir / "checkpoint.json")


def load_checkpoint(run_dir: Path, modules: dict, optimizers: dict) -> dict:
    """Load a checkpoint saved by :func:`save_checkpoint` into ``modules`` and ``optimizers``; return its state."""
    if not (run_dir / "checkpoint.json").exists():
        raise FileNotFoundError(f"no checkpoint in {run_dir}; start without --resume to train from scratch")
    meta = json.loads((run_dir / "checkpoint.json").read_text())
    tensors = load_file(run_dir / "checkpoint.safetensors")
    for name, module in modules.items():
        prefix = f"module.{name}."
        module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    for name, optimizer in optimizers.items():
        prefix = f"optimizer.{name}."
        state: dict[int, dict] = {}
        for key, value in tensors.items():
            if key.startswith(prefix):
                index, field = key[len(prefix):].split(".", 1)
                state.setdefault(int(index), {})[field] = value
        optimizer.load_state_dict({"state": state, "param_groups": meta["optimizers"][name]})
    return meta["state"]


def resume_checkpoint(run_dir: Path, modules: dict, optimizers: dict, config: dict) -> dict:
    """:func:`load_checkpoint`, refusing one whose ``state["config"]`` differs from ``config``: a resumed run
    must be the run that was interrupted."""
    state = load_checkpoint(run_dir, modules, optimizers)
    saved = state["config"]
    if saved != config:  # a key only one side has (an option added since) counts as changed too
        changed = {k: (saved.get(k), config.get(k)) for k in sorted(saved.keys() | config.keys())
                   if saved.get(k) != config.get(k)}
        raise ValueError(f"{run_dir} was made with another configuration (saved, now): {changed}; "
                         f"resume with the same options or train in another --run-dir")
    return state


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

    Returns ``(config, out, run_dir, resume)``. The config is checked first (:func:`addlib.utils.errors.check_config`,
    then its own ``check()`` method if it has one), so a bad value is the error a user sees. Starting afresh in a
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
    config = config_class(**args)
    try:
        check_config(config)
        getattr(config, "check", lambda: None)()
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
    if not resume and (run_dir / "checkpoint.json").exists():
        parser.error(f"{run_dir} already holds a checkpoint: pass --resume to continue it, or another --run-dir")
    return config, out, run_dir, resume
