"""Timing streams and steps: frames per second, the compute bound a stream approaches, and output differences.

The benchmarks (:mod:`addlib.bench`), the rehearsal's measurements (:mod:`addlib.rehearsal`) and notebook 07 time
with these, so a figure in a notebook and the same figure in docs/benchmarks.md come from one clock.
"""

from __future__ import annotations

import time

import torch


def synchronize(device: torch.device | str) -> None:
    """Wait for a GPU's queued work, so that a clock read after it times the work, not its queueing."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def frames_per_second(make, frames: torch.Tensor, repeats: int = 1,
                      device: torch.device | str = "cpu") -> tuple[float, list]:
    """Frames per second of the best of ``repeats`` passes of a fresh ``make()`` over ``frames``, and the first
    pass's outputs. ``make`` does its set-up (prepare, warm-up) untimed and returns ``frame -> output``."""
    best, outputs = float("inf"), None
    with torch.no_grad():
        for _ in range(repeats):
            process = make()
            synchronize(device)
            start = time.perf_counter()
            results = [process(frame) for frame in frames]
            synchronize(device)
            best = min(best, time.perf_counter() - start)
            outputs = outputs or results
    return len(frames) / best, outputs


def compute_bound(pipe, vae, rows: int, timestep: int):
    """The least a stream must compute per frame: VAE encode, one UNet call on ``rows`` latents, VAE decode, on
    fixed tensors with no pipeline code around them."""
    from addlib.sampling import encode_prompts

    device, dtype = pipe.device, pipe.unet.dtype  # looked up once: each walks every module
    cond = encode_prompts(pipe, [""]).expand(rows, -1, -1)
    t = torch.full((rows,), timestep, device=device)

    def process(frame):
        encoded = vae.encode(frame[None].to(device, dtype))
        latents = encoded.latents if hasattr(encoded, "latents") else encoded.latent_dist.mean
        output = pipe.unet(latents.expand(rows, -1, -1, -1), t, encoder_hidden_states=cond).sample
        return vae.decode(output[-1:]).sample

    return lambda: process


def max_difference(outputs: list, reference: list, latency: int = 0) -> float:
    """The largest difference between a stream's outputs and a reference's; output k + latency is of frame k."""
    return max((outputs[k + latency] - reference[k]).abs().max().item() for k in range(len(reference) - latency))
