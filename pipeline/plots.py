"""Sample pictures as PNG bytes: an image grid, or a scatter over the mixture's mode centres."""

from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")  # headless: workers and CI have no display

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from PIL import Image


def samples_png(
    samples: np.ndarray,
    *,
    image_shape: tuple[int, int] | None = None,
    centres: np.ndarray | None = None,
    title: str = "",
) -> bytes:
    fig = samples_figure(samples, image_shape=image_shape, centres=centres, title=title)
    return figure_png(fig)


def samples_figure(
    samples: np.ndarray,
    *,
    image_shape: tuple[int, int] | None = None,
    centres: np.ndarray | None = None,
    title: str = "",
    ax: plt.Axes | None = None,
) -> Figure:
    if ax is None:
        fig, ax = plt.subplots(figsize=(5, 5))
    else:
        fig = ax.get_figure(root=True)  # type: ignore[assignment]
    if image_shape is not None:
        ax.imshow(image_grid(samples, image_shape), cmap="gray", vmin=-1, vmax=1)
        ax.axis("off")
    else:
        ax.scatter(samples[:, 0], samples[:, 1], s=2, alpha=0.4, label="generated")
        if centres is not None:
            ax.scatter(centres[:, 0], centres[:, 1], marker="x", c="red", s=40, label="modes")
            pad = 0.5 * float(np.ptp(centres[:, 0]) or 1.0)
            ax.set_xlim(centres[:, 0].min() - pad, centres[:, 0].max() + pad)
            ax.set_ylim(centres[:, 1].min() - pad, centres[:, 1].max() + pad)
        ax.set_aspect("equal")
        ax.legend(loc="upper right", fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    return fig


def image_grid(samples: np.ndarray, image_shape: tuple[int, int], pad: int = 1) -> np.ndarray:
    """(N, H*W) in [-1, 1] -> one (rows*(H+pad), cols*(W+pad)) picture, padded with -1."""
    h, w = image_shape
    n = len(samples)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad), -1.0, dtype=np.float32)
    for i, img in enumerate(np.clip(samples, -1, 1).reshape(n, h, w)):
        r, c = divmod(i, cols)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h,
             pad + c * (w + pad) : pad + c * (w + pad) + w] = img
    return grid


def figure_image(fig: Figure) -> Image.Image:
    """The figure rendered by Agg, as the PIL image MLflow's log_image takes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return Image.fromarray(np.asarray(canvas.buffer_rgba())).convert("RGB")


def figure_png(fig: Figure, dpi: int = 100) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()
