"""LADD's discriminator: heads on the teacher's own features of re-noised latents (Sauer et al., 2024, section 3).

ADD's discriminator reads decoded images through a frozen ViT trained for something else (DINOv2; here the
shipped TinyViT). It can punish only what that network's features show, and at 32 pixels a ViT of 4x4
patches hardly tells a small circle from a small square. Latent Adversarial Diffusion Distillation
(arXiv 2403.12015) swaps it for the *teacher*, a network trained to denoise exactly these images at every
noise level:

    x_t = alpha_t x + sigma_t eps,     t ~ logit-normal(m, s) (in units of the 1,000 training timesteps)
    D_k(x) = < cls_k(h_k(U_k(x_t; t, c_text))), W [c_text, e(t)] > / sqrt(cmap_dim)      (one logit per token)

U_k is the output of block k of the frozen teacher UNet run on the re-noised latents x_t, with the caption's
tokens as its cross-attention context, exactly as the teacher denoises; e(t) is a sinusoidal embedding of the
noise level, so each head knows how much the noise hides. Real latents z0 and the student's x_theta are
noised with the same t and eps, image for image (``paired_generators``), so the heads see them differ in
content only.

LADD's two reasons to prefer it, both of which the miniature can test: the teacher's features see what the
generator draws at every scale, and everything stays in latent space (no VAE decode for the adversarial
loss). The noise level chooses what the heads attend to: high t leaves only global layout (how many shapes,
where), low t the fine detail (corners, edges). LADD draws t from a logit-normal and shifts it towards high
noise (m = 1, s = 1, ``T_MEAN``, ``T_STD``).

The losses are ADD's: hinge for the heads and the generator, and R1 on the heads' *input features*
(:func:`addlib.discriminator.r1_penalty`), so ``r1_weight`` means what it means for the ViT discriminator.
The feature maps (B, C, h, w) are read as h*w tokens of C channels by the same heads as ADD's
(:class:`addlib.discriminator.DiscriminatorHead`); the teacher stays frozen, and gradients flow through it to
the student's latents.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from addlib.discriminator import Discriminator, DiscriminatorHead, check_heads
from addlib.forward_process import add_noise
from addlib.loading import to_model

T_MEAN, T_STD = 1.0, 1.0  # LADD's logit-normal for the discriminator's noise levels, shifted to high noise
NOISE_LEVEL_DIM = 32  # sinusoidal features of t that the heads' projection reads


def unet_blocks(unet: nn.Module) -> dict[str, nn.Module]:
    """The teacher UNet's blocks a head can read, by name: ``down.0`` ... , ``mid``, ``up.0`` ... (diffusers'
    ``down_blocks``, ``mid_block`` and ``up_blocks``, in the order the UNet runs them)."""
    return {**{f"down.{i}": block for i, block in enumerate(unet.down_blocks)}, "mid": unet.mid_block,
            **{f"up.{i}": block for i, block in enumerate(unet.up_blocks)}}


def block_channels(unet: nn.Module) -> dict[str, int]:
    """The number of channels each block of :func:`unet_blocks` puts out."""
    out = list(unet.config.block_out_channels)
    return {**{f"down.{i}": c for i, c in enumerate(out)}, "mid": out[-1],
            **{f"up.{i}": c for i, c in enumerate(reversed(out))}}


def teacher_tokens(unet: nn.Module, layers: Sequence[str], noisy: torch.Tensor, timesteps: torch.Tensor,
                   text_tokens: torch.Tensor) -> list[torch.Tensor]:
    """The outputs U_k of the named blocks (:func:`unet_blocks`) when ``unet`` denoises ``noisy`` (B, 4, h, w) at
    ``timesteps`` (B,) under the cross-attention context ``text_tokens`` (B, L, D), read as tokens: one
    (B, h_k * w_k, C_k) tensor per layer, in the order of ``layers``. Forward hooks catch the blocks' outputs as
    the UNet runs once, and are removed even if it fails. The UNet reads the inputs on its device, where the tokens
    come back."""
    blocks, outputs = unet_blocks(unet), {}

    def keep(block, _inputs, output):
        output = output[0] if isinstance(output, tuple) else output  # down blocks return (h, residuals)
        outputs[block] = output.flatten(2).transpose(1, 2)  # (B, C, h, w) -> (B, h * w, C)

    hooks = [blocks[layer].register_forward_hook(keep) for layer in layers]
    try:
        unet(to_model(noisy, unet), to_model(timesteps, unet), encoder_hidden_states=to_model(text_tokens, unet))
    finally:
        for hook in hooks:
            hook.remove()
    return [outputs[blocks[layer]] for layer in layers]


def logit_normal_timesteps(batch_size: int, mean: float, std: float, generator: torch.Generator | None = None,
                           num_train_timesteps: int = 1000) -> torch.Tensor:
    """Integer timesteps (B,) whose fraction t / T is logit-normal: sigmoid(mean + std * n), n ~ N(0, 1)."""
    fraction = torch.sigmoid(mean + std * torch.randn(batch_size, generator=generator))
    return (fraction * num_train_timesteps).long().clamp(0, num_train_timesteps - 1)


def noise_level_embedding(timesteps: torch.Tensor, dim: int = NOISE_LEVEL_DIM) -> torch.Tensor:
    """Sinusoidal features (B, dim) of integer timesteps, as a transformer encodes positions."""
    frequencies = torch.exp(-math.log(10_000) * torch.arange(dim // 2, device=timesteps.device) / (dim // 2))
    angles = timesteps.float()[:, None] * frequencies[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def check_logit_normal(mean: float, std: float) -> None:
    """Refuse, in one line, a logit-normal no t can be drawn from."""
    if not math.isfinite(mean):
        raise ValueError(f"the discriminator's noise-level mean m must be a finite number (LADD's is {T_MEAN}; "
                         f"higher shifts t towards noise), got {mean}")
    if not (math.isfinite(std) and std > 0):
        raise ValueError(f"the discriminator's noise-level spread s must be a positive number (LADD's is {T_STD}), "
                         f"got {std}")


class LatentDiscriminator(Discriminator):
    """Trainable heads on the outputs of chosen blocks of a frozen teacher UNet, run on re-noised latents.

    ``layers`` names blocks of :func:`unet_blocks` (e.g. ``["down.1", "mid", "up.1"]``); ``text_dim`` is the
    size of the pooled text embedding the heads are conditioned on, beside the noise level; ``alphas_cumprod``
    is the teacher's schedule, which the latents are re-noised on.
    """

    reads = "latents"

    def __init__(self, unet: nn.Module, layers: Sequence[str], text_dim: int, alphas_cumprod: torch.Tensor,
                 cmap_dim: int = 64, t_mean: float = T_MEAN, t_std: float = T_STD, verdict: str = "tokens"):
        super().__init__()
        check_heads(cmap_dim, verdict)
        blocks, channels = unet_blocks(unet), block_channels(unet)
        layers = list(layers)
        unknown = [layer for layer in layers if layer not in blocks]
        if unknown or not layers or len(set(layers)) != len(layers):
            raise ValueError(f"teacher feature layers {layers} must be distinct block names of the teacher UNet: "
                             f"{', '.join(blocks)}")
        check_logit_normal(t_mean, t_std)
        # The teacher's, frozen by the trainer. Not registered as a submodule: it is saved, moved and trained with
        # the teacher, never with the heads.
        object.__setattr__(self, "unet", unet)
        self.layers, self.t_mean, self.t_std, self.verdict = layers, t_mean, t_std, verdict
        self.register_buffer("alphas_cumprod", alphas_cumprod.detach().float().clone(), persistent=False)
        self.heads = nn.ModuleList(DiscriminatorHead(channels[layer], text_dim + NOISE_LEVEL_DIM, cmap_dim)
                                   for layer in layers)

    def features(self, latents: torch.Tensor, text_tokens: torch.Tensor, generator: torch.Generator | None = None,
                 timesteps: torch.Tensor | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
        """U_k of the latents (B, 4, h, w) re-noised to t ~ logit-normal (or to ``timesteps`` (B,) if given): one
        (B, h_k * w_k, C_k) tensor per head, and the timesteps t (B,). ``text_tokens`` (B, L, D) is the UNet's
        cross-attention context."""
        if timesteps is None:
            timesteps = logit_normal_timesteps(len(latents), self.t_mean, self.t_std, generator,
                                               len(self.alphas_cumprod)).to(latents.device)
        noise = torch.randn(latents.shape, generator=generator).to(latents)
        noisy = add_noise(latents, noise, timesteps, self.alphas_cumprod)
        return teacher_tokens(self.unet, self.layers, noisy, timesteps, text_tokens), timesteps

    def heads_logits(self, features: list[torch.Tensor], pooled: torch.Tensor, timesteps: torch.Tensor
                     ) -> list[torch.Tensor]:
        """D_k(U_k) for every head, conditioned on the pooled text and the noise level: (B, T_k) token logits."""
        condition = torch.cat([pooled, noise_level_embedding(timesteps).to(pooled)], dim=1)
        return [head(tokens, condition) for head, tokens in zip(self.heads, features)]

    def condition(self, images: torch.Tensor, text_tokens: torch.Tensor, pooled: torch.Tensor) -> dict:
        """The caption's tokens (the teacher's cross-attention context) and its pooled embedding (the heads'
        condition, beside the noise level); the real images themselves play no part."""
        return {"text_tokens": text_tokens, "pooled": pooled}

    def read(self, latents: torch.Tensor, generator: torch.Generator | None = None, *, text_tokens: torch.Tensor,
             pooled: torch.Tensor) -> tuple:
        features, timesteps = self.features(latents, text_tokens, generator)
        return features, (pooled, timesteps)

    def forward(self, latents: torch.Tensor, text_tokens: torch.Tensor, pooled: torch.Tensor,
                generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """D_k of the latents (B, 4, h, w), re-noised: a list of (B, T_k) token logits."""
        features, timesteps = self.features(latents, text_tokens, generator)
        return self.heads_logits(features, pooled, timesteps)
