"""ADD's trainer: the student, its discriminator and one training step (Sauer et al., 2023).

Each step follows the paper's Fig. 2 and section 3:

1. real images x0 with their captions; the VAE's latents z0; a student timestep s drawn from ``T_student`` and
   z_s = alpha_s z0 + sigma_s eps, on the teacher's own schedule (the miniature's reaches zero terminal SNR, so
   s = 999 is pure noise there; see "Hub teachers" below);
2. the student, initialised from the teacher's UNet (Table 1c: a random init fails), predicts x0 in one step,
   in the teacher's parameterisation: z_theta = alpha_s z_s - sigma_s v_theta(z_s, s, c) for the miniature's
   v-prediction, (z_s - sigma_s eps_theta(z_s, s, c)) / alpha_s for an epsilon-predicting SD;
3. generator update: L = L_adv^G(decode(z_theta)) + lambda * L_distill(z_theta); the paper's lambda is 2.5,
   the miniature's 25 (measured in docs/benchmarks.md)
   (:mod:`addlib.discriminator`, :mod:`addlib.distillation`);
4. discriminator update: the hinge loss on x0 against decode(z_theta), plus gamma * R1 on the real features;
   with ``discriminator="ladd"`` both adversarial losses read z0 and z_theta themselves, re-noised and seen
   through the teacher UNet's own blocks (LADD, Sauer et al., 2024; :mod:`addlib.latent_discriminator`), and
   with ``"add+ladd"`` both discriminators judge, their losses added; every 10 steps the log also records the
   discriminator's health (:meth:`ADDTrainer.health`) and the gradient each loss puts on the student;
5. an exponential moving average of the student's weights, which is what gets exported, as a diffusers pipeline
   whose ``LCMScheduler`` samples as ADD does: predict x0, noise it afresh to the next student timestep.

For small GPUs: ``lora_rank`` trains a low-rank adapter (Hu et al., 2022) on the UNet's attention projections
instead of every weight (peft), merged into the UNet on export; ``gradient_checkpointing`` recomputes the UNet's
activations in the backward pass; ``tiny_vae`` decodes the student's latents to pixels, for both losses, with a
small ``AutoencoderTiny`` instead of the teacher's VAE.

Hub teachers keep their schedule and parameterisation. SD 1.x and 2.x (BK-SDM, SD 2.1-base, SD-Turbo) predict
epsilon on a scaled-linear schedule whose alpha-bar(999) is 0.0047, not 0. The student keeps both, as SD-Turbo
did: it starts as the teacher only if it predicts what the teacher predicts (Table 1c), and an
epsilon-predicting UNet cannot give x0 at zero SNR at all (it divides by alpha_s = 0). So at s = 999 the
student trains on z_999 = 0.068 z0 + 0.998 eps, a trace of the image that pure noise at sampling time lacks,
and its x0 = (z_999 - 0.998 eps_theta) / 0.068 multiplies its noise error by 15. Both are small next to the
alternative, a student rescaled to zero terminal SNR and v-prediction (Lin et al., 2024) that would start from
an UNet trained for other outputs. ``addlib.train_add.STABLE_DIFFUSION`` holds the paper's settings for such a teacher.

Every random number of step ``s`` on process ``p`` comes from a generator seeded with ``(seed, s, p)`` and the
images are ``make_shapes(..., start=(s * processes + p) * batch_size)``, so a resumed run repeats exactly what
an uninterrupted one does.
"""

from __future__ import annotations

import copy
import math
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from accelerate import Accelerator

from addlib.datasets import open_dataset
from addlib.discriminator import (
    Discriminator,
    JointDiscriminator,
    ProjectedDiscriminator,
    feature_network,
    hinge_generator_loss,
    paired_generators,
    score,
    verdicts,
)
from addlib.distillation import distillation_loss
from addlib.forward_process import add_noise
from addlib.generate import generate, read_prompts, shapes_prompts
from addlib.latent_discriminator import LatentDiscriminator
from addlib.loading import load_pipeline, load_tiny_vae
from addlib.lora import add_lora, merge_lora
from addlib.pipeline import (
    check_image_size,
    decode_latents,
    denoise,
    encode_latents,
    encode_prompts,
    text_encoder_output,
    vae_factor,
)
from addlib.shapes import SEEDS, make_shapes
from addlib.utils.runs import TrainableParameters, check_loss, ema_update, step_generator

if TYPE_CHECKING:
    from addlib.train_add import Config


class ADDTrainer:
    """ADD's models, optimisers and one training step, built from its parts: the ``teacher`` pipeline (frozen
    here), the ``discriminator``, the training ``dataset`` (None: the shapes world) and the ``decoder`` of the
    student's latents (None: the teacher's VAE). :meth:`from_config` builds the parts a configuration names;
    :func:`addlib.train_add.train` adds the loop, checkpoints and export."""

    def __init__(self, config: Config, teacher, discriminator: Discriminator, accelerator: Accelerator | None = None,
                 dataset=None, decoder=None):
        self.config, self.teacher, self.dataset = config, teacher, dataset
        self.accelerator = accelerator = accelerator or Accelerator(mixed_precision=config.mixed_precision)
        for part in (teacher.unet, teacher.vae, teacher.text_encoder):
            part.requires_grad_(False)
        check_image_size("resolution", config.resolution, vae_factor(teacher.vae))
        self.decoder = decoder or teacher.vae
        self.check_loss = check_loss  # train() gives it its Run's, which names the last good checkpoint
        torch.manual_seed(config.seed)  # a LoRA's initial weights
        self.student = make_student(teacher.unet, config)
        self.trainable = TrainableParameters(self.student)
        self.ema = TrainableParameters(self.student, copy=True)
        # Not handed to accelerate.prepare: DDP would hide the methods R1 needs, and the heads' gradients
        # are averaged across processes by hand (see step).
        self.discriminator = discriminator.to(accelerator.device)
        betas = (config.adam_beta1, config.adam_beta2)
        self.student_optimizer = torch.optim.Adam(self.trainable.parameters(), lr=config.lr, betas=betas)
        self.discriminator_optimizer = torch.optim.Adam(self.discriminator.heads.parameters(),
                                                        lr=config.discriminator_lr, betas=betas)
        self.student, self.student_optimizer, self.discriminator_optimizer = accelerator.prepare(
            self.student, self.student_optimizer, self.discriminator_optimizer)
        self.student_timesteps = torch.tensor(config.timesteps())
        with torch.no_grad():
            self.empty = encode_prompts(teacher, [""])
        self.held_out = None  # health()'s fixed batch, made when first asked for

    @classmethod
    def from_config(cls, config: Config, accelerator: Accelerator | None = None) -> ADDTrainer:
        """The trainer ``config`` describes: its teacher loaded, its training data opened (with ``dataset
        "teacher"``, generated first: :func:`generated_data`), its discriminator's heads drawn from ``config.seed``
        (:func:`make_discriminator`) and its tiny VAE, if any, loaded; all on ``accelerator``'s device."""
        accelerator = accelerator or Accelerator(mixed_precision=config.mixed_precision)
        teacher = load_pipeline(config.teacher, device=accelerator.device)
        check_image_size("resolution", config.resolution, vae_factor(teacher.vae))  # before any image is made
        dataset = None if config.dataset == "shapes" else open_dataset(
            generated_data(config, teacher, accelerator) if config.dataset == "teacher" else config.dataset,
            config.resolution, teacher.tokenizer, config.image_column, config.caption_column)
        torch.manual_seed(config.seed)  # the discriminator heads' initial weights
        discriminator = make_discriminator(config, teacher)
        decoder = load_tiny_vae(config.tiny_vae, accelerator.device) if config.tiny_vae else None
        return cls(config, teacher, discriminator, accelerator, dataset, decoder)

    def modules(self) -> dict:
        return {"student": self.trainable, "ema": self.ema, "heads": self.discriminator.heads}

    def optimizers(self) -> dict:
        return {"student": self.student_optimizer, "discriminator": self.discriminator_optimizer}

    def replica_difference(self) -> float:
        """The largest difference, across processes, of a checksum of the student and the heads: 0 when every
        replica holds the same weights, as data-parallel training must keep them."""
        checksum = torch.stack([torch.stack([p.double().sum(), p.double().pow(2).sum()])
                                for p in [*self.trainable.params, *self.discriminator.heads.parameters()]]).sum(0)
        gathered = self.accelerator.gather(checksum.to(self.accelerator.device)[None])  # (processes, 2)
        return (gathered - gathered[0]).abs().max().item()

    def batch(self, step: int) -> tuple[torch.Tensor, list[str]]:
        """This process's real images (B, 3, H, W) and captions for ``step``: fresh images every step."""
        index = step * self.accelerator.num_processes + self.accelerator.process_index
        return self.images(index * self.config.batch_size, self.config.seed)

    def images(self, start: int, seed: int) -> tuple[torch.Tensor, list[str]]:
        """A batch of real images and captions from the training data, from item ``start`` under ``seed``."""
        config = self.config
        if self.dataset is not None:
            images, captions = self.dataset.batch(start, config.batch_size, seed)
        else:
            images, captions, _ = make_shapes(config.batch_size, seed, config.resolution, start=start,
                                              omit_prob=config.omit_prob)
        return images.to(self.accelerator.device), captions

    def inputs(self, step: int, images: torch.Tensor | None = None, captions: list[str] | None = None) -> dict:
        """What step ``step`` draws and encodes before any loss: the real images (``step``'s batch, unless given)
        and their latents z0, the student timesteps and noise, the text tokens, the discriminator's condition,
        and the generator that goes on to draw the losses' randomness. ``generator_loss(**inputs)`` takes all of
        it but the images."""
        teacher, accelerator = self.teacher, self.accelerator
        generator = step_generator(self.config.seed, step * accelerator.num_processes + accelerator.process_index, 3)
        if images is None:
            images, captions = self.batch(step)
        with torch.no_grad():
            latents = encode_latents(teacher.vae, images, generator)
            encoded = text_encoder_output(teacher, captions)  # one call: tokens for the UNets, pooled for D
            condition = self.discriminator.condition(images, encoded[0], encoded.pooler_output)
        pick = torch.randint(len(self.student_timesteps), (len(images),), generator=generator)
        return {"images": images, "latents": latents, "timesteps": self.student_timesteps[pick].to(images.device),
                "noise": torch.randn(latents.shape, generator=generator).to(latents), "text": encoded[0],
                "condition": condition, "generator": generator}

    def step(self, step: int, measure: bool = False) -> dict[str, float]:
        """One generator and one discriminator update; returns the losses for the log. With ``measure``, also
        the gradient norm each loss puts on the student (:func:`gradient_norms`) and the discriminator's
        verdicts on held-out images (:meth:`health`)."""
        config, accelerator = self.config, self.accelerator
        inputs = self.inputs(step)
        images, generator = inputs.pop("images"), inputs["generator"]

        # The generator update. The heads pass gradients to the fakes but need none of their own here.
        self.discriminator.heads.requires_grad_(False)
        with accelerator.autocast():
            loss, (adversarial, distill), x_theta, fake = self.generator_loss(**inputs)
        self.check_loss(loss, "student", step, fix="lower the learning rates")
        norms = gradient_norms({"adversarial": config.adversarial_weight * adversarial,
                                "distillation": config.distillation_weight * distill},
                               list(self.trainable.parameters())) if measure else {}
        self.student_optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(self.trainable.parameters(), config.grad_clip)
        self.student_optimizer.step()

        # The discriminator update, on the same real images and the fakes just made (detached by its loss).
        stats = {}
        self.discriminator.heads.requires_grad_(True)
        if config.adversarial_weight:
            real, fake = self.discriminator.view(images, inputs["latents"]), self.discriminator.view(fake, x_theta)
            with accelerator.autocast(), self.teacher_without_adapters():
                d_loss, stats = self.discriminator.loss(real, fake, config.r1_weight, generator,
                                                        **inputs["condition"])
            self.check_loss(d_loss, "discriminator", step, fix="lower the learning rates")
            self.discriminator_optimizer.zero_grad(set_to_none=True)
            accelerator.backward(d_loss)
            for p in self.discriminator.heads.parameters():
                p.grad = accelerator.reduce(p.grad, "mean")
            self.discriminator_optimizer.step()

        ema_update(self.ema.params, self.trainable.params, config.ema_decay)
        health = self.health() if measure and config.adversarial_weight else {}
        return {"adversarial": adversarial.item(), "distillation": distill.item(), **stats,
                **{f"grad_{name}": value for name, value in norms.items()}, **health}

    @torch.no_grad()
    def health(self) -> dict[str, float]:
        """The discriminator's verdicts on images it never trains on: a fixed batch of real images (shapes seed
        ``held_out``; with a dataset, a fixed batch of it) against the student's current one-step fakes of
        them (from pure noise at its first timestep).

        ``held_out_accuracy`` and ``held_out_gap`` read their scores (:func:`addlib.discriminator.verdicts`);
        ``hinge_at_chance`` is the hinge loss of heads that say 0 to everything (2 per head).
        Augmentation and re-noising are drawn from a fixed seed, so the figure moves only with the networks."""
        if self.held_out is None:
            images, captions = self.images(0, SEEDS["held_out"])
            inputs = self.inputs(0, images, captions)
            inputs["timesteps"] = torch.full_like(inputs["timesteps"], int(self.student_timesteps[0]))
            self.held_out = inputs
        inputs = self.held_out
        teacher = self.teacher
        noisy = add_noise(inputs["latents"], inputs["noise"], inputs["timesteps"],
                          teacher.scheduler.alphas_cumprod.to(inputs["latents"].device))
        with self.accelerator.autocast():
            x_theta = denoise(self.student, teacher.scheduler, noisy, inputs["timesteps"], inputs["text"])[0]
            fake = decode_latents(teacher, x_theta, self.decoder)
        real_generator, fake_generator = paired_generators(torch.Generator().manual_seed(SEEDS["held_out"]))
        self.discriminator.eval()  # spectral norm's power iteration stays as training left it
        try:
            with self.accelerator.autocast(), self.teacher_without_adapters():
                real_score = score(self.discriminator(self.discriminator.view(inputs["images"], inputs["latents"]),
                                                      **inputs["condition"], generator=real_generator))
                fake_score = score(self.discriminator(self.discriminator.view(fake, x_theta), **inputs["condition"],
                                                      generator=fake_generator))
        finally:
            self.discriminator.train()
        return {**verdicts(real_score, fake_score), "hinge_at_chance": 2.0 * len(self.discriminator.heads)}

    def generator_loss(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, text: torch.Tensor,
                       condition: dict, generator: torch.Generator) -> tuple:
        """ADD's generator objective for real latents z0 (B, 4, h, w), ``noise`` and student ``timesteps`` (B,):
        L = adversarial_weight * L_adv^G + distillation_weight * L_distill (Fig. 2; lambda = distillation_weight).

        The student sees x_s = alpha_s z0 + sigma_s eps and predicts x_theta in one step; L_distill judges
        x_theta decoded to pixels, and so does L_adv^G with ADD's discriminator, where LADD's reads the latents
        x_theta themselves (``discriminator.view``). ``text`` (B, L, D) conditions the UNets, ``condition``
        (``discriminator.condition``'s) the heads. ``generator`` draws the fakes' augmentation (or re-noising)
        first, then L_distill's teacher timesteps and noise. Returns ``(L, (L_adv^G, L_distill), x_theta, fake
        images)``.
        """
        config, teacher = self.config, self.teacher
        noisy = add_noise(latents, noise, timesteps, teacher.scheduler.alphas_cumprod.to(latents.device))
        x_theta = denoise(self.student, teacher.scheduler, noisy, timesteps, text)[0]
        fake = decode_latents(teacher, x_theta, self.decoder)
        adversarial = distill = torch.zeros((), device=latents.device)
        if config.adversarial_weight:
            with self.teacher_without_adapters():
                logits = self.discriminator(self.discriminator.view(fake, x_theta), **condition,
                                            generator=paired_generators(generator)[0])
            adversarial = hinge_generator_loss(logits)
        if config.distillation_weight:
            with self.teacher_without_adapters():
                distill = distillation_loss(teacher, x_theta, text, weighting=config.weighting,
                                            guidance_scale=config.teacher_guidance_scale, uncond_embeds=self.empty,
                                            generator=generator, student_images=fake, vae=self.decoder)
        loss = config.adversarial_weight * adversarial + config.distillation_weight * distill
        return loss, (adversarial, distill), x_theta, fake

    @contextmanager
    def teacher_without_adapters(self):
        """The teacher's UNet as it was trained: a LoRA student shares it, so its adapters are off meanwhile."""
        if self.config.lora_rank:
            self.teacher.unet.disable_adapters()
        try:
            yield
        finally:
            if self.config.lora_rank:
                self.teacher.unet.enable_adapters()


def generated_data(config: Config, teacher, accelerator: Accelerator) -> Path:
    """The teacher's images for ``config.prompts``, generated once (by the main process) into a folder of
    ``runs/generated`` named for the settings, and reused by every run that shares them."""
    if config.prompts == "shapes":
        prompts = shapes_prompts(config.num_prompts, config.seed, config.omit_prob)
    else:
        prompts = read_prompts(config.prompts)[:config.num_prompts]
    with accelerator.main_process_first(), accelerator.autocast():  # fp16 on a small card
        return generate(teacher, prompts, teacher=config.teacher, num_inference_steps=config.generation_steps,
                        guidance_scale=config.teacher_guidance_scale, seed=config.seed, resolution=config.resolution,
                        batch_size=config.batch_size, progress=accelerator.is_main_process)


def make_discriminator(config: Config, teacher) -> Discriminator:
    """The discriminator ``config`` asks for, its heads conditioned on the teacher's pooled text embedding:
    ADD's heads on a frozen feature network's view of the images, LADD's on the teacher UNet's own blocks, or
    both as one :class:`~addlib.discriminator.JointDiscriminator`."""
    text_dim = teacher.text_encoder.config.hidden_size  # of the pooled output
    heads = dict(cmap_dim=config.head_width, verdict=config.discriminator_verdict)

    def build(name: str) -> Discriminator:
        if name == "ladd":
            return LatentDiscriminator(teacher.unet, config.ladd_layers.split(","), text_dim,
                                       teacher.scheduler.alphas_cumprod, t_mean=config.ladd_t_mean,
                                       t_std=config.ladd_t_std, **heads)
        layers = [int(v) for v in config.discriminator_layers.split(",")]
        augment = tuple(p for p in config.augment.split(",") if p)
        conditions = tuple(c for c in config.discriminator_conditioning.split(",") if c)
        return ProjectedDiscriminator(feature_network(config.feature_network), layers, text_dim, augment=augment,
                                      conditions=conditions, **heads)

    parts = [build(name) for name in config.discriminator.split("+")]
    return parts[0] if len(parts) == 1 else JointDiscriminator(parts)


def gradient_norms(losses: dict[str, torch.Tensor], parameters: list[torch.Tensor]) -> dict[str, float]:
    """The norm of the gradient that each (weighted) loss alone puts on ``parameters``, before clipping: their
    ratio says which loss is training the student. The graph is kept for the backward pass of their sum."""
    norms = {}
    for name, loss in losses.items():
        if not loss.requires_grad:  # a loss weighted 0 puts nothing on the student
            norms[name] = 0.0
            continue
        gradients = torch.autograd.grad(loss, parameters, retain_graph=True, allow_unused=True)
        norms[name] = math.sqrt(sum(g.float().pow(2).sum().item() for g in gradients if g is not None))
    return norms


def make_student(unet: torch.nn.Module, config: Config) -> torch.nn.Module:
    """The student, initialised as the teacher (Table 1c): a trainable copy of the teacher's UNet or, with
    ``lora_rank``, the teacher's UNet *itself* with a LoRA on its attention projections. The LoRA starts at zero,
    and the teacher's own predictions switch it off (:meth:`ADDTrainer.teacher_without_adapters`), so one UNet
    sits in memory instead of two."""
    student = unet if config.lora_rank else copy.deepcopy(unet).requires_grad_(True)
    if config.lora_rank:
        add_lora(student, config.lora_rank)
    if config.gradient_checkpointing:
        student.enable_gradient_checkpointing()
    student.train()
    return student


def student_pipeline(trainer: ADDTrainer):
    """The teacher's pipeline with the EMA student as its UNet (a LoRA merged in) and an ``LCMScheduler`` that
    samples as ADD does: x0 from the UNet, noised afresh to the next timestep, the last step returning x0.

    Its ``original_inference_steps`` is the number of student timesteps, so ``num_inference_steps`` 1, 2 and 4
    walk T_student's grid (999; 999, 499; 999, 749, 499, 249), as :func:`addlib.sampling.sample` with
    ``sampler="add"`` does. LCM's boundary condition c_skip(t) is below 1e-7 at every t >= 249: a no-op here.
    """
    from diffusers import LCMScheduler

    pipe = copy.copy(trainer.teacher)  # a shallow copy: the teacher's modules are shared, only the UNet is swapped
    unet = copy.deepcopy(trainer.accelerator.unwrap_model(trainer.student))
    trainer.ema.copy_to(unet)
    if trainer.config.lora_rank:
        unet = merge_lora(unet)
    scheduler = LCMScheduler.from_config(trainer.teacher.scheduler.config,
                                         original_inference_steps=len(trainer.student_timesteps))
    pipe.register_modules(unet=unet.requires_grad_(False).eval(), scheduler=scheduler)
    return pipe


