"""Pictures and tables a person looks at: curves, overlays, prediction grids, CSV files.

matplotlib is used with the non-interactive Agg backend (set per figure, never globally),
so nothing needs a display.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from pixelseg.files import write_bytes

# Class colours for overlays: class 1 red (binary foreground), then a qualitative palette.
PALETTE = np.array(
    [
        (0, 0, 0),
        (230, 25, 75),
        (60, 180, 75),
        (255, 225, 25),
        (0, 130, 200),
        (245, 130, 48),
        (145, 30, 180),
        (70, 240, 240),
        (240, 50, 230),
        (210, 245, 60),
        (250, 190, 212),
        (0, 128, 128),
        (220, 190, 255),
        (170, 110, 40),
        (255, 250, 200),
        (128, 0, 0),
    ],
    dtype=np.uint8,
)


def class_colors(n: int) -> np.ndarray:
    """``n`` RGB colours (repeating the palette for very many classes)."""
    reps = -(-n // len(PALETTE))
    return np.tile(PALETTE, (reps, 1))[:n]


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Tint each non-background class of ``mask`` over ``image`` and outline it.

    ``image``: HxWx3 uint8; ``mask``: HxW class indices (0 = background, left untouched).
    """
    if image.shape[:2] != mask.shape:
        raise ValueError(f"overlay: image {image.shape[:2]} and mask {mask.shape} sizes differ")
    colors = class_colors(int(mask.max()) + 1)
    out = image.astype(np.float32)
    fg = mask > 0
    out[fg] = (1 - alpha) * out[fg] + alpha * colors[mask[fg]]
    edge = _edges(mask)
    out[edge] = colors[mask[edge]]
    return out.round().clip(0, 255).astype(np.uint8)


def _edges(mask: np.ndarray) -> np.ndarray:
    """Foreground pixels with a 4-neighbour of another class (a one-pixel outline)."""
    m = mask
    edge = np.zeros(m.shape, dtype=bool)
    edge[1:, :] |= m[1:, :] != m[:-1, :]
    edge[:-1, :] |= m[:-1, :] != m[1:, :]
    edge[:, 1:] |= m[:, 1:] != m[:, :-1]
    edge[:, :-1] |= m[:, :-1] != m[:, 1:]
    return edge & (m > 0)


def png_bytes(array: np.ndarray) -> bytes:
    """An image array encoded as PNG (files and the service's answers alike)."""
    buffer = io.BytesIO()
    # zlib level 1, not Pillow's 6: a 768x576 overlay takes 30 ms instead of 157 ms and
    # grows by 5% (650 vs 618 KiB); masks stay a few KiB either way
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def save_png(path: str | Path, array: np.ndarray) -> Path:
    """Write an image array as PNG atomically (a crash never leaves a truncated file)."""
    return write_bytes(path, png_bytes(array))


def _figure(rows: int, cols: int, cell: float = 3.0):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(cols * cell, rows * cell * 0.8), dpi=100)
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


def _save_figure(fig, path: str | Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    data = buffer.getvalue()
    return write_bytes(path, data)


def plot_curves(history: list[dict], path: str | Path, score_name: str = "dice") -> Path:
    """``curves.png``: training/validation loss and the validation score per epoch."""
    fig, axes = _figure(1, 2, cell=4.0)
    epochs = [row["epoch"] for row in history]
    ax = axes[0, 0]
    ax.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    ax.plot(epochs, [r["val_loss"] for r in history], "o-", label="val")
    ax.set(xlabel="epoch", ylabel="loss", title="loss")
    ax.legend()
    ax = axes[0, 1]
    ax.plot(epochs, [r[f"val_{score_name}"] for r in history], "o-", color="tab:green")
    ax.set(xlabel="epoch", ylabel=score_name, title=f"validation {score_name}", ylim=(0, 1))
    for ax in axes[0]:
        ax.grid(alpha=0.3)
    return _save_figure(fig, path)


def plot_grid(
    rows: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    path: str | Path,
    titles: Sequence[str] | None = None,
) -> Path:
    """A grid with one row per case: image | truth overlay | prediction overlay."""
    if not rows:
        raise ValueError("plot_grid needs at least one row")
    fig, axes = _figure(len(rows), 3)
    for i, (image, truth, pred) in enumerate(rows):
        panels = [image, overlay(image, truth), overlay(image, pred)]
        names = ["image", "truth", "prediction"]
        for j, (panel, name) in enumerate(zip(panels, names, strict=True)):
            ax = axes[i, j]
            ax.imshow(panel)
            ax.set_xticks([])
            ax.set_yticks([])
            label = name if j or titles is None else f"{titles[i]}"
            ax.set_title(label, fontsize=9)
    return _save_figure(fig, path)


def write_csv(path: str | Path, rows: list[dict]) -> Path:
    """Write dict rows as CSV (columns from the first row), atomically."""
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    data = buffer.getvalue().encode()
    return write_bytes(path, data)


def plot_confusion(matrix: Sequence[Sequence[int]], names: Sequence[str], path: str | Path) -> Path:
    """``confusion.png``: the confusion matrix, each row (true class) normalised to 1."""
    counts = np.asarray(matrix, dtype=np.float64)
    rows = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    n = len(names)
    fig, axes = _figure(1, 1, cell=max(4.0, 0.45 * n + 2))
    ax = axes[0, 0]
    image = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), names, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title="confusion matrix (rows sum to 1)")
    for i in range(n):
        for j in range(n):
            if rows[i, j] >= 0.01:
                color = "white" if rows[i, j] > 0.5 else "black"
                ax.text(
                    j, i, f"{rows[i, j]:.2f}", ha="center", va="center", fontsize=6, color=color
                )
    fig.colorbar(image, ax=ax, fraction=0.046)
    return _save_figure(fig, path)


def color_mask(mask: np.ndarray, colors: Sequence[Sequence[int]] | None = None) -> np.ndarray:
    """HxW class indices → HxWx3 colours: the data set's own (``colors``) or the palette."""
    palette = np.asarray(colors, np.uint8) if colors else class_colors(int(mask.max()) + 1)
    return palette[mask]


def plot_legend(
    names: Sequence[str], path: str | Path, colors: Sequence[Sequence[int]] | None = None
) -> Path:
    """``legend.png``: each class's colour in the colour-coded masks, with its name."""
    colors = np.asarray(colors, np.uint8) if colors else class_colors(len(names))
    fig, axes = _figure(1, 1, cell=3.0)
    ax = axes[0, 0]
    for i, name in enumerate(names):
        ax.add_patch(_rectangle((0, -i - 0.8), 0.8, 0.7, colors[i] / 255))
        ax.text(1.0, -i - 0.45, f"{i}  {name}", va="center", fontsize=9)
    ax.set(xlim=(0, 6), ylim=(-len(names) - 0.2, 0.2))
    ax.axis("off")
    return _save_figure(fig, path)


def _rectangle(xy: tuple[float, float], w: float, h: float, color: np.ndarray):
    from matplotlib.patches import Rectangle

    return Rectangle(xy, w, h, facecolor=color, edgecolor="grey")
