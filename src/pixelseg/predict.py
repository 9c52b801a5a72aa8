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
from PIL import Image

from pixelseg.data.dataset import resize_image, to_channels, to_uint8_tensor
from pixelseg.data.io import read_image, to_rgb, to_uint8
from pixelseg.data.transforms import BatchTransform
from pixelseg.engine.checkpoint import load_model
from pixelseg.engine.device import resolve_device
from pixelseg.engine.evaluate import logits_to_mask, logits_to_proba, resize_logits
from pixelseg.errors import SettingsError
from pixelseg.instances import Instances, background_class, find_instances

# Writing the files of a prediction needs no torch and serves both engines; importable from
# here, where the Python API has always had it.
from pixelseg.outputs import predict_files, unique_stems, write_legend  # noqa: F401
from pixelseg.postprocess import postprocess
from pixelseg.tiling import sliding_window
from pixelseg.tta import TTAModel

ImageLike = str | Path | Image.Image | np.ndarray


def as_rgb_array(image: ImageLike) -> np.ndarray:
    """A path, PIL image or numpy array → HxWx3 uint8, converted exactly as files are.

    Arrays may be HxW or HxWxC (C = 1, 3, 4) of any numeric type, scaled by
    :func:`pixelseg.data.io.to_uint8` (uint16 from 65535, floats in [0, 1] by 255).
    """
    if isinstance(image, (str, Path)):
        return read_image(image)
    if isinstance(image, Image.Image):
        return to_rgb(image, "image")
    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected a path, PIL image or numpy array, got {type(image).__name__}")
    arr = image[..., None] if image.ndim == 2 else image
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(
            f"expected an HxW or HxWxC image with C in 1, 3, 4; got shape {image.shape}"
        )
    if arr.shape[2] == 4:
        warnings.warn("image: alpha channel dropped", stacklevel=2)
    arr = to_uint8(arr[..., :3])
    return np.ascontiguousarray(np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr)


class Predictor:
    """A trained run, ready to segment images of any size."""

    def __init__(self, model: torch.nn.Module, config: dict, device: torch.device) -> None:
        self.model = model.eval()
        self.config = config
        self.device = device
        self.size = tuple(config["size"])
        self.num_classes = int(config["num_classes"])
        self.threshold = float(config.get("threshold", 0.5))
        # binary masks: clean-up steps chosen on the validation images (set [] to skip them)
        self.postprocess: list[str] = list(config.get("postprocess") or [])
        self.min_area = 0  # binary masks: objects smaller than this many pixels are dropped
        self.tta = False  # average over flipped copies of each image (4x the compute)
        self.tta_rotations = False  # with tta: the 90-degree rotations too (8 views in all)
        # Sliding-window inference (see pixelseg.tiling): None = whole images at the training
        # size; else windows of `tile` pixels, overlapping by `overlap`, `tile_batch` at once,
        # on the image resized by `scale` (None: by the factor that training resized its
        # images by, so objects look as they did in training).
        self.tile: int | None = None
        self.overlap = 0.25
        self.tile_batch = 4
        self.scale: float | None = None
        self.connectivity = 4  # instances: 4 (objects meeting at a corner are two) or 8
        self.transform = BatchTransform(config["mean"], config["std"])  # as in evaluation

    @classmethod
    def from_run(cls, run: str | Path, device: str = "auto") -> Predictor:
        dev = resolve_device(device)
        model, config = load_model(run, dev)
        return cls(model, config, dev)

    @torch.no_grad()
    def logits(self, images: Sequence[ImageLike]) -> list[torch.Tensor]:
        """(C, H, W) logits at each image's original size."""
        arrays = [to_channels(as_rgb_array(im), self.in_channels) for im in images]
        if self.tile is not None:
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
        return int(self.config.get("in_channels", 3))

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) uint8 images → (N, K, h, w) float logits on the device."""
        images, _ = self.transform({"image": batch}, self.device)
        model = TTAModel(self.model, self.tta_rotations) if self.tta else self.model
        return model(images).float()

    def tile_scale(self) -> tuple[float, float]:
        """(vertical, horizontal) factor an image is resized by before tiling: ``scale``,
        else the one training applied to its median image (``source_size`` → ``size``)."""
        if self.scale is not None:
            if self.scale <= 0:
                raise SettingsError(f"scale must be > 0, got {self.scale}")
            return self.scale, self.scale
        source = self.config.get("source_size")
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
        logits = sliding_window(
            to_uint8_tensor(scaled), self._forward, self.tile, self.overlap, self.tile_batch
        )
        return resize_logits(logits, (height, width))

    def predict_proba(self, image: ImageLike) -> np.ndarray:
        """Binary: HxW foreground probability. Multi-class: CxHxW class probabilities."""
        proba = logits_to_proba(self.logits([image])[0]).numpy()
        return proba[0] if self.num_classes == 1 else proba

    def predict(self, image: ImageLike, threshold: float | None = None) -> np.ndarray:
        """HxW uint8 mask at the image's size: {0, 1} for binary, class indices otherwise."""
        return self.predict_batch([image], threshold)[0]

    def predict_batch(
        self, images: Sequence[ImageLike], threshold: float | None = None
    ) -> list[np.ndarray]:
        t = self.threshold if threshold is None else threshold
        return [self.to_mask(logit, t) for logit in self.logits(images)]

    def predict_instances(self, image: ImageLike, threshold: float | None = None) -> Instances:
        """The separate objects of the predicted mask (see :mod:`pixelseg.instances`)."""
        logit = self.logits([image])[0]
        return self.instances_of(logit, self.to_mask(logit, threshold))

    def instances_of(self, logit: torch.Tensor, mask: np.ndarray) -> Instances:
        """Connected components of ``mask``, scored by the mean probability of ``logit``."""
        proba = logits_to_proba(logit).numpy()
        background = background_class(self.num_classes, self.config.get("class_names"))
        return find_instances(mask, proba, background, self.connectivity)

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
        return postprocess(mask, self.postprocess, self.min_area)


def uncertainty_map(logit: torch.Tensor) -> torch.Tensor:
    """(C, H, W) logits → HxW entropy of the predicted probabilities, scaled to [0, 1]
    (1: a coin toss between the classes). With ``Predictor.tta`` the probabilities are the
    average over the flipped views, so disagreement between views raises it too."""
    proba = logits_to_proba(logit)
    if proba.shape[0] == 1:  # binary: foreground and background
        proba = torch.cat([proba, 1 - proba])
    entropy = -(proba * proba.clamp_min(1e-12).log()).sum(0)
    return (entropy / math.log(proba.shape[0])).clamp(0, 1)


def load(run: str | Path, device: str = "auto") -> Predictor:
    """Load a trained run folder (``config.json`` + ``model.safetensors``) for prediction."""
    return Predictor.from_run(run, device)
