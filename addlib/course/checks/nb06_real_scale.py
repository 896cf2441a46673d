"""Checkers for notebook 06, ADD on a real Stable Diffusion: a LoRA's parameter count and training memory."""

from __future__ import annotations

from collections.abc import Callable

import torch

from addlib.course.checks.core import Case, Mistake, run_checks


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
