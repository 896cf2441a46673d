"""Noise schedules: the betas of DDPM and what follows from them.

A diffusion model destroys an image over ``num_train_timesteps`` steps; step ``t`` adds Gaussian noise of
variance ``betas[t]`` (Ho et al., 2020, "Denoising Diffusion Probabilistic Models", eq. 2). Everything the
forward process needs is the running product ``alphas_cumprod[t] = prod_{s<=t} (1 - betas[s])`` (DDPM's
alpha-bar, eq. 4): the noised sample is ``sqrt(alphas_cumprod[t]) * x0 + sqrt(1 - alphas_cumprod[t]) * eps``.

The schedules and their names follow diffusers' ``DDPMScheduler`` config (``beta_schedule``, ``beta_start``,
``beta_end``, ``rescale_betas_zero_snr``), so ``make_betas(**scheduler.config)``-style calls line up and the
tests compare the two numerically:

- ``"linear"``: DDPM's betas, linear in t (Ho et al., 2020, section 4).
- ``"scaled_linear"``: linear in sqrt(beta), Stable Diffusion's schedule (Rombach et al., 2022).
- ``"squaredcos_cap_v2"`` (alias ``"cosine"``): Nichol & Dhariwal, 2021, "Improved DDPM", eq. 17.

``rescale_zero_terminal_snr`` is Algorithm 1 of Lin et al., 2024, "Common Diffusion Noise Schedules and Sample
Steps are Flawed": it shifts the schedule so that the last timestep is pure noise. ADD's student starts
sampling at t = 999 from pure noise, so it needs this (Sauer et al., 2023, section 3.1).
"""

from __future__ import annotations

import math

import torch

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "cosine")


def cosine_alphas_cumprod(num_train_timesteps: int, s: float = 0.008) -> torch.Tensor:
    """The continuous cosine alpha-bar of Improved DDPM (Nichol & Dhariwal, 2021, eq. 17), sampled at t/T.

    Returns ``num_train_timesteps + 1`` values: alpha-bar at t = 0, 1/T, ..., 1 (the betas need both ends).
    """
    t = torch.arange(num_train_timesteps + 1, dtype=torch.float64) / num_train_timesteps
    return torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2


def make_betas(
    beta_schedule: str = "scaled_linear",
    num_train_timesteps: int = 1000,
    beta_start: float = 0.00085,
    beta_end: float = 0.012,
    rescale_betas_zero_snr: bool = False,
) -> torch.Tensor:
    """The per-step noise variances ``betas`` (float32, shape (num_train_timesteps,)).

    The defaults are Stable Diffusion's. ``beta_start`` and ``beta_end`` are ignored by the cosine schedule,
    which is defined by its alpha-bar instead (Improved DDPM, eq. 17, with betas capped at 0.999).
    """
    if beta_schedule not in BETA_SCHEDULES:
        raise ValueError(f"unknown beta_schedule {beta_schedule!r}; choose one of {', '.join(BETA_SCHEDULES)}")
    if num_train_timesteps < 2:
        raise ValueError(f"num_train_timesteps must be at least 2, got {num_train_timesteps}")

    if beta_schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
    elif beta_schedule == "scaled_linear":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
    else:
        alpha_bar = cosine_alphas_cumprod(num_train_timesteps)
        # beta_t = 1 - abar(t+1)/abar(t); the cap keeps the last step from being a division by ~0.
        betas = (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999).float()

    return rescale_zero_terminal_snr(betas) if rescale_betas_zero_snr else betas


def alphas_cumprod_from_betas(betas: torch.Tensor) -> torch.Tensor:
    """DDPM's alpha-bar: ``alphas_cumprod[t] = prod_{s<=t} (1 - betas[s])`` (Ho et al., 2020, eq. 4)."""
    return torch.cumprod(1.0 - betas, dim=0)


def make_alphas_cumprod(beta_schedule: str = "scaled_linear", **kwargs) -> torch.Tensor:
    """``alphas_cumprod`` for a named schedule; keyword arguments as for :func:`make_betas`."""
    return alphas_cumprod_from_betas(make_betas(beta_schedule, **kwargs))


def snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio ``alpha_t^2 / sigma_t^2 = abar / (1 - abar)`` (Kingma et al., 2021, eq. 1).

    Zero at a zero-terminal-SNR schedule's last step; ``log(snr)`` is then ``-inf``, which is the point.
    """
    return alphas_cumprod / (1.0 - alphas_cumprod)


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Rescale ``betas`` so the last timestep has zero SNR (Lin et al., 2024, Algorithm 1).

    sqrt(alpha-bar) is shifted so its last value is 0 and scaled so its first value is unchanged; the
    schedule's shape in between is kept. Without it, Stable Diffusion's x_999 still holds
    sqrt(0.0047) = 6.8% of the image, which a model learns to rely on and never finds in pure noise.
    """
    alphas_bar_sqrt = alphas_cumprod_from_betas(betas).sqrt()
    first, last = alphas_bar_sqrt[0].clone(), alphas_bar_sqrt[-1].clone()
    alphas_bar_sqrt = (alphas_bar_sqrt - last) * (first / (first - last))

    alphas_bar = alphas_bar_sqrt**2
    alphas = torch.cat([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])  # undo the cumprod
    return 1 - alphas
