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
    title: str = "",
):
    """Show images of shape (3, H, W) in [-1, 1] in a grid, with optional titles for the images and ``title``
    for the whole figure (wrapped to its width); returns the figure."""
    n = len(images)
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    # Wrap to the width (about 0.55 em per character) so long captions never collide.
    heading = textwrap.fill(title, max(8, int(size * ncols * 72 / (0.55 * (fontsize + 1))))) if title else ""
    height = size * nrows * (1.35 if titles else 1) + (0.2 * (heading.count("\n") + 1) if heading else 0)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, height), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(to_display(images[i]), interpolation="nearest")
            if titles is not None:
                width = max(8, int(size * 72 / (0.55 * fontsize)))  # the axes' width, as for the heading
                ax.set_title(textwrap.fill(titles[i], width), fontsize=fontsize)
    if heading:
        fig.suptitle(heading, fontsize=fontsize + 1)
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


def plot_health(runs: dict[str, list[dict]], title: str = "", smooth: int = 5):
    """The health of adversarial runs from their loss logs (``loss_log.json``, entries with the trainer's
    measurements): the discriminator's hinge beside its chance value, its accuracy on held-out images beside
    0.5, and the ratio of the gradient norms the adversarial and the distillation terms put on the student
    (above 1, the adversarial term moves it more). Each curve is a running mean over ``smooth`` entries, since
    a batch of held-out images is small. Returns the figure."""
    figure, axes = plt.subplots(1, 3, figsize=(9, 2.4))

    from addlib.utils.runs import health_entries

    def running_mean(values: list[float]) -> list[float]:
        windows = [values[max(0, i - smooth + 1):i + 1] for i in range(len(values))]
        return [sum(window) / len(window) for window in windows]

    for name, log in runs.items():
        measured = health_entries(log, name)
        steps = [entry["step"] for entry in measured]
        line, = axes[0].plot(steps, running_mean([e["hinge"] / e["hinge_at_chance"] for e in measured]), lw=1,
                             label=name)
        axes[1].plot(steps, running_mean([e["held_out_accuracy"] for e in measured]), lw=1, color=line.get_color())
        axes[2].plot(steps, running_mean([e["grad_adversarial"] / max(e["grad_distillation"], 1e-12)
                                          for e in measured]), lw=1, color=line.get_color())
    axes[0].axhline(1, color="grey", ls="--", lw=1, label="chance")
    axes[0].set(xlabel="step", ylabel="hinge / its chance value", title="discriminator's hinge")
    axes[1].axhline(0.5, color="grey", ls="--", lw=1)
    axes[1].set(xlabel="step", ylabel="accuracy", ylim=(0, 1.02), title="held-out accuracy (real vs fake)")
    axes[2].axhline(1, color="grey", ls="--", lw=1)
    axes[2].set(xlabel="step", ylabel="adversarial / distillation", yscale="log",
                title="which loss moves the student")
    axes[0].legend(fontsize=7)
    for axis in axes:
        axis.title.set_fontsize(9)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return figure
