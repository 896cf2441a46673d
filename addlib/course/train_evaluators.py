"""Train the course's two evaluator networks on the captioned-shapes world, on a CPU or a GPU.

    python -m addlib.course.train_evaluators                     # the shipped recipe: both, into data/evaluators
    python -m addlib.course.train_evaluators --which vit         # only the TinyViT (data/evaluators/vit)
    python -m addlib.course.train_evaluators --steps 5 --out /tmp/evaluators   # a smoke run
    python -m addlib.course.train_evaluators --resume            # go on after an interruption (runs/evaluators)

The attribute classifier (the evaluator of :mod:`addlib.bench.metrics`), then the TinyViT (the frozen feature network
of ADD's discriminator, pretrained supervised like DeiT: Touvron et al., 2021) learn the five attributes with
a sum of cross-entropies, one per attribute, using AdamW with a warmed-up cosine learning rate. The classifier
then learns, in a second stage, to say "none of these": its separate ``reject`` CNN takes a binary cross-entropy
on half real images, half :func:`make_malformed`'s (label 1), with a little blur as well (a
generator's edges are softer than a render's), while the attribute network, which has no part in that loss,
stays as it was.

Step ``s`` trains on ``make_shapes(batch_size, seed=1, start=s * batch_size)``: fresh images every step, from
the seed kept for evaluator training (the teacher's is 0, the evaluation references' 7). Its augmentation
noise comes from a generator seeded with ``(seed, s)``. The augmentation keeps every label true: a small
colour shift and pixel noise (generated images are never exact renders), and no flips or crops, which would
move the shape and change its position label. Each network goes to ``--out/<name>`` as ``config.json`` +
``model.safetensors``, with ``recipe.json``: the command, configuration, minutes taken and held-out accuracy
per attribute on 2,000 reference images of seed 7.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from addlib.bench.metrics import real_images
from addlib.evaluators import EVALUATORS_DIR, AttributeClassifier, TinyViT, save_evaluator
from addlib.shapes import (  # the world's own renderer draws what is not of the world
    ATTRIBUTES,
    BASE_RADIUS,
    POSITION_CENTERS,
    POSITIONS,
    RADIUS_JITTER,
    SEEDS,
    _check_index,
    _check_resolution,
    _draw_scenes,
    _render,
    _Scenes,
    _uniforms,
    make_shapes,
)
from addlib.utils.checkpoints import check_run_dir
from addlib.utils.commands import OneLineParser, TrainingConfig, add_config_options, run_command
from addlib.utils.errors import check_folder
from addlib.utils.runs import Run, lr_at, set_lr, step_generator

NETWORKS = {"classifier": AttributeClassifier, "vit": TinyViT}  # trained in this order by --which both


@dataclass
class Config(TrainingConfig):
    seed: int = SEEDS["evaluators"]  # fixes every draw: shapes, augmentations, initial weights
    batch_size: int = 128  # images per step
    # Sized for 2 CPU cores: ~0.07 s per classifier step (~2.5 min) and ~0.26 s per ViT step (~6 min).
    classifier_steps: int = 2000  # every attribute is read perfectly by step 300; the rest refines the features
    classifier_lr: float = 2e-3  # the attribute classifier's peak learning rate (warm-up, then cosine decay to 10%)
    # the classifier's "none of these" stage (~1 min): it refuses no held-out real image and >= 99% of each kind
    # of held-out not-shape (data/evaluators/classifier/recipe.json)
    reject_steps: int = 1500
    reject_lr: float = 2e-3  # the "none of these" stage's peak learning rate
    reject_blur: float = 0.8  # the largest Gaussian blur sigma, in pixels; each image draws its own in [0, it]
    vit_steps: int = 1400  # shape is the ViT's slow attribute: 89% after a 600-step run, the others >= 99.9%
    vit_lr: float = 2e-3  # the tiny ViT's peak learning rate
    warmup_steps: int = 100  # linear warm-up of each stage's learning rate
    weight_decay: float = 0.01  # AdamW's
    grad_clip: float = 1.0  # the gradient norm is clipped to this
    color_jitter: float = 0.04  # per-channel shift, in [-1, 1] units (5/255): well inside the gaps between colours
    noise_std: float = 0.04  # the largest pixel-noise std; each image draws its own in [0, noise_std]
    eval_images: int = 2000  # held-out images each finished network is scored on
    checkpoint_every: int = 500  # steps between checkpoints in --run-dir (a run resumes from the last)



# --- Not-shapes: what an honest evaluator must refuse -------------------------------------------------------
# A closed-world classifier reads *some* shape into any blob. A one-step generator draws blobs no caption asks
# for: stars, crosses, bow-ties, worms, two shapes, smudges too faint to see. make_malformed renders such images,
# so the evaluator can learn to say "none of these" (addlib.evaluators; the classifier's reject stage below).

MALFORMED = ("star", "cross", "bow-tie", "blob", "ellipse", "two shapes", "faint", "empty")
_MALFORMED_STREAM = 2  # draws apart from the scene's own (stream 0) and its caption's (stream 1)


def _rotated(dx: torch.Tensor, dy: torch.Tensor, angle: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Offsets in a frame turned by ``angle`` (n, 1, 1) radians; both come back (n, H, W)."""
    cos, sin = angle.cos(), angle.sin()
    return cos * dx + sin * dy, cos * dy - sin * dx


def _radial_distance(dx, dy, radius_at) -> torch.Tensor:
    """The (approximate) signed distance to a star-shaped outline whose radius at angle theta is ``radius_at``."""
    return torch.sqrt(dx**2 + dy**2) - radius_at(torch.atan2(dy, dx))


def _malformed_distance(kind: int, dx, dy, r, u) -> torch.Tensor:
    """Signed distances (n, H, W) to ``MALFORMED[kind]`` outlines of size ``r`` (n, 1, 1), drawn from ``u``
    (n, k) uniforms; "two shapes", "faint" and "empty" are made from genuine shapes by :func:`make_malformed`."""
    def draw(i):
        return u[:, i, None, None]
    name = MALFORMED[kind]
    if name == "star":  # 4 to 6 points, inner radius 30-55% of the outer
        points, inner, turn = (4 + (3 * draw(0)).floor()), 0.3 + 0.25 * draw(1), 2 * math.pi * draw(2)
        return _radial_distance(dx, dy, lambda theta: 1.3 * r * (inner + (1 - inner) * (
            0.5 + 0.5 * torch.cos(points * (theta + turn))) ** 2))
    if name == "blob":  # a circle pushed in and out by three random harmonics
        return _radial_distance(dx, dy, lambda theta: r * (1 + sum(
            (0.15 + 0.2 * draw(k)) * torch.cos((k + 2) * theta + 2 * math.pi * draw(k + 3)) for k in range(3))))
    u_, v = _rotated(dx, dy, math.pi * draw(0))
    if name == "cross":  # two bars, a plus or an X
        length, width = 1.2 * r, (0.2 + 0.15 * draw(1)) * r
        return torch.minimum(torch.maximum(u_.abs() - length, v.abs() - width),
                             torch.maximum(v.abs() - length, u_.abs() - width))
    if name == "bow-tie":  # two triangles meeting at their tips
        slope = 0.6 + 0.5 * draw(1)
        return torch.maximum((v.abs() - slope * u_.abs()) / torch.sqrt(1 + slope**2), u_.abs() - 1.2 * r)
    aspect = 2 + 1.5 * draw(1)  # an ellipse: a worm of a circle
    a, b = 1.3 * r, 1.3 * r / aspect
    return (torch.sqrt((u_ / a) ** 2 + (v / b) ** 2) - 1) * b


def make_malformed(num_images: int, seed: int = 0, resolution: int = 32, *, start: int = 0
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Images that are *not* one of the world's shapes, with the index in ``MALFORMED`` of what each holds.

    Each takes the colours, place and size of image ``start + i`` of ``make_shapes(..., seed)``, and draws on
    it, in equal shares: a star, a cross, a bow-tie, a lumpy blob, a thin ellipse, two genuine shapes, a genuine
    shape faded to 8-30% of its contrast, or nothing at all. Returns ``(images (N, 3, H, W) in [-1, 1], kinds
    (N,) int64)``; like make_shapes, image ``i`` depends only on ``(seed, start + i)``.
    """
    num_images = _check_index(num_images, "num_images")
    seed, start = _check_index(seed, "seed"), _check_index(start, "start")
    resolution = _check_resolution(resolution)
    indices = np.arange(start, start + num_images, dtype=np.uint64)
    scenes = _draw_scenes(seed, start, num_images)
    u = torch.from_numpy(_uniforms(seed, indices, _MALFORMED_STREAM)).float()
    kinds = (u[:, 0] * len(MALFORMED)).long()
    images = _render(scenes, resolution)  # the genuine shape, which "faint" starts from
    # "two shapes": the scene's shape in a corner (the top left if it was in the centre) and, in the opposite
    # corner, a small second shape of another scene of the seed, in the first one's colour so it stands out.
    two = kinds == MALFORMED.index("two shapes")
    centers = torch.tensor([POSITION_CENTERS[p] for p in POSITIONS])
    corner = scenes.labels[two, 3].clamp(max=POSITIONS.index("bottom right"))  # the centre (4) becomes top left (0)
    offset = scenes.centers[two] - centers[scenes.labels[two, 3]]  # the scene's jitter, kept
    second = _draw_scenes(seed, start + 2**63, num_images)  # far from any index a dataset reaches
    first = _Scenes(scenes.labels[two], centers[corner] + offset, scenes.radii[two], scenes.colors[two],
                    scenes.backgrounds[two])
    pair = first._replace(labels=second.labels[two], centers=centers[3 - corner] + offset,
                          radii=second.radii[two].clamp(max=BASE_RADIUS["small"] * (1 + RADIUS_JITTER)))
    images[two] = _render(first, resolution)
    partner = _render(pair, resolution)
    background = scenes.backgrounds[:, :, None, None]
    images[two] = torch.where((partner - background[two]).abs().sum(1, keepdim=True) > 1e-6, partner, images[two])
    faint = kinds == MALFORMED.index("faint")
    images[faint] = background[faint] + (0.08 + 0.22 * u[faint, 1, None, None, None]) * (
        images[faint] - background[faint])
    empty = kinds == MALFORMED.index("empty")
    images[empty] = background[empty].expand(-1, -1, resolution, resolution)
    for kind in range(MALFORMED.index("two shapes")):  # the drawn outlines, each kind in one call
        mine = kinds == kind
        draws = u[mine, 1:]
        images[mine] = _render(_Scenes(*(field[mine] for field in scenes)), resolution,
                               lambda chunk, dx, dy, r: _malformed_distance(kind, dx, dy, r, draws[chunk]))
    return images, kinds


def augment(images: torch.Tensor, generator: torch.Generator, config: Config) -> torch.Tensor:
    """Images (B, 3, H, W) with a random per-image colour shift and pixel noise, clamped back to [-1, 1]."""
    batch = len(images)
    shift = (2 * torch.rand(batch, 3, 1, 1, generator=generator) - 1) * config.color_jitter
    noise_std = torch.rand(batch, 1, 1, 1, generator=generator) * config.noise_std
    noise = torch.randn(images.shape, generator=generator) * noise_std
    return (images + shift + noise).clamp(-1, 1)


def blur(images: torch.Tensor, generator: torch.Generator, max_sigma: float) -> torch.Tensor:
    """Images (B, 3, H, W), each blurred by a Gaussian of its own sigma in [0, max_sigma] pixels (5 taps)."""
    batch, channels, height, width = images.shape
    sigma = (torch.rand(batch, generator=generator) * max_sigma).clamp(min=1e-3)[:, None]
    taps = torch.exp(-torch.arange(-2.0, 3.0) ** 2 / (2 * sigma**2))
    taps = (taps / taps.sum(dim=1, keepdim=True)).repeat_interleave(channels, dim=0)  # (B * 3, 5)
    x = F.pad(images.reshape(1, batch * channels, height, width), (2, 2, 2, 2), mode="replicate")
    x = F.conv2d(x, taps[:, None, :, None], groups=batch * channels)  # separable: down the columns, then rows
    return F.conv2d(x, taps[:, None, None, :], groups=batch * channels).reshape(images.shape)


def reject_loss(model: AttributeClassifier, step: int, generator: torch.Generator, config: Config) -> torch.Tensor:
    """The "none of these" stage's loss at ``step``: binary cross-entropy of the classifier's none-logit on half
    real images (0) and half malformed ones (1), fresh every step, blurred and augmented alike."""
    half = config.batch_size // 2
    real, _, _ = make_shapes(half, config.seed, start=step * half)
    malformed, _ = make_malformed(half, config.seed, start=step * half)
    images = augment(blur(torch.cat([real, malformed]), generator, config.reject_blur), generator, config)
    targets = torch.cat([torch.zeros(half), torch.ones(half)])
    return F.binary_cross_entropy_with_logits(model.none_logit(images), targets)


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


@torch.no_grad()
def held_out_rejections(model: AttributeClassifier, num_images: int) -> dict[str, float]:
    """How often the classifier says "none of these": of ``num_images`` reference real images (seed 7, which it
    should accept), and of as many malformed images of that seed, by kind (which it should refuse)."""
    def refused(images: torch.Tensor) -> torch.Tensor:
        return torch.cat([model.rejects(batch) for batch in images.split(500)]).float()

    malformed, kinds = make_malformed(num_images, SEEDS["reference"])
    rejected = refused(malformed)
    return {"real images": round(refused(real_images(num_images)[0]).mean().item(), 4),
            **{kind: round(rejected[kinds == k].mean().item(), 4) for k, kind in enumerate(MALFORMED)}}


def train(name: str, config: Config, out: Path, run_dir: Path, resume: bool = False) -> dict:
    """Train network ``name`` ("classifier" or "vit"), save it to ``out / name`` with its recipe; return that.
    The classifier's run is its attribute stage, then its "none of these" stage (``reject_steps`` more).

    Checkpoints go to ``run_dir / name``; with ``resume`` the run goes on from there exactly as if uninterrupted.
    """
    torch.manual_seed(config.seed)  # the initial weights
    model = NETWORKS[name]()
    # (first step, steps, peak lr) of each stage. One AdamW serves both of the classifier's: a parameter without a
    # gradient (the reject CNN in the first, the attribute network in the second) is left alone, decay included.
    stages = [(0, getattr(config, f"{name}_steps"), getattr(config, f"{name}_lr"))]
    if name == "classifier":
        stages.append((config.classifier_steps, config.reject_steps, config.reject_lr))
    steps = sum(length for _, length, _ in stages)
    optimizer = torch.optim.AdamW(model.parameters(), lr=stages[0][2], weight_decay=config.weight_decay)
    checkpoint_dir = run_dir / name
    resume = resume and (checkpoint_dir / "checkpoint.json").exists()  # "both" resumes the network it stopped in
    run = Run(checkpoint_dir, {"model": model}, {"optimizer": optimizer}, config, resume, step=0, losses=[])
    for step in run.steps("step", steps, name):
        rejecting = step >= stages[0][1]
        first, length, peak_lr = stages[rejecting]
        # distinct generators for each network's and stage's augmentation
        generator = step_generator(config.seed, step - first, 3 if rejecting else list(NETWORKS).index(name) + 1)
        set_lr(optimizer, lr_at(step - first, length, peak_lr, config.warmup_steps))
        if rejecting:
            loss = reject_loss(model, step - first, generator, config)
        else:
            images, _, labels = make_shapes(config.batch_size, config.seed, start=step * config.batch_size)
            loss = attribute_loss(model(augment(images, generator, config)), labels)
        run.check_loss(loss, name, step, fix=f"lower --{'reject' if rejecting else name}-lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        run.state["losses"] = (run.state["losses"] + [loss.item()])[-10:]
        run.advance(step, config.checkpoint_every, {"loss": loss.item()} if step % 50 == 0 else None)
    run.checkpoint()

    model.eval()
    save_evaluator(model, out / name)
    extra = {"held_out_none_of_these": held_out_rejections(model, config.eval_images)} if name == "classifier" else {}
    return run.write_recipe(out / name, f"addlib.course.train_evaluators --which {name}",
                            parameters=sum(p.numel() for p in model.parameters()),
                            held_out_accuracy=held_out_accuracy(model, config.eval_images), **extra,
                            final_losses=run.state["losses"])


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(prog="python -m addlib.course.train_evaluators", description=__doc__.split("\n\n")[0])
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
        args |= {"classifier_steps": steps, "reject_steps": steps, "vit_steps": steps}
    names = list(NETWORKS) if which == "both" else [which]
    try:
        config = Config(**args)  # checked as it is built
        check_folder("--out", out)
        check_folder("--run-dir", run_dir)
        for name in names:  # each network's run has a folder of its own
            check_run_dir(run_dir / name, resume)
    except ValueError as error:
        parser.error(str(error))
    for name in names:
        recipe = train(name, config, out, run_dir, resume)
        accuracy = ", ".join(f"{k} {v:.4f}" for k, v in recipe["held_out_accuracy"].items())
        print(f"{name}: {recipe['minutes']} min; held-out accuracy: {accuracy}; saved to {out / name}")


if __name__ == "__main__":
    run_command(main)
