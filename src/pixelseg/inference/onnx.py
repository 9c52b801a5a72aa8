"""``pixelseg predict --engine onnx``: masks from ONNX Runtime, without importing torch.

It reads the run folder's ``config.json`` (training size, normalisation, threshold,
post-processing) and ``model.onnx`` (written by ``pixelseg export RUN --format onnx``) and
repeats the torch path's steps in numpy: resize to the training size (Pillow, as in
training), normalise, run, resize the logits back to the image's size (bilinear with
half-pixel centres, as ``torch.nn.functional.interpolate(align_corners=False)``), then the
threshold or arg-max and the run's clean-up steps. A process that predicts this way starts
without loading PyTorch, which is most of a one-image command's time.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pixelseg.data.imageops import resize_image, to_channels
from pixelseg.errors import PixelsegError, SettingsError
from pixelseg.inference.base import (
    ImageLike,
    SegmentationPredictor,
    as_rgb_array,
    check_options,
)
from pixelseg.inference.options import PredictOptions
from pixelseg.inference.postprocess import postprocess
from pixelseg.runconfig import RunConfig

ONNX_FILE = "model.onnx"


def resize_logits(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(C, h, w) → (C, H, W), bilinear with half-pixel centres (torch's align_corners=False,
    without antialiasing)."""
    _, h, w = logits.shape
    height, width = size
    if (h, w) == (height, width):
        return logits

    def axis(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
        low = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        return low, np.minimum(low + 1, n_in - 1), (src - low).astype(np.float32)

    y0, y1, wy = axis(height, h)
    x0, x1, wx = axis(width, w)
    logits = logits.astype(np.float32, copy=False)
    # separable: along the width at the small height first, then along the height, so
    # only two of the four gathers are of the full size; a + (b - a) * w, in place, makes
    # the fewest passes over the full-size arrays (on a 1-channel 480x360 result this
    # takes 0.7 ms against 1.2 for a * (1 - w) + b * w)
    rows = logits[:, :, x0]
    rows += (logits[:, :, x1] - rows) * wx  # (C, h, W)
    out = rows[:, y0]
    lower = rows[:, y1]
    lower -= out
    lower *= wy[:, None]
    out += lower
    return out


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # never overflows, unlike 1 / (1 + exp(-x))


def logit_of(probability: float) -> float:
    """The logit above which a sigmoid exceeds ``probability`` (±inf at 1 and 0): a
    threshold on probabilities compared with logits saves a sigmoid per pixel."""
    with np.errstate(divide="ignore"):
        return float(np.log(probability) - np.log1p(-probability))


def logits_to_proba(logits: np.ndarray) -> np.ndarray:
    if logits.shape[0] == 1:
        return sigmoid(logits)
    shifted = np.exp(logits - logits.max(0, keepdims=True))
    return shifted / shifted.sum(0, keepdims=True)


def model_inputs(images: Sequence[np.ndarray], config: RunConfig) -> np.ndarray:
    """HxWx3 uint8 RGB images → the graph's input: (N, C, h, w) float32 at the run's
    size and channels, normalised with its mean and std."""
    arrays = [to_channels(image, config.in_channels) for image in images]
    batch = np.stack([resize_image(a, config.size) for a in arrays]).transpose(0, 3, 1, 2)
    # contiguous while still uint8, so the float copy is the array ORT reads as is, and
    # (x / 255 - mean) / std as x * scale + offset: two passes over the pixels, not four
    batch = np.ascontiguousarray(batch).astype(np.float32)
    std = np.asarray(config.std, np.float32)[:, None, None]
    batch *= 1 / (255 * std)
    batch += -np.asarray(config.mean, np.float32)[:, None, None] / std
    return batch


def open_session(model: str | Path | bytes):
    """An ONNX Runtime session on the CPU (the ``onnx`` extra) for a file or its bytes."""
    try:
        import onnxruntime
    except ImportError:
        raise PixelsegError(
            "running ONNX models needs onnxruntime: pip install 'pixelseg[onnx]'"
        ) from None
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # warnings about unused initialisers are noise here
    # All graph optimisations, including the x86 NCHWc layout for convolutions with batch
    # norm and ReLU folded in (ORT's default, stated here because it matters: the default
    # U-Net at 256x256 takes 145 ms per image with the "extended" level and 111 ms with it).
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    # ORT's worker threads spin for a while after each run, waiting for the next one. That
    # is left on: on the 2-core Xeon, lite-unet-fast at 256x256 ran in 6.2 ms with spinning
    # and 7.7 without (waking a sleeping worker costs each of the graph's many small ops);
    # numpy work between runs was no slower, a PyTorch op right after one ~10% slower
    # (benchmarks/onnx_spinning.py; docs/deploy.md).
    options.add_session_config_entry("session.intra_op.allow_spinning", "1")
    source = model if isinstance(model, bytes) else str(model)
    return onnxruntime.InferenceSession(source, options, providers=["CPUExecutionProvider"])


class OnnxPredictor(SegmentationPredictor):
    """The torch-free counterpart of :class:`pixelseg.inference.predictor.Predictor` (whole
    images; no TTA, test-time scales or tiling); made by ``pixelseg.load(run, engine="onnx")``."""

    def __init__(self, session, config: RunConfig, options: PredictOptions | None = None) -> None:
        self.session, self.config = session, config
        self.options = options or PredictOptions()
        unsupported = [f"--{name.replace('_', '-')}" for name in ("tta", "tta_scales", "tile")
                       if getattr(self.options, name) not in (None, False)]  # fmt: skip
        if unsupported:
            shown = ", ".join(unsupported)
            raise SettingsError(f"{shown} not available with --engine onnx; use torch")
        self.size = config.size
        self.num_classes = config.num_classes
        check_options(self.options, self.num_classes)
        self.batch_dim = session.get_inputs()[0].shape[0]  # "batch" if exported --dynamic

    @classmethod
    def from_run(cls, run: str | Path, options: PredictOptions | None = None) -> OnnxPredictor:
        run = Path(run)
        onnx_path = run / ONNX_FILE
        if not onnx_path.is_file():
            raise PixelsegError(
                f"{run}: no {ONNX_FILE}; make it with pixelseg export {run} --format onnx"
            )
        return cls(open_session(onnx_path), RunConfig.read(run), options)

    def logits(self, images: Sequence[ImageLike]) -> list[np.ndarray]:
        """(C, H, W) float32 logits at each image's own size."""
        images = [as_rgb_array(image) for image in images]
        small = self.model_logits(images)
        return [resize_logits(o, a.shape[:2]) for o, a in zip(small, images, strict=True)]

    def model_logits(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """(C, h, w) float32 logits at the model's size; :meth:`upsample` takes them to an
        image's size."""
        batch = model_inputs(images, self.config)
        if isinstance(self.batch_dim, int):  # a graph exported for one batch size
            return [self.session.run(None, {"image": x[None]})[0][0] for x in batch]
        return list(self.session.run(None, {"image": batch})[0])

    @staticmethod
    def upsample(logit: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """(C, h, w) logits → (C, H, W) at ``size`` = (H, W), bilinear."""
        return resize_logits(logit, size)

    def top_proba(self, logit: np.ndarray) -> np.ndarray:
        """HxW probability of the foreground (binary) or of the winning class."""
        proba = logits_to_proba(logit)
        return proba[0] if self.num_classes == 1 else proba.max(0)

    def instances_of(self, logit: np.ndarray, mask: np.ndarray):
        """Connected components of ``mask`` (see :mod:`pixelseg.inference.instances`)."""
        from pixelseg.inference.instances import background_class, find_instances

        background = background_class(self.num_classes, self.config.class_names)
        return find_instances(mask, logits_to_proba(logit), background, self.options.connectivity)

    def uncertainty(self, logit: np.ndarray) -> np.ndarray:
        """HxW entropy of the probabilities scaled to [0, 1] (1: a coin toss)."""
        proba = logits_to_proba(logit)
        if proba.shape[0] == 1:  # binary: foreground and background
            proba = np.concatenate([proba, 1 - proba])
        entropy = -(proba * np.log(np.maximum(proba, 1e-12))).sum(0)
        return np.clip(entropy / np.log(proba.shape[0]), 0, 1).astype(np.float32)

    def to_mask(self, logit: np.ndarray, threshold: float | None = None) -> np.ndarray:
        t = self.threshold if threshold is None else threshold
        if not 0 <= t <= 1:
            raise SettingsError(f"threshold must be a probability between 0 and 1, got {t}")
        if self.num_classes > 1:
            return logit.argmax(0).astype(np.uint8)
        mask = (logit[0] > logit_of(t)).astype(np.uint8)  # sigmoid(x) > t, one pass fewer
        return postprocess(mask, self.postprocess, self.options.min_area)
