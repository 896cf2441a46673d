"""Adversarial Diffusion Distillation: train a one-to-four-step student from the teacher (Sauer et al., 2023).

    python -m addlib.train_add                          # the miniature student: data/student, run folder runs/add
    python -m addlib.train_add --resume                 # go on from the last checkpoint after an interruption
    python -m addlib.train_add --distillation-weight 0 --out runs/adv-only --run-dir runs/adv-only-run
    accelerate launch -m addlib.train_add ...           # the same loop on several GPUs or processes

Each step follows the paper's Fig. 2 and section 3:

1. real images x0 with their captions; the VAE's latents z0; a student timestep s drawn from ``T_student`` and
   z_s = alpha_s z0 + sigma_s eps, the student's own forward process (zero terminal SNR: s = 999 is pure noise);
2. the student, initialised from the teacher's UNet (Table 1c: a random init fails), predicts x0 in one step:
   z_theta = alpha_s z_s - sigma_s v_theta(z_s, s, c);
3. generator update: L = L_adv^G(decode(z_theta)) + lambda * L_distill(z_theta), lambda = 2.5
   (:mod:`addlib.discriminator`, :mod:`addlib.distillation`);
4. discriminator update: the hinge loss on x0 against decode(z_theta), plus gamma * R1 on the real features;
5. an exponential moving average of the student's weights, which is what gets exported.

Every random number of step ``s`` on process ``p`` comes from a generator seeded with ``(seed, s, p)`` and the
images are ``make_shapes(..., start=(s * processes + p) * batch_size)``, so a resumed run repeats exactly what
an uninterrupted one does.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from addlib.checkpoints import command_line, parse_run_arguments, resume_checkpoint, save_checkpoint
from addlib.discriminator import ProjectedDiscriminator, discriminator_loss, hinge_generator_loss, paired_generators
from addlib.distillation import WEIGHTINGS, decode_latents, denoise, distillation_loss
from addlib.evaluators import load_feature_network
from addlib.forward_process import add_noise
from addlib.miniature import DATA_DIR, TEACHER_DIR, load_pipeline, save_tokenizer_files
from addlib.sampling import encode_prompts, text_encoder_output
from addlib.shapes import make_shapes
from addlib.train_teacher import step_generator

STUDENT_DIR = DATA_DIR / "student"
ADD_SEED = 2  # the shapes seed of ADD training: the teacher's is 0, the evaluators' 1, the references' 7


@dataclass
class Config:
    seed: int = ADD_SEED
    teacher: str = "miniature"  # the shipped teacher (data/teacher), or a pipeline folder or hub id
    steps: int = 2000
    batch_size: int = 32
    student_timesteps: str = "999,749,499,249"  # T_student, the paper's four
    # the generator (student) and its loss
    lr: float = 1e-5
    adversarial_weight: float = 1.0  # 0 trains with distillation alone (the ablation)
    distillation_weight: float = 2.5  # lambda; 0 trains with the adversarial loss alone
    weighting: str = "exponential"  # c(t) of L_distill: exponential, sds or nfsd
    teacher_guidance_scale: float = 3.0
    ema_decay: float = 0.99
    # the discriminator
    discriminator_lr: float = 1e-3
    r1_weight: float = 10.0  # gamma
    discriminator_layers: str = "1,3,5"  # blocks of the feature network that get a head
    augment: str = "translation"  # DiffAugment policy; the miniature keeps only what leaves captions true
    # both optimisers: Adam with beta1 = 0, as GANs since StyleGAN
    adam_beta1: float = 0.0
    adam_beta2: float = 0.99
    grad_clip: float = 1.0
    checkpoint_every: int = 250
    mixed_precision: str = "no"  # "fp16" or "bf16" on a GPU

    def timesteps(self) -> list[int]:
        """T_student as integers, checked: distinct, in [0, 999], from high to low."""
        usage = (f"student_timesteps must be integers in [0, 999] from high to low, like 999,749,499,249; "
                 f"got {self.student_timesteps!r}")
        try:
            values = [int(v) for v in self.student_timesteps.split(",")]
        except ValueError:
            raise ValueError(usage) from None
        if any(not 0 <= v < 1000 for v in values) or values != sorted(values, reverse=True):
            raise ValueError(usage)
        if len(set(values)) != len(values):
            raise ValueError(f"student_timesteps repeats a timestep: {self.student_timesteps!r}")
        return values

    def check(self) -> None:
        self.timesteps()
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {self.weighting!r}; choose one of {', '.join(WEIGHTINGS)}")
        if self.adversarial_weight == 0 and self.distillation_weight == 0:
            raise ValueError("both loss weights are 0: the student would learn nothing")


class ADDTrainer:
    """The models, optimisers and one training step; :func:`train` adds the loop, checkpoints and export."""

    def __init__(self, config: Config, accelerator: Accelerator):
        config.check()
        self.config, self.accelerator = config, accelerator
        device = accelerator.device
        self.teacher = load_pipeline(TEACHER_DIR if config.teacher == "miniature" else config.teacher, device=device)
        for part in (self.teacher.unet, self.teacher.vae, self.teacher.text_encoder):
            part.requires_grad_(False)
        torch.manual_seed(config.seed)  # the discriminator heads' initial weights
        self.student = copy.deepcopy(self.teacher.unet).requires_grad_(True)
        self.ema = copy.deepcopy(self.student).requires_grad_(False)
        layers = [int(v) for v in config.discriminator_layers.split(",")]
        augment = tuple(p for p in config.augment.split(",") if p)
        text_dim = self.teacher.text_encoder.config.projection_dim
        self.discriminator = ProjectedDiscriminator(load_feature_network().to(device), layers, text_dim,
                                                    augment=augment)
        betas = (config.adam_beta1, config.adam_beta2)
        self.student_optimizer = torch.optim.Adam(self.student.parameters(), lr=config.lr, betas=betas)
        self.discriminator_optimizer = torch.optim.Adam(self.discriminator.heads.parameters(),
                                                        lr=config.discriminator_lr, betas=betas)
        (self.student, self.discriminator, self.student_optimizer, self.discriminator_optimizer) = accelerator.prepare(
            self.student, self.discriminator, self.student_optimizer, self.discriminator_optimizer)
        self.student_timesteps = torch.tensor(config.timesteps())
        with torch.no_grad():
            self.empty = encode_prompts(self.teacher, [""])

    def modules(self) -> dict:
        unwrap = self.accelerator.unwrap_model
        return {"student": unwrap(self.student), "ema": self.ema, "heads": unwrap(self.discriminator).heads}

    def optimizers(self) -> dict:
        return {"student": self.student_optimizer, "discriminator": self.discriminator_optimizer}

    def batch(self, step: int) -> tuple[torch.Tensor, list[str]]:
        """This process's real images (B, 3, H, W) and captions for ``step``: fresh images every step."""
        index = step * self.accelerator.num_processes + self.accelerator.process_index
        images, captions, _ = make_shapes(self.config.batch_size, self.config.seed, start=index * self.config.batch_size)
        return images.to(self.accelerator.device), captions

    def step(self, step: int) -> dict[str, float]:
        """One generator and one discriminator update; returns the losses for the log."""
        config, accelerator, teacher = self.config, self.accelerator, self.teacher
        generator = step_generator(config.seed, step * accelerator.num_processes + accelerator.process_index, 3)
        images, captions = self.batch(step)
        with torch.no_grad():
            posterior = teacher.vae.encode(images).latent_dist
            latents = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator).to(images)
            latents = latents * teacher.vae.config.scaling_factor
            encoded = text_encoder_output(teacher, captions)  # one call: tokens for the UNets, pooled for D
            text, pooled = encoded[0], encoded.pooler_output
            image_embedding = accelerator.unwrap_model(self.discriminator).image_embedding(images)
        pick = torch.randint(len(self.student_timesteps), (len(images),), generator=generator)
        timesteps = self.student_timesteps[pick].to(images.device)
        noise = torch.randn(latents.shape, generator=generator).to(latents)
        noisy = add_noise(latents, noise, timesteps, teacher.scheduler.alphas_cumprod.to(latents.device))

        # The generator update: fool the heads, and follow the teacher.
        with accelerator.autocast():
            x_theta = denoise(self.student, teacher.scheduler, noisy, timesteps, text)[0]
            fake = decode_latents(teacher, x_theta)
            adversarial = distill = torch.zeros((), device=images.device)
            if config.adversarial_weight:
                logits = self.discriminator(fake, pooled, image_embedding, paired_generators(generator)[0])
                adversarial = hinge_generator_loss(logits)
            if config.distillation_weight:
                distill = distillation_loss(teacher, x_theta, text, weighting=config.weighting,
                                            guidance_scale=config.teacher_guidance_scale, uncond_embeds=self.empty,
                                            generator=generator, student_images=fake)
            loss = config.adversarial_weight * adversarial + config.distillation_weight * distill
        self._check_finite(loss, "student", step)
        self.student_optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(self.student.parameters(), config.grad_clip)
        self.student_optimizer.step()

        # The discriminator update, on the same real images and the fakes just made.
        stats = {}
        if config.adversarial_weight:
            with accelerator.autocast():
                d_loss, stats = discriminator_loss(self.discriminator, images, fake.detach(), pooled,
                                                   image_embedding, config.r1_weight, generator)
            self._check_finite(d_loss, "discriminator", step)
            self.discriminator_optimizer.zero_grad(set_to_none=True)
            accelerator.backward(d_loss)
            self.discriminator_optimizer.step()

        with torch.no_grad():
            for ema, live in zip(self.ema.parameters(), accelerator.unwrap_model(self.student).parameters()):
                ema.lerp_(live, 1 - config.ema_decay)
        return {"adversarial": adversarial.item(), "distillation": distill.item(), **stats}

    def _check_finite(self, loss: torch.Tensor, which: str, step: int) -> None:
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the {which} loss became {loss.item()} at step {step}; the last good checkpoint "
                                     f"is kept: lower the learning rates and rerun with --resume")


def train(config: Config, out: Path, run_dir: Path, resume: bool = False) -> None:
    """Run (or, with ``resume``, continue) ADD training; checkpoints in ``run_dir``, the student in ``out``."""
    accelerator = Accelerator(mixed_precision=config.mixed_precision)
    trainer = ADDTrainer(config, accelerator)
    state = {"config": dataclasses.asdict(config), "step": 0, "seconds": 0.0, "log": []}
    if resume:
        state = resume_checkpoint(run_dir, trainer.modules(), trainer.optimizers(), state["config"])
    started = time.perf_counter() - state["seconds"]

    def checkpoint() -> None:
        state["seconds"] = time.perf_counter() - started
        if accelerator.is_main_process:
            save_checkpoint(run_dir, trainer.modules(), trainer.optimizers(), state)
        accelerator.wait_for_everyone()

    progress = tqdm(range(state["step"], config.steps), desc="ADD", initial=state["step"], total=config.steps,
                    disable=not accelerator.is_main_process)
    for step in progress:
        losses = trainer.step(step)
        state["step"] = step + 1
        if step % 10 == 0:
            state["log"].append({"step": step, **losses})
            progress.set_postfix({k: f"{v:.3f}" for k, v in losses.items() if k in ("adversarial", "distillation")})
        if state["step"] % config.checkpoint_every == 0:
            checkpoint()
    checkpoint()
    if accelerator.is_main_process:
        export(trainer, state, out)


def export(trainer: ADDTrainer, state: dict, out: Path) -> None:
    """Save the student (the EMA weights) as an ordinary diffusers pipeline folder, with its recipe."""
    pipe = copy.deepcopy(trainer.teacher)
    pipe.unet.load_state_dict(trainer.ema.state_dict())
    out.mkdir(parents=True, exist_ok=True)
    pipe.to(torch.float16).save_pretrained(out, safe_serialization=True)
    save_tokenizer_files(out / "tokenizer")
    recipe = {
        "command": command_line("addlib.train_add", state["config"]),
        "config": state["config"],
        "minutes": round(state["seconds"] / 60, 1),
        "device": str(trainer.accelerator.device) + (
            "" if torch.cuda.is_available() else f" ({torch.get_num_threads()} threads)"),
        "processes": trainer.accelerator.num_processes,
        "final_losses": state["log"][-10:],
        "torch": torch.__version__,
    }
    (out / "recipe.json").write_text(json.dumps(recipe, indent=2) + "\n")
    (out / "loss_log.json").write_text(json.dumps(state["log"]) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m addlib.train_add", description=__doc__.split("\n\n")[0])
    config, out, run_dir, resume = parse_run_arguments(parser, argv, Config, STUDENT_DIR, Path("runs/add"))
    try:
        config.check()
    except ValueError as error:
        parser.error(str(error))
    train(config, out, run_dir, resume)


if __name__ == "__main__":
    main()
