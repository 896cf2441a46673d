"""Checkers for notebook 04, the discriminator and R1: the hinge loss and the R1 penalty."""

from __future__ import annotations

from collections.abc import Callable

import torch

from addlib.course.checks.core import Case, CheckFailed, Mistake, run_checks


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
