"""Checkers for notebook 05, ADD training: the generator's objective and multi-step renoising."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Callable
from unittest.mock import patch

import torch

from addlib.course.checks.core import Case, Mistake, coefficient, run_checks
from addlib.forward_process import add_noise
from addlib.schedules import make_alphas_cumprod


def check_generator_loss(fn: Callable, trainer) -> None:
    """Check ``fn(trainer, latents, noise, timesteps, text, condition, generator)`` returns ADD's
    generator objective L = L_adv^G + lambda * L_distill as ``trainer.generator_loss`` computes it: its value
    and its gradient with respect to the student's last layer (which a detached fake would not reach).

    Each mistake is the trainer's own objective with one piece swapped for a wrong one (:func:`_swapped`), so
    the checker never restates what the trainer computes. An answer that calls ``trainer.generator_loss`` fails:
    that method is the answer."""
    parameter = trainer.accelerator.unwrap_model(trainer.student).conv_out.weight
    names = ("latents", "noise", "timesteps", "text", "condition")
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
                return torch.cat([loss.detach().view(1), loss.new_zeros(parameter.numel())])
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
                   atol=1e-4, rtol=1e-4, forbidden=[(type(trainer), "generator_loss")])
    finally:
        trainer.discriminator.train(was_training)


def _generator_mistakes(trainer) -> list[tuple[str, Callable]]:
    """Each plausible wrong objective with its hint: the trainer's own ``generator_loss`` with one piece swapped,
    a setting of the trainer or a function of ``addlib.add_trainer`` (:func:`_swapped`)."""
    import addlib.add_trainer as module

    config, distillation_loss = trainer.config, module.distillation_loss
    lam = config.distillation_weight
    weights_swapped, detached = copy.copy(trainer), copy.copy(trainer)
    weights_swapped.config = dataclasses.replace(config, adversarial_weight=lam,
                                                 distillation_weight=config.adversarial_weight)
    detached.discriminator = _DetachedFakes(trainer.discriminator)
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


class _DetachedFakes:
    """The trainer's discriminator, handed its samples detached: the mistake of cutting the student's gradient."""

    def __init__(self, discriminator):
        self.discriminator, self.view = discriminator, discriminator.view

    def __call__(self, x: torch.Tensor, **kwargs) -> list[torch.Tensor]:
        return self.discriminator(x.detach(), **kwargs)


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


def check_discriminator_loss(fn: Callable, trainer) -> None:
    """Check ``fn(discriminator, real, fake, r1_weight, generator, **condition)`` is the discriminator's loss
    L_adv^D: the hinge on real samples against the fakes (detached, and augmented exactly as the real ones),
    plus ``r1_weight`` times R1 on the heads' input features. Compares its value, its gradient at every head's
    last layer, and the gradient that reaches the fakes (none). Calling ``Discriminator.loss`` is refused."""
    from addlib.discriminator import Discriminator

    discriminator = trainer.discriminator
    heads = [head.cls.parametrizations.weight.original for head in discriminator.heads]
    cases = []
    for step in (0, 1):
        inputs = trainer.inputs(step)
        with torch.no_grad():
            fake = trainer.generator_loss(**{k: v for k, v in inputs.items() if k != "images"})[3]
        real = discriminator.view(inputs["images"], inputs["latents"])
        seed = int(torch.randint(0, 2**31, (1,), generator=inputs["generator"]))
        for r1_weight in (0.0, 10.0):
            cases.append(Case(f"step {step}'s batch of {len(real)}, r1_weight {r1_weight:g}",
                              (real, fake, r1_weight, seed), {"condition": inputs["condition"]}))

    def with_gradients(loss_fn: Callable) -> Callable:
        def run(real, fake, r1_weight, seed, condition):
            fake = fake.detach().requires_grad_()  # a leaf, so a fake the loss forgot to detach shows its gradient
            loss = loss_fn(discriminator, real, fake, r1_weight, torch.Generator().manual_seed(seed), **condition)
            loss = loss[0] if isinstance(loss, tuple) else loss  # the library's method also returns its parts
            if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
                return loss
            gradients = torch.autograd.grad(loss, [*heads, fake], allow_unused=True) if loss.requires_grad else []
            gradients = [torch.zeros_like(x) if g is None else g for g, x in zip(gradients, [*heads, fake])]
            return torch.cat([loss.detach().view(1), *(g.flatten() for g in gradients)])
        return run

    # Evaluation mode holds spectral norm's power iteration still, so two calls of the heads agree.
    discriminator.eval()
    try:
        run_checks("discriminator_loss", with_gradients(fn), with_gradients(Discriminator.loss), cases,
                   mistakes=[Mistake(hint, with_gradients(wrong)) for hint, wrong in _discriminator_mistakes()],
                   atol=1e-4, rtol=1e-4, forbidden=[(Discriminator, "loss")],
                   error_hints=[("derivative for", _R1_ON_FEATURES)])
    finally:
        discriminator.train()


# Taken on the pixels, R1 needs a second derivative through the feature network, which some of its layers
# (attention on a CPU) do not have: that error, too, means this mistake.
_R1_ON_FEATURES = ("R1 is taken on the heads' input features (ADD eq. 4), not on the pixels: detach the real "
                   "features, require their gradient, and compute the real logits from them.")


def _discriminator_mistakes() -> list[tuple[str, Callable]]:
    """Each plausible wrong discriminator loss, built from the library's pieces, with its hint."""
    from addlib.discriminator import hinge_discriminator_loss, paired_generators, r1_penalty

    def loss(discriminator, real, fake, r1_weight, generator, detach=True, swap=False, r1_on="features",
             paired=True, **condition):
        real_generator, fake_generator = paired_generators(generator) if paired else (generator, generator)
        if r1_on == "pixels":
            real = real.detach().requires_grad_()
        features, context = discriminator.read(real, real_generator, **condition)
        if r1_on == "features":
            features = [f.detach().requires_grad_() for f in features]
        real_logits = discriminator.heads_logits(features, *context)
        fake_logits = discriminator(fake.detach() if detach else fake, **condition, generator=fake_generator)
        hinge = hinge_discriminator_loss(*((fake_logits, real_logits) if swap else (real_logits, fake_logits)))
        if not r1_weight:
            return hinge
        outputs = sum(logits.mean(dim=1).sum() for logits in real_logits)
        if r1_on == "features":
            penalty = r1_penalty(real_logits, features)
        elif r1_on == "pixels":
            (gradient,) = torch.autograd.grad(outputs, real, create_graph=True)
            penalty = gradient.pow(2).flatten(1).sum(1).mean()
        else:  # the heads' parameters, as diffusers' public ADD script did
            parameters = [p for p in discriminator.heads.parameters() if p.requires_grad]
            penalty = sum(g.pow(2).sum() for g in torch.autograd.grad(outputs, parameters, create_graph=True))
        return hinge + r1_weight * penalty

    def variant(**changes) -> Callable:
        return lambda *args, **condition: loss(*args, **changes, **condition)

    return [
        ("the fakes reach the heads undetached, so this loss would also train the student (towards looking fake). "
         "Pass fake.detach(): the discriminator's update trains the heads alone.", variant(detach=False)),
        (_R1_ON_FEATURES, variant(r1_on="pixels")),
        ("R1 is the gradient with respect to the heads' input features, not to the heads' parameters.",
         variant(r1_on="parameters")),
        ("real and fake are the wrong way round: the hinge pushes real logits above +1 and fake ones below -1.",
         variant(swap=True)),
        ("real and fake must be augmented (or re-noised) alike, image for image: draw their generators with "
         "paired_generators(generator).", variant(paired=False)),
        ("R1 is missing: add r1_weight * r1_penalty(real_logits, real_features).",
         lambda d, real, fake, r1_weight, generator, **c: loss(d, real, fake, 0.0, generator, **c)),
    ]


def check_train_step(fn: Callable, trainer) -> None:
    """Check ``fn(trainer, step)`` makes one ADD training step as ``ADDTrainer.step`` does: the generator's update
    (heads held still, the student's gradient clipped), then the discriminator's on the fakes just made, then the
    EMA. Compares the student's, the heads' and the EMA's weights after steps 0 and 1 of the same batches.

    Meanwhile both optimizers are plain SGD: Adam's first steps move each weight by about its learning rate
    whatever the gradient, so a float's noise in a near-zero gradient would flip them, and clipping would not
    show. The trainer's weights and optimizers are put back afterwards. Calling ``ADDTrainer.step`` is refused."""
    from addlib.add_trainer import ADDTrainer

    modules = trainer.modules()
    saved = {name: copy.deepcopy(module.state_dict()) for name, module in modules.items()}
    optimizers = trainer.student_optimizer, trainer.discriminator_optimizer

    def weights_after(step_fn: Callable) -> Callable:
        def run(steps: int) -> tuple:
            for name, module in modules.items():
                module.load_state_dict(copy.deepcopy(saved[name]))
            trainer.student_optimizer = torch.optim.SGD(trainer.trainable.parameters(), lr=0.1)
            trainer.discriminator_optimizer = torch.optim.SGD(trainer.discriminator.heads.parameters(), lr=0.1)
            for step in range(steps):
                step_fn(trainer, step)
            return tuple(torch.cat([p.detach().flatten() for p in modules[name].parameters()])
                         for name in ("student", "heads", "ema"))
        return run

    cases = [Case(f"{steps} step{'s' * (steps > 1)} from the trainer's start (returned: the student's, the heads' "
                  f"and the EMA's weights)", (steps,)) for steps in (1, 2)]
    try:
        run_checks("train_step", weights_after(fn), weights_after(ADDTrainer.step), cases,
                   mistakes=[Mistake(hint, weights_after(wrong)) for hint, wrong in _step_mistakes()],
                   atol=1e-5, rtol=1e-4, forbidden=[(ADDTrainer, "step")])
    finally:
        for name, module in modules.items():
            module.load_state_dict(saved[name])
        trainer.student_optimizer, trainer.discriminator_optimizer = optimizers


def _step_mistakes() -> list[tuple[str, Callable]]:
    """Each plausible wrong training step, built from the trainer's own pieces, with its hint."""
    from addlib.utils.runs import ema_update

    def step(trainer, step, discriminator_first=False, one_backward=False, clip=True, ema=True):
        config = trainer.config
        inputs = trainer.inputs(step)
        images, generator = inputs.pop("images"), inputs["generator"]

        def discriminator_update(fake, x_theta, loss=None):
            trainer.discriminator.heads.requires_grad_(True)
            view = trainer.discriminator.view
            real, judged = view(images, inputs["latents"]), view(fake, x_theta)
            d_loss = trainer.discriminator.loss(real, judged, config.r1_weight, generator, **inputs["condition"])[0]
            trainer.discriminator_optimizer.zero_grad(set_to_none=True)
            if loss is not None:  # one backward pass for both losses
                trainer.student_optimizer.zero_grad(set_to_none=True)
                d_loss = d_loss + loss
            d_loss.backward()
            trainer.discriminator_optimizer.step()

        if discriminator_first:
            with torch.no_grad():
                _, _, x_theta, fake = trainer.generator_loss(**inputs)
            discriminator_update(fake, x_theta)
        trainer.discriminator.heads.requires_grad_(one_backward)
        loss, _, x_theta, fake = trainer.generator_loss(**inputs)
        if one_backward:
            discriminator_update(fake, x_theta, loss)
        else:
            trainer.student_optimizer.zero_grad(set_to_none=True)
            loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(trainer.trainable.parameters(), config.grad_clip)
        trainer.student_optimizer.step()
        if not (discriminator_first or one_backward):
            discriminator_update(fake, x_theta)
        if ema:
            ema_update(trainer.ema.params, trainer.trainable.params, config.ema_decay)

    def variant(**changes) -> Callable:
        return lambda trainer, s: step(trainer, s, **changes)

    return [
        ("the discriminator's update comes second, on the fakes the generator's update has just made: first "
         "the student's step, then the heads'.", variant(discriminator_first=True)),
        ("one backward pass for both losses lets each network step on the other's loss (the heads would also "
         "climb -D(fake)): give each optimizer its own zero_grad, backward and step.", variant(one_backward=True)),
        ("the student's gradient is clipped before its step: "
         "torch.nn.utils.clip_grad_norm_(trainer.trainable.parameters(), trainer.config.grad_clip).",
         variant(clip=False)),
        ("the EMA of the student's weights moves after both updates: "
         "ema_update(trainer.ema.params, trainer.trainable.params, trainer.config.ema_decay).", variant(ema=False)),
    ]
