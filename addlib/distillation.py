"""The score-distillation half of Adversarial Diffusion Distillation (Sauer et al., 2023, section 3.2, eq. 5).

The student produces a sample x_theta in one step. The teacher cannot judge a clean sample, so we noise it
with the teacher's own forward process and ask the teacher to denoise it:

    x_theta_t = alpha_t * x_theta + sigma_t * eps'                         (eps' ~ N(0, I), t ~ T_teacher)
    L_distill = E_{t, eps'} [ c(t) * d(x_theta, x_psi(sg(x_theta_t); t)) ]

where x_psi is the teacher's (guided) x0-prediction, sg is stop-gradient and d is the squared error between
the two *decoded images*, as the paper computes it in pixel space. The gradient reaches the student only
through x_theta: the teacher is a fixed target, never trained.

The weighting c(t) decides which noise levels speak loudest:

- ``"exponential"``: c(t) = alpha_t, the paper's default (its ablation, Table 1e / appendix).
- ``"sds"``: c(t) = alpha_t / (2 sigma_t) * w(t), with DreamFusion's w(t) = sigma_t^2 (Poole et al., 2022).
  Since x_theta - x_psi = (sigma_t / alpha_t) (eps_psi - eps'), the gradient with respect to x_theta is then
  exactly the SDS gradient w(t) (eps_psi - eps') (with d the squared error summed over latent elements;
  ``distillation_loss`` averages over them, which divides it by their number).
- ``"nfsd"``: the SDS weighting with Noise-Free Score Distillation's direction (Katzir et al., 2023) in place
  of eps_psi - eps': delta_D + s * delta_C, with delta_C = eps(y) - eps(empty) the condition direction and
  delta_D = eps(empty) for t < 200, eps(empty) - eps(negative prompt) above. The injected noise eps', which
  SDS needs a large guidance scale to drown out, never enters.

At a zero-terminal-SNR schedule's last step alpha_t = 0, so every weighting is 0 there and NFSD's
x_theta - (sigma/alpha) * direction is undefined: :func:`sample_teacher_timesteps` draws from 0 to 998.
"""

from __future__ import annotations

import torch

from addlib.forward_process import add_noise, per_sample
from addlib.loading import model_device, to_model
from addlib.pipeline import decode_latents, denoise
from addlib.sampling import classifier_free_guidance, guidance_batch

WEIGHTINGS = ("exponential", "sds", "nfsd")
NFSD_SWITCH_TIMESTEP = 200  # NFSD (Katzir et al., 2023, eq. 9): below it eps(empty) is nearly noise-free


def weighting_function(weighting: str, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The weighting function c(t) of eq. 5 for each of ``timesteps`` (B,), float64 (B,): ``weighting``'s, which
    is not lambda, the weight of the whole distillation loss (``Config.distillation_weight``). SDS and NFSD share
    c(t) = alpha_t * sigma_t / 2."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; choose one of {', '.join(WEIGHTINGS)}")
    alpha_bar = per_sample(alphas_cumprod, timesteps, timesteps.double())  # in float64: no float32 rounding
    alpha, sigma = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    weight = alpha if weighting == "exponential" else alpha * sigma / 2  # alpha / (2 sigma) * w(t), w = sigma^2
    return weight


def sample_teacher_timesteps(batch_size: int, generator: torch.Generator | None = None, low: int = 0,
                             high: int = 998) -> torch.Tensor:
    """t ~ U{low, ..., high} (B,): the teacher's noise levels for the distillation target."""
    if not 0 <= low <= high:
        raise ValueError(f"teacher timesteps need 0 <= low <= high, got low={low}, high={high}")
    return torch.randint(low, high + 1, (batch_size,), generator=generator)


@torch.no_grad()
def teacher_target(
    teacher,
    student_latents: torch.Tensor,
    prompt_embeds: torch.Tensor,
    timesteps: torch.Tensor,
    noise: torch.Tensor,
    weighting: str = "exponential",
    guidance_scale: float = 1.0,
    uncond_embeds: torch.Tensor | None = None,
    negative_embeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """The teacher's x0 target for the student's latents (B, 4, h, w), computed without gradients.

    ``teacher`` is a diffusers pipeline (its ``unet`` and ``scheduler`` are used). ``prompt_embeds`` (B, L, D)
    condition the teacher; ``uncond_embeds`` (1 or B, L, D), the empty prompt's, are needed for guidance
    (``guidance_scale != 1``) and for NFSD, which also takes ``negative_embeds`` (unconditional if not given).
    The inputs may be on any device: the target comes back on the teacher's.
    """
    alphas_cumprod = teacher.scheduler.alphas_cumprod
    x = to_model(student_latents.detach(), teacher.unet)
    noisy = add_noise(x, to_model(noise, teacher.unet), timesteps, alphas_cumprod)
    needs_uncond = guidance_scale != 1.0 or weighting == "nfsd"
    if needs_uncond and uncond_embeds is None:
        raise ValueError(f"guidance_scale={guidance_scale} with weighting {weighting!r} needs uncond_embeds, "
                         f"the empty prompt's embeddings (encode_prompts(pipe, ['']))")
    batch = len(x)
    if not needs_uncond:
        return denoise(teacher.unet, teacher.scheduler, noisy, timesteps, prompt_embeds)[0]
    extra = [] if weighting != "nfsd" or negative_embeds is None else [negative_embeds]
    embeddings = [to_model(e, teacher.unet) for e in (uncond_embeds, prompt_embeds, *extra)]
    # One UNet call for the unconditional, conditional (and negative) predictions, as the sampler does.
    x0s, epsilons = denoise(teacher.unet, teacher.scheduler, *guidance_batch(noisy, timesteps, *embeddings))
    if weighting != "nfsd":
        return classifier_free_guidance(x0s[:batch], x0s[batch:2 * batch], guidance_scale)
    eps_uncond, eps_cond = epsilons[:batch], epsilons[batch:2 * batch]
    eps_negative = epsilons[2 * batch:] if extra else eps_uncond
    small_t = (timesteps < NFSD_SWITCH_TIMESTEP).to(x).view(-1, 1, 1, 1)
    delta_d = small_t * eps_uncond + (1 - small_t) * (eps_uncond - eps_negative)
    direction = delta_d + guidance_scale * (eps_cond - eps_uncond)
    alpha_bar = per_sample(alphas_cumprod, timesteps, x)
    if (alpha_bar == 0).any():
        raise ValueError("NFSD's target divides by alpha_t, which is 0 at the last timestep of a zero-terminal-SNR "
                         "schedule; draw teacher timesteps below it (sample_teacher_timesteps does)")
    # The x0 whose SDS-form gradient is NFSD's: x - x_psi = (sigma / alpha) * direction.
    return x - ((1 - alpha_bar) / alpha_bar).sqrt() * direction


def distillation_loss(
    teacher,
    student_latents: torch.Tensor,
    prompt_embeds: torch.Tensor,
    timesteps: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    weighting: str = "exponential",
    guidance_scale: float = 1.0,
    uncond_embeds: torch.Tensor | None = None,
    negative_embeds: torch.Tensor | None = None,
    pixel_space: bool = True,
    generator: torch.Generator | None = None,
    student_images: torch.Tensor | None = None,
    vae=None,
) -> torch.Tensor:
    """L_distill (a scalar) for the student's x0-latents ``student_latents`` (B, 4, h, w) (ADD, eq. 5).

    ``timesteps`` (B,) and ``noise`` (like ``student_latents``) are drawn with ``generator`` when not given
    (:func:`sample_teacher_timesteps`, a standard normal). d is the mean squared error per sample between
    the decoded images (``pixel_space=True``, as ADD) or between the latents; it is weighted by c(t) and
    averaged over the batch. Only ``student_latents`` receives gradients. ``student_images``, when given, is
    ``decode_latents(teacher, student_latents, vae)`` already computed (ADD's step decodes it for the
    discriminator too), so the VAE decoder runs once. ``vae`` decodes instead of the teacher's (a tiny VAE).
    The inputs may be on any device (gradients reach ``student_latents`` where it is); the loss is computed on
    the teacher's.
    """
    if pixel_space and any(p.requires_grad for p in (teacher.vae if vae is None else vae).parameters()):
        raise ValueError("the VAE would be trained through the pixel-space loss: freeze it first with "
                         "vae.requires_grad_(False)")
    student_latents = student_latents.to(model_device(teacher.unet))
    batch = len(student_latents)
    if timesteps is None:
        timesteps = sample_teacher_timesteps(batch, generator)  # on the CPU, where the schedule is read
    if noise is None:
        noise = torch.randn(student_latents.shape, generator=generator).to(student_latents)
    weight = weighting_function(weighting, timesteps, teacher.scheduler.alphas_cumprod).to(student_latents)
    target = teacher_target(teacher, student_latents, prompt_embeds, timesteps, noise, weighting,
                            guidance_scale, uncond_embeds, negative_embeds)
    x = student_latents
    if pixel_space:
        with torch.no_grad():
            target = decode_latents(teacher, target, vae)
        x = decode_latents(teacher, student_latents, vae) if student_images is None else student_images
    distance = (x - target).pow(2).flatten(1).mean(1)  # d(x_theta, x_psi), (B,)
    return (weight * distance).mean()
