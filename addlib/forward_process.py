"""The forward process q(x_t | x_0) and the three things a denoiser can predict.

With ``alpha_t = sqrt(alphas_cumprod[t])`` and ``sigma_t = sqrt(1 - alphas_cumprod[t])``, noising is one
step, not t (Ho et al., 2020, "Denoising Diffusion Probabilistic Models", eq. 4):

    x_t = alpha_t * x0 + sigma_t * eps,        eps ~ N(0, I)

A network looking at x_t can predict any one of three quantities and the other two follow from it:

- ``"epsilon"``: the noise (DDPM; Stable Diffusion 1.x),
- ``"sample"``: x0 itself (the ADD student predicts x0 in one step, Sauer et al., 2023, section 3.1),
- ``"v_prediction"``: ``v = alpha_t * eps - sigma_t * x0`` (Salimans & Ho, 2022, "Progressive
  Distillation", section 4; SD 2.x), which stays well defined where alpha_t = 0 and epsilon does not.

The names follow diffusers (``alphas_cumprod``, ``timesteps``, ``prediction_type``), and the tests check every
function against ``DDPMScheduler``.
"""

from __future__ import annotations

import torch

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


def per_sample(values: torch.Tensor, timesteps: torch.Tensor | int, sample: torch.Tensor) -> torch.Tensor:
    """``values[timesteps]`` shaped (B, 1, ..., 1) so it broadcasts over a batch ``sample`` of shape (B, ...).

    ``timesteps`` is one integer per sample (or a single one for the whole batch). Every function here goes
    through this, so a bad shape or an out-of-range timestep gets the same one-line error everywhere.
    """
    timesteps = torch.as_tensor(timesteps, device=values.device)
    if timesteps.is_floating_point() or timesteps.is_complex():
        raise ValueError(f"timesteps must be integers, got dtype {timesteps.dtype}; use timesteps.long()")
    if timesteps.ndim == 0:
        timesteps = timesteps.expand(sample.shape[0])
    if timesteps.shape != sample.shape[:1]:
        raise ValueError(
            f"timesteps has shape {tuple(timesteps.shape)} but the batch has {sample.shape[0]} samples "
            f"(sample shape {tuple(sample.shape)}); pass one timestep per sample"
        )
    low, high = int(timesteps.min()), int(timesteps.max())
    if low < 0 or high >= len(values):
        bad = low if low < 0 else high
        raise ValueError(f"timestep {bad} is out of range; this schedule has timesteps 0 to {len(values) - 1}")
    coefficient = values[timesteps.long()].to(device=sample.device, dtype=sample.dtype)
    return coefficient.reshape(-1, *([1] * (sample.ndim - 1)))  # (B, 1, ..., 1)


def _alpha_sigma(alphas_cumprod: torch.Tensor, timesteps, sample: torch.Tensor):
    alpha_bar = per_sample(alphas_cumprod, timesteps, sample)
    return alpha_bar.sqrt(), (1 - alpha_bar).sqrt()


def _same_shape(a: torch.Tensor, b: torch.Tensor, names: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{names} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def add_noise(
    x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor | int, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """Sample q(x_t | x_0): ``x_t = sqrt(abar_t) * x0 + sqrt(1 - abar_t) * noise`` (DDPM, eq. 4).

    x0, noise: (B, ...); timesteps: (B,) integers in [0, len(alphas_cumprod)). Same as
    ``DDPMScheduler.add_noise``.
    """
    _same_shape(x0, noise, "x0 and noise")
    alpha, sigma = _alpha_sigma(alphas_cumprod, timesteps, x0)
    return alpha * x0 + sigma * noise


def get_velocity(
    x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor | int, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """The v-prediction target ``v = alpha_t * noise - sigma_t * x0`` (Salimans & Ho, 2022, section 4)."""
    _same_shape(x0, noise, "x0 and noise")
    alpha, sigma = _alpha_sigma(alphas_cumprod, timesteps, x0)
    return alpha * noise - sigma * x0


def predict_x0_and_epsilon(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    timesteps: torch.Tensor | int,
    alphas_cumprod: torch.Tensor,
    prediction_type: str = "epsilon",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn a denoiser's output at x_t = ``sample`` into the pair (x0, epsilon) it implies.

    Inverts eq. 4 of DDPM for whichever of the two is not predicted; for v, x0 = alpha_t x_t - sigma_t v and
    eps = sigma_t x_t + alpha_t v (Salimans & Ho, 2022, appendix D). With ``"epsilon"`` the x0 estimate divides
    by alpha_t, which is 0 at a zero-terminal-SNR schedule's last step: use another prediction type there.
    """
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"unknown prediction_type {prediction_type!r}; choose one of {', '.join(PREDICTION_TYPES)}")
    _same_shape(model_output, sample, "model_output and sample")
    alpha, sigma = _alpha_sigma(alphas_cumprod, timesteps, sample)
    if prediction_type == "epsilon":
        return (sample - sigma * model_output) / alpha, model_output
    if prediction_type == "sample":
        return model_output, (sample - alpha * model_output) / sigma
    return alpha * sample - sigma * model_output, sigma * sample + alpha * model_output
