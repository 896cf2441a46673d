"""The teacher's sampling, written out: DDIM and DDPM steps, classifier-free guidance, and the loop around them.

A sampler walks a few timesteps ``t_1 > t_2 > ... > t_n`` from pure noise to an image. At each one the
denoiser's output says where x0 is (:func:`addlib.forward_process.predict_x0_and_epsilon`), and the step moves
x_t to an earlier timestep t' (written ``prev_timestep``, as in diffusers; t' = -1 after the last step, where
alpha-bar is 1 and the sample is the predicted x0 itself):

- DDIM (Song et al., 2021, "Denoising Diffusion Implicit Models", eq. 12): keep the predicted x0 and re-noise it
  to level t' with the *predicted* noise; deterministic at ``eta = 0``, with fresh noise of standard deviation
  ``eta * sigma_t`` (eq. 16) otherwise (:func:`ddim_step`).
- DDPM (Ho et al., 2020, "Denoising Diffusion Probabilistic Models", eqs. 6-7): draw x_t' from the posterior
  q(x_t' | x_t, x0) with the predicted x0, fresh noise at every step but the last (:func:`ddpm_step`). This
  is DDIM at ``eta = 1``, written the way the DDPM paper writes it.
- ADD's multi-step sampling (Sauer et al., 2023): keep the predicted x0 and noise it afresh to level t'
  (:func:`renoise_step`), as the student saw real images noised in training.
- Classifier-free guidance (Ho & Salimans, 2022, eq. 6) extrapolates from the unconditional output towards
  the conditional one (:func:`classifier_free_guidance`).

:func:`sample` runs the whole loop on a diffusers ``StableDiffusionPipeline``, with the "trailing" timesteps
that a zero-terminal-SNR schedule needs (Lin et al., 2024, "Common Diffusion Noise Schedules and Sample Steps
are Flawed", table 2) so the first step is t = T - 1, pure noise. The names follow diffusers' ``DDIMScheduler``
and ``DDPMScheduler``, and the tests check every function against them and :func:`sample` against the
pipeline's own ``__call__``.
"""

from __future__ import annotations

import torch
from tqdm import tqdm  # a text bar: in a notebook its last state stays in the saved output

from addlib.forward_process import per_sample, predict_x0_and_epsilon
from addlib.pipeline import check_image_size, decode_latents, encode_prompts, image_size, vae_factor
from addlib.utils.errors import check_finite, check_integer

SAMPLERS = ("ddim", "ddpm", "add")


def ddim_timesteps(num_inference_steps: int, num_train_timesteps: int = 1000) -> torch.LongTensor:
    """The "trailing" timesteps of diffusers' DDIMScheduler: ``round(T - i * T / n) - 1`` for i = 0, ..., n-1.

    Counting down from T in n equal strides puts the first step at T - 1, where a zero-terminal-SNR schedule
    is pure noise (Lin et al., 2024, table 2), e.g. 4 steps of 1000 -> [999, 749, 499, 249].
    """
    if not 1 <= num_inference_steps <= num_train_timesteps:
        raise ValueError(
            f"num_inference_steps must be between 1 and num_train_timesteps = {num_train_timesteps}, "
            f"got {num_inference_steps}"
        )
    # float64 with i * stride, not an accumulated np.arange: always exactly n timesteps (diffusers'
    # np.arange gives n + 1, ending in -1, for some n such as 61, and rounds a few exact .5 ties down).
    stride = num_train_timesteps / num_inference_steps
    return torch.round(num_train_timesteps - torch.arange(num_inference_steps, dtype=torch.float64) * stride).long() - 1


def _alpha_bars(
    alphas_cumprod: torch.Tensor, timestep: torch.Tensor | int, prev_timestep: torch.Tensor | int, sample: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha-bar at t and at t', each (B, 1, ..., 1); alpha-bar is 1 where t' < 0, after the last step."""
    alpha_bar = per_sample(alphas_cumprod, timestep, sample)
    prev_timestep = torch.as_tensor(prev_timestep, device=alphas_cumprod.device)
    alpha_bar_prev = per_sample(alphas_cumprod, prev_timestep.clamp(min=0), sample)
    is_last = (prev_timestep < 0).to(sample.device).reshape(-1, *([1] * (sample.ndim - 1)))  # (B or 1, 1, ..., 1)
    return alpha_bar, torch.where(is_last, torch.ones_like(alpha_bar_prev), alpha_bar_prev)


def _posterior_variance(alpha_bar: torch.Tensor, alpha_bar_prev: torch.Tensor) -> torch.Tensor:
    """Variance of q(x_t' | x_t, x0): DDPM's beta-tilde (eq. 7) for a stride t -> t', DDIM's sigma_t^2 at eta = 1.

    0 at the last step (alpha-bar_t' = 1): the step lands on x0 and adds no noise.
    """
    return (1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev)


def _with_noise(mean: torch.Tensor, std: torch.Tensor, noise: torch.Tensor | None, step: str) -> torch.Tensor:
    """``mean + std * noise``; ``noise`` may be None only where ``std`` is 0 (DDIM at eta = 0, the last step)."""
    if noise is None:
        if (std > 0).any():
            raise ValueError(f"{step} adds noise at this step: pass noise of the sample's shape, e.g. "
                             f"torch.randn(sample.shape, generator=generator)")
        return mean
    if noise.shape != mean.shape:
        raise ValueError(f"noise must have the sample's shape {tuple(mean.shape)}, got {tuple(noise.shape)}")
    return mean + std * noise


def ddim_step(
    model_output: torch.Tensor,
    timestep: torch.Tensor | int,
    prev_timestep: torch.Tensor | int,
    sample: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    prediction_type: str = "v_prediction",
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM step x_t -> x_t' (Song et al., 2021, eq. 12); returns ``(prev_sample, pred_x0)``.

        x_t' = sqrt(abar_t') * x0 + sqrt(1 - abar_t' - sigma_t^2) * eps + sigma_t * noise

    with (x0, eps) read from ``model_output`` and ``sigma_t = eta * sqrt(posterior variance)`` (eq. 16):
    ``eta = 0`` is deterministic, ``eta = 1`` is a DDPM step. ``noise`` (B, ...) ~ N(0, I) is the caller's,
    needed when eta > 0 except at the last step. ``timestep`` and ``prev_timestep`` are integers or one per
    sample; ``prev_timestep < 0`` is the last step, where abar = 1 and ``prev_sample`` is ``pred_x0``. Same as
    ``DDIMScheduler.step`` with ``set_alpha_to_one=True`` and ``variance_noise=noise``.
    """
    if not 0 <= eta <= 1:
        raise ValueError(f"eta must be between 0 (DDIM) and 1 (DDPM), got {eta}")
    pred_x0, pred_epsilon = predict_x0_and_epsilon(model_output, sample, timestep, alphas_cumprod, prediction_type)
    alpha_bar, alpha_bar_prev = _alpha_bars(alphas_cumprod, timestep, prev_timestep, sample)
    std = eta * _posterior_variance(alpha_bar, alpha_bar_prev).sqrt()  # (B, 1, ..., 1)
    # At eta = 1 and t = T - 1 of a zero-terminal-SNR schedule the direction's variance is 0 up to roundoff,
    # which can fall just below 0; sqrt would turn it into NaN.
    direction = (1 - alpha_bar_prev - std**2).clamp(min=0).sqrt() * pred_epsilon  # "direction pointing to x_t"
    return _with_noise(alpha_bar_prev.sqrt() * pred_x0 + direction, std, noise, "DDIM with eta > 0"), pred_x0


def ddpm_step(
    model_output: torch.Tensor,
    timestep: torch.Tensor | int,
    prev_timestep: torch.Tensor | int,
    sample: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    prediction_type: str = "v_prediction",
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One ancestral DDPM step, x_t' ~ q(x_t' | x_t, x0) (Ho et al., 2020, eqs. 6-7): ``(prev_sample, pred_x0)``.

    With x0 predicted from ``model_output`` and, for a stride t -> t', ``beta = 1 - abar_t / abar_t'``:

        mean = sqrt(abar_t') * beta / (1 - abar_t) * x0 + sqrt(1 - beta) * (1 - abar_t') / (1 - abar_t) * x_t
        x_t' = mean + sqrt(beta_tilde) * noise,       beta_tilde = (1 - abar_t') / (1 - abar_t) * beta

    the posterior's own variance (diffusers' ``variance_type="fixed_small"``). At the last step
    (``prev_timestep < 0``) beta_tilde is 0 and the mean is x0, so no noise is added and ``noise`` may be None.
    Same as ``DDPMScheduler.step`` after ``set_timesteps``, which draws ``noise`` itself, and as
    :func:`ddim_step` with ``eta = 1``.
    """
    pred_x0, _ = predict_x0_and_epsilon(model_output, sample, timestep, alphas_cumprod, prediction_type)
    alpha_bar, alpha_bar_prev = _alpha_bars(alphas_cumprod, timestep, prev_timestep, sample)
    beta = 1 - alpha_bar / alpha_bar_prev  # the strided step's beta_t: one step t -> t' of the forward process
    x0_coefficient = alpha_bar_prev.sqrt() * beta / (1 - alpha_bar)  # (B, 1, ..., 1)
    sample_coefficient = (1 - beta).sqrt() * (1 - alpha_bar_prev) / (1 - alpha_bar)
    mean = x0_coefficient * pred_x0 + sample_coefficient * sample  # eq. 7's mu-tilde
    std = _posterior_variance(alpha_bar, alpha_bar_prev).sqrt()  # (B, 1, ..., 1)
    return _with_noise(mean, std, noise, "DDPM"), pred_x0


def renoise_step(
    model_output: torch.Tensor,
    timestep: torch.Tensor | int,
    prev_timestep: torch.Tensor | int,
    sample: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    prediction_type: str = "v_prediction",
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of a distilled student's multi-step sampling: ``(prev_sample, pred_x0)``.

        x_t' = sqrt(abar_t') * x0 + sqrt(1 - abar_t') * noise            (fresh noise)

    An ADD student is trained on real images noised with fresh noise at its few timesteps, so between its steps
    the predicted x0 is noised the same way, rather than moved along the predicted noise as DDIM does. At the
    last step (``prev_timestep < 0``) it returns x0 and ``noise`` may be None.
    """
    pred_x0, _ = predict_x0_and_epsilon(model_output, sample, timestep, alphas_cumprod, prediction_type)
    _, alpha_bar_prev = _alpha_bars(alphas_cumprod, timestep, prev_timestep, sample)
    return _with_noise(alpha_bar_prev.sqrt() * pred_x0, (1 - alpha_bar_prev).sqrt(), noise, "ADD sampling"), pred_x0


def classifier_free_guidance(uncond: torch.Tensor, cond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """``uncond + s * (cond - uncond)`` (Ho & Salimans, 2022, eq. 6).

    The paper writes ``(1 + w) * cond - w * uncond``; diffusers' ``guidance_scale`` is s = 1 + w, so s = 1 is
    the conditional output alone (no guidance) and s = 0 the unconditional one.
    """
    return uncond + guidance_scale * (cond - uncond)


def guidance_batch(x: torch.Tensor, timesteps, *embeddings: torch.Tensor) -> tuple:
    """The inputs of one UNet call that predicts ``x`` under each of ``embeddings`` at once: ``x`` (B, ...) and
    ``timesteps`` (one, or one per sample) once per embedding, and the embeddings ((1 or B, L, D) each) stacked.
    For guidance pass the unconditional embeddings first, as diffusers does, and split the output with
    ``.chunk(len(embeddings))``: one call on a larger batch costs less than one call per conditioning. The
    timesteps keep their device (the CPU's, for integers), where the schedule is read; the UNet's caller moves
    them."""
    timesteps = torch.as_tensor(timesteps).expand(len(x))
    return (x.repeat(len(embeddings), *[1] * (x.ndim - 1)), timesteps.repeat(len(embeddings)),
            torch.cat([e.expand(len(x), -1, -1) for e in embeddings]))


def _denoiser_output(pipe, latents: torch.Tensor, timestep: torch.Tensor, cond: torch.Tensor,
                     uncond: torch.Tensor | None, guidance_scale: float) -> torch.Tensor:
    """The UNet's output for ``latents`` (b, 4, h, w), guided when ``uncond`` (1, L, D) is given."""
    if uncond is None:
        return pipe.unet(latents, timestep, encoder_hidden_states=cond).sample
    both = pipe.unet(*guidance_batch(latents, timestep.to(latents.device), uncond, cond)).sample  # (2b, 4, h, w)
    return classifier_free_guidance(*both.chunk(2), guidance_scale)


def _check_sampling(prompts, num_inference_steps, guidance_scale, seed, sampler, eta, batch_size) -> None:
    """Refuse, in one line, what :func:`sample` cannot run, before anything is drawn or loaded."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if sampler != "ddim" and eta != 0:
        raise ValueError(f"eta is DDIM's; {sampler} fixes its own noise: use sampler='ddim' with eta={eta}")
    if isinstance(prompts, str) or not prompts:
        raise ValueError(f"prompts must be a non-empty list of strings, got {prompts!r}; for one prompt use [prompt]")
    if not guidance_scale >= 1:  # NaN too
        raise ValueError(f"guidance_scale must be at least 1 (1 = no guidance), got {guidance_scale}; "
                         f"for unconditional images use the prompt \"\"")
    check_integer("num_inference_steps", num_inference_steps, 1)
    check_integer("seed", seed, 0)
    check_integer("batch_size", batch_size, 1)


@torch.no_grad()
def sample(pipe, prompts: list[str], num_inference_steps: int = 25, guidance_scale: float = 1.0, seed: int = 0,
           sampler: str = "ddim", eta: float = 0.0, height: int | None = None, width: int | None = None,
           batch_size: int = 256, latents: torch.Tensor | None = None, progress: bool = False) -> torch.Tensor:
    """Generate one image per prompt with ``pipe``'s VAE, text encoder and UNet: (B, 3, H, W) in [-1, 1].

    DDIM (``eta`` as in :func:`ddim_step`), DDPM or ADD (:func:`renoise_step`, for a distilled student: at 1, 2
    and 4 steps its timesteps are 999; 999, 499; 999, 749, 499, 249) steps on :func:`ddim_timesteps`, with guidance
    (the "" prompt as the unconditional one) when ``guidance_scale > 1``. Uses ``pipe.scheduler``'s
    ``alphas_cumprod``, ``prediction_type`` and ``num_train_timesteps`` and nothing else of it: the spacing is
    always "trailing", the last step always lands on x0 (``set_alpha_to_one``), and each step goes to the next
    timestep of the list (diffusers' DDIMScheduler steps to ``t - T // n``, which differs when n does not divide T).

    ``seed`` fixes every random number: one CPU ``torch.Generator`` draws the initial latents (B, 4, h, w) for
    all prompts first, then each step's noise for all prompts, so an image does not depend on ``batch_size``,
    which only bounds how many prompts go through the UNet and VAE at once. Without step noise the first k
    images of a seed are also those of its first k prompts. ``latents`` replaces the initial draw (which is
    still made, so the step noise stays that of ``seed``). Images come back on ``pipe``'s device, clamped to
    [-1, 1] as diffusers' post-processing clamps them.
    """
    _check_sampling(prompts, num_inference_steps, guidance_scale, seed, sampler, eta, batch_size)
    factor = vae_factor(pipe.vae)
    height, width = (image_size(pipe) if size is None else size for size in (height, width))
    check_image_size("height", height, factor)
    check_image_size("width", width, factor)

    config = pipe.scheduler.config
    alphas_cumprod = pipe.scheduler.alphas_cumprod
    timesteps = ddim_timesteps(num_inference_steps, config.num_train_timesteps)  # (n,)
    prev_timesteps = torch.cat([timesteps[1:], timesteps.new_tensor([-1])])  # (n,)
    device, dtype = pipe.unet.device, pipe.unet.dtype
    chunks = [slice(start, start + batch_size) for start in range(0, len(prompts), batch_size)]

    generator = torch.Generator().manual_seed(seed)
    shape = (len(prompts), pipe.unet.config.in_channels, height // factor, width // factor)
    initial = torch.randn(shape, generator=generator)  # (B, 4, h, w), drawn even when replaced: same step noise
    if latents is not None:
        if latents.shape != shape:
            raise ValueError(f"latents must have shape {shape} for {len(prompts)} prompts of {height}x{width} "
                             f"images, got {tuple(latents.shape)}")
        check_finite("latents", latents)
    x = (initial if latents is None else latents).to(device=device, dtype=dtype)  # (B, 4, h, w)

    cond = torch.cat([encode_prompts(pipe, prompts[chunk]) for chunk in chunks])  # (B, L, D)
    uncond = encode_prompts(pipe, [""]) if guidance_scale > 1 else None  # (1, L, D)
    noisy = sampler != "ddim" or eta > 0
    for t, prev_t in tqdm(list(zip(timesteps, prev_timesteps)), desc=sampler, disable=not progress):
        output = torch.cat([_denoiser_output(pipe, x[chunk], t, cond[chunk], uncond, guidance_scale)
                            for chunk in chunks])  # (B, 4, h, w)
        noise = None
        if noisy and prev_t >= 0:  # the last step adds no noise, so none is drawn for it
            noise = torch.randn(shape, generator=generator).to(device=device, dtype=dtype)
        if sampler == "ddim":
            x, _ = ddim_step(output, t, prev_t, x, alphas_cumprod, config.prediction_type, eta, noise)
        elif sampler == "ddpm":
            x, _ = ddpm_step(output, t, prev_t, x, alphas_cumprod, config.prediction_type, noise)
        else:
            x, _ = renoise_step(output, t, prev_t, x, alphas_cumprod, config.prediction_type, noise)

    images = torch.cat([decode_latents(pipe, x[chunk]) for chunk in chunks])  # (B, 3, H, W)
    return images.clamp(-1, 1)
