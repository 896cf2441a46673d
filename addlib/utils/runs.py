"""What every trainer shares: a run's progress, clock and checkpoints, the guard against a loss that stops being
finite, the learning-rate schedule, the per-step random generators and the recipe saved beside the model.

So each trainer file (``train_teacher``, ``train_evaluators``, ``train_tiny_vae``, ``train_add``) holds its
configuration, its step and its loop, and nothing else:

    run = Run(run_dir, modules, optimizers, config, resume, step=0)
    for step in run.steps("step", config.steps, "ADD"):
        loss = ...
        run.check_loss(loss, "student", step)
        ...
        run.advance(step, config.checkpoint_every, {"loss": loss.item()} if step % 50 == 0 else None)
    run.checkpoint()
    run.write_recipe(out, "addlib.train_add", device, final_losses=run.state["log"][-10:])

A step's random numbers come from :func:`step_generator` ``(seed, step, stage)`` and its data from the step's
index, so a resumed run repeats exactly what an uninterrupted one does.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import torch
from tqdm import tqdm  # a text bar: in a notebook its last state stays in the saved output

from addlib.utils.checkpoints import resume_checkpoint, save_checkpoint
from addlib.utils.commands import command_line


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def step_generator(seed: int, step: int, stage: int) -> torch.Generator:
    """The generator of one step of one stage (:data:`addlib.shapes.SEEDS` lists the stages' seeds)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + stage * 10_000_019 + step)


@torch.no_grad()
def ema_update(averages, parameters, decay: float) -> None:
    """One step of an exponential moving average of weights: each average moves 1 - decay of the way."""
    for average, parameter in zip(averages, parameters):
        average.lerp_(parameter, 1 - decay)


def device_name(device: str | torch.device = "cpu") -> str:
    """The device a recipe records: ``cuda:0``, or ``cpu (2 threads)``, since a CPU's speed depends on them."""
    device = torch.device(device)
    return str(device) if device.type != "cpu" else f"cpu ({torch.get_num_threads()} threads)"


def check_loss(loss: torch.Tensor, what: str, step: int, where: str = "the last good checkpoint is kept",
                 fix: str = "lower the learning rate") -> None:
    """Stop at the first loss that is NaN or infinite, saying where the last good checkpoint is."""
    if not torch.isfinite(loss):
        raise FloatingPointError(f"the {what} loss became {loss.item()} at step {step}; {where}: {fix} and rerun "
                                 f"with --resume")


def health_entries(log: list[dict], name: str) -> list[dict]:
    """The entries of a loss log that hold the ADD trainer's health measurements (``ADDTrainer.health``);
    refused, in one line, for a log written before the trainer took them."""
    measured = [entry for entry in log if "held_out_accuracy" in entry]
    if not measured:
        raise ValueError(f"the log of {name!r} holds no health measurements (held_out_accuracy): it was written "
                         f"before the trainer took them; train it again")
    return measured


class TrainableParameters(torch.nn.Module):
    """The trainable parameters of ``model`` as a module of their own: what a checkpoint must hold (a LoRA
    student's adapters, not its frozen base) and what the EMA averages. The tensors are ``model``'s own, so
    loading a state dict into this loads it into ``model``; ``copy=True`` clones them instead (the EMA)."""

    def __init__(self, model: torch.nn.Module, copy: bool = False):
        super().__init__()
        self.names = [name for name, p in model.named_parameters() if p.requires_grad]
        self.params = torch.nn.ParameterList(
            torch.nn.Parameter(p.detach().clone(), requires_grad=False) if copy else p
            for name, p in model.named_parameters() if p.requires_grad)

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        parameters = dict(model.named_parameters())
        for name, value in zip(self.names, self.params):
            parameters[name].copy_(value)


SHOWN = ("loss", "adversarial", "distillation")  # the logged figures a progress bar shows


class Run:
    """A training run's progress: ``state`` (JSON: the config, step counters, seconds trained, the loss log),
    saved with ``modules`` and ``optimizers`` (name -> object) into ``run_dir`` by :meth:`checkpoint`, and
    restored from there with ``resume`` (refused if the config differs); ``fields`` start the state's own
    entries, such as step counters. Its clock counts every session of the run. ``save=False`` keeps a process
    from writing (the other processes of a data-parallel run)."""

    def __init__(self, run_dir: Path, modules: dict, optimizers: dict, config, resume: bool = False,
                 save: bool = True, **fields):
        self.run_dir, self.modules, self.optimizers, self.save = run_dir, modules, optimizers, save
        self.ignored = set(getattr(config, "ignored", dict)())  # fields the run never reads: not in its command
        state = {"config": dataclasses.asdict(config), "seconds": 0.0, "log": [], **fields}
        self.state = resume_checkpoint(run_dir, modules, optimizers, state["config"]) if resume else state
        self.started = time.perf_counter() - self.state["seconds"]
        self.counter, self.last_saved = None, None

    def steps(self, counter: str, total: int, desc: str):
        """The steps still to run of ``state[counter]``'s ``total``, with a progress bar; a checkpoint from here
        on records where this counter stood."""
        self.counter, self.last_saved = counter, self.state[counter]
        self.progress = tqdm(range(self.state[counter], total), desc=desc, initial=self.state[counter],
                             total=total, disable=not self.save)
        return self.progress

    def advance(self, step: int, checkpoint_every: int, logged: dict | None = None, checkpoint=None) -> None:
        """``step`` is done: the counter moves past it; ``logged`` figures, when given, join the loss log with
        the step (and the progress bar shows its losses); every ``checkpoint_every`` steps a checkpoint is saved,
        by ``checkpoint`` when the trainer has more to do around it (ADD checks its replicas agree)."""
        self.state[self.counter] = step + 1
        if logged is not None:
            self.state["log"].append({"step": step, **logged})
            self.progress.set_postfix({name: f"{logged[name]:.4f}" for name in SHOWN if name in logged})
        if self.state[self.counter] % checkpoint_every == 0:
            (checkpoint or self.checkpoint)()

    def checkpoint(self) -> None:
        self.state["seconds"] = time.perf_counter() - self.started
        if self.save:
            save_checkpoint(self.run_dir, self.modules, self.optimizers, self.state)
        self.last_saved = self.state[self.counter]

    def check_loss(self, loss: torch.Tensor, what: str, step: int, fix: str = "lower the learning rate") -> None:
        if not torch.isfinite(loss):
            saved = (self.run_dir / "checkpoint.json").exists()
            check_loss(loss, what, step, f"the last good checkpoint (step {self.last_saved}) is in {self.run_dir}"
                         if saved else "no checkpoint was saved yet", fix)

    def write_recipe(self, out: Path, module: str, device: str | torch.device = "cpu", **extra) -> dict:
        """``recipe.json`` in ``out``: the command that repeats the run, its config, minutes, device, torch's
        version, ``extra`` and on a GPU the peak memory; and the loss log, if any, in ``loss_log.json``.
        Returns the recipe."""
        config = self.state["config"]
        command = command_line(module, {name: value for name, value in config.items() if name not in self.ignored})
        recipe = {"command": command, "config": config,
                  "minutes": round(self.state["seconds"] / 60, 1), "device": device_name(device), **extra,
                  "torch": torch.__version__}
        if torch.device(device).type == "cuda":  # what a card must hold, for the next run's choice of card
            recipe["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
        out.mkdir(parents=True, exist_ok=True)
        (out / "recipe.json").write_text(json.dumps(recipe, indent=2) + "\n")
        if self.state["log"]:
            (out / "loss_log.json").write_text(json.dumps(self.state["log"]) + "\n")
        return recipe
