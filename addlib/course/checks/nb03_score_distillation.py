"""Checkers for notebook 03, score distillation: the distillation loss and the SDS weighting."""

from __future__ import annotations

from collections.abc import Callable

import torch

from addlib.course.checks.core import Case, Mistake, coefficient, run_checks
from addlib.schedules import make_alphas_cumprod


def _loss_and_gradient(loss_fn: Callable, teacher) -> Callable:
    """Wrap ``loss_fn(teacher, x_theta, prompt_embeds, timesteps, noise)`` to return [loss, d loss / d x_theta].

    Comparing the gradient too catches a target that was not stopped: its loss is right, its gradient is not.
    """
    def run(x_theta, prompt_embeds, timesteps, noise):
        x_theta = x_theta.detach().requires_grad_()
        loss = loss_fn(teacher, x_theta, prompt_embeds, timesteps, noise)
        if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
            return loss  # run_checks reports what came back instead of a scalar tensor
        if not loss.requires_grad:
            return torch.cat([loss.detach().view(1), loss.new_zeros(x_theta.numel())])
        (gradient,) = torch.autograd.grad(loss, x_theta)
        return torch.cat([loss.detach().view(1), gradient.flatten()])
    return run


def check_distillation_loss(fn: Callable, teacher) -> None:
    """Check ``fn(teacher, x_theta, prompt_embeds, timesteps, noise)`` is ADD's L_distill (exponential weighting,
    no guidance, pixel space), its value and its gradient with respect to the student's latents ``x_theta``.
    The cases are drawn on the CPU and handed over on the teacher's device, as the learner's own tensors would be."""
    from addlib.distillation import distillation_loss
    from addlib.loading import model_device
    from addlib.pipeline import decode_latents, encode_prompts

    device = model_device(teacher.unet)
    alphas_cumprod = teacher.scheduler.alphas_cumprod.to(device)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        embeds = encode_prompts(teacher, ["a red circle", "a large blue square", "a small green triangle at the "
                                          "top left", "a yellow circle on a white background"])
    cases = [Case(f"{len(t)} student latents of 4x8x8, teacher timesteps {t}",
                  (torch.randn(len(t), 4, 8, 8, generator=gen).to(device), embeds[:len(t)],
                   torch.tensor(t, device=device), torch.randn(len(t), 4, 8, 8, generator=gen).to(device)))
             for t in ([500], [100, 700], [20, 250, 600, 950])]

    def variant(renoise=None, x0=None, weight=None, pixels=True, stop=True):
        """L_distill with one ingredient swapped for a wrong one."""
        def loss(teacher, x, embeds, t, noise):
            alpha, sigma = coefficient(alphas_cumprod, t).sqrt(), (1 - coefficient(alphas_cumprod, t)).sqrt()
            source = x.detach() if stop else x
            noisy = renoise(source, noise, alpha, sigma) if renoise else alpha * source + sigma * noise
            with torch.set_grad_enabled(not stop):
                v = teacher.unet(noisy, t, encoder_hidden_states=embeds).sample
            target = x0(noisy, v, alpha, sigma) if x0 else alpha * noisy - sigma * v
            c = (weight(alpha, sigma) if weight else alpha).flatten()
            if pixels:
                x, target = decode_latents(teacher, x), decode_latents(teacher, target)
            return (c * (x - target).pow(2).flatten(1).mean(1)).mean()
        return _loss_and_gradient(loss, teacher)

    run_checks(
        "distillation_loss",
        _loss_and_gradient(fn, teacher),
        _loss_and_gradient(lambda teacher, *args: distillation_loss(teacher, *args), teacher),
        cases,
        mistakes=[
            Mistake("the gradient also flows through the teacher: compute its target under torch.no_grad() (or "
                    "from x_theta.detach()), the stop-gradient sg(.) of the equation.", variant(stop=False)),
            Mistake("d is measured between images, not latents: decode both x_theta and the teacher's x0 with "
                    "the VAE (decode_latents) before the squared error.", variant(pixels=False)),
            Mistake("weight each sample by c(t) = alpha_t = sqrt(alphas_cumprod[t]).",
                    variant(weight=lambda alpha, sigma: torch.ones_like(alpha))),
            Mistake("c(t) = alpha_t is the square root of alphas_cumprod[t].", variant(weight=lambda a, s: a * a)),
            Mistake("re-noise with the square roots: alpha_t * x_theta + sigma_t * noise, alpha_t = "
                    "sqrt(alphas_cumprod[t]).", variant(renoise=lambda x, n, a, s: a * a * x + s * s * n)),
            Mistake("the teacher predicts v, not epsilon: its x0 is alpha_t * x_t - sigma_t * v.",
                    variant(x0=lambda noisy, v, a, s: (noisy - s * v) / a)),
        ],
        atol=1e-6,
        rtol=1e-4,
        error_hints=[("same device", f"the teacher is on {device}, and so are x_theta, noise and timesteps, but the "
                      f"scheduler's alphas_cumprod is on the CPU: index "
                      f"teacher.scheduler.alphas_cumprod.to(x_theta.device)")],
    )


def check_sds_weight(fn: Callable) -> None:
    """Check ``fn(timesteps, alphas_cumprod)`` is c(t) = alpha_t / (2 sigma_t) * w(t) with w(t) = sigma_t^2."""
    from addlib.distillation import weighting_function

    zero_snr = make_alphas_cumprod("scaled_linear", rescale_betas_zero_snr=True)
    cases = [Case(f"timesteps {t}, {name}", (torch.tensor(t), a))
             for t, name, a in [([0, 500, 999], "the teacher's zero-terminal-SNR schedule", zero_snr),
                                ([10, 250, 749, 990], "Stable Diffusion's schedule", make_alphas_cumprod("scaled_linear"))]]
    alpha = lambda t, a: a[t].double().sqrt()
    sigma = lambda t, a: (1 - a[t].double()).sqrt()
    run_checks(
        "sds_weight", fn, lambda t, a: weighting_function("sds", t, a), cases,
        mistakes=[
            Mistake("that is alpha_t / (2 sigma_t) alone: multiply by DreamFusion's w(t) = sigma_t^2.",
                    lambda t, a: alpha(t, a) / (2 * sigma(t, a))),
            Mistake("c(t) = alpha_t / (2 sigma_t) * sigma_t^2 = alpha_t * sigma_t / 2: the factor 1/2 is missing.",
                    lambda t, a: alpha(t, a) * sigma(t, a)),
            Mistake("alpha_t and sigma_t are square roots: sqrt(alphas_cumprod[t]) and sqrt(1 - alphas_cumprod[t]).",
                    lambda t, a: a[t].double() * (1 - a[t].double()) / 2),
        ],
    )
