"""LoRA on a diffusers UNet (Hu et al., 2021, "LoRA: Low-Rank Adaptation of Large Language Models", eq. 3):
each adapted weight W becomes W + (alpha / r) B A, with A (r x in) and B (out x r) trained and W frozen, so a
step keeps gradients and Adam's moments for r (in + out) numbers per layer instead of in x out. ADD trains a LoRA
student on a small card (``train_add --lora-rank``); notebook 06 counts what it saves.

peft holds the adapters, as diffusers' own LoRA training scripts do; :func:`merge_lora` folds them back into
plain weights for export.
"""

from __future__ import annotations

import torch
from accelerate import init_empty_weights

LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")  # the attention projections, as diffusers' LoRA scripts


def add_lora(unet: torch.nn.Module, rank: int) -> None:
    """A rank-``rank`` LoRA on ``unet``'s attention projections, starting at zero (B = 0: the UNet unchanged),
    with alpha = rank."""
    try:
        from peft import LoraConfig
    except ImportError:
        raise ImportError("a LoRA student needs peft: pip install peft") from None
    smallest = min(min(module.in_features, module.out_features) for name, module in unet.named_modules()
                   if name.endswith(LORA_TARGETS) and isinstance(module, torch.nn.Linear))
    if rank > smallest:
        raise ValueError(f"lora_rank {rank} is above the rank of the smallest adapted layer ({smallest} features), "
                         f"where a LoRA can add nothing more; use at most {smallest}")
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                target_modules=list(LORA_TARGETS)))


def merge_lora(unet: torch.nn.Module) -> torch.nn.Module:
    """A plain copy of ``unet`` with each LoRA merged into its base weight, W + (alpha / r) B A (Hu et al., 2021,
    eq. 3): the same UNet class and weight names as the teacher's, so any diffusers release loads it.

    peft merges (the same call in every release); the copy is made from the config, not by diffusers'
    ``fuse_lora``/``unload_lora``, which before diffusers 0.28 ignore peft's adapters."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in unet.modules():
        if isinstance(module, BaseTunerLayer):
            module.merge()
    state = {key.replace(".base_layer.", "."): value for key, value in unet.state_dict().items()
             if ".lora_" not in key}
    with init_empty_weights():  # no random initialisation of weights that are overwritten at once
        plain = type(unet).from_config(unet.config)
    plain.load_state_dict(state, assign=True)  # the merged tensors themselves, on their device, in their dtype
    return plain
