"""Sample pictures: an image grid, a scatter over the mixture's mode centres, or a table's
columns (synthetic against held-out rows)."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: workers and CI have no display

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from PIL import Image

SAMPLES_INCHES = 6.5  # at 100 dpi a 650-px picture: the modes of a 5 x 5 grid are plain to see


def samples_png(
    samples: np.ndarray,
    *,
    image_shape: tuple[int, ...] | None = None,
    centres: np.ndarray | None = None,
    title: str = "",
) -> bytes:
    fig = samples_figure(samples, image_shape=image_shape, centres=centres, title=title)
    return figure_png(fig)


def samples_figure(
    samples: np.ndarray,
    *,
    image_shape: tuple[int, ...] | None = None,
    centres: np.ndarray | None = None,
    title: str = "",
    ax: plt.Axes | None = None,
) -> Figure:
    if ax is None:
        fig, ax = plt.subplots(figsize=(SAMPLES_INCHES, SAMPLES_INCHES))
    else:
        fig = ax.get_figure(root=True)  # type: ignore[assignment]
    if image_shape is not None:
        grid = image_grid(samples, image_shape)
        if grid.ndim == 3:  # RGB in [-1, 1] -> [0, 1] for imshow
            ax.imshow((grid + 1.0) / 2.0)
        else:
            ax.imshow(grid, cmap="gray", vmin=-1, vmax=1)
        ax.axis("off")
    else:
        # the modes as hollow rings under the samples: the points stay visible on top of them
        ax.scatter(samples[:, 0], samples[:, 1], s=3, alpha=0.5, label="generated", zorder=2)
        if centres is not None:
            ax.scatter(centres[:, 0], centres[:, 1], marker="o", facecolors="none",
                       edgecolors="red", linewidths=1.0, s=120, label="modes", zorder=1)
            pad = 0.5 * float(np.ptp(centres[:, 0]) or 1.0)
            ax.set_xlim(centres[:, 0].min() - pad, centres[:, 0].max() + pad)
            ax.set_ylim(centres[:, 1].min() - pad, centres[:, 1].max() + pad)
        ax.set_aspect("equal")
        ax.legend(loc="upper right", fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    return fig


def image_grid(samples: np.ndarray, image_shape: tuple[int, ...], pad: int = 1) -> np.ndarray:
    """(N, H*W[*C]) in [-1, 1] -> one (rows*(H+pad), cols*(W+pad)[, C]) picture, padded with -1."""
    h, w = image_shape[:2]
    n = len(samples)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, *image_shape[2:]), -1.0,
                   dtype=np.float32)
    for i, img in enumerate(np.clip(samples, -1, 1).reshape(n, *image_shape)):
        r, c = divmod(i, cols)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h,
             pad + c * (w + pad) : pad + c * (w + pad) + w] = img
    return grid


TABLE_FIGURE_COLUMNS = 12  # more small panels than this are unreadable at 600 px a row
TABLE_FIGURE_CATEGORIES = 8  # the most frequent categories of a column; the rest as "other"
TABLE_FIGURE_BINS = 20
PANEL_INCHES = (3.2, 2.6)
# Fixed margins, in inches, instead of tight_layout: it draws the whole figure once more to
# measure the labels (two thirds of a 12-panel figure's 1.2 s). Room for 7-point tick labels
# (the x ones rotated), an 8-point panel title and the figure's title.
MARGINS = {"left": 0.55, "right": 0.15, "bottom": 0.5, "top": 0.45}
GAPS = (0.6, 0.7)  # between panels: wide, high


class TableFigure:
    """One panel per column (the first 12): numeric columns as histograms of held-out and
    synthetic rows on shared bins, categorical ones as side-by-side category frequencies.
    Without real rows (an export), the synthetic rows alone.

    Made once per run: the panels, the real side and the bins stay, and ``draw`` replaces only
    the synthetic side and the title. Making a 12-panel figure's axes and ticks was half of a
    picture's cost (~0.2 s of ~0.45 s), paid at every picture of a training run.
    """

    def __init__(self, real: pd.DataFrame | None, columns: Sequence[str],
                 categorical: Sequence[str]) -> None:
        self.labels = ("held-out", "synthetic") if real is not None else ("synthetic", None)
        self.real = real
        self.columns = list(columns)[:TABLE_FIGURE_COLUMNS]
        self.categorical = set(categorical)
        cols = min(4, len(self.columns))
        rows = math.ceil(len(self.columns) / cols)
        width, height = PANEL_INCHES[0] * cols, PANEL_INCHES[1] * rows
        # A Figure of its own, not pyplot's: it outlives the plt.close of each picture logged.
        self.fig = Figure(figsize=(width, height))
        self.fig.subplots_adjust(
            left=MARGINS["left"] / width, right=1 - MARGINS["right"] / width,
            bottom=MARGINS["bottom"] / height, top=1 - MARGINS["top"] / height,
            wspace=GAPS[0] / (PANEL_INCHES[0] - GAPS[0]),
            hspace=GAPS[1] / (PANEL_INCHES[1] - GAPS[1]))
        axes = self.fig.subplots(rows, cols, squeeze=False)
        self.axes = dict(zip(self.columns, axes.flat, strict=False))
        for ax in list(axes.flat)[len(self.columns):]:
            ax.axis("off")
        self.title = self.fig.suptitle("", fontsize=10)
        self._synthetic: dict[str, Any] = {}  # per column: its bars or its step patch
        self._keep: dict[str, list[str]] = {}  # per categorical column: the categories drawn
        self._bins: dict[str, np.ndarray] = {}  # per numeric column: the shared bins

    def draw(self, synthetic: pd.DataFrame, *, title: str = "") -> Figure:
        """The figure with ``synthetic`` as its synthetic side (the first call also draws the
        real side from them when there are no real rows)."""
        first = not self._synthetic
        for name, ax in self.axes.items():
            if name in self.categorical:
                fake_freq = synthetic[name].astype(str).value_counts(normalize=True)
                if first:
                    self._first_categorical(ax, name, fake_freq)
                elif self.labels[1]:
                    for bar, key in zip(self._synthetic[name], self._keep[name], strict=True):
                        bar.set_height(fake_freq.get(key, 0.0))
            else:
                values = synthetic[name].to_numpy(dtype=float)
                if first:
                    self._first_numeric(ax, name, values)
                elif self.labels[1]:
                    self._synthetic[name].set_data(_density(values, self._bins[name]))
            if not first:
                ax.relim()
                ax.autoscale_view()
        if first:
            next(iter(self.axes.values())).legend(fontsize=7)
        self.title.set_text(title)
        return self.fig

    def _first_categorical(self, ax: Any, name: str, fake_freq: pd.Series) -> None:
        real_freq = (fake_freq if self.real is None
                     else self.real[name].astype(str).value_counts(normalize=True))
        keep = self._keep[name] = list(real_freq.index[:TABLE_FIGURE_CATEGORIES])
        x = np.arange(len(keep))
        ax.bar(x - 0.2, [real_freq.get(k, 0.0) for k in keep], 0.4, label=self.labels[0])
        if self.labels[1]:
            self._synthetic[name] = ax.bar(x + 0.2, [fake_freq.get(k, 0.0) for k in keep], 0.4,
                                           label=self.labels[1])
        ax.set_xticks(x, [k[:10] for k in keep], rotation=30, fontsize=7)
        # A few ticks: each is two lines and two texts to lay out, most of the drawing time.
        ax.locator_params(axis="y", nbins=4)
        self._style(ax, name)

    def _first_numeric(self, ax: Any, name: str, fake: np.ndarray) -> None:
        # Histograms counted by numpy and drawn as one filled step line each: ax.hist makes a
        # patch per bar, and drawing 40 patches a panel was most of the figure's cost.
        values = fake if self.real is None else self.real[name].to_numpy(dtype=float)
        bins = self._bins[name] = np.histogram_bin_edges(values, bins=TABLE_FIGURE_BINS)
        ax.stairs(_density(values, bins), bins, fill=True, alpha=0.5, label=self.labels[0])
        if self.labels[1]:
            self._synthetic[name] = ax.stairs(_density(fake, bins), bins, fill=True, alpha=0.5,
                                              label=self.labels[1])
        ax.locator_params(axis="x", nbins=5)
        # No density scale: the two shapes on shared bins are the comparison, and the numbers
        # (per unit of the column: 1e-5 for an income) read as nothing.
        ax.set_yticks([])
        self._style(ax, name)

    @staticmethod
    def _style(ax: Any, name: str) -> None:
        ax.tick_params(labelsize=7)
        # Placed, not fitted: an explicit y (and the unused axis labels' coordinates) spare
        # matplotlib measuring every tick label to move the title and the labels clear of them.
        ax.set_title(str(name)[:30], fontsize=8, y=1.0)
        ax.xaxis.set_label_coords(0.5, -0.2)
        ax.yaxis.set_label_coords(-0.2, 0.5)


def _density(values: np.ndarray, bins: np.ndarray) -> np.ndarray:
    """numpy's histogram density, all zeros (not NaN, with a warning) when no value falls in the
    bins: a generator far off the real range draws as nothing there."""
    counts = np.histogram(values, bins=bins)[0].astype(float)
    total = counts.sum()
    return counts / np.diff(bins) / total if total else counts


def table_figure(synthetic: pd.DataFrame, real: pd.DataFrame | None, categorical: Sequence[str],
                 *, title: str = "") -> Figure:
    """A TableFigure drawn once (an export's picture)."""
    columns = (real if real is not None else synthetic).columns
    return TableFigure(real, columns, categorical).draw(synthetic, title=title)


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
