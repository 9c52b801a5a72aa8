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

from pixelseg.cutout import Background, composite, cutout
from pixelseg.data.dataset import resize_image, to_channels, to_uint8_tensor
from pixelseg.data.io import read_image, to_rgb, to_uint8
from pixelseg.data.transforms import BatchTransform
from pixelseg.engine.checkpoint import load_model
from pixelseg.engine.device import resolve_device
from pixelseg.engine.evaluate import logits_to_mask, logits_to_proba, resize_logits
from pixelseg.files import write_bytes, write_json
from pixelseg.instances import (
    Instances,
    background_class,
    color_instances,
    find_instances,
    to_coco,
    to_csv,
)
from pixelseg.outputs import unique_stems, write_mask_outputs
from pixelseg.postprocess import postprocess
from pixelseg.report import plot_legend, save_png
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
        batch = torch.stack([to_uint8_tensor(resize_image(a, self.size)) for a in arrays])
        out = self._forward(batch).cpu()
        return [resize_logits(logit, a.shape[:2]) for logit, a in zip(out, arrays, strict=True)]

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
                raise ValueError(f"scale must be > 0, got {self.scale}")
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


def predict_files(
    predictor: Predictor,
    paths: Sequence[Path],
    out_dir: str | Path,
    threshold: float | None = None,
    probabilities: bool = False,
    batch_size: int = 4,
    progress: bool = True,
    cutouts: bool = False,
    background: Background | None = None,
    feather: float = 0.0,
    uncertainty: bool = False,
    instances: bool = False,
    stems: Sequence[str] | None = None,
    first_id: int = 1,
    legend: bool = True,
) -> list[Path]:
    """Write ``<stem>_mask.png`` and ``<stem>_overlay.png`` (and ``<stem>_prob.png``) per input.

    With ``cutouts``, also ``<stem>_cutout.png``: the image as RGBA with the (``feather``-ed)
    foreground as alpha; with a ``background`` (RGB colour or image),
    ``<stem>_composite.png``: the foreground over it.
    With ``uncertainty``, ``<stem>_uncertainty.png``: :func:`uncertainty_map` x 255.
    With ``instances``, the separate objects (:mod:`pixelseg.instances`) as COCO results in
    ``<stem>_instances.json``, one CSV row each in ``<stem>_instances.csv`` and coloured in
    ``<stem>_instances.png``; the images' COCO ids count from ``first_id``.

    ``stems`` names the outputs (default: the inputs' stems, made unique); a process of a
    distributed run passes its share of the whole list's, and only one writes the
    ``legend``.

    Binary masks are saved as 0/255, multi-class masks as class indices plus a colour-coded
    ``<stem>_color.png`` (colours explained by ``legend.png``); the probability
    image is the foreground (binary) or winning-class (multi-class) probability × 255.
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t = predictor.threshold if threshold is None else threshold
    written: list[Path] = []
    stems = list(stems) if stems is not None else unique_stems(paths)
    if len(stems) != len(paths):
        raise ValueError(f"{len(stems)} stems for {len(paths)} images")
    bar = tqdm(total=len(paths), desc="predicting", unit="img", disable=None if progress else True)
    # Tiled prediction batches tiles, not images: one large image's logits at a time.
    step = 1 if predictor.tile is not None else batch_size
    for start in range(0, len(paths), step):
        images = [read_image(p) for p in paths[start : start + step]]
        logits = predictor.logits(images)
        for i, (image, logit) in enumerate(zip(images, logits, strict=True)):
            mask = predictor.to_mask(logit, t)
            prefix = out_dir / stems[start + i]
            top = predictor.top_proba(logit) if probabilities else None
            written += write_mask_outputs(prefix, image, mask, predictor.config, top)
            if uncertainty:
                level = (uncertainty_map(logit).numpy() * 255).round().astype(np.uint8)
                written.append(save_png(f"{prefix}_uncertainty.png", level))
            if instances:
                found = predictor.instances_of(logit, mask)
                image_id = first_id + start + i
                written += _write_instances(prefix, image, found, image_id, paths[start + i],
                                            predictor.config.get("class_names"))  # fmt: skip
            if cutouts:
                written.append(save_png(f"{prefix}_cutout.png", cutout(image, mask, feather)))
            if background is not None:
                picture = composite(image, mask, background, feather)
                written.append(save_png(f"{prefix}_composite.png", picture))
            bar.update(1)
    bar.close()
    if legend and predictor.num_classes > 1:
        written.append(write_legend(predictor, out_dir))
    return written


def write_legend(predictor: Predictor, out_dir: str | Path) -> Path:
    """``legend.png``: what the colours of the ``<stem>_color.png`` masks mean."""
    names = predictor.config.get("class_names") or [str(i) for i in range(predictor.num_classes)]
    return plot_legend(names, Path(out_dir) / "legend.png", predictor.config.get("class_colors"))


def _write_instances(
    prefix: Path, image: np.ndarray, found: Instances, image_id: int, path: Path,
    class_names: list[str] | None,
) -> list[Path]:  # fmt: skip
    """``<prefix>_instances.json`` (COCO results), ``.csv`` and ``.png``."""
    return [
        write_json(f"{prefix}_instances.json", to_coco(found, image_id, path.name, class_names)),
        write_bytes(f"{prefix}_instances.csv", to_csv(found, class_names).encode()),
        save_png(f"{prefix}_instances.png", color_instances(image, found)),
    ]
