"""Adversarial Diffusion Distillation: train a one-to-four-step student from the teacher (Sauer et al., 2023).

    python -m addlib.train_add                          # ADD on the miniature: into data/student, run folder runs/add
    python -m addlib.train_add --discriminator add+ladd # the shipped student: ADD's and LADD's heads together
    python -m addlib.train_add --resume                 # go on from the last checkpoint after an interruption
    python -m addlib.train_add --distillation-weight 0 --out runs/adv-only --run-dir runs/adv-only-run
    accelerate launch --multi_gpu -m addlib.train_add ...               # the same loop on several GPUs
    ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 -m addlib.train_add   # ... or on two CPU processes (gloo)
    python -m addlib.train_add --lora-rank 8 --gradient-checkpointing --mixed-precision fp16   # a 16 GB card
    python -m addlib.train_add --preset stable-diffusion --dataset my_data/ ...   # a hub teacher, SD's settings
    python -m addlib.train_add --discriminator ladd --out runs/ladd --run-dir runs/ladd-run   # LADD's discriminator

The configuration (``Config``, every option with its measured reason, and the paper's settings for a hub
Stable Diffusion, ``STABLE_DIFFUSION``) and the run (:func:`train`: loop, checkpoints, export) are here; the
trainer itself, its parts and one step, is :mod:`addlib.add_trainer`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch

from addlib.add_trainer import ADDTrainer, student_pipeline
from addlib.discriminator import DINOV2_ID, check_heads
from addlib.distillation import WEIGHTINGS
from addlib.latent_discriminator import T_MEAN, T_STD, check_logit_normal
from addlib.loading import BK_SDM_TINY_ID, STUDENT_DIR, quiet_diffusers, save_pipeline
from addlib.shapes import SEEDS
from addlib.utils.commands import OneLineParser, TrainingConfig, parse_run_arguments, run_command
from addlib.utils.runs import Run


@dataclass
class Config(TrainingConfig):
    seed: int = SEEDS["add"]  # fixes every draw: the shapes, noise, timesteps and initial heads
    teacher: str = "miniature"  # the shipped teacher (data/teacher), or a pipeline folder or hub id
    steps: int = 1000  # one-step quality peaked near 1,000 on the miniature and then drifted (docs/benchmarks.md)
    batch_size: int = 32  # real images per step
    # The shapes world; "teacher": images the teacher generates from `prompts` (LADD; addlib.generate); an
    # image-caption folder; or "hf:<id>", a Hugging Face dataset id or saved folder (addlib.datasets).
    dataset: str = "shapes"
    prompts: str = "shapes"  # for "teacher": a prompt file, or "shapes" for shapes captions
    num_prompts: int = 2048  # for "teacher": at most this many, the file's first, or this many shapes captions
    generation_steps: int = 25  # for "teacher": DDIM steps per image, guided by teacher_guidance_scale
    image_column: str = "image"  # for "hf:": the dataset's columns
    caption_column: str = "text"  # for "hf:": the captions' column
    resolution: int = 32  # of the training images
    omit_prob: float = 0.5  # shapes captions leave out each attribute but the shape this often, as the teacher's
    student_timesteps: str = "999,749,499,249"  # T_student, the paper's four
    # the generator (student) and its loss
    lr: float = 5e-5  # the paper's 1e-5 is for SD's 865M parameters; this UNet has 8.6M
    adversarial_weight: float = 1.0  # 0 trains with distillation alone (the ablation)
    # lambda: the paper's is 2.5; on this miniature 25 beat it on each of three seeds in 1- and 4-step accuracy
    # and 4-step FID (docs/benchmarks.md). 0 trains with the adversarial loss alone.
    distillation_weight: float = 25.0
    weighting: str = "exponential"  # c(t) of L_distill: exponential, sds or nfsd
    teacher_guidance_scale: float = 3.0  # classifier-free guidance of the teacher's target in L_distill
    ema_decay: float = 0.995  # of the student's weights; the EMA is what gets exported
    # the discriminator: "add", heads on a frozen feature network's features of the decoded images (the paper's);
    # "ladd", heads on the teacher UNet's own features of re-noised latents (LADD; addlib.latent_discriminator);
    # "add+ladd", both sets of heads, their losses added (the shipped student's: docs/benchmarks.md)
    discriminator: str = "add"
    discriminator_lr: float = 1e-3  # the heads' learning rate (the feature network stays frozen)
    r1_weight: float = 10.0  # gamma
    head_width: int = 64  # cmap_dim: the channels each head projects a token onto the condition with
    discriminator_verdict: str = "tokens"  # where the hinge reads the token logits: each token, or the image's mean
    feature_network: str = "miniature"  # the shipped tiny ViT, a folder with another, or a DINOv2 hub id
    discriminator_layers: str = "1,3,5"  # blocks of the feature network that get a head (DINOv2-S: 2,5,8,11)
    # Table 1b: "text,image" (the paper's), one of them, or "" for none. Here c_img cost one-step accuracy on
    # each of three seeds and collapsed one, so the heads read the text alone, though seed 2 pays for it in
    # one-step FID (docs/benchmarks.md).
    discriminator_conditioning: str = "text"
    # for "ladd": the teacher UNet's blocks that get a head, and the logit-normal (m, s) of the re-noising
    # timesteps. LADD's m = 1 leans towards high noise, where the teacher's features keep the layout but not the
    # form of a small shape (bench probe); here m = -1 beat it at one step and four (docs/benchmarks.md).
    ladd_layers: str = "down.1,mid,up.1"
    ladd_t_mean: float = -1.0  # for "ladd": m of the logit-normal noise levels (LADD's own: 1)
    ladd_t_std: float = T_STD  # for "ladd": s of the logit-normal noise levels
    augment: str = "translation"  # DiffAugment policy; the miniature keeps only what leaves captions true
    # both optimisers: Adam with beta1 = 0, as GANs since StyleGAN
    adam_beta1: float = 0.0
    adam_beta2: float = 0.99  # both optimisers' second-moment decay
    grad_clip: float = 1.0  # the student's gradient norm is clipped to this
    checkpoint_every: int = 250  # steps between checkpoints in --run-dir (a run resumes from the last)
    # memory
    mixed_precision: str = "no"  # "fp16" or "bf16" on a GPU
    lora_rank: int = 0  # 0 trains every UNet weight; r > 0 a rank-r LoRA on the attention projections
    gradient_checkpointing: bool = False  # recompute the UNet's activations in the backward pass: less memory
    tiny_vae: str = ""  # "" decodes with the teacher's VAE; "miniature" (data/tiny_vae), or a folder or hub id

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

    @classmethod
    def stable_diffusion(cls, **changes) -> Config:
        """The paper's settings for a hub Stable Diffusion (``STABLE_DIFFUSION``), with ``changes`` on top."""
        return cls(**(STABLE_DIFFUSION | changes))

    def ignored(self) -> dict[str, str]:
        """The fields this configuration never reads, each with the reason: a command line that sets one is
        refused (:func:`addlib.utils.commands.parse_run_arguments`), rather than train as if it had been read."""
        why, heads = {}, self.discriminator.split("+")
        if "ladd" not in heads:
            why |= dict.fromkeys(("ladd_layers", "ladd_t_mean", "ladd_t_std"),
                                 "only --discriminator ladd or add+ladd reads it")
        if "add" not in heads:
            why |= dict.fromkeys(("feature_network", "discriminator_layers", "discriminator_conditioning", "augment"),
                                 "LADD's heads read the teacher's own features; only --discriminator add or add+ladd "
                                 "reads it")
        if self.dataset != "teacher":
            why |= dict.fromkeys(("prompts", "num_prompts", "generation_steps"),
                                 "only --dataset teacher generates its training images")
        if not self.dataset.startswith("hf:"):
            why |= dict.fromkeys(("image_column", "caption_column"), 'only an "hf:" dataset has named columns')
        return why

    def check(self) -> None:
        """ADD's own rules, beyond each field's range (:class:`~addlib.utils.commands.TrainingConfig`): refused in one
        line as the configuration is built."""
        self.timesteps()
        if self.teacher_guidance_scale < 1:
            raise ValueError(f"teacher_guidance_scale must be at least 1 (1 = no guidance), got "
                             f"{self.teacher_guidance_scale}")
        if self.mixed_precision not in MIXED_PRECISIONS:
            raise ValueError(f"mixed_precision must be one of {', '.join(MIXED_PRECISIONS)}, got "
                             f"{self.mixed_precision!r}")
        if self.mixed_precision == "fp16" and not torch.cuda.is_available():
            raise ValueError("mixed_precision 'fp16' needs a CUDA GPU and torch sees none (on a CPU accelerate would "
                             "quietly train in float32); use --mixed-precision no, or bf16")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {self.weighting!r}; choose one of {', '.join(WEIGHTINGS)}")
        if self.adversarial_weight == 0 and self.distillation_weight == 0:
            raise ValueError("both loss weights are 0: the student would learn nothing")
        if self.discriminator not in DISCRIMINATORS:
            raise ValueError(f"unknown discriminator {self.discriminator!r}; choose one of {', '.join(DISCRIMINATORS)}")
        if "ladd" in self.discriminator.split("+"):
            check_logit_normal(self.ladd_t_mean, self.ladd_t_std)
        if self.discriminator == "ladd":
            if "image" in self.discriminator_conditioning.split(","):
                raise ValueError("discriminator 'ladd' reads no image embedding (its heads see the text and the noise "
                                 "level); use --discriminator-conditioning text")
        check_heads(self.head_width, self.discriminator_verdict)
        if self.lora_rank < 0:
            raise ValueError(f"lora_rank must be 0 (train every weight) or a positive rank, got {self.lora_rank}")


# Stable Diffusion's settings (Sauer et al., 2023, sections 3-4 and the appendix), for a hub teacher at 512
# pixels; Config's defaults are the miniature's measured recipe. Memory options (lora_rank, gradient_checkpointing,
# tiny_vae, mixed_precision) are not part of the method: notebook 06 adds what a small card needs.
DINOV2_TOKENS = 1 + (224 // 14) ** 2  # CLS + 16 x 16 patches: what each head reads of DINOv2-S at 224 pixels
STABLE_DIFFUSION = dict(
    teacher=BK_SDM_TINY_ID,  # a small SD 1.x; the paper's is SD 2.1 (SD21_BASE_ID)
    dataset="teacher",  # LADD's: the teacher's own images, so a learner needs no captioned image set
    prompts="everyday",  # the course's 250 everyday prompts (data/prompts/everyday.txt), one image each
    resolution=512,  # SD's own
    lr=1e-5,  # the paper's, for a UNet of hundreds of millions of parameters
    discriminator_lr=1e-5,  # the paper gives one learning rate for both networks
    distillation_weight=2.5,  # lambda, the paper's
    teacher_guidance_scale=7.5,  # Stable Diffusion's usual guidance for the teacher's targets
    feature_network=DINOV2_ID,  # DINOv2 ViT-S/14, the paper's discriminator features
    discriminator_layers="2,5,8,11",  # four evenly spaced blocks of twelve, as StyleGAN-T hooks DINO
    discriminator_conditioning="text,image",  # c_text and c_img, the paper's (Table 1b)
    ladd_t_mean=T_MEAN,  # LADD's, should --discriminator ladd replace the paper's DINOv2
    augment="color,translation,cutout",  # DiffAugment's full policy: DINO's features need it, captions stay true
    # The paper's gamma = 1e-5 weighs StyleGAN's (gamma / 2) ||grad of a head's summed token logits||^2; here R1 is
    # ||grad of the head's *mean* token logit||^2 (r1_penalty), N = 257 times smaller a gradient, so the same
    # penalty is gamma * N^2 / 2 = 0.33.
    r1_weight=1e-5 * DINOV2_TOKENS**2 / 2,
)
PRESETS = {"miniature": {}, "stable-diffusion": STABLE_DIFFUSION}
MIXED_PRECISIONS = ("no", "fp16", "bf16")  # accelerate's names
DISCRIMINATORS = ("add", "ladd", "add+ladd")


def train(config: Config, out: Path, run_dir: Path, resume: bool = False) -> None:
    """Run (or, with ``resume``, continue) ADD training; checkpoints in ``run_dir``, the student in ``out``."""
    trainer = ADDTrainer.from_config(config)
    accelerator = trainer.accelerator
    run = Run(run_dir, trainer.modules(), trainer.optimizers(), config, resume, save=accelerator.is_main_process,
              step=0)
    trainer.check_loss = run.check_loss

    def checkpoint() -> None:
        run.state["replica_max_difference"] = trainer.replica_difference()
        if run.state["replica_max_difference"]:
            raise RuntimeError(f"the {accelerator.num_processes} processes hold different weights at step "
                               f"{run.state['step']} (checksums differ by {run.state['replica_max_difference']})")
        run.checkpoint()
        accelerator.wait_for_everyone()

    for step in run.steps("step", config.steps, "ADD"):
        losses = trainer.step(step, measure=step % 10 == 0)
        run.advance(step, config.checkpoint_every, losses if step % 10 == 0 else None, checkpoint)
    checkpoint()
    if accelerator.is_main_process:
        export(trainer, run, out)


def export(trainer: ADDTrainer, run: Run, out: Path) -> None:
    """Save the student (the EMA weights) as an ordinary diffusers pipeline folder, with its recipe."""
    out.mkdir(parents=True, exist_ok=True)
    with quiet_diffusers():  # diffusers warns on any .to(float16) and draws a bar for a one-file save
        pipe = copy.deepcopy(student_pipeline(trainer)).to(torch.float16)  # a copy: the teacher stays as it is
        save_pipeline(pipe, out)
    run.write_recipe(out, "addlib.train_add", trainer.accelerator.device,
                     processes=trainer.accelerator.num_processes,
                     replica_max_difference=run.state["replica_max_difference"],
                     final_losses=run.state["log"][-10:])


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(prog="python -m addlib.train_add", description=__doc__.split("\n\n")[0])
    train(*parse_run_arguments(parser, argv, Config, STUDENT_DIR, Path("runs/add"), PRESETS))


if __name__ == "__main__":
    run_command(main)
