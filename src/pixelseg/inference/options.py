"""What a predictor is asked to do, fixed when it is loaded, and which files it writes.

``pixelseg.load(run, tta=True, tile=512)`` passes its keywords to :class:`PredictOptions`;
``predictor.predict_folder(inputs, out, Outputs(cutout=True))`` takes the files to write.
Both are checked when they are made, before any model is loaded, and say which option is
wrong in the words of the ``pixelseg predict`` flag that sets it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np

from pixelseg.errors import SettingsError
from pixelseg.inference.postprocess import STEPS

__all__ = ["Outputs", "PredictOptions", "predict_options"]


@dataclass(frozen=True)
class PredictOptions:
    """How a predictor turns images into masks.

    ``threshold`` and ``postprocess`` of ``None`` take the run's own (calibrated on its
    validation images); ``postprocess=()`` turns the clean-up off. ``tile`` switches to
    sliding-window inference (windows of ``tile`` pixels overlapping by ``overlap``, on the
    image resized by ``scale``; ``None``: by the factor training resized its images by).
    ``batch_size`` is how many images (or tiles) go through the model at once.
    ``tta_scales`` averages the model's views of each whole image at these multiples of
    the training size (e.g. ``(1, 1.25, 1.5)``; with ``tta``, the flipped views at each).
    """

    threshold: float | None = None
    postprocess: tuple[str, ...] | None = None
    min_area: int = 0  # binary: objects smaller than this many pixels are dropped
    tta: bool = False  # average over flipped copies of each image (4x the compute)
    tta_rotations: bool = False  # with tta: the 90-degree rotations too (8 views in all)
    tta_scales: tuple[float, ...] | None = None  # sorted, distinct, each in (0, MAX_SCALE]
    tile: int | None = None
    overlap: float = 0.25
    scale: float | None = None
    batch_size: int = 4
    connectivity: int = 4  # instances: 4 (objects meeting at a corner are two) or 8
    # videos: the weight of the frames before in an exponential moving average of the
    # logits, so a mask does not flicker where one frame's noise tips a pixel (0: off)
    smooth: float = 0.0

    def __post_init__(self) -> None:
        if self.postprocess is not None:  # lists (from JSON or a caller) become tuples
            object.__setattr__(self, "postprocess", tuple(self.postprocess))
            unknown = sorted(set(self.postprocess) - set(STEPS))
            if unknown:
                raise SettingsError(f"unknown clean-up step(s) {unknown}; choose from {STEPS}")
        if self.threshold is not None and not 0 <= self.threshold <= 1:
            raise SettingsError(
                f"threshold must be a probability between 0 and 1, got {self.threshold}"
            )
        if self.batch_size < 1:
            raise SettingsError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.min_area < 0:
            raise SettingsError(f"--min-area must be >= 0, got {self.min_area}")
        if self.tta_rotations and not self.tta:
            raise SettingsError("--tta-rotations extends --tta; give both")
        if self.tta_scales is not None:
            object.__setattr__(self, "tta_scales", check_scales(self.tta_scales))
            if self.tile is not None:
                raise SettingsError(
                    "--tta-scales resizes whole images; with --tile the size is set by --scale"
                )
        if self.tile is not None and self.tile < 16:
            raise SettingsError(f"--tile must be at least 16 pixels, got {self.tile}")
        if not 0 <= self.overlap < 1:
            raise SettingsError(f"--overlap must be in [0, 1), got {self.overlap}")
        if self.scale is not None and self.scale <= 0:
            raise SettingsError(f"--scale must be > 0, got {self.scale}")
        if not 0 <= self.smooth < 1:
            raise SettingsError(f"--smooth must be in [0, 1), got {self.smooth}")
        if self.connectivity not in (4, 8):
            raise SettingsError(f"--connectivity must be 4 or 8, got {self.connectivity}")


MAX_SCALE = 4.0  # beyond this a view needs 16x the memory of the training size, per image


def check_scales(scales: Sequence[float]) -> tuple[float, ...]:
    """Test-time scales as a sorted tuple; refused if empty, repeated or out of range."""
    scales = tuple(float(s) for s in scales)
    if not scales:
        raise SettingsError("--tta-scales needs at least one scale, e.g. 1,1.25,1.5")
    bad = [s for s in scales if not 0 < s <= MAX_SCALE]
    if bad:
        raise SettingsError(
            f"--tta-scales must each be in (0, {MAX_SCALE:g}] (multiples of the training "
            f"size), got {', '.join(f'{s:g}' for s in bad)}"
        )
    if len(set(scales)) != len(scales):
        raise SettingsError(
            f"--tta-scales has a scale twice: {', '.join(f'{s:g}' for s in scales)}"
        )
    return tuple(sorted(scales))


def predict_options(options: dict) -> PredictOptions:
    """``PredictOptions(**options)``, with an unknown name refused with the valid ones."""
    valid = [f.name for f in fields(PredictOptions)]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise SettingsError(
            f"unknown prediction option(s) {', '.join(unknown)}; valid: {', '.join(valid)}"
        )
    return PredictOptions(**options)


@dataclass(frozen=True)
class Outputs:
    """The files written per input besides ``<stem>_mask.png`` and ``<stem>_overlay.png``.

    ``probabilities``: ``<stem>_prob.png``; ``uncertainty``: ``<stem>_uncertainty.png``;
    ``instances``: ``<stem>_instances.json/.csv/.png``; ``cutout``: ``<stem>_cutout.png``
    (RGBA, the foreground's edge softened over ``feather`` pixels); ``background`` (an RGB
    colour or an HxWx3 image; see :func:`pixelseg.inference.cutout.parse_background` for
    text): ``<stem>_composite.png``. Videos get the overlay, masks, cut-outs and
    composites; the other three are for images only.
    """

    probabilities: bool = False
    uncertainty: bool = False
    instances: bool = False
    cutout: bool = False
    background: tuple[int, int, int] | np.ndarray | None = None
    feather: float = 0.0

    def __post_init__(self) -> None:
        if self.feather < 0:
            raise SettingsError(f"feather must be >= 0 pixels, got {self.feather}")

    def image_only(self) -> list[str]:
        """The flags asked for that a video cannot have."""
        asked = {"instances": self.instances, "uncertainty": self.uncertainty,
                 "probabilities": self.probabilities}  # fmt: skip
        return [f"--{name}" for name, on in asked.items() if on]
