"""One-line errors: the checks of the values every entry point takes in.

A learner's mistake (a step count of 0, images in 0-255, a CUDA device on a laptop) gets one sentence that names
the value and says what to do, raised where the value comes in, before any work is done. A command prints it as
one line (:func:`addlib.utils.commands.run_command`).
"""

from __future__ import annotations

import math

import torch


def check_integer(name: str, value, lowest: int) -> None:
    """``value`` must be an integer (not a float, not a bool) of at least ``lowest``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
        raise ValueError(f"{name} must be an integer of at least {lowest}, got {value!r}")


def check_folder(name: str, path) -> None:
    """``path`` must be a folder or not exist yet (it is made): a file there would fail only when the first
    thing is written, perhaps hours into a run."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"{name} {path} is a file; give a folder (it is made if missing)")


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
