"""Train the miniature Stable Diffusion teacher on the captioned-shapes world, on a CPU or a GPU.

    python -m addlib.course.train_teacher                   # the shipped recipe: data/teacher, run folder runs/teacher
    python -m addlib.course.train_teacher --resume          # go on from the last checkpoint after an interruption
    python -m addlib.course.train_teacher --unet-steps 200 --out /tmp/teacher   # a quick look

Two stages, as Stable Diffusion was built (Rombach et al., 2022, section 3):
1. the VAE learns to compress 32x32 images to 8x8x4 latents: squared error, a perceptual distance and a tiny
   KL term. Stable Diffusion's VAE adds LPIPS, a distance between a pretrained network's features; ours is
   the same idea in the shipped tiny ViT's features (``python -m addlib.course.train_evaluators`` trains it first).
   Without it small shapes come back as blobs whose outline the classifier cannot read;
2. with the VAE frozen, the text encoder and the UNet learn to denoise latents conditioned on the caption,
   with v-prediction on a zero-terminal-SNR schedule (Salimans & Ho, 2022; Lin et al., 2024), on captions
   that leave attributes out as real captions do (``omit_prob``), captions dropped 10% of the time so
   classifier-free guidance works (Ho & Salimans, 2022), and an EMA of the UNet.

Every random number of step ``s`` comes from a generator seeded with ``(seed, s)`` and the images are
``make_shapes(..., start=s * batch_size)``, so a resumed run repeats exactly what an uninterrupted one does.
Checkpoints go to ``--run-dir`` every ``checkpoint_every`` steps; the finished pipeline goes to ``--out``
with ``recipe.json`` (configuration, time taken, final losses).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from addlib.evaluators import load_feature_network
from addlib.forward_process import add_noise, get_velocity
from addlib.loading import TEACHER_DIR, save_pipeline
from addlib.miniature import VAE_CONFIG, build_pipeline
from addlib.pipeline import check_image_size, encode_latents, encode_prompts, posterior_sample
from addlib.shapes import SEEDS, make_shapes
from addlib.utils.commands import OneLineParser, TrainingConfig, parse_run_arguments, run_command
from addlib.utils.runs import Run, ema_update, lr_at, set_lr, step_generator


@dataclass
class Config(TrainingConfig):
    seed: int = SEEDS["teacher"]  # fixes every draw: shapes, noise, timesteps, initial weights
    resolution: int = 32  # of the images, in pixels (the VAE's latents are 4x smaller)
    # stage 1: the VAE
    vae_steps: int = 3000
    vae_batch_size: int = 32  # images per VAE step
    vae_lr: float = 1e-3  # the VAE's peak learning rate (warm-up, then cosine decay)
    kl_weight: float = 1e-6  # as in Stable Diffusion's VAE: the latents stay close to the images
    perceptual_weight: float = 0.1  # of the distance in the tiny ViT's features, added to the VAE's pixel loss
    # stage 2: text encoder + UNet
    unet_steps: int = 7000
    batch_size: int = 64  # captioned images per UNet step
    lr: float = 5e-4  # the UNet's and text encoder's peak learning rate (warm-up, then cosine decay to 10%)
    warmup_steps: int = 250  # linear warm-up of both stages' learning rates
    omit_prob: float = 0.5  # captions leave out each attribute but the shape this often (see addlib.shapes)
    uncond_prob: float = 0.1  # captions dropped to the empty prompt this often, so classifier-free guidance can work
    ema_decay: float = 0.999  # of the UNet's weights; the EMA is what gets exported
    grad_clip: float = 1.0  # the UNet's gradient norm is clipped to this
    checkpoint_every: int = 500  # steps between checkpoints in --run-dir (a run resumes from the last)

    def check(self) -> None:
        """The miniature VAE halves the image once per block but the last: a side it cannot take back is refused
        before any training."""
        check_image_size("resolution", self.resolution, 2 ** (len(VAE_CONFIG["block_out_channels"]) - 1))


PERCEPTUAL_LAYERS = (1, 3, 5)


def perceptual_distance(feature_network, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """LPIPS-style (Zhang et al., 2018): squared distance of unit-normalised token features, summed over layers."""
    def unit(tokens: torch.Tensor) -> torch.Tensor:
        return tokens / (tokens.norm(dim=-1, keepdim=True) + 1e-6)
    pairs = zip(feature_network.features(a, PERCEPTUAL_LAYERS), feature_network.features(b, PERCEPTUAL_LAYERS))
    return sum((unit(x) - unit(y)).pow(2).sum(-1).mean() for x, y in pairs)


def vae_loss(vae, images: torch.Tensor, generator: torch.Generator, config: Config, feature_network) -> torch.Tensor:
    posterior = vae.encode(images).latent_dist
    latents = posterior_sample(posterior, generator)
    reconstruction = vae.decode(latents).sample
    loss = F.mse_loss(reconstruction, images) + config.kl_weight * posterior.kl().mean()
    if config.perceptual_weight:
        loss = loss + config.perceptual_weight * perceptual_distance(feature_network, reconstruction, images)
    return loss


def denoising_loss(pipe, images, captions, generator, config: Config) -> torch.Tensor:
    """The latent-diffusion loss with v-prediction: ||v_theta(z_t, t, c) - v||^2 (Salimans & Ho, 2022)."""
    with torch.no_grad():
        latents = encode_latents(pipe.vae, images, generator)  # (B, 4, 8, 8)
    keep = torch.rand(len(captions), generator=generator) >= config.uncond_prob
    captions = [c if k else "" for c, k in zip(captions, keep.tolist())]
    text_embeddings = encode_prompts(pipe, captions)  # (B, 16, 64), with gradients for the text encoder
    alphas_cumprod = pipe.scheduler.alphas_cumprod
    timesteps = torch.randint(0, len(alphas_cumprod), (len(images),), generator=generator)
    noise = torch.randn(latents.shape, generator=generator)
    noisy = add_noise(latents, noise, timesteps, alphas_cumprod)
    prediction = pipe.unet(noisy, timesteps, text_embeddings).sample
    return F.mse_loss(prediction, get_velocity(latents, noise, timesteps, alphas_cumprod))


def latent_scaling_factor(vae, resolution: int, seed: int) -> float:
    """1 / std of the VAE's latents, so the diffusion sees unit-variance latents (SD's 0.18215 is this)."""
    images, _, _ = make_shapes(2048, seed=seed + 1, resolution=resolution)
    with torch.no_grad():
        return 1.0 / vae.encode(images).latent_dist.mean.std().item()


def train(config: Config, out: Path, run_dir: Path, resume: bool = False) -> None:
    pipe = build_pipeline(config.seed)
    ema_unet = copy.deepcopy(pipe.unet).requires_grad_(False)
    vae_opt = torch.optim.AdamW(pipe.vae.parameters(), lr=config.vae_lr)
    unet_opt = torch.optim.AdamW([*pipe.unet.parameters(), *pipe.text_encoder.parameters()], lr=config.lr,
                                 weight_decay=0.01)
    modules = {"vae": pipe.vae, "text_encoder": pipe.text_encoder, "unet": pipe.unet, "ema_unet": ema_unet}
    run = Run(run_dir, modules, {"vae": vae_opt, "unet": unet_opt}, config, resume, vae_step=0, unet_step=0,
              scaling_factor=None)
    state = run.state

    # Stage 1: the VAE.
    feature_network = load_feature_network().requires_grad_(False) if config.perceptual_weight else None
    for step in run.steps("vae_step", config.vae_steps, "VAE"):
        generator = step_generator(config.seed, step, stage=1)
        images, _, _ = make_shapes(config.vae_batch_size, config.seed, config.resolution,
                                   start=step * config.vae_batch_size)
        set_lr(vae_opt, lr_at(step, config.vae_steps, config.vae_lr, config.warmup_steps))
        loss = vae_loss(pipe.vae, images, generator, config, feature_network)
        run.check_loss(loss, "VAE", step)
        vae_opt.zero_grad(set_to_none=True)
        loss.backward()
        vae_opt.step()
        run.advance(step, config.checkpoint_every, {"stage": "vae", "loss": loss.item()} if step % 50 == 0 else None)

    # Stage 2: text encoder + UNet on the frozen VAE's latents.
    pipe.vae.requires_grad_(False)
    if state["scaling_factor"] is None:
        state["scaling_factor"] = latent_scaling_factor(pipe.vae, config.resolution, config.seed)
    pipe.vae.register_to_config(scaling_factor=state["scaling_factor"])
    for step in run.steps("unet_step", config.unet_steps, "UNet"):
        generator = step_generator(config.seed, step, stage=2)
        # Images of stage 2 come after those of stage 1, so no image is seen twice.
        start = config.vae_steps * config.vae_batch_size + step * config.batch_size
        images, captions, _ = make_shapes(config.batch_size, config.seed, config.resolution, start=start,
                                          omit_prob=config.omit_prob)
        set_lr(unet_opt, lr_at(step, config.unet_steps, config.lr, config.warmup_steps))
        loss = denoising_loss(pipe, images, captions, generator, config)
        run.check_loss(loss, "UNet", step)
        unet_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet_opt.param_groups[0]["params"], config.grad_clip)
        unet_opt.step()
        ema_update(ema_unet.parameters(), pipe.unet.parameters(), config.ema_decay)
        run.advance(step, config.checkpoint_every, {"stage": "unet", "loss": loss.item()} if step % 50 == 0 else None)
    run.checkpoint()
    export(pipe, ema_unet, run, out)


def export(pipe, ema_unet, run: Run, out: Path) -> None:
    """Save the pipeline with the EMA UNet in fp16 (checked to change outputs negligibly) and its recipe."""
    pipe.unet.load_state_dict(ema_unet.state_dict())
    reference = _probe_output(pipe)
    pipe.to(torch.float16)
    out.mkdir(parents=True, exist_ok=True)
    save_pipeline(pipe, out)
    pipe.to(torch.float32)
    log = run.state["log"]
    run.write_recipe(out, "addlib.course.train_teacher", pipe.device, scaling_factor=run.state["scaling_factor"],
                     final_losses={stage: [e["loss"] for e in log if e["stage"] == stage][-10:]
                                   for stage in ("vae", "unet")},
                     fp16_storage_max_abs_change_of_unet_output=(_probe_output(pipe) - reference).abs().max().item())


def _probe_output(pipe) -> torch.Tensor:
    """The UNet's output on fixed inputs, to measure what storing the weights in fp16 changes."""
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(8, 4, 8, 8, generator=generator)
    with torch.no_grad():
        text = encode_prompts(pipe, ["a small red circle in the center on a black background"] * 8)
        return pipe.unet(latents, torch.full((8,), 500), text).sample.float()


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(prog="python -m addlib.course.train_teacher", description=__doc__.split("\n\n")[0])
    train(*parse_run_arguments(parser, argv, Config, TEACHER_DIR, Path("runs/teacher")))


if __name__ == "__main__":
    run_command(main)
