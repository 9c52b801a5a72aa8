"""What each way of making lite-unet faster buys on this CPU, through ONNX Runtime.

Builds lite-unet variants (random weights: speed does not depend on them), exports each
to ONNX at batch 1 and times one image on ONNX Runtime (the settings ``pixelseg predict
--engine onnx`` uses), median of ``--runs`` after a warm-up, beside the default decoder
measured in the same run (the ratio column). The options: a narrower decoder, depthwise-
separable decoder convolutions, a decoder that stops at stride 2 or 4 (bilinear logits),
a lower input size, ONNX Runtime's graph optimisations (Conv+BN folding, at its "basic"
level, and the rest) turned off, on in part, and on, and the encoder's padding left as Pad
nodes rather than folded into the convolutions (inference/onnx_passes.py).

    python benchmarks/fast_models.py --size 256 --runs 100

Dice costs are measured by training: see docs/benchmarks.md ("A real-time model").
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from pixelseg.inference.export import onnx_bytes
from pixelseg.models import create_model

NARROW = (64, 32, 24, 16, 8)
VARIANTS = {
    "default decoder (128, 64, 48, 32, 16)": {},
    "narrow decoder (64, 32, 24, 16, 8)": {"decoder_channels": NARROW},
    "separable decoder convs": {"separable": True},
    "decoder to stride 2": {"output_stride": 2},
    "decoder to stride 4": {"output_stride": 4},
    "fast: separable, narrow, to stride 2": {
        "separable": True, "decoder_channels": NARROW[:4], "output_stride": 2,
    },
    "fast: separable, narrow, to stride 4": {
        "separable": True, "decoder_channels": NARROW[:3], "output_stride": 4,
    },
}  # fmt: skip


def ort_ms(session, image: np.ndarray, runs: int) -> float:
    for _ in range(5):
        session.run(None, {"image": image})
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, {"image": image})
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def unfolded(model: torch.nn.Module, image: np.ndarray) -> bytes:
    """The graph as torch's exporter writes it, without pixelseg's folding of padding."""
    import io
    import warnings

    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.from_numpy(image),), buffer, input_names=["image"],
                          output_names=["logits"], opset_version=17, dynamo=False)  # fmt: skip
    return buffer.getvalue()


def session_with(data: bytes, level: str):
    import onnxruntime

    # pixelseg's settings (inference/onnx.py: open_session), with only the level changed
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = getattr(onnxruntime.GraphOptimizationLevel, level)
    return onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--sizes", default="256,224,192,160,128", help="for the fast models")
    args = parser.parse_args()
    torch.manual_seed(0)

    def model(kwargs: dict) -> torch.nn.Module:
        return create_model("lite-unet", **kwargs).eval()  # the default encoder

    def measure(kwargs: dict, side: int, level: str = "ORT_ENABLE_ALL", fold: bool = True) -> float:
        image = np.random.rand(1, 3, side, side).astype(np.float32)
        data = onnx_bytes(model(kwargs), image.shape) if fold else unfolded(model(kwargs), image)
        return ort_ms(session_with(data, level), image, args.runs)

    print(f"ONNX Runtime, one {args.size}x{args.size} image, median of {args.runs} (ms):")
    base = measure({}, args.size)
    for name, kwargs in VARIANTS.items():
        ms = base if not kwargs else measure(kwargs, args.size)
        params = sum(p.numel() for p in model(kwargs).parameters())
        print(f"  {name:<40} {ms:7.2f} ms  {ms / base:5.2f}x  {params / 1e6:5.2f} M parameters")
    print("graph optimisations, default decoder:")
    for level in ("ORT_DISABLE_ALL", "ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_ALL"):
        ms = measure({}, args.size, level)
        print(f"  {level:<40} {ms:7.2f} ms  {ms / base:5.2f}x")
    print("the encoder's TensorFlow padding as Pad nodes (not folded into the convolutions):")
    for name in ("default decoder (128, 64, 48, 32, 16)", "fast: separable, narrow, to stride 4"):
        ms = measure(VARIANTS[name], args.size, fold=False)
        print(f"  {name:<40} {ms:7.2f} ms  {ms / base:5.2f}x")
    for name in ("fast: separable, narrow, to stride 2", "fast: separable, narrow, to stride 4"):
        print(f"{name}, by input size:")
        for side in (int(s) for s in args.sizes.split(",")):
            ms = measure(VARIANTS[name], side)
            print(f"  {side}x{side:<36} {ms:7.2f} ms  {ms / base:5.2f}x")


if __name__ == "__main__":
    main()
