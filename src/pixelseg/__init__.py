"""pixelseg: pixel classification (semantic segmentation) from a folder of images and masks.

Python API (mirrors the ``pixelseg`` command)::

    import pixelseg
    result = pixelseg.train("data/ph2", out="runs/ph2", model="lesson-unet", size=128, epochs=30)
    metrics = pixelseg.evaluate("runs/ph2", "data/ph2", split="test")
    predictor = pixelseg.load("runs/ph2", engine="torch", tta=True)
    mask = predictor.predict("new_image.bmp")   # HxW uint8 at the image's own size
    predictor.predict_folder(["new_images/"], "out", pixelseg.Outputs(cutout=True))
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pixelseg.errors import DataError, PixelsegError, SettingsError
from pixelseg.inference.options import Outputs, PredictOptions
from pixelseg.version import __version__

if TYPE_CHECKING:
    from pixelseg.engine.train import TrainResult
    from pixelseg.inference.base import SegmentationPredictor

__all__ = [
    "DataError",
    "Outputs",
    "PredictOptions",
    "PixelsegError",
    "SettingsError",
    "__version__",
    "ensemble",
    "evaluate",
    "load",
    "resume",
    "train",
]


def train(
    data: str | Path, out: str | Path = "runs/pixelseg", resume: bool = False, **settings: Any
) -> TrainResult:
    """Train on ``data`` into the run folder ``out``.

    ``settings`` are :class:`pixelseg.config.TrainConfig` fields (model, size, epochs, ...).
    With ``resume=True``, continue the run in ``out`` instead (see :func:`resume`).
    """
    from pixelseg.config import TrainConfig
    from pixelseg.engine.train import fit
    from pixelseg.engine.train import resume as resume_run

    if resume:
        return resume_run(out, data=str(data), **settings)
    return fit(TrainConfig(data=str(data), out=str(out), **settings))


def resume(run: str | Path, **overrides: Any) -> TrainResult:
    """Continue an interrupted run; only data, epochs, patience, workers, device, progress,
    postprocess, save_every and compile may change (more epochs continue the learning-rate
    decay from where it stopped)."""
    from pixelseg.engine.train import resume as resume_run

    return resume_run(run, **overrides)


def ensemble(runs: list[str | Path], out: str | Path) -> Path:
    """Combine trained runs into the run folder ``out``, whose model averages their
    probabilities (see :mod:`pixelseg.engine.ensemble`); returns ``out``."""
    from pixelseg.engine.ensemble import make_ensemble

    return make_ensemble(runs, out)


def evaluate(run: str | Path, data: str | Path, split: str = "test", **kwargs: Any) -> dict:
    """Score a run on ``data`` (see :func:`pixelseg.engine.evaluate.evaluate_run`)."""
    from pixelseg.engine.evaluate import evaluate_run

    return evaluate_run(run, data, split, **kwargs)


def load(
    run: str | Path, engine: str = "torch", device: str = "auto", **options: Any
) -> SegmentationPredictor:
    """Load a run folder for prediction: ``pixelseg.load(run, tta=True).predict(image)``
    (see :func:`pixelseg.inference.load` for the engines and options)."""
    from pixelseg.inference import load as _load

    return _load(run, engine, device, **options)
