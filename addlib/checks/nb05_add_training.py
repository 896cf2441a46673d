"""Checkers for notebook 05, ADD training: the generator's objective and multi-step renoising."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Callable

import torch

from addlib.checks.core import Case, Mistake, coefficient, run_checks
from addlib.forward_process import add_noise
from addlib.schedules import make_alphas_cumprod


def check_generator_loss(fn: Callable, trainer) -> None:
    """Check ``fn(trainer, latents, noise, timesteps, text, pooled, image_embedding, generator)`` returns ADD's
    generator objective L = L_adv^G + lambda * L_distill as ``trainer.generator_loss`` computes it: its value
    and its gradient with respect to the student's last layer (which a detached fake would not reach).

    Each mistake is the trainer's own objective with one piece swapped for a wrong one (:func:`_swapped`), so
    the checker never restates what the trainer computes."""
    parameter = trainer.accelerator.unwrap_model(trainer.student).conv_out.weight
    names = ("latents", "noise", "timesteps", "text", "pooled", "image_embedding")
    cases = []
    for step in (0, 1):
        inputs = trainer.inputs(step)
        seed = int(torch.randint(0, 2**31, (1,), generator=inputs["generator"]))
        cases.append(Case(f"step {step}'s batch: {len(inputs['latents'])} images, student timesteps "
                          f"{inputs['timesteps'].tolist()}", (*(inputs[n] for n in names), seed)))

    def with_gradient(loss_fn: Callable) -> Callable:
        def run(*args):
            *tensors, seed = args
            loss = loss_fn(trainer, *tensors, torch.Generator().manual_seed(seed))
            loss = loss[0] if isinstance(loss, tuple) else loss  # the library's method also returns its parts
            if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
                return loss
            if not loss.requires_grad:
                return torch.cat([loss.detach().view(1), torch.zeros(parameter.numel())])
            (gradient,) = torch.autograd.grad(loss, parameter)
            return torch.cat([loss.detach().view(1), gradient.flatten()])
        return run

    # In training mode every call of a spectral-normalised head takes a power-iteration step, so no two calls
    # would agree; evaluation mode holds the heads still for the comparison.
    was_training = trainer.discriminator.training
    trainer.discriminator.eval()
    try:
        run_checks("generator_loss", with_gradient(fn), with_gradient(type(trainer).generator_loss), cases,
                   mistakes=[Mistake(hint, with_gradient(_swapped(trainer, mistake)))
                             for mistake, hint in _generator_mistakes(trainer.config).items()],
                   # float32 noise in a gradient scaled by lambda = 25 reaches 1e-5; every mistake is far larger
                   atol=1e-4, rtol=1e-4)
    finally:
        trainer.discriminator.train(was_training)


def _generator_mistakes(config) -> dict[str, str]:
    return {
        "weights": f"lambda = {config.distillation_weight:g} weights the distillation loss, not the adversarial one: "
                   f"L = L_adv^G + {config.distillation_weight:g} * L_distill.",
        "not noised": "the student's input is the real latents *noised* to its timestep: x_s = alpha_s z0 + sigma_s "
                      "eps (add_noise), not z0 itself.",
        "detached": "the fakes were detached before the discriminator: the student then gets no adversarial "
                    "gradient. Only the discriminator's own update detaches them.",
        "discriminator hinge": "the generator's hinge loss is -E[D(fake)] (hinge_generator_loss), not the "
                               "discriminator's max(0, 1 + D(fake)).",
        "no guidance": "the teacher's target uses guidance: pass guidance_scale=trainer.config.teacher_guidance_scale "
                       "and uncond_embeds=trainer.empty to distillation_loss.",
        "draw order": "right formula, but the random draws come in another order: augment the fakes first "
                      "(paired_generators(generator)[0]), then call distillation_loss with generator.",
    }


def _swapped(trainer, mistake: str) -> Callable:
    """``trainer.generator_loss`` with one of its pieces replaced by the wrong one ``mistake`` names."""
    import addlib.train_add as module

    config, objective, distillation_loss = trainer.config, type(trainer).generator_loss, module.distillation_loss

    def loss(_, latents, noise, timesteps, text, pooled, image_embedding, generator):
        wrong, pieces = copy.copy(trainer), {}
        if mistake == "weights":
            wrong.config = dataclasses.replace(config, adversarial_weight=config.distillation_weight,
                                               distillation_weight=config.adversarial_weight)
        elif mistake == "not noised":
            pieces["add_noise"] = lambda latents, noise, timesteps, alphas_cumprod: latents
        elif mistake == "detached":
            wrong.discriminator = lambda fake, *args: trainer.discriminator(fake.detach(), *args)
        elif mistake == "discriminator hinge":
            pieces["hinge_generator_loss"] = lambda logits: sum(torch.relu(1 + lg).mean() for lg in logits)
        elif mistake == "no guidance":
            pieces["distillation_loss"] = lambda *a, **k: distillation_loss(*a, **k | {"guidance_scale": 1})
        elif mistake == "draw order":
            pieces = _distillation_draws_first(module, generator, lambda: objective(
                trainer, latents, noise, timesteps, text, pooled, image_embedding, generator))
        with _patched(module, pieces):
            return objective(wrong, latents, noise, timesteps, text, pooled, image_embedding, generator)
    return loss


def _distillation_draws_first(module, generator: torch.Generator, run: Callable) -> dict:
    """Pieces that make the objective draw L_distill's randomness from ``generator`` before the augmentation's.
    One run of the objective, ``run()``, finds where the distillation's draws leave the generator."""
    start, after = generator.get_state(), []
    distillation_loss, paired_generators = module.distillation_loss, module.paired_generators

    def distillation_from_start(*args, **kwargs):
        generator.set_state(start)
        result = distillation_loss(*args, **kwargs)
        after.append(generator.get_state())
        return result

    with _patched(module, {"distillation_loss": distillation_from_start}):
        run()
    augmentation = torch.Generator()
    augmentation.set_state(after[0])
    return {"distillation_loss": distillation_from_start,
            "paired_generators": lambda _: paired_generators(augmentation)}


@contextlib.contextmanager
def _patched(module, pieces: dict):
    saved = {name: getattr(module, name) for name in pieces}
    try:
        for name, piece in pieces.items():
            setattr(module, name, piece)
        yield
    finally:
        for name, piece in saved.items():
            setattr(module, name, piece)


def check_renoise(fn: Callable) -> None:
    """Check ``fn(x0, prev_timesteps, noise, alphas_cumprod)`` is one step of ADD's multi-step sampling: the
    predicted x0 noised afresh to the next student timestep t', or x0 itself after the last step (t' = -1)."""
    from addlib.sampling import renoise_step

    def reference(x0, prev, noise, alphas_cumprod):
        return renoise_step(x0, 999, prev, x0, alphas_cumprod, "sample", noise)[0]

    gen = torch.Generator().manual_seed(5)
    a = make_alphas_cumprod("scaled_linear", rescale_betas_zero_snr=True)
    cases = [Case(f"2 latents of 4x8x8 going to t' = {prev}",
                  (torch.randn(2, 4, 8, 8, generator=gen), torch.tensor(prev), torch.randn(2, 4, 8, 8, generator=gen), a))
             for prev in ([749, 749], [499, 249], [-1, -1])]
    def squared_coefficients(x, prev, noise, a):
        abar = coefficient(a, prev.clamp(min=0))
        return torch.where((prev < 0).view(-1, 1, 1, 1), x, abar * x + (1 - abar) * noise)

    run_checks(
        "renoise",
        fn,
        reference,
        cases,
        mistakes=[
            Mistake("after the last step (t' = -1) there is nothing left to noise: return x0 itself.",
                    lambda x, p, n, a: add_noise(x, n, p.clamp(min=0), a)),
            Mistake("the coefficients are square roots: sqrt(alphas_cumprod[t']) and sqrt(1 - alphas_cumprod[t']).",
                    squared_coefficients),
        ],
    )
