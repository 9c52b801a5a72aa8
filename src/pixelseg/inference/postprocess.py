"""Clean-up of binary masks: keep the largest object, fill holes, drop small objects.

Many binary data sets hold one object an image (a lesion, a person, an organ). A network
scored pixel by pixel still predicts stray specks and hollow spots; removing them is a
cheap gain there and a loss elsewhere (cells, membranes), so after training pixelseg tries
each step on the validation images and keeps the ones that raise the mean Dice, as
nnU-Net does (see :func:`pixelseg.engine.evaluate.choose_postprocess`).

scipy.ndimage is imported by the functions that use it, not with this module: its import
alone takes ~0.2 s, a third of a one-image ``predict --engine onnx``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pixelseg.errors import SettingsError

STEPS = ("keep_largest", "fill_holes")


def keep_largest(mask: np.ndarray) -> np.ndarray:
    """Only the largest 8-connected foreground object of a binary (H, W) mask."""
    from scipy import ndimage

    labels, count = ndimage.label(mask > 0, structure=np.ones((3, 3)))
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0  # background
    return (labels == sizes.argmax()).astype(mask.dtype)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """The binary (H, W) mask with background enclosed by foreground set to foreground."""
    from scipy import ndimage

    return ndimage.binary_fill_holes(mask > 0).astype(mask.dtype)


def remove_small(mask: np.ndarray, min_area: int) -> np.ndarray:
    """The binary (H, W) mask without 8-connected foreground objects under ``min_area`` pixels."""
    if min_area <= 1:
        return mask
    from scipy import ndimage

    labels, count = ndimage.label(mask > 0, structure=np.ones((3, 3)))
    if count == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_area
    keep[0] = False  # background
    return keep[labels].astype(mask.dtype)


def postprocess(mask: np.ndarray, steps: Sequence[str], min_area: int = 0) -> np.ndarray:
    """Apply ``steps`` (names from :data:`STEPS`, in that order) to a binary mask, after
    dropping objects smaller than ``min_area`` pixels (0: keep all)."""
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        raise SettingsError(f"unknown post-processing step(s) {unknown}; choose from {STEPS}")
    if min_area < 0:
        raise SettingsError(f"min_area must be >= 0, got {min_area}")
    mask = remove_small(mask, min_area)
    for step in STEPS:  # a fixed order: holes are filled in the object that was kept
        if step in steps:
            mask = keep_largest(mask) if step == "keep_largest" else fill_holes(mask)
    return mask
