"""The adversarial half of ADD: a projected discriminator with R1 on features (Sauer et al., 2023, section 3.2).

A GAN discriminator trained from scratch on few images overfits and its gradients say little. Projected GANs
(Sauer et al., 2021) and StyleGAN-T (Sauer et al., 2023) instead read images through a *frozen* pretrained
feature network F and train only small heads D_k on the token features F_k of several of its layers. ADD
takes this discriminator as it is, with F = DINOv2 ViT-S, and conditions every head by projection on a text
embedding c_text and an image embedding c_img (the CLS of F on the real image; Table 1b: both together work
best):

    D_k(x) = < cls_k(h_k(F_k(x))), W [c_text, c_img] > / sqrt(cmap_dim)              (one logit per token)

``conditions`` picks the embeddings, for Table 1b's ablation: both (the default), one, or none (then W maps a
constant 1, and each head is unconditional). The miniature's trainer reads the text alone (``train_add.Config``).

Hinge losses, with R1 on each head's *input features* (ADD eq. 3-4; Mescheder et al., 2018):

    L_adv^D = E[sum_k max(0, 1 - D_k(F_k(x0)))] + E[sum_k max(0, 1 + D_k(F_k(x_theta)))] + gamma * R1
    R1      = E[sum_k || d D_k(F_k(x0)) / d F_k(x0) ||^2]
    L_adv^G = -E[sum_k D_k(F_k(x_theta))]

Both real and fake images go through the same random DiffAugment (colour, translation, cutout; Zhao et al.,
2020) first, so the heads cannot win by spotting the augmentation.

In the miniature F is the shipped :class:`~addlib.evaluators.TinyViT`; at the real scale it is
:class:`DINOv2Features`. Anything with ``features(images, layers)``, ``cls_embedding(images)``, ``num_layers``
and ``embed_dim`` works.

Every discriminator here (this one, LADD's in :mod:`addlib.latent_discriminator`, and both at once as a
:class:`JointDiscriminator`) is a :class:`Discriminator`: it picks what it judges of a sample (``view``: the
decoded images, the latents, or both), computes its ``condition`` once per batch, returns token logits from
``forward(x, **condition)`` and shares one ``loss``. So ADD's trainer never asks which one it holds.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

DIFFAUGMENT_POLICY = ("color", "translation", "cutout")
# Where the hinge reads a head's token logits (hinge_discriminator_loss): each token on its own (StyleGAN-T's), or
# the image's mean token logit, its verdict, so tokens no head can tell apart (a plain background) do not hold
# the loss at its chance value.
VERDICTS = ("tokens", "image")
CONDITIONS = ("text", "image")  # c_text and c_img, in the order the heads concatenate them


def diff_augment(images: torch.Tensor, policy: Sequence[str] = DIFFAUGMENT_POLICY,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Differentiable augmentation of images (B, 3, H, W) in [-1, 1] (DiffAugment, Zhao et al., 2020).

    Each image draws its own brightness, saturation and contrast change, a shift by up to 1/8 of its size
    (uncovered pixels become 0) and a blacked-out square of half its size. Gradients flow to the images.
    """
    unknown = set(policy) - set(DIFFAUGMENT_POLICY)
    if unknown:
        raise ValueError(f"unknown augmentation {sorted(unknown)}; choose from {', '.join(DIFFAUGMENT_POLICY)}")
    batch, _, height, width = images.shape

    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(batch, *shape, generator=generator).to(images)

    x = images
    if "color" in policy:
        x = x + (uniform(1, 1, 1) - 0.5)
        mean = x.mean(dim=1, keepdim=True)
        x = (x - mean) * (uniform(1, 1, 1) * 2) + mean
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * (uniform(1, 1, 1) + 0.5) + mean
    if "translation" in policy:
        pad_y, pad_x = int(height / 8 + 0.5), int(width / 8 + 0.5)
        shift_y = torch.randint(-pad_y, pad_y + 1, (batch, 1), generator=generator).to(x.device)
        shift_x = torch.randint(-pad_x, pad_x + 1, (batch, 1), generator=generator).to(x.device)
        rows = (torch.arange(height, device=x.device) + pad_y + shift_y)[:, :, None]  # (B, H, 1)
        cols = (torch.arange(width, device=x.device) + pad_x + shift_x)[:, None, :]  # (B, 1, W)
        padded = F.pad(x, [pad_x, pad_x, pad_y, pad_y])
        x = padded[torch.arange(batch, device=x.device)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)
    if "cutout" in policy:
        size_y, size_x = int(height / 2 + 0.5), int(width / 2 + 0.5)
        centre_y = torch.randint(0, height + (1 - size_y % 2), (batch, 1, 1), generator=generator).to(x.device)
        centre_x = torch.randint(0, width + (1 - size_x % 2), (batch, 1, 1), generator=generator).to(x.device)
        rows = torch.arange(height, device=x.device)[None, :, None] - centre_y + size_y // 2  # row within the square
        cols = torch.arange(width, device=x.device)[None, None, :] - centre_x + size_x // 2
        inside = (rows >= 0) & (rows < size_y) & (cols >= 0) & (cols < size_x)  # (B, H, W)
        x = x * (~inside).unsqueeze(1).to(x)
    return x


DINOV2_ID = "facebook/dinov2-small"  # ViT-S/14, ADD's feature network
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class DINOv2Features(nn.Module):
    """DINOv2 (a transformers ``Dinov2Model``) behind the TinyViT interface: the real-scale feature network.

    Images (B, 3, H, W) in [-1, 1] of any size are resized to ``image_size`` and normalised as DINOv2 was
    trained. ``features`` returns block outputs (B, 1 + patches, C), CLS first, like TinyViT's.
    """

    def __init__(self, model: nn.Module, image_size: int = 224):
        super().__init__()
        self.model, self.image_size = model, image_size
        self.num_layers, self.embed_dim = model.config.num_hidden_layers, model.config.hidden_size
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def _run(self, images: torch.Tensor):
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"DINOv2 expects RGB images (B, 3, H, W) in [-1, 1], got {tuple(images.shape)}")
        # In float32: under bf16 autocast on a CPU, torch has no antialiased resize for bf16.
        x = F.interpolate((images.float() + 1) / 2, size=(self.image_size, self.image_size), mode="bilinear",
                          antialias=True, align_corners=False)
        return self.model(pixel_values=(x - self.mean) / self.std, output_hidden_states=True)

    def features(self, images: torch.Tensor, layers: Sequence[int]) -> list[torch.Tensor]:
        hidden_states = self._run(images).hidden_states  # embeddings first, then one per block
        return [hidden_states[layer + 1] for layer in layers]

    def cls_embedding(self, images: torch.Tensor) -> torch.Tensor:
        return self._run(images).pooler_output  # the layer-normed CLS token


def load_dinov2(model_id: str = DINOV2_ID, image_size: int = 224) -> DINOv2Features:
    """DINOv2 from the Hugging Face hub (or a local folder), wrapped as a feature network. Needs the hub once."""
    from transformers import Dinov2Model

    from addlib.loading import from_folder_or_hub

    model = from_folder_or_hub(Dinov2Model.from_pretrained, model_id, "DINOv2", "config.json",
                               "save one with Dinov2Model.save_pretrained",
                               "use the miniature's feature network (feature_network 'miniature')")
    return DINOv2Features(model, image_size)


def feature_network(name: str) -> torch.nn.Module:
    """The discriminator's frozen feature network: "miniature" (the shipped TinyViT, data/evaluators/vit), a
    folder holding another TinyViT (``python -m addlib.course.train_evaluators --which vit --out ...``), or a DINOv2
    hub id or folder (ADD's choice at the real scale)."""
    from addlib.evaluators import load_feature_network

    if name == "miniature":
        return load_feature_network()
    saved = Path(name) / "config.json"
    if saved.exists() and json.loads(saved.read_text()).get("class") == "TinyViT":  # save_evaluator's format
        return load_feature_network(name)
    return load_dinov2(name)


def check_heads(cmap_dim: int, verdict: str) -> None:
    """Refuse, in one line, heads no discriminator can be built with."""
    if isinstance(cmap_dim, bool) or not isinstance(cmap_dim, int) or cmap_dim < 1:
        raise ValueError(f"the heads' width (cmap_dim, --head-width) must be a positive integer (64 here, "
                         f"StyleGAN-T's), got {cmap_dim!r}")
    if verdict not in VERDICTS:
        raise ValueError(f"unknown verdict {verdict!r} (--discriminator-verdict); choose one of {', '.join(VERDICTS)}")


class _Residual(nn.Module):
    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + self.fn(x)) / math.sqrt(2)  # keeps the variance of the sum that of each branch


def _block(channels: int, kernel_size: int) -> nn.Sequential:
    # StyleGAN-T normalises over groups of 8 samples (BatchNormLocal). Here each sample is normalised on its
    # own, so a head's verdict on an image never depends on which images share its batch: R1 is then truly
    # per image, and accuracy on an all-real or all-fake batch means what it says.
    return nn.Sequential(
        spectral_norm(nn.Conv1d(channels, channels, kernel_size, padding=kernel_size // 2, padding_mode="circular")),
        nn.GroupNorm(1, channels),
        nn.LeakyReLU(0.2),
    )


class DiscriminatorHead(nn.Module):
    """D_k: a 1x1 and a residual 9-wide convolution over the tokens, then a projection onto the condition."""

    def __init__(self, channels: int, condition_dim: int, cmap_dim: int = 64):
        super().__init__()
        self.cmap_dim = cmap_dim
        self.main = nn.Sequential(_block(channels, 1), _Residual(_block(channels, 9)))
        self.cls = spectral_norm(nn.Conv1d(channels, cmap_dim, kernel_size=1))
        self.cmapper = nn.Linear(condition_dim, cmap_dim)

    def forward(self, tokens: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """Token features (B, T, C) and condition (B, condition_dim) to one logit per token (B, T)."""
        h = self.cls(self.main(tokens.transpose(1, 2)))  # (B, cmap_dim, T)
        cmap = self.cmapper(condition).unsqueeze(-1)  # (B, cmap_dim, 1)
        return (h * cmap).sum(dim=1) / math.sqrt(self.cmap_dim)


class Discriminator(nn.Module):
    """What ADD's trainer asks of a discriminator: trainable ``heads`` on the token features of a frozen network.

    ``reads`` is what it judges of a sample: ``"images"`` (decoded pixels, ADD's) or ``"latents"`` (LADD's);
    ``verdict`` where its hinge reads the heads' token logits (:data:`VERDICTS`).
    ``condition(images, text_tokens, pooled)`` returns, once per batch of real images and their captions, the
    keyword arguments its ``forward(x, **condition, generator=...)`` and :meth:`loss` take; ``read`` returns the
    heads' input features of ``x`` and what ``heads_logits(features, *context)`` needs beside them.
    """

    reads: str
    heads: nn.ModuleList
    verdict: str = "tokens"  # where the hinge reads the heads' token logits (VERDICTS)

    def condition(self, images: torch.Tensor, text_tokens: torch.Tensor, pooled: torch.Tensor) -> dict:
        raise NotImplementedError

    def view(self, images: torch.Tensor, latents: torch.Tensor):
        """What this discriminator judges of a sample given both its decoded ``images`` and its ``latents``."""
        return {"images": images, "latents": latents}[self.reads]

    def read(self, x: torch.Tensor, generator: torch.Generator | None = None, **condition
             ) -> tuple[list[torch.Tensor], tuple]:
        raise NotImplementedError

    def heads_logits(self, features: list[torch.Tensor], *context) -> list[torch.Tensor]:
        raise NotImplementedError

    def loss(self, real: torch.Tensor, fake: torch.Tensor, r1_weight: float, generator: torch.Generator | None = None,
             **condition) -> tuple[torch.Tensor, dict[str, float]]:
        """L_adv^D for real samples and the fakes made from them (detached here: this loss trains the heads
        alone), both augmented or re-noised alike (:func:`paired_generators`), and its parts for logging."""
        real_generator, fake_generator = paired_generators(generator)
        real_features, context = self.read(real, real_generator, **condition)
        if r1_weight:
            real_features = [f.detach().requires_grad_() for f in real_features]
        real_logits = self.heads_logits(real_features, *context)
        fake_logits = self(fake.detach(), **condition, generator=fake_generator)
        return adversarial_losses(real_logits, real_features, fake_logits, r1_weight, self.verdict)


class ProjectedDiscriminator(Discriminator):
    """Trainable heads on the token features of chosen layers of a frozen feature network.

    ``feature_network`` is frozen here (no gradients to its weights; gradients still flow through it to the
    images, which the generator needs). ``text_dim`` is the size of the text embedding the heads are
    conditioned on (the teacher text encoder's pooled output); the image embedding is the network's CLS.
    """

    reads = "images"

    def __init__(self, feature_network: nn.Module, layers: Sequence[int], text_dim: int, cmap_dim: int = 64,
                 augment: Sequence[str] = DIFFAUGMENT_POLICY, conditions: Sequence[str] = CONDITIONS,
                 verdict: str = "tokens"):
        super().__init__()
        check_heads(cmap_dim, verdict)
        layers = list(layers)
        bad = [layer for layer in layers if not (isinstance(layer, int) and 0 <= layer < feature_network.num_layers)]
        if bad or not layers:
            raise ValueError(f"head layers {layers} must be a non-empty list of layers that exist: the feature "
                             f"network has layers 0 to {feature_network.num_layers - 1}")
        unknown = [c for c in conditions if c not in CONDITIONS]
        if unknown or len(set(conditions)) != len(conditions):
            raise ValueError(f"conditions {list(conditions)} must be distinct names from {list(CONDITIONS)} "
                             f"(none at all makes the heads unconditional)")
        self.feature_network = feature_network.eval().requires_grad_(False)
        self.layers, self.augment, self.conditions, self.verdict = layers, tuple(augment), tuple(conditions), verdict
        sizes = {"text": text_dim, "image": feature_network.embed_dim}
        condition_dim = sum(sizes[c] for c in self.conditions) or 1
        self.heads = nn.ModuleList(DiscriminatorHead(feature_network.embed_dim, condition_dim, cmap_dim)
                                   for _ in layers)

    def train(self, mode: bool = True) -> ProjectedDiscriminator:
        super().train(mode)
        self.feature_network.eval()  # frozen: its dropout or norms never switch to training behaviour
        return self

    def features(self, images: torch.Tensor, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """F_k of the augmented images: one (B, T, C) tensor per head."""
        if self.augment:
            images = diff_augment(images, self.augment, generator)
        return self.feature_network.features(images, self.layers)

    @torch.no_grad()
    def image_embedding(self, real_images: torch.Tensor) -> torch.Tensor | None:
        """c_img: the feature network's CLS embedding of the real images (B, C), never augmented; None when the
        heads do not read it, so no training step spends a feature-network pass on it."""
        if "image" not in self.conditions:
            return None
        return self.feature_network.cls_embedding(real_images)

    def heads_logits(self, features: list[torch.Tensor], text_embedding: torch.Tensor,
                     image_embedding: torch.Tensor | None) -> list[torch.Tensor]:
        """D_k(F_k) for every head: a list of (B, T) token logits."""
        embeddings = {"text": text_embedding, "image": image_embedding}
        chosen = [embeddings[c] for c in self.conditions] or [text_embedding.new_ones(len(text_embedding), 1)]
        condition = torch.cat(chosen, dim=1)
        return [head(tokens, condition) for head, tokens in zip(self.heads, features)]

    def condition(self, images: torch.Tensor, text_tokens: torch.Tensor, pooled: torch.Tensor) -> dict:
        """The heads' condition for real ``images`` and their captions: c_text, the pooled text embedding, and
        c_img (:meth:`image_embedding`)."""
        return {"text_embedding": pooled, "image_embedding": self.image_embedding(images)}

    def read(self, images: torch.Tensor, generator: torch.Generator | None = None, *, text_embedding: torch.Tensor,
             image_embedding: torch.Tensor | None) -> tuple:
        return self.features(images, generator), (text_embedding, image_embedding)

    def forward(self, images: torch.Tensor, text_embedding: torch.Tensor, image_embedding: torch.Tensor | None,
                generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """D_k of the augmented images (B, 3, H, W): a list of (B, T) token logits."""
        return self.heads_logits(self.features(images, generator), text_embedding, image_embedding)


class JointDiscriminator(Discriminator):
    """Several discriminators judged as one: each reads its own view of a sample with its own condition, the
    verdict (:func:`score`) sums all their heads, and their losses add up. ADD's heads on a frozen image network
    and LADD's on the teacher's blocks see different things (``python -m addlib.bench heads``): together the
    student must satisfy both."""

    reads = "joint"

    def __init__(self, parts: Sequence[Discriminator]):
        super().__init__()
        self.parts = nn.ModuleList(parts)
        self.heads = nn.ModuleList(head for part in parts for head in part.heads)  # what trains, and is saved

    def view(self, images: torch.Tensor, latents: torch.Tensor) -> tuple:
        return tuple(part.view(images, latents) for part in self.parts)

    def condition(self, images: torch.Tensor, text_tokens: torch.Tensor, pooled: torch.Tensor) -> dict:
        return {"conditions": [part.condition(images, text_tokens, pooled) for part in self.parts]}

    def forward(self, x: tuple, conditions: list[dict], generator: torch.Generator | None = None
                ) -> list[torch.Tensor]:
        return [logits for part, view, condition in zip(self.parts, x, conditions)
                for logits in part(view, **condition, generator=generator)]

    def loss(self, real: tuple, fake: tuple, r1_weight: float, generator: torch.Generator | None = None,
             conditions: list[dict] = ()) -> tuple[torch.Tensor, dict[str, float]]:
        losses = [part.loss(r, f, r1_weight, generator, **condition)
                  for part, r, f, condition in zip(self.parts, real, fake, conditions)]
        return sum(loss for loss, _ in losses), {key: sum(stats[key] for _, stats in losses) for key in losses[0][1]}


def score(logits: list[torch.Tensor]) -> torch.Tensor:
    """One number per image (B,): sum over heads of the mean token logit. Positive reads as real."""
    return sum(head_logits.mean(dim=1) for head_logits in logits)


def verdicts(real_score: torch.Tensor, fake_score: torch.Tensor) -> dict[str, float]:
    """How well scores (B,) of real images and of fakes tell them apart: ``held_out_accuracy``, the share whose
    score has the right sign (real above 0, fake below; 0.5 at chance), and ``held_out_gap``, the mean real score
    minus the mean fake score."""
    real_score, fake_score = real_score.float(), fake_score.float()
    accuracy = ((real_score > 0).float().mean() + (fake_score < 0).float().mean()) / 2
    return {"held_out_accuracy": accuracy.item(), "held_out_gap": (real_score.mean() - fake_score.mean()).item()}


def hinge_discriminator_loss(real_logits: list[torch.Tensor], fake_logits: list[torch.Tensor],
                             verdict: str = "tokens") -> torch.Tensor:
    """E[sum_k max(0, 1 - D_k(real))] + E[sum_k max(0, 1 + D_k(fake))], averaged over tokens and images.

    With ``verdict="image"`` D_k of an image is its mean token logit, and the hinge reads that instead of each
    token (:data:`VERDICTS`). Heads that say 0 to everything score 2 per head either way: the chance value."""
    if verdict not in VERDICTS:
        raise ValueError(f"unknown verdict {verdict!r}; choose one of {', '.join(VERDICTS)}")
    if verdict == "image":
        real_logits = [logits.mean(dim=1) for logits in real_logits]
        fake_logits = [logits.mean(dim=1) for logits in fake_logits]
    real = sum(F.relu(1 - logits).mean() for logits in real_logits)
    fake = sum(F.relu(1 + logits).mean() for logits in fake_logits)
    return real + fake


def hinge_generator_loss(fake_logits: list[torch.Tensor]) -> torch.Tensor:
    """-E[sum_k D_k(fake)]: the generator raises the heads' verdict on its samples."""
    return -sum(logits.mean() for logits in fake_logits)


def r1_penalty(real_logits: list[torch.Tensor], real_features: list[torch.Tensor]) -> torch.Tensor:
    """E[sum_k ||d D_k / d F_k(x0)||^2]: the squared gradient norm with respect to each head's *input features*.

    ``real_features`` must be leaves that require gradients (detach them from the feature network and call
    ``requires_grad_()``), and ``real_logits`` computed from them. D_k of an image is its mean token logit.
    The result keeps its graph, so ``gamma * r1`` can be added to the loss and back-propagated to the heads.
    Not to the head parameters, as diffusers' public ADD script did, and not to the pixels.
    """
    if any(not f.requires_grad for f in real_features):
        raise ValueError("R1 needs the real features to require gradients: pass "
                         "[f.detach().requires_grad_() for f in features] and compute the logits from those")
    outputs = [logits.mean(dim=1).sum() for logits in real_logits]  # sum over images: per-image gradients
    gradients = torch.autograd.grad(outputs, real_features, create_graph=True)
    penalty = sum(g.pow(2).flatten(1).sum(1).mean() for g in gradients)
    if not torch.isfinite(penalty):
        raise FloatingPointError(f"the R1 penalty is {penalty.item()}; the heads' gradients blew up: lower the "
                                 f"discriminator learning rate or raise the R1 weight gamma")
    return penalty


def paired_generators(generator: torch.Generator | None = None) -> tuple[torch.Generator, torch.Generator]:
    """Two generators in the same state, so a batch of real images and the batch of fakes made from them get
    identical augmentations, image for image: the heads then see the two differ only in content."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)


def adversarial_losses(real_logits: list[torch.Tensor], real_features: list[torch.Tensor],
                       fake_logits: list[torch.Tensor], r1_weight: float, verdict: str = "tokens"
                       ) -> tuple[torch.Tensor, dict[str, float]]:
    """The hinge loss plus ``r1_weight`` times R1 on the real features, and the parts for logging: what every
    :class:`Discriminator` minimises."""
    hinge = hinge_discriminator_loss(real_logits, fake_logits, verdict)
    r1 = r1_penalty(real_logits, real_features) if r1_weight else torch.zeros(())
    stats = {"hinge": hinge.item(), "r1": r1.item(), "real_score": score(real_logits).mean().item(),
             "fake_score": score(fake_logits).mean().item()}
    return hinge + r1_weight * r1, stats
