"""Checkers for notebook 08, latent adversarial distillation: the discriminator's noise levels and the teacher's
block outputs read as tokens."""

from __future__ import annotations

from collections.abc import Callable

import torch

from addlib.course.checks.core import Case, Mistake, run_checks


def check_logit_normal_timesteps(fn: Callable) -> None:
    """Check ``fn(batch_size, mean, std, generator)`` draws integer timesteps whose fraction t / 1000 is
    sigmoid(mean + std * n), n ~ N(0, 1), with one ``torch.randn`` from ``generator``."""
    from addlib.latent_discriminator import logit_normal_timesteps

    def seeded(draw: Callable) -> Callable:
        """``draw`` with a fresh generator from the case's seed, so the reference and the answer see the same
        random numbers."""
        return lambda batch, mean, std, seed: draw(batch, mean, std, torch.Generator().manual_seed(seed))

    def from_normal(to_fraction: Callable) -> Callable:
        return seeded(lambda batch, mean, std, gen: to_fraction(mean, std, torch.randn(batch, generator=gen)))

    def timesteps(fraction: torch.Tensor) -> torch.Tensor:
        return (fraction * 1000).long().clamp(0, 999)

    cases = [Case(f"{batch} timesteps, m = {mean}, s = {std}, seed {seed}", (batch, mean, std, seed))
             for batch, mean, std, seed in [(8, 1.0, 1.0, 0), (64, -1.0, 1.0, 1), (256, 0.5, 2.0, 2)]]
    run_checks(
        "logit_normal_timesteps", seeded(fn), seeded(logit_normal_timesteps), cases,
        mistakes=[
            Mistake("squash the normal draw through torch.sigmoid before scaling: sigmoid(m + s * n) is the "
                    "fraction t / 1000 in (0, 1); without it most draws clip to 0 or 999.",
                    from_normal(lambda m, s, n: timesteps(m + s * n))),
            Mistake("return timesteps, not fractions: multiply sigmoid(m + s * n) by 1000 and take .long(), so "
                    "the UNet and alphas_cumprod can be indexed with them.",
                    from_normal(lambda m, s, n: torch.sigmoid(m + s * n))),
            Mistake("m shifts and s spreads: sigmoid(m + s * n); you swapped them.",
                    from_normal(lambda m, s, n: timesteps(torch.sigmoid(s + m * n)))),
            Mistake("draw n from a normal (torch.randn), not a uniform (torch.rand): the logit-normal is a "
                    "normal pushed through the sigmoid.",
                    seeded(lambda b, m, s, gen: timesteps(torch.sigmoid(m + s * torch.rand(b, generator=gen))))),
            Mistake("truncate with .long() rather than rounding, so t stays below 1000 and matches the library.",
                    from_normal(lambda m, s, n: (torch.sigmoid(m + s * n) * 1000).round().long().clamp(0, 999))),
        ],
    )


def _tiny_unet() -> torch.nn.Module:
    """A UNet of the teacher's kind (cross-attention blocks, two resolutions), small enough to check in a blink."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, attention_head_dim=2,
        cross_attention_dim=8, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")).eval()


def check_teacher_tokens(fn: Callable) -> None:
    """Check ``fn(unet, layers, noisy, timesteps, text_tokens)`` returns the named blocks' outputs as
    (B, h * w, C) tokens, in the order of ``layers``, from one UNet call, and leaves no hook behind."""
    from addlib.latent_discriminator import teacher_tokens, unet_blocks

    unet, gen = _tiny_unet(), torch.Generator().manual_seed(8)

    def case(layers: list[str], batch: int) -> Case:
        return Case(f"blocks {layers}, batch {batch}",
                    (unet, layers, torch.randn(batch, 4, 8, 8, generator=gen),
                     torch.randint(0, 1000, (batch,), generator=gen), torch.randn(batch, 3, 8, generator=gen)))

    def block_outputs(transform: Callable = lambda x: x, order: Callable = lambda layers: layers,
                      at: Callable = lambda t: t) -> Callable:
        """The library's answer, or a mistake: its tokens transformed, its blocks reordered, its timesteps changed."""
        def run(unet, layers, noisy, timesteps, text):
            tokens = teacher_tokens(unet, order(layers), noisy, at(timesteps), text)
            return tuple(transform(block) for block in tokens)
        return run

    def answer(*args):
        tokens = tuple(fn(*args))
        left = [module for module in unet.modules() if module._forward_hooks]
        for module in left:  # so the next case, and the reference, run a clean UNet
            module._forward_hooks.clear()
        if left:
            raise RuntimeError(f"it left forward hooks on {len(left)} block(s) of the UNet: remove each "
                               f"(hook.remove()) in a `finally:` block, or every later call of the teacher runs them")
        return tokens

    names = list(unet_blocks(unet))
    cases = [case(["mid"], 2), case(["down.0", "up.1"], 3), case(["up.1", "down.1", "mid"], 2)]
    with torch.no_grad():
        run_checks(
            "teacher_tokens", answer, block_outputs(), cases,
            mistakes=[
                Mistake("a block's output (B, C, h, w) becomes h * w tokens of C channels: .flatten(2) gives "
                        "(B, C, h * w); transpose its last two dimensions.",
                        block_outputs(lambda x: x.transpose(1, 2))),
                Mistake("keep every position as a token: the heads read (B, h * w, C), not a pooled (B, C).",
                        block_outputs(lambda x: x.mean(1))),
                Mistake("return the tokens in the order of `layers`, not in the order the UNet runs its blocks.",
                        block_outputs(order=lambda layers: sorted(layers, key=names.index))),
                Mistake("run the UNet at the given timesteps: the features of a noisy latent depend on how noisy "
                        "the UNet is told it is.",
                        block_outputs(at=torch.zeros_like)),
            ],
        )
