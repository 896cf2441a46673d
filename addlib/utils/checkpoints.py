"""Training checkpoints in safetensors (no pickle): models, optimiser state and progress, for exact resumes.

A checkpoint is two files in a run folder: ``checkpoint.safetensors`` (every tensor: module weights and the
optimisers' moment estimates) and ``checkpoint.json`` (everything else: step, config, optimiser
hyper-parameters, the loss log). The JSON is written last, so a run killed while saving keeps the last
checkpoint whole.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from addlib.utils.errors import check_folder


def check_run_dir(run_dir: Path, resume: bool) -> None:
    """Refuse, before a run starts, a ``run_dir`` that is a file, or one that holds a checkpoint when the run
    would start afresh: a finished or interrupted run is never overwritten by accident."""
    check_folder("--run-dir", run_dir)
    if not resume and (run_dir / "checkpoint.json").exists():
        raise ValueError(f"{run_dir} already holds a checkpoint: pass --resume to continue it, or another --run-dir")


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
