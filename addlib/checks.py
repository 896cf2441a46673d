"""Checkers for the notebooks' exercises.

Each ``check_*`` takes the learner's function, runs it on a few cases against ``addlib``'s own implementation
and either prints one line saying it passed or raises :class:`CheckFailed` with what went wrong: which case,
what was expected, what came back, and, when the answer matches a common mistake, a hint naming it. In
Jupyter the failure shows as that message alone, without a traceback into this file.

Adding a checker: describe the cases, the reference and the mistakes you expect, and call :func:`run_checks`.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from addlib.forward_process import add_noise, predict_x0_and_epsilon
from addlib.schedules import make_alphas_cumprod


class CheckFailed(AssertionError):
    """A learner's answer is wrong; the message says how."""

    def _render_traceback_(self) -> list[str]:
        # IPython calls this instead of printing a traceback: the learner needs the message, not our stack.
        return [f"\x1b[31m{line}\x1b[0m" if i == 0 else line for i, line in enumerate(str(self).splitlines())]


@dataclass
class Case:
    """One input to try: a description a learner can read, and the positional arguments."""

    description: str
    args: tuple
    kwargs: dict = field(default_factory=dict)


@dataclass
class Mistake:
    """A plausible wrong answer: when the learner's output equals ``wrong(*args)``, show ``hint``."""

    hint: str
    wrong: Callable


BROADCAST_HINT = (
    "a per-sample coefficient such as alphas_cumprod[timesteps] has shape (B,); reshape it to (B, 1, 1, 1) "
    "so it multiplies each sample of shape (B, C, H, W) as a whole."
)


def _summary(value) -> str:
    if isinstance(value, tuple):
        return "tuple (" + "; ".join(_summary(v) for v in value) + ")"
    if not isinstance(value, torch.Tensor):
        return f"{type(value).__name__} {value!r}"[:200]
    head = ", ".join(f"{v:.4f}" for v in value.detach().flatten()[:4].tolist())
    return f"tensor of shape {tuple(value.shape)}, dtype {value.dtype}, first values [{head}, ...]"


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)  # numpy's scalars included


def _difference(got, expected: torch.Tensor, atol: float, rtol: float) -> str | None:
    """Why ``got`` is not ``expected`` (a tensor, a tuple of them, or a number), or None when they agree."""
    if _is_number(expected):  # a count or a probability: compared as a float64 scalar
        if not (_is_number(got) or isinstance(got, torch.Tensor)):
            return f"expected a number, got {type(got).__name__}"
        expected = torch.tensor(float(expected), dtype=torch.float64)
        got = torch.tensor(float(got), dtype=torch.float64) if _is_number(got) else got
    if isinstance(expected, tuple):
        if not isinstance(got, tuple) or len(got) != len(expected):
            return f"expected a tuple of {len(expected)} tensors, got {type(got).__name__}"
        problems = [(i, _difference(g, e, atol, rtol)) for i, (g, e) in enumerate(zip(got, expected))]
        return next((f"returned value {i}: {problem}" for i, problem in problems if problem), None)
    if not isinstance(got, torch.Tensor):
        return f"expected a torch.Tensor, got {type(got).__name__}"
    if got.shape != expected.shape:
        return f"expected shape {tuple(expected.shape)}, got shape {tuple(got.shape)}"
    got = got.detach().to(expected.dtype)
    if not torch.isfinite(got).all() and torch.isfinite(expected).all():
        return "the result contains NaN or inf"
    if torch.allclose(got, expected, atol=atol, rtol=rtol, equal_nan=True):
        return None
    error = (got - expected).abs().nan_to_num(0.0)
    index = tuple(torch.unravel_index(error.argmax(), error.shape))
    return f"largest difference {error.max().item():.4g} at index {tuple(int(i) for i in index)}"


def run_checks(
    name: str,
    fn: Callable,
    reference: Callable,
    cases: Sequence[Case],
    mistakes: Sequence[Mistake] = (),
    atol: float = 1e-5,
    rtol: float = 1e-4,
) -> None:
    """Run ``fn`` and ``reference`` on every case; print a pass line or raise :class:`CheckFailed`."""
    for number, case in enumerate(cases, start=1):
        where = f"case {number} of {len(cases)}: {case.description}"
        expected = reference(*case.args, **case.kwargs)
        try:
            # Clones, so a learner's in-place edit cannot change what the reference or later cases see.
            got = fn(*[a.clone() if isinstance(a, torch.Tensor) else a for a in case.args], **case.kwargs)
        except NotImplementedError:
            raise CheckFailed(f"{name} is not implemented yet: replace `raise NotImplementedError()` with your code.") from None
        except Exception as error:  # the learner's code failed: say where, keep the type and message
            message = f"{name} raised {type(error).__name__} on {where}\n  {error}"
            if "must match the size" in str(error):
                message += f"\n  hint: {BROADCAST_HINT}"
            raise CheckFailed(message) from None
        problem = _difference(got, expected, atol, rtol)
        if problem is None:
            continue
        lines = [
            f"{name} is wrong on {where}",
            f"  expected: {_summary(expected)}",
            f"  got:      {_summary(got)}",
            f"  {problem}",
        ]
        hint = _matching_mistake(fn, cases, mistakes, atol, rtol)
        if hint:
            lines.append(f"  hint: {hint}")
        raise CheckFailed("\n".join(lines))
    print(f"✓ {name} passes all {len(cases)} cases")


def _matching_mistake(fn: Callable, cases: Sequence[Case], mistakes: Sequence[Mistake], atol: float,
                      rtol: float) -> str | None:
    """The hint of the mistake that reproduces ``fn`` on every case: one case alone can fit two mistakes."""
    try:
        answers = [fn(*[a.clone() if isinstance(a, torch.Tensor) else a for a in c.args], **c.kwargs) for c in cases]
    except Exception:  # a learner's function that fails on some case matches no clean mistake
        return None
    for mistake in mistakes:
        if all(_difference(got, mistake.wrong(*c.args, **c.kwargs), atol, rtol) is None
               for got, c in zip(answers, cases)):
            return mistake.hint
    return None


def _coefficient(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    return alphas_cumprod[timesteps].reshape(-1, 1, 1, 1)  # (B, 1, 1, 1)


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
                    lambda x, n, t, a: _coefficient(a, t) * x + (1 - _coefficient(a, t)) * n),
            Mistake("x0 and noise are swapped: x0 is scaled by sqrt(alphas_cumprod[t]), the noise by "
                    "sqrt(1 - alphas_cumprod[t]).",
                    lambda x, n, t, a: (1 - _coefficient(a, t)).sqrt() * x + _coefficient(a, t).sqrt() * n),
            Mistake("the noise coefficient is 1 - sqrt(alphas_cumprod[t]); it should be sqrt(1 - alphas_cumprod[t]), "
                    "so that the variance stays 1.",
                    lambda x, n, t, a: _coefficient(a, t).sqrt() * x + (1 - _coefficient(a, t).sqrt()) * n),
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
                    lambda x, e, t, a: (x - (1 - _coefficient(a, t)) * e) / _coefficient(a, t)),
            Mistake("you multiplied by sqrt(abar_t); undoing x_t = sqrt(abar_t) * x0 + ... means dividing by it.",
                    lambda x, e, t, a: (x - (1 - _coefficient(a, t)).sqrt() * e) * _coefficient(a, t).sqrt()),
            Mistake("subtract the scaled noise first, then divide: (x_t - sqrt(1 - abar_t) * epsilon) / sqrt(abar_t).",
                    lambda x, e, t, a: x / _coefficient(a, t).sqrt() - (1 - _coefficient(a, t)).sqrt() * e),
            Mistake("the noise is subtracted, not added: x_t - sqrt(1 - abar_t) * epsilon.",
                    lambda x, e, t, a: (x + (1 - _coefficient(a, t)).sqrt() * e) / _coefficient(a, t).sqrt()),
        ],
    )


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
            return torch.cat([loss.detach().view(1), torch.zeros(x_theta.numel())])
        (gradient,) = torch.autograd.grad(loss, x_theta)
        return torch.cat([loss.detach().view(1), gradient.flatten()])
    return run


def check_distillation_loss(fn: Callable, teacher) -> None:
    """Check ``fn(teacher, x_theta, prompt_embeds, timesteps, noise)`` is ADD's L_distill (exponential weighting,
    no guidance, pixel space), its value and its gradient with respect to the student's latents ``x_theta``."""
    from addlib.distillation import decode_latents, distillation_loss
    from addlib.sampling import encode_prompts

    alphas_cumprod = teacher.scheduler.alphas_cumprod
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        embeds = encode_prompts(teacher, ["a red circle", "a large blue square", "a small green triangle at the "
                                          "top left", "a yellow circle on a white background"])
    cases = [Case(f"{len(t)} student latents of 4x8x8, teacher timesteps {t}",
                  (torch.randn(len(t), 4, 8, 8, generator=gen), embeds[:len(t)], torch.tensor(t),
                   torch.randn(len(t), 4, 8, 8, generator=gen)))
             for t in ([500], [100, 700], [20, 250, 600, 950])]

    def variant(renoise=None, x0=None, weight=None, pixels=True, stop=True):
        """L_distill with one ingredient swapped for a wrong one."""
        def loss(teacher, x, embeds, t, noise):
            alpha, sigma = _coefficient(alphas_cumprod, t).sqrt(), (1 - _coefficient(alphas_cumprod, t)).sqrt()
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
    )


def check_hinge_discriminator_loss(fn: Callable) -> None:
    """Check ``fn(real_logits, fake_logits)``, lists of (B, T) token logits per head, is the hinge loss of D."""
    from addlib.discriminator import hinge_discriminator_loss

    gen = torch.Generator().manual_seed(4)
    cases = [Case(f"{heads} head(s), batch {batch}, {tokens} tokens",
                  ([2 * torch.randn(batch, tokens, generator=gen) for _ in range(heads)],
                   [2 * torch.randn(batch, tokens, generator=gen) for _ in range(heads)]))
             for heads, batch, tokens in [(1, 4, 5), (3, 2, 17), (2, 8, 65)]]

    def parts(real, fake, f):
        return sum(f(1 - r).mean() + f(1 + x).mean() for r, x in zip(real, fake))

    relu = torch.nn.functional.relu
    run_checks(
        "hinge_discriminator_loss", fn, hinge_discriminator_loss, cases,
        mistakes=[
            Mistake("the hinge clips at zero: max(0, 1 - D(real)) and max(0, 1 + D(fake)) (torch.relu); without "
                    "it, confident right answers keep being pushed further.", lambda r, f: parts(r, f, lambda z: z)),
            Mistake("real logits should be pushed above +1 and fake ones below -1: max(0, 1 - D(real)) + "
                    "max(0, 1 + D(fake)); the signs are swapped.", lambda r, f: parts(f, r, relu)),
            Mistake("sum over heads, but average over images and tokens (.mean()), not .sum().",
                    lambda r, f: sum(relu(1 - a).sum() + relu(1 + b).sum() for a, b in zip(r, f))),
            Mistake("average within each head and sum over the heads: you averaged over heads too.",
                    lambda r, f: parts(r, f, relu) / len(r)),
        ],
    )


def check_r1_penalty(fn: Callable) -> None:
    """Check ``fn(real_logits, real_features)`` is R1 on the heads' input features (ADD, section 3.2)."""
    from addlib.discriminator import ProjectedDiscriminator, r1_penalty
    from addlib.evaluators import TinyViT

    def with_fresh_graph(penalty: Callable) -> Callable:
        """Call ``penalty`` on logits and leaf features made anew, so no call can spend another's graph."""
        def run(seed: int, batch: int, layers: tuple[int, ...]):
            torch.manual_seed(seed)
            network = TinyViT(image_size=32, patch_size=8, embed_dim=16, num_layers=3, num_heads=2)
            discriminator = ProjectedDiscriminator(network, layers, text_dim=8, cmap_dim=8, augment=()).eval()
            images = torch.rand(batch, 3, 32, 32) * 2 - 1
            features = [f.detach().requires_grad_() for f in discriminator.features(images)]
            logits = discriminator.heads_logits(features, torch.randn(batch, 8), discriminator.image_embedding(images))
            return penalty(logits, features)
        return run

    def grads(logits, features, reduce=lambda z: z.mean(dim=1).sum()):
        return torch.autograd.grad([reduce(z) for z in logits], features, create_graph=True)

    cases = [Case(f"{batch} images, heads on layers {list(layers)}", (seed, batch, layers))
             for seed, batch, layers in [(0, 2, (1,)), (1, 4, (0, 2)), (2, 3, (0, 1, 2))]]
    run_checks(
        "r1_penalty", with_fresh_graph(fn), with_fresh_graph(r1_penalty), cases,
        mistakes=[Mistake(hint, with_fresh_graph(wrong)) for hint, wrong in [
            ("R1 is the *squared* norm of the gradient: g.pow(2).sum() per image, no square root.",
             lambda z, f: sum(g.flatten(1).norm(dim=1).mean() for g in grads(z, f))),
            ("average the per-image squared norms over the batch (.mean()), don't sum them.",
             lambda z, f: sum(g.pow(2).flatten(1).sum(1).sum() for g in grads(z, f))),
            ("D_k of an image is its *mean* token logit: differentiate logits.mean(dim=1).sum(), not the sum of "
             "all token logits.", lambda z, f: sum(g.pow(2).flatten(1).sum(1).mean()
                                                  for g in grads(z, f, lambda x: x.sum()))),
            ("sum the penalty over every head, not only the first.",
             lambda z, f: grads(z[:1], f[:1])[0].pow(2).flatten(1).sum(1).mean()),
        ]],
    )
    if not with_fresh_graph(fn)(*cases[0].args).requires_grad:
        raise CheckFailed("r1_penalty returns the right number, but it cannot train the heads: pass "
                          "create_graph=True to torch.autograd.grad so gamma * R1 can be back-propagated.")
    print("✓ r1_penalty keeps its graph, so gamma * R1 trains the heads")


def check_sds_weight(fn: Callable) -> None:
    """Check ``fn(timesteps, alphas_cumprod)`` is c(t) = alpha_t / (2 sigma_t) * w(t) with w(t) = sigma_t^2."""
    from addlib.distillation import distillation_weight

    zero_snr = make_alphas_cumprod("scaled_linear", rescale_betas_zero_snr=True)
    cases = [Case(f"timesteps {t}, {name}", (torch.tensor(t), a))
             for t, name, a in [([0, 500, 999], "the teacher's zero-terminal-SNR schedule", zero_snr),
                                ([10, 250, 749, 990], "Stable Diffusion's schedule", make_alphas_cumprod("scaled_linear"))]]
    alpha = lambda t, a: a[t].double().sqrt()
    sigma = lambda t, a: (1 - a[t].double()).sqrt()
    run_checks(
        "sds_weight", fn, lambda t, a: distillation_weight("sds", t, a), cases,
        mistakes=[
            Mistake("that is alpha_t / (2 sigma_t) alone: multiply by DreamFusion's w(t) = sigma_t^2.",
                    lambda t, a: alpha(t, a) / (2 * sigma(t, a))),
            Mistake("c(t) = alpha_t / (2 sigma_t) * sigma_t^2 = alpha_t * sigma_t / 2: the factor 1/2 is missing.",
                    lambda t, a: alpha(t, a) * sigma(t, a)),
            Mistake("alpha_t and sigma_t are square roots: sqrt(alphas_cumprod[t]) and sqrt(1 - alphas_cumprod[t]).",
                    lambda t, a: a[t].double() * (1 - a[t].double()) / 2),
        ],
    )


def check_generator_loss(fn: Callable, trainer) -> None:
    """Check ``fn(trainer, latents, noise, timesteps, text, pooled, image_embedding, generator)`` returns ADD's
    generator objective L = L_adv^G + lambda * L_distill as ``trainer.generator_loss`` computes it: its value
    and its gradient with respect to the student's last layer (which a detached fake would not reach)."""
    from addlib.discriminator import hinge_generator_loss, paired_generators
    from addlib.distillation import decode_latents, denoise, distillation_loss

    config, teacher = trainer.config, trainer.teacher
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

    def variant(noised=True, detach=False, generator_hinge=True, guidance=True, draw_augment_first=True,
                weights=(config.adversarial_weight, config.distillation_weight)):
        """The objective with one ingredient swapped for a wrong one."""
        def loss(trainer, latents, noise, timesteps, text, pooled, image_embedding, generator):
            alphas_cumprod = teacher.scheduler.alphas_cumprod
            noisy = add_noise(latents, noise, timesteps, alphas_cumprod) if noised else latents
            x_theta = denoise(trainer.student, teacher.scheduler, noisy, timesteps, text)[0]
            fake = decode_latents(teacher, x_theta, trainer.decoder)
            judged = fake.detach() if detach else fake
            distill_kwargs = dict(weighting=config.weighting, uncond_embeds=trainer.empty, student_images=fake,
                                  vae=trainer.decoder, guidance_scale=config.teacher_guidance_scale if guidance else 1)
            if not draw_augment_first:
                distill = distillation_loss(teacher, x_theta, text, generator=generator, **distill_kwargs)
            logits = trainer.discriminator(judged, pooled, image_embedding, paired_generators(generator)[0])
            adversarial = (hinge_generator_loss(logits) if generator_hinge
                           else sum(torch.relu(1 + lg).mean() for lg in logits))
            if draw_augment_first:
                distill = distillation_loss(teacher, x_theta, text, generator=generator, **distill_kwargs)
            return weights[0] * adversarial + weights[1] * distill
        return with_gradient(loss)

    # In training mode every call of a spectral-normalised head takes a power-iteration step, so no two calls
    # would agree; evaluation mode holds the heads still for the comparison.
    was_training = trainer.discriminator.training
    trainer.discriminator.eval()
    try:
        _run_generator_checks(fn, trainer, cases, with_gradient, variant)
    finally:
        trainer.discriminator.train(was_training)


def _run_generator_checks(fn, trainer, cases, with_gradient, variant) -> None:
    config = trainer.config
    run_checks(
        "generator_loss",
        with_gradient(fn),
        with_gradient(type(trainer).generator_loss),
        cases,
        mistakes=[
            Mistake(f"lambda = {config.distillation_weight:g} weights the distillation loss, not the adversarial "
                    f"one: L = L_adv^G + {config.distillation_weight:g} * L_distill.",
                    variant(weights=(config.distillation_weight, 1.0))),
            Mistake("the student's input is the real latents *noised* to its timestep: x_s = alpha_s z0 + sigma_s "
                    "eps (add_noise), not z0 itself.", variant(noised=False)),
            Mistake("the fakes were detached before the discriminator: the student then gets no adversarial "
                    "gradient. Only the discriminator's own update detaches them.", variant(detach=True)),
            Mistake("the generator's hinge loss is -E[D(fake)] (hinge_generator_loss), not the discriminator's "
                    "max(0, 1 + D(fake)).", variant(generator_hinge=False)),
            Mistake("the teacher's target uses guidance: pass guidance_scale=trainer.config.teacher_guidance_scale "
                    "and uncond_embeds=trainer.empty to distillation_loss.", variant(guidance=False)),
            Mistake("right formula, but the random draws come in another order: augment the fakes first "
                    "(paired_generators(generator)[0]), then call distillation_loss with generator.",
                    variant(draw_augment_first=False)),
        ],
        atol=1e-4,  # float32 noise in a gradient scaled by lambda = 25 reaches 1e-5; every mistake is far larger
        rtol=1e-4,
    )


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
        abar = _coefficient(a, prev.clamp(min=0))
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


def check_lora_parameter_count(fn: Callable, unet) -> None:
    """Check ``fn(unet, rank, targets)`` counts the parameters a rank-``rank`` LoRA adds to every ``nn.Linear``
    of ``unet`` whose name ends with one of ``targets``, against peft's own adapters."""
    import copy

    from peft import LoraConfig

    def reference(unet, rank, targets):
        adapted = copy.deepcopy(unet)
        adapted.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=list(targets)))
        return sum(p.numel() for name, p in adapted.named_parameters() if "lora_" in name)

    def linears(unet, targets):
        return [m for name, m in unet.named_modules()
                if isinstance(m, torch.nn.Linear) and any(name.endswith(t) for t in targets)]

    cases = [Case(f"the miniature's UNet, rank {rank}, targets {list(targets)}", (unet, rank, targets))
             for rank, targets in ((4, ("to_q", "to_k", "to_v", "to_out.0")), (8, ("to_q", "to_v")), (16, ("to_k",)))]
    run_checks(
        "lora_parameter_count",
        fn,
        reference,
        cases,
        mistakes=[
            Mistake("a LoRA of a layer with weight (out, in) is B (out, r) times A (r, in): r * (in + out) "
                    "parameters, not r * in.",
                    lambda u, r, t: sum(r * m.in_features for m in linears(u, t))),
            Mistake("that is the size of the full weights (out * in); the point of LoRA is r * (in + out), far fewer.",
                    lambda u, r, t: sum(m.in_features * m.out_features for m in linears(u, t))),
        ],
        atol=0,
        rtol=0,
    )


def check_training_memory(fn: Callable) -> None:
    """Check ``fn(frozen, trainable, bytes_per_weight)`` is the bytes of weights, gradients and Adam's moments:
    every weight at ``bytes_per_weight``, and per trainable weight an fp32 gradient and two fp32 moments."""
    def reference(frozen, trainable, bytes_per_weight):
        return (frozen + trainable) * bytes_per_weight + trainable * 3 * 4

    cases = [Case("Stable Diffusion 1.5's UNet trained in full: 860M trainable, fp32", (0, 860_000_000, 4)),
             Case("a frozen 1.2B-parameter teacher and VAE in fp16, plus a 3M-parameter LoRA",
                  (1_200_000_000, 3_000_000, 2)),
             Case("the miniature: 8.6M trainable, fp32", (0, 8_600_000, 4))]
    run_checks(
        "training_memory",
        fn,
        reference,
        cases,
        mistakes=[
            Mistake("a trainable weight carries three fp32 tensors on top of itself: its gradient and Adam's two "
                    "moments (m and v), 12 bytes; you counted 8.",
                    lambda f, t, b: (f + t) * b + t * 2 * 4),
            Mistake("besides its gradient, each trainable weight has Adam's two moments (m and v), 4 bytes each.",
                    lambda f, t, b: (f + t) * b + t * 4),
            Mistake("count the weights themselves too: (frozen + trainable) * bytes_per_weight.",
                    lambda f, t, b: t * 3 * 4),
        ],
        atol=0,
        rtol=1e-9,
    )


def _stream_batch_case(description: str, n: int, frames: int, seed: int) -> Case:
    """(x0, alpha, sigma, noise, frames) for n timesteps of a zero-terminal-SNR schedule, ``frames`` per block."""
    gen = torch.Generator().manual_seed(seed)
    alphas_cumprod = make_alphas_cumprod("scaled_linear", rescale_betas_zero_snr=True)
    timesteps = torch.linspace(749, 249, n).long().repeat_interleave(frames)
    alpha = alphas_cumprod[timesteps].sqrt().view(-1, 1, 1, 1)
    sigma = (1 - alphas_cumprod[timesteps]).sqrt().view(-1, 1, 1, 1)
    shape = (n * frames, 4, 4, 4)
    return Case(description, (torch.randn(shape, generator=gen), alpha, sigma, torch.randn(shape, generator=gen), frames))


def check_stream_batch_update(fn: Callable) -> None:
    """Check ``fn(x0, alpha, sigma, noise, frames)`` returns Stream Batch's ``(finished, buffer)``."""
    from addlib.stream import stream_batch_update

    cases = [_stream_batch_case("n = 3 timesteps, 1 frame per block", 3, 1, 0),
             _stream_batch_case("n = 2 timesteps, 2 frames per block (frame_buffer_size 2)", 2, 2, 1),
             _stream_batch_case("n = 4 timesteps, 3 frames per block", 4, 3, 2)]

    def shifted_by_one_row(x0, alpha, sigma, noise, frames):  # StreamDiffusion's own bug with frame buffers (#76)
        return x0[-1:], alpha[1:] * x0[:-1] + sigma[1:] * noise[1:]

    run_checks(
        "stream_batch_update",
        fn,
        stream_batch_update,
        cases,
        mistakes=[
            Mistake("the finished frames are the last block (the oldest frames, at the last timestep), not the "
                    "first: x0[-frames:].",
                    lambda x0, a, s, n, f: (x0[:f], stream_batch_update(x0, a, s, n, f)[1])),
            Mistake("a block moves on to the NEXT block's timestep: use alpha[frames:] and sigma[frames:], the "
                    "coefficients of the rows it lands in, not those of the rows it leaves.",
                    lambda x0, a, s, n, f: (x0[-f:], a[:-f] * x0[:-f] + s[:-f] * n[f:])),
            Mistake("each slot keeps its own fixed noise: the block landing in rows frames: takes noise[frames:].",
                    lambda x0, a, s, n, f: (x0[-f:], a[f:] * x0[:-f] + s[f:] * n[:-f])),
            Mistake("the buffer holds noisy latents at the later timesteps: add sigma * noise.",
                    lambda x0, a, s, n, f: (x0[-f:], a[f:] * x0[:-f])),
            Mistake("blocks are `frames` rows, not one: shift by `frames` rows everywhere (StreamDiffusion's own "
                    "code shifts by one row and so breaks with frame_buffer_size > 1, its issue #76).",
                    shifted_by_one_row),
        ],
    )


def check_skip_probability(fn: Callable) -> None:
    """Check ``fn(frame, reference, threshold)`` is the similarity filter's P(skip), a number in [0, 1]."""
    from addlib.stream import skip_probability

    gen = torch.Generator().manual_seed(0)
    reference = torch.randn(1, 3, 8, 8, generator=gen)
    wiggle = torch.randn(1, 3, 8, 8, generator=gen)
    channels = reference.clone()
    channels[:, 0] *= -0.2  # one channel flipped: the whole-frame cosine differs from the channels' mean
    cases = [Case("two identical frames, eta 0.98", (reference, reference, 0.98)),
             Case("a frame slightly moved from its reference (cos 0.995), eta 0.98", (reference + 0.1 * wiggle, reference, 0.98)),
             Case("a frame slightly moved from its reference (cos 0.995), eta 0.9", (reference + 0.1 * wiggle, reference, 0.9)),
             Case("one channel changed (cos 0.67), eta 0.5", (channels, reference, 0.5)),
             Case("unrelated frames (cos about 0), eta 0.98", (wiggle, reference, 0.98))]

    def cosine(frame, reference):
        return torch.nn.functional.cosine_similarity(frame.flatten(), reference.flatten(), dim=0).item()

    def per_channel(frame, reference, threshold):
        cos = torch.nn.functional.cosine_similarity(frame, reference, dim=1).mean().item()
        return max(0.0, (cos - threshold) / (1 - threshold))

    run_checks(
        "skip_probability",
        fn,
        skip_probability,
        cases,
        mistakes=[
            Mistake("a probability is never negative: frames less alike than eta get max(0, ...) = 0.",
                    lambda f, r, t: (cosine(f, r) - t) / (1 - t)),
            Mistake("divide by (1 - eta), so that P(skip) goes from 0 at cos = eta to 1 at cos = 1.",
                    lambda f, r, t: max(0.0, cosine(f, r) - t)),
            Mistake("that is the probability of *processing* the frame: P(skip) = (cos - eta) / (1 - eta).",
                    lambda f, r, t: min(1.0, max(0.0, (1 - cosine(f, r)) / (1 - t)))),
            Mistake("the filter is stochastic: not 'skip when cos > eta', but skip with probability "
                    "(cos - eta) / (1 - eta), so a slowly changing scene still updates now and then.",
                    lambda f, r, t: float(cosine(f, r) > t)),
            Mistake("take the cosine of the two frames as whole vectors (flatten them), not per pixel or channel.",
                    per_channel),
        ],
        atol=1e-4,
    )
