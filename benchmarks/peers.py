"""People photos: MediaPipe's selfie segmenter beside pixelseg, on the same held-out images.

MediaPipe's selfie segmenter is the pretrained peer that video-call apps use for background
replacement; its model ships inside the ``mediapipe==0.10.21`` wheel, which needs an
environment of its own (numpy<2, protobuf<5). This script builds that environment once
(``--peer-env``, default ``.venv-mediapipe``; pip fetches the wheels from the package index),
runs both of its models (0: 256x256 "general", 1: 144x256 "landscape") on the held-out
images of one cross-validation fold (the folds of ``crossval.py``, same seed), and scores
their masks (probability above 0.5) with pixelseg's own metric code at each photo's own
size: mean per-image Dice and IoU. ``--run RUN`` scores a pixelseg run folder on the same
images (train it on the fold's other images, e.g. with ``crossval.py``'s default recipe and
``--keep``), with the milliseconds per photo of ``predict`` on PyTorch, ONNX Runtime and
ONNX Runtime in int8, quantized dynamically and statically (calibrated on 32 of the run's
training images): what quantization costs in Dice and buys in time.

    python benchmarks/peers.py --data ../shared/data/people --fold 0
    python benchmarks/peers.py --data ../shared/data/people --fold 0 --run runs/people-fold0
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

import numpy as np
from crossval import make_folds

from pixelseg.data.io import read_image, read_mask
from pixelseg.data.layouts import find_samples
from pixelseg.metrics import BinaryMetrics

PEER_PACKAGES = ["mediapipe==0.10.21", "numpy<2", "protobuf<5"]
# runs inside the peer's environment: photo paths in, masks and milliseconds out
PEER_SCRIPT = r"""
import json, sys, time
import numpy as np
import mediapipe as mp
from PIL import Image, ImageOps

paths, out, model = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
ms = []
with mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=model) as segmenter:
    for i, path in enumerate(paths):
        photo = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
        rgb = np.ascontiguousarray(np.asarray(photo))
        start = time.perf_counter()
        probability = segmenter.process(rgb).segmentation_mask
        ms.append((time.perf_counter() - start) * 1000)
        Image.fromarray((probability > 0.5).astype(np.uint8) * 255).save(f"{out}/{i}.png")
print(json.dumps(ms))
"""


def peer_python(env: Path) -> Path:
    """The peer environment's interpreter, built on first use."""
    python = env / "bin" / "python"
    if not python.exists():
        print(f"building {env} with {' '.join(PEER_PACKAGES)} (once)", flush=True)
        venv.create(env, with_pip=True)
        subprocess.run([python, "-m", "pip", "install", "-q", *PEER_PACKAGES], check=True)
    return python


def score(masks: list[np.ndarray], truths: list[np.ndarray]) -> dict:
    metrics = BinaryMetrics()
    for mask, truth in zip(masks, truths, strict=True):
        metrics.update(mask, truth)
    m = metrics.compute()
    return {"dice": m["dice"], "iou": m["iou"]}


def run_peer(python: Path, paths: list[Path], model: int) -> tuple[list[np.ndarray], list[float]]:
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(
            [python, "-c", PEER_SCRIPT, json.dumps([str(p) for p in paths]), tmp, str(model)],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        ms = json.loads(done.stdout.strip().splitlines()[-1])
        from PIL import Image

        masks = [np.asarray(Image.open(f"{tmp}/{i}.png")) > 0 for i in range(len(paths))]
    return masks, ms


def pixelseg_predictors(run: Path) -> dict:
    """The run on each engine: PyTorch, ONNX Runtime (``model.onnx``, exported here when
    missing) and ONNX Runtime on int8 copies (``onnxruntime.quantization``): dynamic (the
    weights in int8, the activations quantized on the fly) and static (what ``pixelseg
    export --int8`` writes: QDQ, per-channel weights, activation ranges calibrated on the
    run's own training images)."""
    import pixelseg
    from pixelseg.inference.export import export_onnx
    from pixelseg.inference.onnx import OnnxPredictor, open_session
    from pixelseg.inference.quantize import calibration_inputs, quantize_graph, run_samples
    from pixelseg.runconfig import RunConfig

    predictors = {"torch": pixelseg.load(run, device="cpu")}
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        return predictors
    if not (run / "model.onnx").is_file():
        export_onnx(run, run / "model.onnx", dynamic=True)
    predictors["onnx"] = pixelseg.load(run, engine="onnx")
    config = RunConfig.read(run)
    with tempfile.TemporaryDirectory() as tmp:
        dynamic = Path(tmp) / "dynamic.onnx"
        quantize_dynamic(run / "model.onnx", dynamic, weight_type=QuantType.QUInt8)
        predictors["onnx int8 dynamic"] = OnnxPredictor(open_session(dynamic), config)
    train, _ = run_samples(run, config)
    calibration = calibration_inputs(config, train)
    static = quantize_graph((run / "model.onnx").read_bytes(), calibration)
    predictors["onnx int8 static"] = OnnxPredictor(open_session(static), config)
    return predictors


def run_pixelseg(predictor, paths: list[Path]) -> tuple[list[np.ndarray], list[float]]:
    """Masks at each photo's size and milliseconds per photo (decoded beforehand)."""
    predictor.predict(read_image(paths[0]))  # warm-up
    masks, ms = [], []
    for path in paths:
        image = read_image(path)
        start = time.perf_counter()
        mask = predictor.predict(image)
        ms.append((time.perf_counter() - start) * 1000)
        masks.append(mask > 0)
    return masks, ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/people")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--fold", type=int, default=0, help="the fold whose images are scored")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--peer-env", default=".venv-mediapipe")
    parser.add_argument("--run", help="a pixelseg run folder trained on the fold's other images")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    _, samples = find_samples(args.data)
    held_out = make_folds(samples, args.folds, args.seed)[args.fold]
    paths = [s.image for s in held_out]
    truths = [read_mask(s.mask, 1) > 0 for s in held_out]
    python = peer_python(Path(args.peer_env))
    rows = {}
    for model in (0, 1):
        masks, ms = run_peer(python, paths, model)
        rows[f"mediapipe selfie model {model}"] = {**score(masks, truths),
                                                   "ms": statistics.median(ms)}  # fmt: skip
    if args.run:
        for engine, predictor in pixelseg_predictors(Path(args.run)).items():
            masks, ms = run_pixelseg(predictor, paths)
            rows[f"pixelseg ({engine})"] = {**score(masks, truths), "ms": statistics.median(ms)}
    print(f"{len(paths)} held-out photos of fold {args.fold} ({args.data}), scored at their size")
    print(f"{'':<40}{'Dice':>8}{'IoU':>8}{'ms/photo':>10}")
    for name, row in rows.items():
        print(f"{name:<40}{row['dice']:>8.4f}{row['iou']:>8.4f}{row['ms']:>10.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"fold": args.fold, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
