"""Segmentation quality on a data set: train each model, score it on the held-out test split.

Every model is trained with the same settings and split (same seed), then evaluated at
the original image resolution; the table shows test Dice/IoU (mean over images) and the
wall-clock time. ``--data synthetic`` runs the offline demo instead and checks its
targets (test Dice >= 0.90 in under 180 s).

    python benchmarks/quality.py --data ../shared/data/ph2 --size 128 --epochs 30
    python benchmarks/quality.py --data synthetic
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

import pixelseg
from pixelseg.demo import run_demo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a data folder, or 'synthetic' for the demo")
    parser.add_argument("--models", default="lesson-segnet,lesson-unet,unet")
    parser.add_argument("--size", default="128")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    results = {
        "data": args.data,
        "gpu": gpu,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "models": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        if args.data == "synthetic":
            t0 = time.perf_counter()
            metrics = run_demo(out / "demo", device=args.device, progress=False)
            seconds = time.perf_counter() - t0
            results["demo"] = {
                "test_dice": metrics["dice"],
                "seconds": seconds,
                "dice_target_ratio": metrics["dice"] / 0.90,
                "time_target_ratio": seconds / 180.0,
            }
            print(
                f"demo: test dice {metrics['dice']:.4f} (target >= 0.90, ratio "
                f"{metrics['dice'] / 0.90:.3f}); {seconds:.0f} s (target < 180 s, ratio "
                f"{seconds / 180:.2f}) on {gpu or f'CPU, {torch.get_num_threads()} threads'}"
            )
        else:
            print(
                f"{'model':<15}{'test dice':>10}{'test iou':>10}{'dice micro':>11}"
                f"{'best epoch':>11}{'seconds':>9}"
            )
            for name in args.models.split(","):
                t0 = time.perf_counter()
                run = out / name
                result = pixelseg.train(
                    args.data,
                    out=run,
                    model=name,
                    size=args.size,
                    epochs=args.epochs,
                    batch_size=args.batch_size,
                    lr=args.lr,
                    device=args.device,
                    patience=0,
                    progress=False,
                )
                seconds = time.perf_counter() - t0
                m = pixelseg.evaluate(
                    run, args.data, split="test", device=args.device, progress=False
                )
                results["models"][name] = {
                    "test": m,
                    "best_epoch": result.best_epoch,
                    "seconds": seconds,
                }
                print(
                    f"{name:<15}{m['dice']:>10.4f}{m['iou']:>10.4f}{m['dice_micro']:>11.4f}"
                    f"{result.best_epoch:>11}{seconds:>9.0f}"
                )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
