"""Train the course's two evaluator networks on the captioned-shapes world, on a CPU or a GPU.

    python -m addlib.train_evaluators                     # the shipped recipe: both, into data/evaluators
    python -m addlib.train_evaluators --which vit         # only the TinyViT (data/evaluators/vit)
    python -m addlib.train_evaluators --steps 5 --out /tmp/evaluators   # a smoke run
    python -m addlib.train_evaluators --resume            # go on after an interruption (runs/evaluators)

The attribute classifier (the evaluator of :mod:`addlib.metrics`), then the TinyViT (the frozen feature network
of ADD's discriminator, pretrained supervised like DeiT: Touvron et al., 2021) learn the five attributes with
a sum of cross-entropies, one per attribute, using AdamW with a warmed-up cosine learning rate.

Step ``s`` trains on ``make_shapes(batch_size, seed=1, start=s * batch_size)``: fresh images every step, from
the seed kept for evaluator training (the teacher's is 0, the evaluation references' 7). Its augmentation
noise comes from a generator seeded with ``(seed, s)``. The augmentation keeps every label true: a small
colour shift and pixel noise (generated images are never exact renders), and no flips or crops, which would
move the shape and change its position label. Each network goes to ``--out/<name>`` as ``config.json`` +
``model.safetensors``, with ``recipe.json``: the command, configuration, minutes taken and held-out accuracy
per attribute on 2,000 reference images of seed 7.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from addlib.errors import OneLineParser, check_config, run_command
from addlib.checkpoints import add_config_options
from addlib.evaluators import EVALUATORS_DIR, AttributeClassifier, TinyViT, save_evaluator
from addlib.metrics import real_images
from addlib.runs import Run, lr_at, set_lr, step_generator
from addlib.shapes import ATTRIBUTES, SEEDS, make_shapes

NETWORKS = {"classifier": AttributeClassifier, "vit": TinyViT}  # trained in this order by --which both


@dataclass
class Config:
    seed: int = SEEDS["evaluators"]
    batch_size: int = 128
    # Sized for 2 CPU cores: ~0.07 s per classifier step (~2.5 min) and ~0.26 s per ViT step (~6 min).
    classifier_steps: int = 2000  # every attribute is read perfectly by step 300; the rest refines the features
    classifier_lr: float = 2e-3
    vit_steps: int = 1400  # shape is the ViT's slow attribute: 89% after a 600-step run, the others >= 99.9%
    vit_lr: float = 2e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    color_jitter: float = 0.04  # per-channel shift, in [-1, 1] units (5/255): well inside the gaps between colours
    noise_std: float = 0.04  # the largest pixel-noise std; each image draws its own in [0, noise_std]
    eval_images: int = 2000
    checkpoint_every: int = 500


def augment(images: torch.Tensor, generator: torch.Generator, config: Config) -> torch.Tensor:
    """Images (B, 3, H, W) with a random per-image colour shift and pixel noise, clamped back to [-1, 1]."""
    batch = len(images)
    shift = (2 * torch.rand(batch, 3, 1, 1, generator=generator) - 1) * config.color_jitter
    noise_std = torch.rand(batch, 1, 1, 1, generator=generator) * config.noise_std
    noise = torch.randn(images.shape, generator=generator) * noise_std
    return (images + shift + noise).clamp(-1, 1)


def attribute_loss(logits: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """The sum over the five attributes of the cross-entropy of their logits against labels (B, 5)."""
    return sum(F.cross_entropy(logits[name], labels[:, i]) for i, name in enumerate(ATTRIBUTES))


@torch.no_grad()
def held_out_accuracy(model: torch.nn.Module, num_images: int) -> dict[str, float]:
    """Accuracy per attribute on the first ``num_images`` reference images (seed 7), never trained on."""
    images, _, labels = real_images(num_images)
    predicted = torch.cat([model.predict(batch) for batch in images.split(500)])
    correct = (predicted == labels).float().mean(dim=0)  # (5,)
    return {name: round(value, 4) for name, value in zip(ATTRIBUTES, correct.tolist())}


def train(name: str, config: Config, out: Path, run_dir: Path, resume: bool = False) -> dict:
    """Train network ``name`` ("classifier" or "vit"), save it to ``out / name`` with its recipe; return that.

    Checkpoints go to ``run_dir / name``; with ``resume`` the run goes on from there exactly as if uninterrupted.
    """
    check_config(config)
    torch.manual_seed(config.seed)  # the initial weights
    model = NETWORKS[name]()
    steps, peak_lr = getattr(config, f"{name}_steps"), getattr(config, f"{name}_lr")
    optimizer = torch.optim.AdamW(model.parameters(), lr=peak_lr, weight_decay=config.weight_decay)
    stage = list(NETWORKS).index(name) + 1  # distinct generators for the two networks' augmentation
    checkpoint_dir = run_dir / name
    resume = resume and (checkpoint_dir / "checkpoint.json").exists()  # "both" resumes the network it stopped in
    run = Run(checkpoint_dir, {"model": model}, {"optimizer": optimizer}, config, resume, step=0, losses=[])
    progress = run.steps("step", steps, name)
    for step in progress:
        generator = step_generator(config.seed, step, stage)
        images, _, labels = make_shapes(config.batch_size, config.seed, start=step * config.batch_size)
        set_lr(optimizer, lr_at(step, steps, peak_lr, config.warmup_steps))
        loss = attribute_loss(model(augment(images, generator, config)), labels)
        run.check_finite(loss, name, step, fix=f"lower --{name}-lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        run.state["losses"] = (run.state["losses"] + [loss.item()])[-10:]
        run.state["step"] = step + 1
        if step % 50 == 0:
            progress.set_postfix(loss=f"{loss.item():.4f}")
        if run.state["step"] % config.checkpoint_every == 0 or run.state["step"] == steps:
            run.checkpoint()

    model.eval()
    save_evaluator(model, out / name)
    return run.write_recipe(out / name, f"addlib.train_evaluators --which {name}",
                            parameters=sum(p.numel() for p in model.parameters()),
                            held_out_accuracy=held_out_accuracy(model, config.eval_images),
                            final_losses=run.state["losses"])


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(prog="python -m addlib.train_evaluators", description=__doc__.split("\n\n")[0])
    add_config_options(parser, Config)
    parser.add_argument("--which", choices=[*NETWORKS, "both"], default="both", help="which network to train")
    parser.add_argument("--steps", type=int, help="train each network this many steps (overrides *-steps)")
    parser.add_argument("--out", type=Path, default=EVALUATORS_DIR, help="the networks go to OUT/classifier, OUT/vit")
    parser.add_argument("--run-dir", type=Path, default=Path("runs/evaluators"), help="checkpoints, per network")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoints in --run-dir")
    args = vars(parser.parse_args(argv))
    which, steps, out = args.pop("which"), args.pop("steps"), args.pop("out")
    run_dir, resume = args.pop("run_dir"), args.pop("resume")
    if steps is not None:
        args |= {"classifier_steps": steps, "vit_steps": steps}
    config = Config(**args)
    try:
        check_config(config)
    except ValueError as error:
        parser.error(str(error))
    names = list(NETWORKS) if which == "both" else [which]
    if not resume and any((run_dir / name / "checkpoint.json").exists() for name in names):
        parser.error(f"{run_dir} already holds checkpoints: pass --resume to continue them, or another --run-dir")
    for name in names:
        recipe = train(name, config, out, run_dir, resume)
        accuracy = ", ".join(f"{k} {v:.4f}" for k, v in recipe["held_out_accuracy"].items())
        print(f"{name}: {recipe['minutes']} min; held-out accuracy: {accuracy}; saved to {out / name}")


if __name__ == "__main__":
    run_command(main)
