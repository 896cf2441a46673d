"""Timing streams and steps: frames per second, the compute bound a stream approaches, and output differences.

The benchmarks (:mod:`addlib.bench`, the real-scale measurements of :mod:`addlib.bench.real_scale` among them)
and notebook 07 time with these, so a figure in a notebook and the same figure in docs/benchmarks.md come from
one clock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch


def synchronize(device: torch.device | str | None = None) -> None:
    """Wait for a GPU's queued work, so that a clock read after it times the work, not its queueing. Without
    ``device``, the current CUDA GPU's, if there is one: a caller that never names its device still times right."""
    if device is None and torch.cuda.is_available():
        torch.cuda.synchronize()
    elif device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed_sample(pipe, prompts: list[str], *args, **kwargs) -> tuple[torch.Tensor, float]:
    """:func:`addlib.sampling.sample`'s images for ``prompts`` and the seconds per image they took, the GPU's
    queued work included: every quality table's time column."""
    from addlib.sampling import sample

    start = time.perf_counter()
    images = sample(pipe, prompts, *args, **kwargs)
    synchronize(pipe.device)
    return images, (time.perf_counter() - start) / len(prompts)


@dataclass
class FrameTimes:
    """A stream timed frame by frame: ``seconds[p][k]`` is frame k of pass p, ``first_frame`` the seconds from
    the first pass's set-up (prepare, warm-up) to its first output, ``outputs`` the first pass's outputs.

    Mean fps is not what a viewer feels: a stream at 30 fps that stalls for 200 ms now and then looks broken.
    So beside the frame rate come the median and 99th-percentile frame times, over the frames of every pass,
    and the time to the first frame (StreamDiffusionV2 reports both)."""

    seconds: list[list[float]]
    first_frame: float
    outputs: list

    @property
    def fps(self) -> float:
        """Frames per second of the fastest pass."""
        return len(self.seconds[0]) / min(sum(times) for times in self.seconds)

    def percentile(self, q: float) -> float:
        """The q-th percentile (0-100) of the frame times, in seconds, by linear interpolation."""
        times = torch.tensor([t for times in self.seconds for t in times], dtype=torch.float64)
        return torch.quantile(times, q / 100).item()


def time_frames(make, frames: torch.Tensor, repeats: int = 1, device: torch.device | str | None = None) -> FrameTimes:
    """Time ``repeats`` passes of a fresh ``make()`` over ``frames``, each frame on its own clock. ``make`` does
    its set-up (prepare, warm-up) and returns ``frame -> output``; the set-up counts only towards the first
    frame's wait."""
    if len(frames) == 0 or repeats < 1:
        raise ValueError(f"nothing to time: {len(frames)} frames and {repeats} repeats; pass at least one of each")
    seconds, first_frame, outputs = [], None, None
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            process = make()
            synchronize(device)
            set_up = time.perf_counter() - start
            times, results = [], []
            for frame in frames:
                begin = time.perf_counter()
                results.append(process(frame))
                synchronize(device)
                times.append(time.perf_counter() - begin)
            seconds.append(times)
            if first_frame is None:
                first_frame, outputs = set_up + times[0], results
    return FrameTimes(seconds, first_frame, outputs)


def frames_per_second(make, frames: torch.Tensor, repeats: int = 1,
                      device: torch.device | str | None = None) -> tuple[float, list]:
    """Frames per second of the best of ``repeats`` passes of a fresh ``make()`` over ``frames``, and the first
    pass's outputs. ``make`` does its set-up (prepare, warm-up) untimed and returns ``frame -> output``."""
    timed = time_frames(make, frames, repeats, device)
    return timed.fps, timed.outputs


def compute_bound(pipe, vae, rows: int, timestep: int):
    """The least a stream must compute per frame: VAE encode, one UNet call on ``rows`` latents, VAE decode, on
    fixed tensors with no pipeline code around them."""
    from addlib.pipeline import encode_prompts

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
