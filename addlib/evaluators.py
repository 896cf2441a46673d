"""The two small networks trained on the shapes world that the course measures and distils with.

- :class:`AttributeClassifier`, a CNN that reads the five attributes (shape, colour, size, position,
  background) back from an image. It is the *evaluator*: never used in training, it gives the offline metrics
  of :mod:`addlib.bench.metrics` that mirror the ADD paper's (Sauer et al., 2023, "Adversarial Diffusion
  Distillation") two axes. Prompt accuracy stands in for CLIP score, and shapes-FID is the FID recipe (Heusel
  et al., 2017) in this classifier's penultimate features instead of Inception's, as FID on MNIST uses a LeNet.
- :class:`TinyViT`, a Vision Transformer (Dosovitskiy et al., 2021, "An Image is Worth 16x16 Words") pretrained
  supervised on the attributes, as DeiT is on ImageNet classes (Touvron et al., 2021). It is the frozen
  *feature network* of ADD's discriminator, standing in for DINOv2 (Oquab et al., 2023): discriminator heads
  read its token features from several layers. Its interface follows transformers' ``Dinov2Model``.

Both are trained by ``python -m addlib.course.train_evaluators`` and stored as ``config.json`` (class and constructor
arguments) + ``model.safetensors`` (weights; never pickle) by :func:`save_evaluator`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from addlib.loading import DATA_DIR, to_model
from addlib.shapes import ATTRIBUTES
from addlib.utils.errors import resolve_device

EVALUATORS_DIR = DATA_DIR / "evaluators"
CLASSIFIER_DIR = EVALUATORS_DIR / "classifier"
FEATURE_NETWORK_DIR = EVALUATORS_DIR / "vit"


class _AttributeReader(nn.Module):
    """What both networks share: constructor arguments kept for saving, input checks, and ``predict``.

    Images may come from any device (a sampler's on the GPU, ``make_shapes``' on the CPU): each method reads
    them on the network's device and in its dtype, and answers there, but ``predict``."""

    config: dict  # constructor keyword arguments, written to config.json by save_evaluator

    def _inputs(self, images: torch.Tensor) -> torch.Tensor:
        size = self.config["image_size"]
        if images.ndim != 4 or images.shape[1:] != (3, size, size):
            raise ValueError(
                f"{type(self).__name__} expects images of shape (B, 3, {size}, {size}) in [-1, 1], "
                f"got {tuple(images.shape)}"
            )
        return to_model(images, self)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """The attribute labels it reads, (B, 5) int64 in ``ATTRIBUTES`` order, on the CPU like ``make_shapes``'
        labels, which they are compared with."""
        logits = self(images)
        return torch.stack([logits[name].argmax(dim=1) for name in ATTRIBUTES], dim=1).cpu()


def _conv_stack(channels: Sequence[int], image_size: int, out_dim: int) -> nn.Sequential:
    """Stages of conv 3x3 + GroupNorm + ReLU + 2x2 max-pool, the last map flattened, not averaged (position is an
    attribute, and global pooling would throw away where the shape is), into ``out_dim`` units + ReLU."""
    if image_size % 2 ** len(channels):
        raise ValueError(f"image_size must be divisible by {2 ** len(channels)}, got {image_size}")
    layers, in_channels = [], 3
    for out_channels in channels:
        # GroupNorm, not BatchNorm: an image's features never depend on the rest of its batch, in any mode.
        layers += [nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.GroupNorm(8, out_channels),
                   nn.ReLU(), nn.MaxPool2d(2)]
        in_channels = out_channels
    final_size = image_size // 2 ** len(channels)
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(in_channels * final_size**2, out_dim), nn.ReLU())


class AttributeClassifier(_AttributeReader):
    """A small CNN reading the five attributes of (B, 3, 32, 32) images in [-1, 1], and able to say "none of these".

    Three conv stages (32 -> 16 -> 8 -> 4 pixels) into a ``feature_dim`` penultimate layer: :meth:`features`,
    shapes-FID's feature space. One linear head per attribute reads it. Those heads are closed-world: any blob
    gets the likeliest of circle, square and triangle. So a second, smaller CNN, ``reject``, trained on real
    images against :func:`~addlib.course.train_evaluators.make_malformed`'s stars, crosses, blobs, pairs and
    smudges, gives the logit that an image holds none of the world's shapes (:meth:`rejects`). It shares nothing
    with the feature network, so it changes no shapes-FID.
    """

    def __init__(self, image_size: int = 32, channels: Sequence[int] = (32, 64, 128), feature_dim: int = 128,
                 reject_channels: Sequence[int] = (16, 32, 64)):
        super().__init__()
        self.config = dict(image_size=image_size, channels=list(channels), feature_dim=feature_dim,
                           reject_channels=list(reject_channels))
        self.backbone = _conv_stack(channels, image_size, feature_dim)
        self.heads = nn.ModuleDict({name: nn.Linear(feature_dim, len(values)) for name, values in ATTRIBUTES.items()})
        # Built last, so the attribute network draws the same initial weights as before it existed.
        self.reject = nn.Sequential(_conv_stack(reject_channels, image_size, 64), nn.Linear(64, 1))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The penultimate features (B, feature_dim) of images (B, 3, 32, 32): what shapes-FID compares."""
        return self.backbone(self._inputs(images))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per attribute: ``{"shape": (B, 3), "color": (B, 6), ...}``, keyed and ordered as ATTRIBUTES."""
        features = self.features(images)
        return {name: head(features) for name, head in self.heads.items()}

    def none_logit(self, images: torch.Tensor) -> torch.Tensor:
        """The logit (B,) that each image holds none of the world's shapes: no shape, two, or a malformed one."""
        return self.reject(self._inputs(images))[:, 0]

    def rejects(self, images: torch.Tensor) -> torch.Tensor:
        """Whether each image (B, 3, 32, 32) is "none of these" (probability above one half), (B,) bool."""
        return self.none_logit(images) > 0


class _Attention(nn.Module):
    """Multi-head self-attention over all tokens (no mask: every patch sees every patch and the CLS token)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, T, head_dim)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, T, head_dim)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class _Block(nn.Module):
    """A pre-norm transformer block, as in ViT: x + attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(_AttributeReader):
    """A Vision Transformer for (B, 3, 32, 32) images in [-1, 1]: the frozen feature network of ADD's discriminator.

    4x4 patches make 64 tokens, plus a CLS token in front (token 0); ``num_layers`` pre-norm blocks of width
    ``embed_dim``; a final LayerNorm on the CLS token and one linear head per attribute for the supervised
    pretraining. The discriminator uses :meth:`features` (token features of chosen blocks) and
    :meth:`cls_embedding` (the image embedding its heads are conditioned on), as ADD uses DINOv2's.
    """

    def __init__(self, image_size: int = 32, patch_size: int = 4, embed_dim: int = 96, num_layers: int = 6,
                 num_heads: int = 3, mlp_ratio: int = 4):
        super().__init__()
        if image_size % patch_size or embed_dim % num_heads:
            raise ValueError(f"image_size ({image_size}) must be divisible by patch_size ({patch_size}) and "
                             f"embed_dim ({embed_dim}) by num_heads ({num_heads})")
        self.config = dict(image_size=image_size, patch_size=patch_size, embed_dim=embed_dim,
                           num_layers=num_layers, num_heads=num_heads, mlp_ratio=mlp_ratio)
        self.num_layers, self.embed_dim = num_layers, embed_dim
        self.num_patches = (image_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(3, embed_dim, patch_size, stride=patch_size)  # a linear map of each patch
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, 1 + self.num_patches, embed_dim))
        self.blocks = nn.ModuleList(_Block(embed_dim, num_heads, mlp_ratio) for _ in range(num_layers))
        self.norm = nn.LayerNorm(embed_dim)
        self.heads = nn.ModuleDict({name: nn.Linear(embed_dim, len(values)) for name, values in ATTRIBUTES.items()})

    def _block_outputs(self, images: torch.Tensor, num_blocks: int) -> list[torch.Tensor]:
        """The outputs (B, 1 + num_patches, D) of the first ``num_blocks`` blocks; later blocks are not run."""
        images = self._inputs(images)
        patches = self.patch_embed(images).flatten(2).transpose(1, 2)  # (B, num_patches, D), row-major patches
        x = torch.cat([self.cls_token.expand(len(images), -1, -1), patches], dim=1) + self.pos_embed
        outputs = []
        for block in self.blocks[:num_blocks]:
            x = block(x)
            outputs.append(x)
        return outputs

    def hidden_states(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Every block's output, ``num_layers`` tensors (B, 1 + num_patches, D), CLS token first.

        Unlike transformers' ``output_hidden_states``, the embeddings are not included: ``hidden_states(x)[i]``
        is block ``i``'s output, transformers' ``hidden_states[i + 1]``. The outputs are not layer-normed.
        """
        return tuple(self._block_outputs(images, self.num_layers))

    def features(self, images: torch.Tensor, layers: Sequence[int]) -> list[torch.Tensor]:
        """The outputs (B, 1 + num_patches, D) of blocks ``layers`` (0-based), in the order asked for."""
        layers = list(layers)
        for layer in layers:
            if not (isinstance(layer, int) and 0 <= layer < self.num_layers):
                raise ValueError(f"layer {layer!r} does not exist; this TinyViT has layers 0 to {self.num_layers - 1}")
        if not layers:
            return []
        outputs = self._block_outputs(images, max(layers) + 1)
        return [outputs[layer] for layer in layers]

    def cls_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """The final-layer-normed CLS token (B, D): the image embedding, what the attribute heads read."""
        return self.norm(self._block_outputs(images, self.num_layers)[-1][:, 0])

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per attribute from the CLS token: ``{"shape": (B, 3), "color": (B, 6), ...}``."""
        embedding = self.cls_embedding(images)
        return {name: head(embedding) for name, head in self.heads.items()}


_CLASSES = {cls.__name__: cls for cls in (AttributeClassifier, TinyViT)}
_REBUILD = "rebuild it with `python -m addlib.course.train_evaluators`"


def save_evaluator(model: AttributeClassifier | TinyViT, folder: str | Path) -> None:
    """Write ``config.json`` (class name and constructor arguments) and ``model.safetensors`` to ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, folder / "model.safetensors")
    config = {"class": type(model).__name__, "kwargs": model.config}
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def load_evaluator(folder: str | Path, device: str | torch.device = "cpu") -> AttributeClassifier | TinyViT:
    """The network saved in ``folder`` by :func:`save_evaluator`, frozen (in eval mode, requires_grad False), on
    ``device``: the CPU unless told, as the networks are small.

    Gradients still flow through it to its input, as ADD's discriminator needs. A missing or unreadable
    folder raises a one-line error saying how to rebuild it.
    """
    folder, device = Path(folder), resolve_device(device)
    if not (folder / "config.json").exists() or not (folder / "model.safetensors").exists():
        raise FileNotFoundError(f"no evaluator in {folder} (config.json and model.safetensors); {_REBUILD}")
    try:
        config = json.loads((folder / "config.json").read_text())
        model = _CLASSES[config["class"]](**config["kwargs"])
        model.load_state_dict(load_file(folder / "model.safetensors"))
    except Exception as error:  # corrupt JSON, unknown class, bad safetensors header, mismatched weights
        message = str(error).splitlines()[0] if str(error) else ""
        raise OSError(f"could not load the evaluator in {folder} ({type(error).__name__}: {message}); "
                      f"{_REBUILD}") from None
    return model.to(device).eval().requires_grad_(False)


def _load_as(cls: type, folder: str | Path, device: str | torch.device) -> AttributeClassifier | TinyViT:
    """:func:`load_evaluator`, checking that the folder holds a ``cls`` and not the other network."""
    model = load_evaluator(folder, device)
    if not isinstance(model, cls):
        raise TypeError(f"{folder} holds a {type(model).__name__}, not a {cls.__name__}; {_REBUILD}")
    return model


def load_attribute_classifier(folder: str | Path = CLASSIFIER_DIR, device: str | torch.device = "cpu"
                              ) -> AttributeClassifier:
    """The trained, frozen attribute classifier (the evaluator of prompt accuracy and shapes-FID)."""
    return _load_as(AttributeClassifier, folder, device)


def load_feature_network(folder: str | Path = FEATURE_NETWORK_DIR, device: str | torch.device = "cpu") -> TinyViT:
    """The trained, frozen TinyViT (the feature network of ADD's discriminator)."""
    return _load_as(TinyViT, folder, device)
