"""One-line errors: the checks every entry point shares, and the command-line wrapper that prints them.

A learner's mistake (a step count of 0, images in 0-255, a CUDA device on a laptop) gets one sentence that names
the value and says what to do, raised where the value comes in, before any work is done. The ``python -m
addlib.*`` commands print such an error as one line and exit with status 2, as argparse does for a bad option;
anything else that goes wrong inside the library is a bug, and keeps its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import traceback
from pathlib import Path

import torch

PACKAGE_DIR = Path(__file__).resolve().parents[1]

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


def check_integer(name: str, value, lowest: int) -> None:
    """``value`` must be an integer (not a float, not a bool) of at least ``lowest``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
        raise ValueError(f"{name} must be an integer of at least {lowest}, got {value!r}")


def check_finite(name: str, tensor: torch.Tensor) -> None:
    """NaN or infinity in an input would flow through every network and come out as NaN, silently."""
    if not torch.isfinite(tensor).all():
        raise _not_finite(name)


def _not_finite(name: str) -> ValueError:
    return ValueError(f"{name} hold NaN or infinite values; check where they were computed")


def check_images(name: str, images, ndim: int | None = 4) -> None:
    """``images`` must be a floating-point torch tensor in [-1, 1], the range the course's networks read, of
    shape (N, 3, H, W) (``ndim`` 4), (3, H, W) (3), or any (None: the caller checks the shape itself).

    Images in [0, 1] or 0-255 (uint8 from a file or a video) would be read as saturated colours, silently.
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(images).__module__}.{type(images).__name__}; "
                        f"for an (H, W, 3) uint8 array use torch.from_numpy(a).permute(2, 0, 1) / 127.5 - 1")
    if not images.is_floating_point():
        raise ValueError(f"{name} must be floating point in [-1, 1], got {images.dtype}; for 0-255 values use "
                         f"images.float() / 127.5 - 1")
    if ndim is not None and (images.ndim != ndim or images.shape[-3] != 3):
        raise ValueError(f"{name} must have shape ({'N, ' if ndim == 4 else ''}3, H, W), RGB, got shape "
                         f"{tuple(images.shape)}")
    if images.numel() == 0:  # torch's own error would come later, from aminmax or a cat, and name neither
        raise ValueError(f"{name} is empty (shape {tuple(images.shape)}); pass at least one image")
    # One pass and one wait for the device: a NaN or an infinity shows in the smallest or the largest value.
    low, high = torch.stack(torch.aminmax(images.detach())).tolist()
    if not math.isfinite(low) or not math.isfinite(high):
        raise _not_finite(name)
    if low < -1.01 or high > 1.01:  # a little slack for a decoder's overshoot before clamping
        hint = "for 0-255 values use images / 127.5 - 1" if high > 2 else "scale them to [-1, 1]"
        raise ValueError(f"{name} must lie in [-1, 1], got values from {low:.3g} to {high:.3g}; {hint}")


def available_devices() -> list[str]:
    """The devices torch can use here: the CPU, then each CUDA GPU, then Apple's MPS."""
    cuda = [f"cuda:{index}" for index in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return ["cpu", *cuda, *(["mps"] if torch.backends.mps.is_available() else [])]


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device``, or CUDA when present and the CPU otherwise. A device this machine lacks (CUDA on a laptop,
    MPS off a Mac, a GPU index past the last, a typo like "gpu") is refused in one line that names the devices
    there are: torch itself fails later, deep inside a model, with an assertion."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    names = available_devices()
    choices = f"available here: {', '.join(map(repr, names))}; use device={names[-1]!r}, or leave device out"
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; {choices}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(resolved)!r} asked for, but torch sees no CUDA GPU here "
                         f"(torch {torch.__version__}); {choices}")
    if resolved.type == "cuda" and (resolved.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device {str(resolved)!r} asked for, but torch sees {torch.cuda.device_count()} CUDA "
                         f"GPU(s) here; {choices}")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {str(resolved)!r} asked for, but torch sees no Apple MPS GPU here "
                         f"(torch {torch.__version__}); {choices}")
    return resolved


def check_dtype_runs(dtype: torch.dtype, device: torch.device) -> None:
    """Refuse, in one line, a precision ``device`` cannot run a convolution in (float16 on the CPU of an older
    torch, bfloat16 on an older Mac's MPS): torch would fail later, deep inside the first network, and diffusers
    only warns."""
    if dtype == torch.float32:
        return
    try:
        probe = torch.ones(1, 1, 2, 2, device=device, dtype=dtype)
        torch.nn.functional.conv2d(probe, probe[:, :, :1, :1])
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"{dtype} convolutions do not run on {device} with torch {torch.__version__} "
                         f"({str(error).splitlines()[0]}); use dtype=torch.float32 here, or another device") from None


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
