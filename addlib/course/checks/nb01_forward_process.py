"""Checkers for notebook 01, the forward process: add_noise and x0 from epsilon."""

from __future__ import annotations

from collections.abc import Callable

import torch

from addlib.course.checks.core import Case, Mistake, coefficient, run_checks
from addlib.forward_process import add_noise, predict_x0_and_epsilon
from addlib.schedules import make_alphas_cumprod


def _noising_cases() -> list[Case]:
    """Inputs for the forward-process exercises: (x, noise, timesteps, alphas_cumprod), several schedules."""
    gen = torch.Generator().manual_seed(0)
    sd = make_alphas_cumprod("scaled_linear")
    cosine = make_alphas_cumprod("cosine")
    return [
        Case("one 3x8x8 image at t=0, Stable Diffusion's schedule",
             (torch.randn(1, 3, 8, 8, generator=gen), torch.randn(1, 3, 8, 8, generator=gen), torch.tensor([0]), sd)),
        Case("a batch of 4 images at t=[249, 499, 749, 999] (ADD's student timesteps)",
             (torch.randn(4, 3, 8, 8, generator=gen), torch.randn(4, 3, 8, 8, generator=gen),
              torch.tensor([249, 499, 749, 999]), sd)),
        Case("a batch of 3 latents of shape 4x4x6 at t=[10, 500, 990], cosine schedule",
             (torch.randn(3, 4, 4, 6, generator=gen), torch.randn(3, 4, 4, 6, generator=gen),
              torch.tensor([10, 500, 990]), cosine)),
    ]


def check_add_noise(fn: Callable) -> None:
    """Check ``fn(x0, noise, timesteps, alphas_cumprod)`` samples q(x_t | x_0) (DDPM, eq. 4)."""
    run_checks(
        "add_noise",
        fn,
        add_noise,
        _noising_cases(),
        mistakes=[
            Mistake("this is alphas_cumprod * x0 + (1 - alphas_cumprod) * noise: the coefficients are the square "
                    "roots, sqrt(alphas_cumprod[t]) and sqrt(1 - alphas_cumprod[t]).",
                    lambda x, n, t, a: coefficient(a, t) * x + (1 - coefficient(a, t)) * n),
            Mistake("x0 and noise are swapped: x0 is scaled by sqrt(alphas_cumprod[t]), the noise by "
                    "sqrt(1 - alphas_cumprod[t]).",
                    lambda x, n, t, a: (1 - coefficient(a, t)).sqrt() * x + coefficient(a, t).sqrt() * n),
            Mistake("the noise coefficient is 1 - sqrt(alphas_cumprod[t]); it should be sqrt(1 - alphas_cumprod[t]), "
                    "so that the variance stays 1.",
                    lambda x, n, t, a: coefficient(a, t).sqrt() * x + (1 - coefficient(a, t).sqrt()) * n),
            Mistake("the index is off by one: alphas_cumprod[t] already is the product up to and including step t.",
                    lambda x, n, t, a: add_noise(x, n, (t - 1) % len(a), a)),
        ],
    )


def _x0_from_epsilon(x_t, epsilon, timesteps, alphas_cumprod):
    return predict_x0_and_epsilon(epsilon, x_t, timesteps, alphas_cumprod, "epsilon")[0]


def check_x0_from_epsilon(fn: Callable) -> None:
    """Check ``fn(x_t, epsilon, timesteps, alphas_cumprod)`` inverts q(x_t | x_0) for x0 given the noise."""
    run_checks(
        "x0_from_epsilon",
        fn,
        _x0_from_epsilon,
        _noising_cases(),
        mistakes=[
            Mistake("x0 = (x_t - sqrt(1 - abar_t) * epsilon) / sqrt(abar_t): you used abar_t without the square roots.",
                    lambda x, e, t, a: (x - (1 - coefficient(a, t)) * e) / coefficient(a, t)),
            Mistake("you multiplied by sqrt(abar_t); undoing x_t = sqrt(abar_t) * x0 + ... means dividing by it.",
                    lambda x, e, t, a: (x - (1 - coefficient(a, t)).sqrt() * e) * coefficient(a, t).sqrt()),
            Mistake("subtract the scaled noise first, then divide: (x_t - sqrt(1 - abar_t) * epsilon) / sqrt(abar_t).",
                    lambda x, e, t, a: x / coefficient(a, t).sqrt() - (1 - coefficient(a, t)).sqrt() * e),
            Mistake("the noise is subtracted, not added: x_t - sqrt(1 - abar_t) * epsilon.",
                    lambda x, e, t, a: (x + (1 - coefficient(a, t)).sqrt() * e) / coefficient(a, t).sqrt()),
        ],
    )
