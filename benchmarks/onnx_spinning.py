"""Should ONNX Runtime's worker threads spin between runs? What it buys and what it costs.

After a run, ORT's intra-op workers either spin, waiting for the next run, or sleep
(``session.intra_op.allow_spinning``). Spinning saves the wake-ups of a graph of many
small operations, and may take a core from whatever runs between two runs. For each
setting this times one image of a model on ORT (median of ``--runs``), and what runs in
between as a prediction and a training process would: single-threaded numpy (a 600x800
float resize-and-threshold's worth) and a PyTorch convolution on all threads, each timed
right after a run; the torch convolution is also timed alone. The model is a run's
``model.onnx`` (``--onnx``) or, by default, ``lite-unet-fast`` with random weights
(speed does not depend on them).

    python benchmarks/onnx_spinning.py --size 256 --runs 60
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from pixelseg.inference.export import onnx_bytes
from pixelseg.models import create_model


def median_ms(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def session(graph: bytes, spinning: bool):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", str(int(spinning)))
    return onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", help="a model.onnx (default: lite-unet-fast, random weights)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--runs", type=int, default=60)
    args = parser.parse_args()
    if args.onnx:
        with open(args.onnx, "rb") as f:
            graph = f.read()
    else:
        model = create_model("lite-unet-fast", num_classes=1).eval()
        graph = onnx_bytes(model, (1, 3, args.size, args.size))
    x = np.random.default_rng(0).normal(size=(1, 3, args.size, args.size)).astype(np.float32)
    plane = np.random.default_rng(1).random((600, 800), dtype=np.float32)
    conv = torch.nn.Conv2d(16, 16, 3, padding=1)
    batch = torch.randn(4, 16, 128, 128)

    def numpy_work() -> None:
        (np.tanh(plane) > 0.3).sum()

    def torch_work() -> None:
        with torch.no_grad():
            conv(batch)

    median_ms(torch_work, 10)  # warm-up: torch's first calls start its thread pool
    print(f"torch convolution alone: {median_ms(torch_work, args.runs):.2f} ms")
    print(f"{'spinning':<10}{'ORT ms':>8}{'numpy after':>13}{'torch after':>13}")
    for spinning in (False, True, False, True):  # twice each, alternating
        s = session(graph, spinning)
        for _ in range(10):  # warm-up
            s.run(None, {"image": x})
        ort_ms, after = [], {"numpy": [], "torch": []}
        for i in range(args.runs):
            start = time.perf_counter()
            s.run(None, {"image": x})
            ort_ms.append((time.perf_counter() - start) * 1000)
            name, work = ("numpy", numpy_work) if i % 2 else ("torch", torch_work)
            after[name].append(median_ms(work, 1))
        print(f"{'on' if spinning else 'off':<10}{statistics.median(ort_ms):>8.2f}"
              f"{statistics.median(after['numpy']):>13.2f}"
              f"{statistics.median(after['torch']):>13.2f}")  # fmt: skip
        del s


if __name__ == "__main__":
    main()
