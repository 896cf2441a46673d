"""Linear probes: how much a frozen network's features say about an attribute (Alain & Bengio, 2016).

A discriminator head can punish only what its features show. A linear probe measures that: fit a logistic
regression from the frozen features to the attribute on part of a labelled set, and report its accuracy on the
rest. A network whose features a probe reads at 96% sees the attribute; at chance (1/3 for three shapes), it is
blind to it. ``python -m addlib.bench probe`` compares the discriminators' two feature networks on the shapes of
small shapes: the TinyViT that ADD's heads read, and the teacher UNet's blocks that LADD's read, at several noise
levels (notebook 08).

A heads probe asks the same of a whole discriminator: fresh heads trained alone to tell real images from a
frozen student's one-step fakes, scored on images they never saw (``python -m addlib.bench heads``). It
separates a discriminator that cannot see the difference from one whose loss hides what it sees.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F


def linear_probe(features: torch.Tensor, labels: torch.Tensor, train_fraction: float = 0.7, steps: int = 300,
                 seed: int = 0) -> float:
    """Held-out accuracy of a logistic regression from ``features`` (N, D) to integer ``labels`` (N,), fitted by
    full-batch Adam on the first ``train_fraction`` of the rows (standardised with their statistics) and scored
    on the rest. On the CPU, wherever the features come from: the probe is small, and its initial weights and
    steps are then the same on every device."""
    if not 0 < train_fraction < 1 or len(features) != len(labels) or len(labels) < 2:
        raise ValueError(f"a probe needs as many labels as feature rows (got {len(labels)} and {len(features)}) "
                         f"and a train_fraction strictly between 0 and 1 (got {train_fraction})")
    features, labels, split = features.detach().float().cpu(), labels.cpu(), int(train_fraction * len(labels))
    mean, std = features[:split].mean(0), features[:split].std(0) + 1e-6
    features = (features - mean) / std
    torch.manual_seed(seed)  # the probe's initial weights
    probe = torch.nn.Linear(features.shape[1], int(labels.max()) + 1)
    optimizer = torch.optim.Adam(probe.parameters(), lr=1e-2, weight_decay=1e-4)
    with torch.enable_grad():
        for _ in range(steps):
            loss = F.cross_entropy(probe(features[:split]), labels[:split])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        return (probe(features[split:]).argmax(1) == labels[split:]).float().mean().item()


def pooled_tokens(tokens: torch.Tensor) -> torch.Tensor:
    """Tokens (B, T, C) pooled to (B, 2C): their mean and their maximum, so a small shape's few tokens count."""
    return torch.cat([tokens.mean(dim=1), tokens.amax(dim=1)], dim=1)


# Each a change from the shipped recipe (train_add.Config): the discriminator settings a heads probe compares.
HEADS_SWEEP = {
    "shipped": {},
    "gamma 0": {"r1_weight": 0.0},
    "gamma 0.02 (the paper's, converted)": {"r1_weight": 0.02},
    "gamma 1": {"r1_weight": 1.0},
    "lr 1e-4": {"discriminator_lr": 1e-4},
    "lr 1e-2": {"discriminator_lr": 1e-2},
    "width 16": {"head_width": 16},
    "width 256": {"head_width": 256},
    "blocks 5": {"discriminator_layers": "5"},
    "blocks 0-5": {"discriminator_layers": "0,1,2,3,4,5"},
    "verdict image": {"discriminator_verdict": "image"},
    "verdict image, gamma 0.02": {"discriminator_verdict": "image", "r1_weight": 0.02},
    "text + image conditioning": {"discriminator_conditioning": "text,image"},
    "LADD (m = -1)": {"discriminator": "ladd"},
    "LADD, verdict image": {"discriminator": "ladd", "discriminator_verdict": "image"},
    "ADD + LADD": {"discriminator": "add+ladd"},
}


@dataclass
class Pool:
    """Real images with their latents, captions' tokens and pooled embeddings, and a student's one-step fakes of
    them (images and latents), made once and shared by every discriminator a heads probe trains."""

    images: torch.Tensor
    latents: torch.Tensor
    text: torch.Tensor
    pooled: torch.Tensor
    fake_images: torch.Tensor
    fake_latents: torch.Tensor
    fake_right: torch.Tensor  # (N,) bool: the evaluator reads every attribute the caption names in the fake

    def __len__(self) -> int:
        return len(self.images)

    def part(self, index: torch.Tensor) -> Pool:
        return Pool(*(getattr(self, f.name)[index] for f in fields(self)))

    def views(self, discriminator) -> tuple:
        """What ``discriminator`` judges of the real samples and of the fakes."""
        return (discriminator.view(self.images, self.latents),
                discriminator.view(self.fake_images, self.fake_latents))


def heads_probe(discriminator, optimizer, train: Pool, held_out: Pool, r1_weight: float, steps: int,
                batch_size: int, seed: int = 0) -> dict[str, float]:
    """Train fresh discriminator heads alone, for ``steps`` steps of ``discriminator.loss`` on batches of real
    images and a frozen student's fakes of them (``train``), then read the verdicts on ``held_out``.

    Returns, on ``held_out``: the accuracy (the share of images whose score has the right sign; 0.5 is chance),
    the share of pairs whose real image scores above its fake, the score gap, and how the heads rank the fakes
    the evaluator reads wrong against those it reads right (the chance that a right fake scores above a wrong
    one: 0.5 when the heads cannot see what is wrong); and the training hinge over the last fifth of the steps
    beside its chance value (heads that say 0 to everything)."""
    from addlib.discriminator import paired_generators, score, verdicts

    generator = torch.Generator().manual_seed(seed)
    condition = lambda pool: discriminator.condition(pool.images, pool.text, pool.pooled)  # noqa: E731
    hinges = []
    discriminator.train()
    for _ in range(steps):
        batch = train.part(torch.randint(len(train), (batch_size,), generator=generator))
        with torch.no_grad():
            kwargs = condition(batch)
        loss, stats = discriminator.loss(*batch.views(discriminator), r1_weight, generator, **kwargs)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        hinges.append(stats["hinge"])
    discriminator.eval()
    real_generator, fake_generator = paired_generators(torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        kwargs = condition(held_out)
        real_view, fake_view = held_out.views(discriminator)
        real = score(discriminator(real_view, **kwargs, generator=real_generator))
        fake = score(discriminator(fake_view, **kwargs, generator=fake_generator))
    tail = hinges[-max(1, steps // 5):]
    right, wrong = fake[held_out.fake_right], fake[~held_out.fake_right]
    return {**verdicts(real, fake), "pairs": (real > fake).float().mean().item(),
            "right_above_wrong": (right[:, None] > wrong[None, :]).float().mean().item(),
            "train_hinge": sum(tail) / len(tail), "hinge_at_chance": 2.0 * len(discriminator.heads)}
