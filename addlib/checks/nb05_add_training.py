"""Checkers for notebook 05, ADD training: the generator's objective and multi-step renoising."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Callable
from unittest.mock import patch

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
                   mistakes=[Mistake(hint, with_gradient(wrong)) for hint, wrong in _generator_mistakes(trainer)],
                   # float32 noise in a gradient scaled by lambda = 25 reaches 1e-5; every mistake is far larger
                   atol=1e-4, rtol=1e-4)
    finally:
        trainer.discriminator.train(was_training)


def _generator_mistakes(trainer) -> list[tuple[str, Callable]]:
    """Each plausible wrong objective with its hint: the trainer's own ``generator_loss`` with one piece swapped,
    a setting of the trainer or a function of ``addlib.train_add`` (:func:`_swapped`)."""
    import addlib.train_add as module

    config, distillation_loss = trainer.config, module.distillation_loss
    lam = config.distillation_weight
    weights_swapped, detached = copy.copy(trainer), copy.copy(trainer)
    weights_swapped.config = dataclasses.replace(config, adversarial_weight=lam,
                                                 distillation_weight=config.adversarial_weight)
    detached.discriminator = lambda fake, *args: trainer.discriminator(fake.detach(), *args)
    return [
        (f"lambda = {lam:g} weights the distillation loss, not the adversarial one: L = L_adv^G + {lam:g} * "
         f"L_distill.", _swapped(weights_swapped, module)),
        ("the student's input is the real latents *noised* to its timestep: x_s = alpha_s z0 + sigma_s eps "
         "(add_noise), not z0 itself.",
         _swapped(trainer, module, lambda *_: {"add_noise": lambda latents, noise, timesteps, alphas: latents})),
        ("the fakes were detached before the discriminator: the student then gets no adversarial gradient. Only "
         "the discriminator's own update detaches them.", _swapped(detached, module)),
        ("the generator's hinge loss is -E[D(fake)] (hinge_generator_loss), not the discriminator's "
         "max(0, 1 + D(fake)).", _swapped(trainer, module, lambda *_: {
             "hinge_generator_loss": lambda logits: sum(torch.relu(1 + lg).mean() for lg in logits)})),
        ("the teacher's target uses guidance: pass guidance_scale=trainer.config.teacher_guidance_scale and "
         "uncond_embeds=trainer.empty to distillation_loss.", _swapped(trainer, module, lambda *_: {
             "distillation_loss": lambda *a, **k: distillation_loss(*a, **k | {"guidance_scale": 1})})),
        ("right formula, but the random draws come in another order: augment the fakes first "
         "(paired_generators(generator)[0]), then call distillation_loss with generator.",
         _swapped(trainer, module, lambda generator, run: _distillation_draws_first(module, generator, run))),
    ]


def _swapped(trainer, module, pieces: Callable = lambda generator, run: {}) -> Callable:
    """``generator_loss`` computed by ``trainer`` (the real one or a changed copy) with ``module``'s functions
    replaced by ``pieces(generator, run)``, where ``run()`` is the real objective on the same inputs."""
    objective = type(trainer).generator_loss

    def loss(_, *inputs):
        generator = inputs[-1]
        replaced = pieces(generator, lambda: objective(trainer, *inputs))
        with patch.multiple(module, **replaced) if replaced else contextlib.nullcontext():
            return objective(trainer, *inputs)
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

    with patch.multiple(module, distillation_loss=distillation_from_start):
        run()
    augmentation = torch.Generator()
    augmentation.set_state(after[0])
    return {"distillation_loss": distillation_from_start,
            "paired_generators": lambda _: paired_generators(augmentation)}


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
