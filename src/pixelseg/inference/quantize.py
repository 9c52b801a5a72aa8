"""``pixelseg export RUN --int8``: an int8 ONNX graph, and what it costs and buys.

Static quantization by ONNX Runtime (``onnxruntime.quantization``, QDQ format): int8
weights per output channel and uint8 activations whose ranges are calibrated on up to
:data:`CALIBRATION_IMAGES` of the run's own training images, prepared as the model sees
them. The float32 and int8 graphs are then both scored on the run's validation images at
their own size, with the run's threshold and clean-up steps, and both are timed on one
image at the training size, so the export reports the metric int8 loses beside the
milliseconds it saves; whether that trade is worth it is the user's call.

Dynamic quantization (int8 weights, activations quantized on the fly) is not offered: on
the 2-core Xeon it ran pixelseg's models at more than twice their float32 time, since each
convolution gains a ``DynamicQuantizeLinear`` before it and rescaling after it
(docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pixelseg.data.io import read_image, read_mask
from pixelseg.data.layouts import Sample, find_samples
from pixelseg.data.split import load_split, select
from pixelseg.errors import PixelsegError
from pixelseg.inference.onnx import OnnxPredictor, model_inputs, open_session
from pixelseg.metrics import BinaryMetrics, MulticlassMetrics
from pixelseg.runconfig import RunConfig

CALIBRATION_IMAGES = 32  # ranges settle within a few dozen images; more only costs time
TIMED_RUNS = 30


@dataclass(frozen=True)
class Int8Report:
    """The int8 graph against the float32 one it was made from."""

    metric: str  # the run's validation metric (dice or miou)
    float_score: float | None  # on the run's validation images; None when it has none
    int8_score: float | None
    images: int  # validation images scored
    calibration_images: int
    float_ms: float  # median milliseconds of the graph alone, one image at the training size
    int8_ms: float

    def summary(self) -> str:
        speed = f"{self.int8_ms:.1f} ms an image against {self.float_ms:.1f} in float32"
        if self.int8_score is None or self.float_score is None:
            return f"int8: {speed}; no validation images to score it on"
        return (
            f"int8: validation {self.metric} {self.int8_score:.4f} against {self.float_score:.4f} "
            f"in float32 ({self.images} images); {speed}"
        )


def quantize_run(
    run: str | Path, graph: bytes, data: str | Path | None = None
) -> tuple[bytes, Int8Report]:
    """The int8 version of ``graph`` (the run's float32 ONNX graph) and its report.

    ``data`` is the run's data folder, if it has moved since training (default: where the
    run found it, from ``config.json``).
    """
    run = Path(run)
    config = RunConfig.read(run)
    train, val = run_samples(run, config, data)
    if not train:
        raise PixelsegError(f"{run}: no training images to calibrate the int8 ranges on")
    calibration = calibration_inputs(config, train)
    quantized = quantize_graph(graph, calibration)
    float_session, int8_session = open_session(graph), open_session(quantized)
    scores = [score(OnnxPredictor(s, config), config, val) if val else None
              for s in (float_session, int8_session)]  # fmt: skip
    report = Int8Report(
        metric=config.score_name, float_score=scores[0], int8_score=scores[1], images=len(val),
        calibration_images=len(calibration), float_ms=time_graph(float_session, calibration[0]),
        int8_ms=time_graph(int8_session, calibration[0]),
    )  # fmt: skip
    return quantized, report


def run_samples(
    run: Path, config: RunConfig, data: str | Path | None = None
) -> tuple[list[Sample], list[Sample]]:
    """The run's training and validation pairs (its ``split.json``) in its data folder."""
    data = Path(data or config.train.get("data") or "")
    if not data.is_dir():
        raise PixelsegError(
            f"{run}: --int8 calibrates on the run's training images, but its data folder "
            f"{str(data) or '(not recorded)'} is not there; give it with --data DIR"
        )
    split_file = run / "split.json"
    if not split_file.is_file():
        raise PixelsegError(f"{run}: no split.json, so the run's training images are unknown")
    split = load_split(split_file)
    _, samples = find_samples(data, config.train.get("format", "auto"))
    return select(samples, split["train"]), select(samples, split.get("val", []))


def calibration_inputs(config: RunConfig, train: Sequence[Sample]) -> list[np.ndarray]:
    """Up to :data:`CALIBRATION_IMAGES` training images as the graph takes them, one each."""
    return [model_inputs([read_image(s.image)], config) for s in train[:CALIBRATION_IMAGES]]


def quantize_graph(graph: bytes, calibration: Sequence[np.ndarray]) -> bytes:
    """``graph`` statically quantized to int8 (QDQ), ranges calibrated on ``calibration``
    (model inputs, (1, C, h, w) float32)."""
    try:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            QuantFormat,
            QuantType,
            quantize_static,
        )  # fmt: skip
    except ImportError:
        raise PixelsegError("--int8 needs onnxruntime: pip install 'pixelseg[onnx]'") from None

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.inputs = iter([{"image": x} for x in calibration])

        def get_next(self) -> dict | None:
            return next(self.inputs, None)

    with tempfile.TemporaryDirectory() as tmp, _quiet_root_logger():
        source, target = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        source.write_bytes(graph)
        quantize_static(
            source, target, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        )  # fmt: skip
        return target.read_bytes()


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """The quantizer logs advice on the root logger (run its shape-inference pre-processing
    first) that is not the user's to act on: the graph quantizes without it."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def score(predictor: OnnxPredictor, config: RunConfig, samples: Sequence[Sample]) -> float:
    """The run's metric (mean Dice, or mIoU) of ``predictor`` on ``samples`` at their own size."""
    binary = config.num_classes == 1
    metrics = (BinaryMetrics() if binary
               else MulticlassMetrics(config.num_classes, config.ignore_index))  # fmt: skip
    for sample in samples:
        truth = read_mask(sample.mask, config.num_classes, config.class_colors,
                          config.ignore_index)  # fmt: skip
        pred = predictor.predict(read_image(sample.image))
        if binary:
            valid = None if config.ignore_index is None else truth != config.ignore_index
            metrics.update(pred, truth == 1, valid)
        else:
            metrics.update(pred, truth)
    return float(metrics.compute()["dice" if binary else "miou"])


def time_graph(session, x: np.ndarray) -> float:
    """Median milliseconds of one run of ``session`` on ``x``, after a warm-up."""
    session.run(None, {"image": x})
    times = []
    for _ in range(TIMED_RUNS):
        start = time.perf_counter()
        session.run(None, {"image": x})
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)
