"""Test-time augmentation: a model wrapper that averages flipped (and rotated) views.

The views follow the model's training: a model trained with left-right flips only (on
images with an up, ``flips: horizontal`` in its ``config.json``) is shown the left-right
pair, any other the four flips (and the rotations when asked).

A segmentation network is not exactly equivariant to flips: a lesion's mask predicted on a
mirrored image, mirrored back, differs a little from the direct prediction. Averaging the
*probabilities* of the views (sigmoid for binary, softmax for classes; averaging logits
would let one confident view dominate) removes errors that only one view makes. The
wrapper returns the average as logits, so thresholds, argmax, evaluation and tiling work
on it unchanged.
"""

from __future__ import annotations

import torch

from pixelseg.errors import SettingsError
from pixelseg.inference.logits import logits_to_proba


def tta_views(rotations: bool = False, upright: bool = False) -> list[tuple[int, bool]]:
    """Views as (quarter turns, horizontal flip): the four flips (identity, horizontal,
    vertical = half turn + horizontal, both = half turn), or with ``rotations`` all eight
    symmetries of a square. A model trained ``upright`` (left-right flips only, on images
    with an up) sees the left-right pair only: upside down it meets scenes it never learned.
    """
    if upright:
        if rotations:
            raise SettingsError(
                "this model was trained on images with an up (flips: horizontal), so turned "
                "views are scenes it never saw: use --tta without --tta-rotations"
            )
        return [(0, False), (0, True)]
    if rotations:
        return [(k, flip) for k in range(4) for flip in (False, True)]
    return [(0, False), (0, True), (2, True), (2, False)]


class TTAModel(torch.nn.Module):
    """``model`` evaluated on every view of :func:`tta_views`, each mapped back, the
    probabilities averaged and returned as logits: (N, C, H, W) → (N, C, H, W)."""

    def __init__(
        self, model: torch.nn.Module, rotations: bool = False, upright: bool = False
    ) -> None:
        super().__init__()
        self.model = model
        self.views = tta_views(rotations, upright)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        proba = None
        for turns, flip in self.views:
            x = images.rot90(turns, (-2, -1)) if turns else images
            x = x.flip(-1) if flip else x
            y = self.model(x).float()
            y = y.flip(-1) if flip else y
            y = y.rot90(-turns, (-2, -1)) if turns else y
            p = logits_to_proba(y)
            proba = p if proba is None else proba + p
        proba = (proba / len(self.views)).clamp(1e-6, 1 - 1e-6)
        return torch.logit(proba) if proba.shape[1] == 1 else proba.log()
