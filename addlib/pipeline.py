"""The pipeline's parts every path shares: prompts to the text encoder's embeddings, images to the scaled latents
the UNet works in and back, and one denoising call read as (x0, epsilon).

A Stable Diffusion pipeline (Rombach et al., 2022) works in the latent space of its VAE: an image (3, H, W) in
[-1, 1] is encoded to latents (4, H / f, W / f), scaled by the VAE's ``scaling_factor`` so they have about unit
variance, and the UNet denoises those under the text encoder's embeddings of the prompt. The sampler
(:mod:`addlib.sampling`), the distillation loss (:mod:`addlib.distillation`), the trainers and the benchmarks
all go through these functions, so each step is written once.
"""

from __future__ import annotations

import torch

from addlib.forward_process import predict_x0_and_epsilon
from addlib.loading import to_model
from addlib.miniature import check_prompts
from addlib.utils.errors import check_images


def text_encoder_output(pipe, prompts: list[str]):
    """The text encoder's output for ``prompts``, checked and padded as below: ``[0]`` is
    :func:`encode_prompts`' (B, L, D), ``.pooler_output`` :func:`pooled_prompt_embeddings`' (B, D). One call
    serves a caller that needs both."""
    check_prompts(pipe.tokenizer, prompts)
    ids = pipe.tokenizer(
        prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length, return_tensors="pt"
    ).input_ids  # (B, L)
    encoder = pipe.text_encoder
    if encoder.dtype != torch.float64:
        return encoder(ids.to(encoder.device))
    # transformers 4.x builds CLIP's causal mask in torch's default dtype, which cannot hold float64's lowest
    # value: build it in float64 too.
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return encoder(ids.to(encoder.device))
    finally:
        torch.set_default_dtype(default)


def encode_prompts(pipe, prompts: list[str]) -> torch.Tensor:
    """The text encoder's last hidden state for ``prompts``, (B, L, D), as the pipeline computes it.

    Prompts are checked first (:func:`addlib.miniature.check_prompts`: an unknown word or a too-long prompt is
    a one-line error, not a silently mangled condition), then padded to the tokenizer's ``model_max_length``.
    """
    return text_encoder_output(pipe, prompts)[0]


def pooled_prompt_embeddings(pipe, prompts: list[str]) -> torch.Tensor:
    """One vector per prompt (B, D): CLIP's pooled output, the end-of-text token's final state.

    The UNet reads every token (:func:`encode_prompts`); a discriminator head needs one vector per image.
    """
    return text_encoder_output(pipe, prompts).pooler_output


def vae_factor(vae) -> int:
    """Pixels per latent along each side: the VAE halves the size once per block but the last (diffusers'
    ``vae_scale_factor``; 8 for Stable Diffusion, 4 for the miniature)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def image_size(pipe) -> int:
    """The side, in pixels, of the images ``pipe``'s UNet was trained on: its latent size times the VAE's factor."""
    return pipe.unet.config.sample_size * vae_factor(pipe.vae)


def posterior_sample(posterior, generator: torch.Generator) -> torch.Tensor:
    """A draw z = mean + std * eps from the VAE's diagonal-Gaussian posterior, eps from ``generator``, a CPU
    generator, so that a seed gives the same latents on any device."""
    return posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator).to(posterior.mean)


def check_image_size(name: str, value: int, factor: int) -> None:
    """The VAE halves the size ``log2(factor)`` times, so an image side must be a multiple of ``factor``."""
    if value < 1 or value % factor:
        nearest = max(factor, factor * round(value / factor))
        raise ValueError(f"{name} {value} is not a positive multiple of the VAE's downsampling factor {factor}; "
                         f"the nearest valid {name} is {nearest}")


def encode_latents(vae, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Images (B, 3, H, W) in [-1, 1] to the scaled latents the UNet works in: a draw from the VAE's posterior
    with ``generator`` (:func:`posterior_sample`, as diffusers' img2img and training encode), its mean without
    one, or a tiny VAE's deterministic code. The latents come back on the VAE's device, in its dtype."""
    check_images("images", images)
    encoded = vae.encode(to_model(images, vae))
    if hasattr(encoded, "latents"):  # AutoencoderTiny
        latents = encoded.latents
    else:
        posterior = encoded.latent_dist
        latents = posterior.mean if generator is None else posterior_sample(posterior, generator)
    return latents * vae.config.scaling_factor


def decode_latents(pipe, latents: torch.Tensor, vae=None) -> torch.Tensor:
    """Latents (B, 4, h, w) to images (B, 3, H, W) in [-1, 1] through the pipeline's VAE, differentiably.

    ``vae`` replaces it, e.g. an ``AutoencoderTiny`` trained to decode the same latents with far less memory.
    The images come back on the VAE's device, in its dtype.
    """
    vae = pipe.vae if vae is None else vae
    if latents.ndim != 4 or latents.shape[1] != vae.config.latent_channels:
        raise ValueError(f"latents must have shape (B, {vae.config.latent_channels}, h, w) for this VAE, got "
                         f"{tuple(latents.shape)}")
    return vae.decode(to_model(latents, vae) / vae.config.scaling_factor).sample


def denoise(unet, scheduler, noisy: torch.Tensor, timesteps: torch.Tensor, embeddings: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, epsilon) that ``unet`` predicts from ``noisy`` latents at ``timesteps``: the teacher's target and
    the student's one-step sample both come from here, read with ``scheduler``'s schedule and prediction type.
    The inputs go to ``unet``'s device and dtype, and so do the results."""
    noisy = to_model(noisy, unet)
    output = unet(noisy, to_model(timesteps, unet), encoder_hidden_states=to_model(embeddings, unet)).sample
    # The schedule stays on the CPU: per_sample checks the timesteps' range there, then moves the coefficients.
    return predict_x0_and_epsilon(output, noisy, timesteps, scheduler.alphas_cumprod, scheduler.config.prediction_type)
