"""Masks for new images: ``pixelseg.load(run).predict(image)`` and ``pixelseg predict``.

A :class:`Predictor` applies exactly the preprocessing of training (resize to the
training size, the run's normalisation), then brings the logits back to the input's own
size before thresholding, so masks line up with the original pixels.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from pixelseg.data.dataset import resize_image, to_channels, to_uint8_tensor
from pixelseg.data.transforms import BatchTransform
from pixelseg.engine.device import resolve_device
from pixelseg.inference.base import (
    ImageLike,
    SegmentationPredictor,
    as_rgb_array,
    check_options,
)
from pixelseg.inference.instances import Instances, background_class, find_instances
from pixelseg.inference.logits import logits_to_mask, logits_to_proba, resize_logits
from pixelseg.inference.options import PredictOptions
from pixelseg.inference.postprocess import postprocess
from pixelseg.inference.tiling import sliding_window
from pixelseg.inference.tta import tta_model
from pixelseg.models.saved import load_model
from pixelseg.runconfig import RunConfig


class Predictor(SegmentationPredictor):
    """A trained run on PyTorch, ready to segment images of any size (see
    :class:`~pixelseg.inference.base.SegmentationPredictor`); made by ``pixelseg.load``."""

    def __init__(
        self, model: torch.nn.Module, config: RunConfig, device: torch.device,
        options: PredictOptions | None = None,
    ) -> None:  # fmt: skip
        self.model = model.eval()
        self.config = config
        self.device = device
        self.options = options or PredictOptions()
        self.num_classes = config.num_classes
        check_options(self.options, self.num_classes)
        self.transform = BatchTransform(config.mean, config.std)  # as in evaluation
        # TTA wraps the model once, here: a predictor's options do not change. With
        # test-time scales, images come in at the largest (MultiScaleModel).
        o = self.options
        self._net, self.size = tta_model(
            model, config.size, tta=o.tta, rotations=o.tta_rotations, upright=config.upright,
            scales=o.tta_scales,
        )  # fmt: skip

    @classmethod
    def from_run(
        cls, run: str | Path, device: str = "auto", options: PredictOptions | None = None
    ) -> Predictor:
        dev = resolve_device(device)
        model, config = load_model(run, dev)
        return cls(model, config, dev, options)

    @torch.no_grad()
    def logits(self, images: Sequence[ImageLike]) -> list[torch.Tensor]:
        """(C, H, W) logits at each image's original size."""
        arrays = [to_channels(as_rgb_array(im), self.in_channels) for im in images]
        if self.options.tile is not None:
            return [self._tiled_logits(a) for a in arrays]
        small = self._model_logits(arrays)
        return [self.upsample(logit, a.shape[:2]) for logit, a in zip(small, arrays, strict=True)]

    @torch.no_grad()
    def model_logits(self, images: Sequence[ImageLike]) -> list[torch.Tensor]:
        """(C, h, w) logits at the model's size (whole images, no tiling): what
        :meth:`upsample` takes to an image's size, as late as a caller wants (the service
        keeps them small while a request waits)."""
        return self._model_logits(
            [to_channels(as_rgb_array(im), self.in_channels) for im in images]
        )

    def _model_logits(self, arrays: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """:meth:`model_logits` of arrays already in the model's channels."""
        batch = torch.stack([to_uint8_tensor(resize_image(a, self.size)) for a in arrays])
        return list(self._forward(batch).cpu())

    @staticmethod
    def upsample(logit: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(C, h, w) logits → (C, H, W) at ``size`` = (H, W), bilinear."""
        return resize_logits(logit, size)

    @property
    def in_channels(self) -> int:
        return self.config.in_channels

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) uint8 images → (N, K, h, w) float logits on the device."""
        images, _ = self.transform({"image": batch}, self.device)
        return self._net(images).float()

    def tile_scale(self) -> tuple[float, float]:
        """(vertical, horizontal) factor an image is resized by before tiling: ``scale``,
        else the one training applied to its median image (``source_size`` → ``size``)."""
        if self.options.scale is not None:
            return self.options.scale, self.options.scale
        source = self.config.source_size
        if not source:
            warnings.warn(
                "this run does not record its training images' size (trained before pixelseg "
                "stored source_size): tiling at the images' own resolution; set the scale "
                "(--scale) to match the training images",
                stacklevel=2,
            )
            return 1.0, 1.0
        return self.size[0] / source[0], self.size[1] / source[1]

    def _tiled_logits(self, image: np.ndarray) -> torch.Tensor:
        height, width = image.shape[:2]
        sy, sx = self.tile_scale()
        scaled = resize_image(image, (max(1, round(height * sy)), max(1, round(width * sx))))
        o = self.options
        logits = sliding_window(to_uint8_tensor(scaled), self._forward, o.tile, o.overlap,
                                o.batch_size)  # fmt: skip
        return resize_logits(logits, (height, width))

    def predict_proba(self, image: ImageLike) -> np.ndarray:
        """Binary: HxW foreground probability. Multi-class: CxHxW class probabilities."""
        proba = logits_to_proba(self.logits([image])[0]).numpy()
        return proba[0] if self.num_classes == 1 else proba

    def predict_instances(self, image: ImageLike) -> Instances:
        """The separate objects of the predicted mask (see :mod:`pixelseg.inference.instances`)."""
        logit = self.logits([image])[0]
        return self.instances_of(logit, self.to_mask(logit))

    def instances_of(self, logit: torch.Tensor, mask: np.ndarray) -> Instances:
        """Connected components of ``mask``, scored by the mean probability of ``logit``."""
        proba = logits_to_proba(logit).numpy()
        background = background_class(self.num_classes, self.config.class_names)
        return find_instances(mask, proba, background, self.options.connectivity)

    def top_proba(self, logit: torch.Tensor) -> np.ndarray:
        """HxW probability of the foreground (binary) or of the winning class."""
        proba = logits_to_proba(logit)
        return (proba[0] if self.num_classes == 1 else proba.amax(0)).numpy()

    def uncertainty(self, logit: torch.Tensor) -> np.ndarray:
        """HxW :func:`uncertainty_map` of ``logit`` as a numpy array."""
        return uncertainty_map(logit).numpy()

    def to_mask(self, logit: torch.Tensor, threshold: float | None = None) -> np.ndarray:
        """(C, H, W) logits → HxW uint8 mask, with the run's post-processing (binary)."""
        t = self.threshold if threshold is None else threshold
        mask = logits_to_mask(logit, t).numpy()
        if self.num_classes > 1:
            return mask
        return postprocess(mask, self.postprocess, self.options.min_area)


def uncertainty_map(logit: torch.Tensor) -> torch.Tensor:
    """(C, H, W) logits → HxW entropy of the predicted probabilities, scaled to [0, 1]
    (1: a coin toss between the classes). With the ``tta`` option the probabilities are the
    average over the flipped views, so disagreement between views raises it too."""
    proba = logits_to_proba(logit)
    if proba.shape[0] == 1:  # binary: foreground and background
        proba = torch.cat([proba, 1 - proba])
    entropy = -(proba * proba.clamp_min(1e-12).log()).sum(0)
    return (entropy / math.log(proba.shape[0])).clamp(0, 1)
