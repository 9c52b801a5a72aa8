"""CamVid: train on its 120 training images, score on its 30 validation images.

Runs what a user would type, ``pixelseg train ../shared/data/camvid --time-budget BUDGET``
(self-configured: size, width, batch, loss and class weights from the data; void = 11
ignored), then ``pixelseg evaluate RUN ../shared/data/camvid --split val``, and prints
mIoU, global accuracy, class-average accuracy and the IoU of every class beside SegNet's
published CamVid figures. The validation images also pick the best epoch, so their score
is slightly optimistic; CamVid's own test set is not part of ``../shared/data``.

    python benchmarks/camvid.py --data ../shared/data/camvid --budget 10m
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

import pixelseg

# Badrinarayanan et al., TPAMI 2017, CamVid test set, all 367 training images, VGG16 encoder
SEGNET = {"miou": 0.601, "global_accuracy": 0.904, "class_accuracy": 0.712}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/camvid")
    parser.add_argument("--budget", default="10m")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="keep the run here (default: a temporary folder)")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(args.out or Path(tmp) / "camvid")
        t0 = time.perf_counter()
        result = pixelseg.train(args.data, out=run, time_budget=args.budget, seed=args.seed)
        seconds = time.perf_counter() - t0
        m = pixelseg.evaluate(run, args.data, split="val", progress=False)
        config = json.loads((run / "config.json").read_text())
    where = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"{torch.get_num_threads()} CPU threads"
    )
    print(
        f"\nCamVid val, trained {seconds / 60:.1f} min ({len(result.history)} epochs, "
        f"best {result.best_epoch}) on {where}"
    )
    print(f"settings: {config['model']} {config['model_kwargs']}, size {config['size']}, "
          f"batch {config['train']['batch_size']}, loss {config['train']['loss']}")  # fmt: skip
    print(f"{'':<22}{'pixelseg':>10}{'SegNet':>10}")
    for key, ref in SEGNET.items():
        print(f"{key:<22}{m[key]:>10.3f}{ref:>10.3f}")
    print("per-class IoU:")
    for name, row in m["per_class"].items():
        print(f"  {name:<20}{row['iou']:>8.3f}")
    if args.json:
        results = {"budget": args.budget, "seconds": seconds, "epochs": len(result.history),
                   "best_epoch": result.best_epoch, "config": config, "metrics": m,
                   "segnet": SEGNET}  # fmt: skip
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
