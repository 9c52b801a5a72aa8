"""``pixelseg export RUN --format onnx``: the run's model as an ONNX graph.

The graph takes the normalised image, (N, C, H, W) float32, named ``image``, and returns
``logits`` (N, K, H, W); preprocessing (resize to the training size, the run's mean/std)
and postprocessing stay in the run's config, which ``pixelseg predict --engine onnx`` reads
as the torch path does. With ``dynamic`` the batch, height and width may vary; without,
the graph is fixed at batch 1 and the training size. Before it is written, the graph is run
by ONNX Runtime on random inputs and compared with PyTorch: the largest difference is
reported (float32 kernels differ in the last bits), and a graph that computes something
else (traced operations that only hold at the size traced) is refused rather than written.
smp's PAN, which pads inputs to a minimum size, exports with fixed sizes only. With
``int8`` the checked graph is then quantized (:mod:`pixelseg.inference.quantize`) and the
int8 one is written, with what it costs in the run's validation metric.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pixelseg.errors import PixelsegError
from pixelseg.files import write_bytes
from pixelseg.inference.onnx import ONNX_FILE, open_session
from pixelseg.inference.quantize import Int8Report, quantize_run
from pixelseg.models.saved import load_model

DEFAULT_OPSET = 17
# ONNX Runtime's and PyTorch's float32 kernels agree to ~1e-5 of the logits' scale here;
# a thousandth of it is far beyond rounding: a different computation
TOLERANCE = 1e-3


@dataclass
class ExportResult:
    path: Path
    max_abs_diff: float  # between ONNX Runtime and PyTorch logits on random inputs
    max_abs_logit: float  # the largest logit seen, for scale
    shapes: list[tuple[int, ...]]  # the input shapes compared
    int8: Int8Report | None = None  # with int8: the quantized graph against the float one


def export_onnx(
    run: str | Path, out: str | Path | None = None, opset: int = DEFAULT_OPSET,
    dynamic: bool = False, check: bool = True, int8: bool = False,
    data: str | Path | None = None,
) -> ExportResult:  # fmt: skip
    """Write ``run/model.onnx`` (or ``out``) and compare it with the PyTorch model.

    ``int8``: write the graph quantized to int8, calibrated on the run's training images
    and scored on its validation images (in ``data``, default where the run found them).
    """
    run = Path(run)
    model, config = load_model(run, "cpu")
    if dynamic and getattr(model, "min_size", 0):
        # the padding up to the minimum is a comparison of sizes, which the tracer fixes
        # at the size it traces: the graph would be wrong at every other size
        raise PixelsegError(
            f"{run}: {config.model} pads inputs to at least {model.min_size} pixels, which "
            "a dynamic ONNX graph cannot express; export without --dynamic (the graph then "
            "takes the training size, which pixelseg predict --engine onnx resizes to)"
        )
    channels, (height, width) = config.in_channels, config.size
    graph = onnx_bytes(model, (1, channels, height, width), dynamic, opset)
    path = Path(out) if out else run / ONNX_FILE
    result = ExportResult(path, float("nan"), float("nan"), [])
    if check:
        shapes = [(1, channels, height, width)]
        if dynamic:  # another batch size, and a size that is no multiple of the stride
            shapes.append((2, channels, height + 8, width - 8))
            shapes.append((1, channels, 67, 93))
        result = compare(model, graph, shapes, path)
        tolerance = TOLERANCE * max(1.0, result.max_abs_logit)
        if not result.max_abs_diff <= tolerance:  # NaN fails too
            hint = " (export without --dynamic)" if dynamic else ""
            raise PixelsegError(
                f"{run}: the ONNX graph does not compute what the model does: its logits differ "
                f"by up to {result.max_abs_diff:.3g} (of {result.max_abs_logit:.3g}) on inputs of "
                f"{', '.join('x'.join(map(str, s)) for s in shapes)}{hint}; nothing was written"
            )
    if int8:
        graph, result.int8 = quantize_run(run, graph, data)
    write_bytes(path, graph)
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
        # F.pad's amounts, a Slice with step -1 that the exporter cannot fold: harmless
        # (onnx_passes.py folds them)
        warnings.filterwarnings("ignore", message="Constant folding")
        try:
            torch.onnx.export(
                model, (torch.randn(*example_shape),), buffer, input_names=["image"],
                output_names=["logits"], dynamic_axes=axes, opset_version=opset, dynamo=False,
            )  # fmt: skip
        except torch.onnx.errors.OnnxExporterError as error:
            # e.g. smp's PSPNet and UPerNet: adaptive pooling to sizes that do not divide
            # the input, which ONNX has no operator for
            name = getattr(model, "architecture", type(model).__name__)
            raise PixelsegError(
                f"{name} cannot be exported to ONNX by torch's exporter: "
                f"{str(error).strip().splitlines()[0]}"
            ) from None
    return _optimized(buffer.getvalue())


def _optimized(graph: bytes) -> bytes:
    """The graph with its zero padding folded into convolutions (onnx_passes.py); as it is
    without the onnx package, which that needs."""
    try:
        import onnx
    except ImportError:
        return graph
    from pixelseg.inference.onnx_passes import fold_pads

    model = onnx.load_from_string(graph)
    return model.SerializeToString() if fold_pads(model) else graph


def compare(
    model: torch.nn.Module, graph: bytes, shapes: list[tuple[int, ...]], path: Path
) -> ExportResult:
    """Largest |ONNX Runtime - PyTorch| over random inputs of ``shapes`` (``path``: where
    the graph is to be written)."""
    session = open_session(graph)
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
