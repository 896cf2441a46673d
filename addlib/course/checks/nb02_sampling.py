"""Checkers for notebook 02, the teacher and sampling: a DDIM step and classifier-free guidance."""

from __future__ import annotations

from collections.abc import Callable

import torch

from addlib.course.checks.core import Case, Mistake, run_checks
from addlib.schedules import make_alphas_cumprod


def _ddim_cases() -> list[Case]:
    """(v, t, t_prev, x_t, alphas_cumprod) on the teacher's zero-terminal-SNR schedule, first to last step."""
    gen = torch.Generator().manual_seed(1)
    zero_snr = make_alphas_cumprod("scaled_linear", rescale_betas_zero_snr=True)
    return [
        Case(f"2 latents of 4x8x8, t={t} -> t_prev={t_prev}{' (the last step)' if t_prev < 0 else ''}",
             (torch.randn(2, 4, 8, 8, generator=gen), t, t_prev, torch.randn(2, 4, 8, 8, generator=gen), zero_snr))
        for t, t_prev in [(999, 749), (499, 249), (249, -1)]
    ]


def _v_parts(v, t, x, a):
    """alpha, sigma, x0 and epsilon at t for a v-prediction, as the hints' wrong answers need them."""
    alpha, sigma = a[t].sqrt(), (1 - a[t]).sqrt()
    return alpha, sigma, alpha * x - sigma * v, sigma * x + alpha * v


def _alpha_bar_prev(a, t_prev):
    return a[t_prev] if t_prev >= 0 else torch.tensor(1.0)


def check_ddim_step(fn: Callable) -> None:
    """Check ``fn(v, t, t_prev, x_t, alphas_cumprod)`` takes one DDIM step (eta = 0) for a v-prediction."""
    from addlib.sampling import ddim_step

    def renoise(x0, eps, a, t_prev):
        abar = _alpha_bar_prev(a, t_prev)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * eps

    run_checks(
        "ddim_step",
        fn,
        lambda v, t, t_prev, x, a: ddim_step(v, t, t_prev, x, a, "v_prediction")[0],
        _ddim_cases(),
        mistakes=[
            Mistake("the model predicts v, not epsilon: x0 = alpha_t * x_t - sigma_t * v and "
                    "epsilon = sigma_t * x_t + alpha_t * v (no division, so t = 999 with alpha_t = 0 is fine).",
                    lambda v, t, t_prev, x, a: renoise((x - (1 - a[t]).sqrt() * v) / a[t].sqrt(), v, a, t_prev)),
            Mistake("alpha and sigma are swapped in the v conversion: x0 = alpha_t * x_t - sigma_t * v.",
                    lambda v, t, t_prev, x, a: renoise((1 - a[t]).sqrt() * x - a[t].sqrt() * v,
                                                       (1 - a[t]).sqrt() * v + a[t].sqrt() * x, a, t_prev)),
            Mistake("x0 and epsilon are swapped when re-noising: x_t' = sqrt(abar_t') * x0 + sqrt(1 - abar_t') * eps.",
                    lambda v, t, t_prev, x, a: renoise(_v_parts(v, t, x, a)[3], _v_parts(v, t, x, a)[2], a, t_prev)),
            Mistake("t_prev = -1 means no noise is left (alpha-bar = 1, so the step returns x0); "
                    "alphas_cumprod[-1] is the schedule's *last* entry, pure noise.",
                    lambda v, t, t_prev, x, a: a[t_prev].sqrt() * _v_parts(v, t, x, a)[2]
                    + (1 - a[t_prev]).sqrt() * _v_parts(v, t, x, a)[3]),
            Mistake("alpha_t and sigma_t are square roots: alpha_t = sqrt(alphas_cumprod[t]), "
                    "sigma_t = sqrt(1 - alphas_cumprod[t]).",
                    lambda v, t, t_prev, x, a: _alpha_bar_prev(a, t_prev) * (a[t] * x - (1 - a[t]) * v)
                    + (1 - _alpha_bar_prev(a, t_prev)) * ((1 - a[t]) * x + a[t] * v)),
        ],
    )


def check_classifier_free_guidance(fn: Callable) -> None:
    """Check ``fn(uncond, cond, guidance_scale)`` is classifier-free guidance (Ho & Salimans, 2022)."""
    from addlib.sampling import classifier_free_guidance

    gen = torch.Generator().manual_seed(2)
    cases = [Case(f"2 predictions of 4x8x8, guidance_scale={s}",
                  (torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 4, 8, 8, generator=gen), s))
             for s in (3.0, 1.0, 7.5)]
    run_checks(
        "classifier_free_guidance",
        fn,
        classifier_free_guidance,
        cases,
        mistakes=[
            Mistake("start from the unconditional prediction: uncond + s * (cond - uncond). (What you wrote equals "
                    "(1 + s) * cond - s * uncond: diffusers' guidance_scale s is the paper's 1 + w, not its w.)",
                    lambda u, c, s: c + s * (c - u)),
            Mistake("the direction is from uncond towards cond: (cond - uncond), not (uncond - cond).",
                    lambda u, c, s: u + s * (u - c)),
        ],
    )
