"""Checkers for notebook 07, streaming: Stream Batch's update and the similarity filter's skip probability."""

from __future__ import annotations

from collections.abc import Callable

import torch

from addlib.course.checks.core import Case, Mistake, run_checks
from addlib.schedules import make_alphas_cumprod


def _stream_batch_case(description: str, n: int, frames: int, seed: int) -> Case:
    """(x0, alpha, sigma, noise, frames) for n timesteps of a zero-terminal-SNR schedule, ``frames`` per block."""
    gen = torch.Generator().manual_seed(seed)
    alphas_cumprod = make_alphas_cumprod("scaled_linear", rescale_betas_zero_snr=True)
    timesteps = torch.linspace(749, 249, n).long().repeat_interleave(frames)
    alpha = alphas_cumprod[timesteps].sqrt().view(-1, 1, 1, 1)
    sigma = (1 - alphas_cumprod[timesteps]).sqrt().view(-1, 1, 1, 1)
    shape = (n * frames, 4, 4, 4)
    return Case(description, (torch.randn(shape, generator=gen), alpha, sigma, torch.randn(shape, generator=gen), frames))


def check_stream_batch_update(fn: Callable) -> None:
    """Check ``fn(x0, alpha, sigma, noise, frames)`` returns Stream Batch's ``(finished, buffer)``."""
    from addlib.stream import stream_batch_update

    cases = [_stream_batch_case("n = 3 timesteps, 1 frame per block", 3, 1, 0),
             _stream_batch_case("n = 2 timesteps, 2 frames per block (frame_buffer_size 2)", 2, 2, 1),
             _stream_batch_case("n = 4 timesteps, 3 frames per block", 4, 3, 2)]

    def shifted_by_one_row(x0, alpha, sigma, noise, frames):  # StreamDiffusion's own bug with frame buffers (#76)
        return x0[-1:], alpha[1:] * x0[:-1] + sigma[1:] * noise[1:]

    run_checks(
        "stream_batch_update",
        fn,
        stream_batch_update,
        cases,
        mistakes=[
            Mistake("the finished frames are the last block (the oldest frames, at the last timestep), not the "
                    "first: x0[-frames:].",
                    lambda x0, a, s, n, f: (x0[:f], stream_batch_update(x0, a, s, n, f)[1])),
            Mistake("a block moves on to the NEXT block's timestep: use alpha[frames:] and sigma[frames:], the "
                    "coefficients of the rows it lands in, not those of the rows it leaves.",
                    lambda x0, a, s, n, f: (x0[-f:], a[:-f] * x0[:-f] + s[:-f] * n[f:])),
            Mistake("each slot keeps its own fixed noise: the block landing in rows frames: takes noise[frames:].",
                    lambda x0, a, s, n, f: (x0[-f:], a[f:] * x0[:-f] + s[f:] * n[:-f])),
            Mistake("the buffer holds noisy latents at the later timesteps: add sigma * noise.",
                    lambda x0, a, s, n, f: (x0[-f:], a[f:] * x0[:-f])),
            Mistake("blocks are `frames` rows, not one: shift by `frames` rows everywhere (StreamDiffusion's own "
                    "code shifts by one row and so breaks with frame_buffer_size > 1, its issue #76).",
                    shifted_by_one_row),
        ],
    )


def check_skip_probability(fn: Callable) -> None:
    """Check ``fn(frame, reference, threshold)`` is the similarity filter's P(skip), a number in [0, 1]."""
    from addlib.stream import skip_probability

    gen = torch.Generator().manual_seed(0)
    reference = torch.randn(1, 3, 8, 8, generator=gen)
    wiggle = torch.randn(1, 3, 8, 8, generator=gen)
    channels = reference.clone()
    channels[:, 0] *= -0.2  # one channel flipped: the whole-frame cosine differs from the channels' mean
    cases = [Case("two identical frames, eta 0.98", (reference, reference, 0.98)),
             Case("a frame slightly moved from its reference (cos 0.995), eta 0.98", (reference + 0.1 * wiggle, reference, 0.98)),
             Case("a frame slightly moved from its reference (cos 0.995), eta 0.9", (reference + 0.1 * wiggle, reference, 0.9)),
             Case("one channel changed (cos 0.67), eta 0.5", (channels, reference, 0.5)),
             Case("unrelated frames (cos about 0), eta 0.98", (wiggle, reference, 0.98))]

    def cosine(frame, reference):
        return torch.nn.functional.cosine_similarity(frame.flatten(), reference.flatten(), dim=0).item()

    def per_channel(frame, reference, threshold):
        cos = torch.nn.functional.cosine_similarity(frame, reference, dim=1).mean().item()
        return max(0.0, (cos - threshold) / (1 - threshold))

    run_checks(
        "skip_probability",
        fn,
        skip_probability,
        cases,
        mistakes=[
            Mistake("a probability is never negative: frames less alike than eta get max(0, ...) = 0.",
                    lambda f, r, t: (cosine(f, r) - t) / (1 - t)),
            Mistake("divide by (1 - eta), so that P(skip) goes from 0 at cos = eta to 1 at cos = 1.",
                    lambda f, r, t: max(0.0, cosine(f, r) - t)),
            Mistake("that is the probability of *processing* the frame: P(skip) = (cos - eta) / (1 - eta).",
                    lambda f, r, t: min(1.0, max(0.0, (1 - cosine(f, r)) / (1 - t)))),
            Mistake("the filter is stochastic: not 'skip when cos > eta', but skip with probability "
                    "(cos - eta) / (1 - eta), so a slowly changing scene still updates now and then.",
                    lambda f, r, t: float(cosine(f, r) > t)),
            Mistake("take the cosine of the two frames as whole vectors (flatten them), not per pixel or channel.",
                    per_channel),
        ],
        atol=1e-4,
    )
