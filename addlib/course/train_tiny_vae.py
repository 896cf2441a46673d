"""Train a tiny VAE for the miniature: TAESD's recipe, an ``AutoencoderTiny`` that imitates the teacher's VAE.

    python -m addlib.course.train_tiny_vae            # the shipped recipe: data/tiny_vae, run folder runs/tiny_vae
    python -m addlib.course.train_tiny_vae --resume   # go on from the last checkpoint after an interruption

Stable Diffusion's VAE decoder is the most memory-hungry part of a step that decodes to pixels (ADD's
discriminator and pixel-space distillation loss) and a large part of every streamed frame's time. TAESD
(Bohan, 2023) replaces it with plain convolutions trained to imitate it. Here, on the teacher VAE's scaled
latents z of shapes images:

- the decoder learns ``decode_tiny(z) ~ decode_vae(z)``, with z also nudged off the images' latents by a
  little noise, since students and streams hand the decoder latents that are not exactly a real image's;
- the encoder learns ``encode_tiny(x) ~ z``, the posterior mean, scaled.

Squared errors, AdamW with a warmed-up cosine learning rate; the shapes seed is 3 (the teacher's is 0, the
evaluators' 1, ADD's 2, the references' 7). ``python -m addlib.bench teacher`` measures the result as its
"tiny VAE round trip" row.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderTiny

from addlib.loading import TEACHER_DIR, TINY_VAE_DIR, load_pipeline
from addlib.miniature import TINY_VAE_CONFIG
from addlib.pipeline import posterior_sample
from addlib.shapes import SEEDS, make_shapes
from addlib.utils.commands import OneLineParser, TrainingConfig, parse_run_arguments, run_command
from addlib.utils.runs import Run, lr_at, set_lr, step_generator


@dataclass
class Config(TrainingConfig):
    seed: int = SEEDS["tiny_vae"]  # fixes every draw: shapes, latents, noise, initial weights
    steps: int = 2000  # training steps
    batch_size: int = 32  # images per step
    lr: float = 2e-3  # peak learning rate (warm-up, then cosine decay to 10%)
    warmup_steps: int = 100  # linear warm-up of the learning rate
    latent_noise: float = 0.3  # each latent is nudged by noise of a std drawn from [0, latent_noise]
    checkpoint_every: int = 500  # steps between checkpoints in --run-dir (a run resumes from the last)


def tiny_vae_loss(tiny: AutoencoderTiny, vae, images: torch.Tensor, generator: torch.Generator,
                  config: Config) -> torch.Tensor:
    """Squared error of the tiny decoder to the VAE's decoding, plus of the tiny encoder to the VAE's latents."""
    with torch.no_grad():
        posterior, scale = vae.encode(images).latent_dist, vae.config.scaling_factor
        latents = posterior_sample(posterior, generator) * scale
        std = config.latent_noise * torch.rand(len(images), 1, 1, 1, generator=generator)
        latents = latents + std * torch.randn(latents.shape, generator=generator)
        target = vae.decode(latents / scale).sample
    decoded = tiny.decode(latents).sample
    encoded = tiny.encode(images).latents
    return F.mse_loss(decoded, target) + F.mse_loss(encoded, posterior.mean * scale)


def train(config: Config, out: Path, run_dir: Path, resume: bool = False) -> None:
    vae = load_pipeline(TEACHER_DIR, device="cpu").vae.requires_grad_(False)
    torch.manual_seed(config.seed)
    tiny = AutoencoderTiny(**TINY_VAE_CONFIG)
    optimizer = torch.optim.AdamW(tiny.parameters(), lr=config.lr)
    run = Run(run_dir, {"tiny": tiny}, {"tiny": optimizer}, config, resume, step=0)
    for step in run.steps("step", config.steps, "tiny VAE"):
        images, _, _ = make_shapes(config.batch_size, config.seed, start=step * config.batch_size)
        set_lr(optimizer, lr_at(step, config.steps, config.lr, config.warmup_steps))
        loss = tiny_vae_loss(tiny, vae, images, step_generator(config.seed, step, stage=4), config)
        run.check_loss(loss, "tiny VAE", step, fix="lower --lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        run.advance(step, config.checkpoint_every, {"loss": loss.item()} if step % 50 == 0 else None)
    run.checkpoint()
    tiny.save_pretrained(out, safe_serialization=True)
    run.write_recipe(out, "addlib.course.train_tiny_vae", parameters=sum(p.numel() for p in tiny.parameters()),
                     final_losses=[e["loss"] for e in run.state["log"][-10:]])


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(prog="python -m addlib.course.train_tiny_vae", description=__doc__.split("\n\n")[0])
    train(*parse_run_arguments(parser, argv, Config, TINY_VAE_DIR, Path("runs/tiny_vae")))


if __name__ == "__main__":
    run_command(main)
