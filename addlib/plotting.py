"""Small matplotlib helpers the notebooks share, so each figure is one line in a notebook."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import matplotlib.pyplot as plt
import torch


def to_display(image: torch.Tensor):
    """A (3, H, W) image in [-1, 1] (the diffusers convention) as an (H, W, 3) array in [0, 1] for imshow."""
    return ((image.detach().float().cpu().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()


def show_images(
    images: torch.Tensor | Sequence[torch.Tensor],
    titles: Sequence[str] | None = None,
    ncols: int = 8,
    size: float = 1.3,
    fontsize: int = 7,
):
    """Show images of shape (3, H, W) in [-1, 1] in a grid, with optional titles; returns the figure."""
    n = len(images)
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows * (1.35 if titles else 1)),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(to_display(images[i]), interpolation="nearest")
            if titles is not None:
                # Wrap to the axes' width (about 0.55 em per character) so long captions never collide.
                width = max(8, int(size * 72 / (0.55 * fontsize)))
                ax.set_title(textwrap.fill(titles[i], width), fontsize=fontsize)
    fig.tight_layout()
    return fig


def to_png(image: torch.Tensor, scale: int = 4) -> bytes:
    """A (3, H, W) image in [-1, 1] as PNG bytes, enlarged ``scale`` times with square pixels: for an
    ``ipywidgets.Image`` that shows a stream's frames as they come."""
    import io

    from PIL import Image

    pixels = (to_display(image) * 255).round().astype("uint8")
    picture = Image.fromarray(pixels).resize((pixels.shape[1] * scale, pixels.shape[0] * scale), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()
