"""``pixelseg export RUN --format onnx``: the run's model as an ONNX graph.

The graph takes the normalised image, (N, C, H, W) float32, named ``image``, and returns
``logits`` (N, K, H, W); preprocessing (resize to the training size, the run's mean/std)
and postprocessing stay in ``config.json``, which ``pixelseg predict --engine onnx`` reads
as the torch path does. With ``dynamic`` the batch, height and width may vary; without,
the graph is fixed at batch 1 and the training size. After writing, the graph is run by
ONNX Runtime on random inputs and compared with PyTorch, and the largest difference is
reported (float32 kernels differ in the last bits).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pixelseg.engine.checkpoint import load_model
from pixelseg.errors import PixelsegError
from pixelseg.files import write_bytes
from pixelseg.onnx_engine import ONNX_FILE, open_session

DEFAULT_OPSET = 17


@dataclass
class ExportResult:
    path: Path
    max_abs_diff: float  # between ONNX Runtime and PyTorch logits on random inputs
    max_abs_logit: float  # the largest logit seen, for scale
    shapes: list[tuple[int, ...]]  # the input shapes compared


def export_onnx(
    run: str | Path, out: str | Path | None = None, opset: int = DEFAULT_OPSET,
    dynamic: bool = False, check: bool = True,
) -> ExportResult:  # fmt: skip
    """Write ``run/model.onnx`` (or ``out``) and compare it with the PyTorch model."""
    run = Path(run)
    model, config = load_model(run, "cpu")
    channels, (height, width) = int(config["in_channels"]), config["size"]
    data = onnx_bytes(model, (1, channels, height, width), dynamic, opset)
    path = write_bytes(Path(out) if out else run / ONNX_FILE, data)
    result = ExportResult(path, float("nan"), float("nan"), [])
    if check:
        shapes = [(1, channels, height, width)]
        if dynamic:  # another batch size, and a size that is no multiple of the stride
            shapes.append((2, channels, height + 8, width - 8))
            shapes.append((1, channels, 67, 93))
        result = compare(model, path, shapes)
    return result


def onnx_bytes(
    model: torch.nn.Module, example_shape: tuple[int, ...], dynamic: bool = False,
    opset: int = DEFAULT_OPSET,
) -> bytes:  # fmt: skip
    """The ONNX graph of ``model`` traced on an input of ``example_shape``; with ``dynamic``
    the batch, height and width may vary."""
    axes = {"image": {0: "batch", 2: "height", 3: "width"},
            "logits": {0: "batch", 2: "height", 3: "width"}} if dynamic else None  # fmt: skip
    buffer = io.BytesIO()
    # The TorchScript-based exporter (dynamo=False): it records the models' size-dependent
    # padding as graph operations under dynamic axes. torch deprecates it in favour of the
    # torch.export-based one, which pixelseg has not adopted yet; the warning says so.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # the exporter's own
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            model, (torch.randn(*example_shape),), buffer, input_names=["image"],
            output_names=["logits"], dynamic_axes=axes, opset_version=opset, dynamo=False,
        )  # fmt: skip
    return buffer.getvalue()


def compare(model: torch.nn.Module, path: Path, shapes: list[tuple[int, ...]]) -> ExportResult:
    """Largest |ONNX Runtime - PyTorch| over random inputs of ``shapes``."""
    session = open_session(path)
    generator = torch.Generator().manual_seed(0)
    diff = peak = 0.0
    for shape in shapes:
        x = torch.randn(*shape, generator=generator)
        with torch.no_grad():
            expected = model(x).numpy()
        got = session.run(None, {"image": x.numpy()})[0]
        if got.shape != expected.shape:
            raise PixelsegError(f"{path}: ONNX output {got.shape} differs from {expected.shape}")
        diff = max(diff, float(np.abs(got - expected).max()))
        peak = max(peak, float(np.abs(expected).max()))
    return ExportResult(path, diff, peak, shapes)
