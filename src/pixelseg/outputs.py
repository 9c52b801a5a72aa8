"""The files ``pixelseg predict`` writes for each image, whatever engine made the mask
(torch or ONNX Runtime): no torch here."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pixelseg.report import color_mask, overlay, save_png

__all__ = ["unique_stems", "write_mask_outputs"]


def unique_stems(paths: Sequence[Path]) -> list[str]:
    """File stems, made unique (``a``, ``a_2``…) when two inputs share a name."""
    seen: dict[str, int] = {}
    stems = []
    for p in paths:
        n = seen.get(p.stem, 0) + 1
        seen[p.stem] = n
        stems.append(p.stem if n == 1 else f"{p.stem}_{n}")
    return stems


def write_mask_outputs(
    prefix: str | Path, image: np.ndarray, mask: np.ndarray, config: dict,
    top_proba: np.ndarray | None = None,
) -> list[Path]:  # fmt: skip
    """``<prefix>_mask.png`` (0/255 for binary, class indices otherwise),
    ``<prefix>_overlay.png``, for multi-class runs ``<prefix>_color.png``, and with
    ``top_proba`` (HxW in [0, 1]) ``<prefix>_prob.png``."""
    num_classes = int(config["num_classes"])
    saved = mask * 255 if num_classes == 1 else mask  # binary masks as 0/255, visible as is
    files = [
        save_png(f"{prefix}_mask.png", saved.astype(np.uint8)),
        save_png(f"{prefix}_overlay.png", overlay(image, mask)),
    ]
    if num_classes > 1:
        files.append(save_png(f"{prefix}_color.png", color_mask(mask, config.get("class_colors"))))
    if top_proba is not None:
        files.append(save_png(f"{prefix}_prob.png", (top_proba * 255).round().astype(np.uint8)))
    return files
