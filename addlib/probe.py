"""Linear probes: how much a frozen network's features say about an attribute (Alain & Bengio, 2016).

A discriminator head can punish only what its features show. A linear probe measures that: fit a logistic
regression from the frozen features to the attribute on part of a labelled set, and report its accuracy on the
rest. A network whose features a probe reads at 96% sees the attribute; at chance (1/3 for three shapes), it is
blind to it. ``python -m addlib.bench probe`` compares the discriminators' two feature networks on the shapes of
small shapes: the TinyViT that ADD's heads read, and the teacher UNet's blocks that LADD's read, at several noise
levels (notebook 08).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def linear_probe(features: torch.Tensor, labels: torch.Tensor, train_fraction: float = 0.7, steps: int = 300,
                 seed: int = 0) -> float:
    """Held-out accuracy of a logistic regression from ``features`` (N, D) to integer ``labels`` (N,), fitted by
    full-batch Adam on the first ``train_fraction`` of the rows (standardised with their statistics) and scored
    on the rest."""
    if not 0 < train_fraction < 1 or len(features) != len(labels) or len(labels) < 2:
        raise ValueError(f"a probe needs as many labels as feature rows (got {len(labels)} and {len(features)}) "
                         f"and a train_fraction strictly between 0 and 1 (got {train_fraction})")
    features, split = features.detach().float(), int(train_fraction * len(labels))
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
