"""From a trained run folder to masks: the predictors, their options and outputs, tiling,
test-time augmentation, clean-up, instances, cut-outs, video, ONNX export and runtime.

One way in, :func:`load`; everything the command line, the service and the notebooks do
with a run goes through the predictor it returns. This package never imports the training
engine (``pixelseg.engine``'s training, evaluation and planning); training imports it (for
the logits maths of :mod:`pixelseg.inference.logits`). Importing it loads neither torch
nor onnxruntime: each engine's module does, when :func:`load` picks it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pixelseg.errors import SettingsError
from pixelseg.inference.base import SegmentationPredictor
from pixelseg.inference.options import Outputs, PredictOptions, predict_options

__all__ = ["ENGINES", "Outputs", "PredictOptions", "SegmentationPredictor", "load"]

ENGINES = ("torch", "onnx")


def load(
    run: str | Path, engine: str = "torch", device: str = "auto", **options: Any
) -> SegmentationPredictor:
    """The run folder's predictor, its options fixed (see :class:`PredictOptions`).

    ``engine="torch"`` runs ``model.safetensors`` with PyTorch on ``device``;
    ``engine="onnx"`` runs ``model.onnx`` (``pixelseg export``) with ONNX Runtime on the
    CPU, without importing torch, and has no ``tta``, ``tta_scales`` or ``tile``.
    """
    chosen = predict_options(options)  # checked before anything is loaded
    if engine == "torch":
        from pixelseg.inference.predictor import Predictor

        return Predictor.from_run(run, device, chosen)
    if engine == "onnx":
        from pixelseg.inference.onnx import OnnxPredictor

        if device not in ("auto", "cpu"):
            raise SettingsError(f"--engine onnx runs on the CPU; --device {device} is for torch")
        return OnnxPredictor.from_run(run, chosen)
    hint = (
        " (give the device as device=...)" if engine in ("auto", "cpu") or "cuda" in engine else ""
    )
    raise SettingsError(f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}{hint}")
