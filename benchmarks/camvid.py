"""CamVid: train on its 120 training images, score on its 30 validation images.

Runs what a user would type, ``pixelseg train ../shared/data/camvid --time-budget BUDGET``
(self-configured: size, width, batch, loss and class weights from the data; void = 11
ignored), then ``pixelseg evaluate RUN ../shared/data/camvid --split val``, and prints
mIoU, global accuracy, class-average accuracy and the IoU of every class beside SegNet's
published CamVid figures. The validation images also pick the best epoch, so their score
is slightly optimistic; CamVid's own test set is not part of ``../shared/data``.

    python benchmarks/camvid.py --data ../shared/data/camvid --budget 10m
    python benchmarks/camvid.py --data ../shared/data/camvid --budget 10m --by-sequence
    python benchmarks/camvid.py --budget 10m --by-sequence --tta   # also scored with --tta
    python benchmarks/camvid.py --budget 10m --by-sequence --tta --tta-scales 1,1.25,1.5
    python benchmarks/camvid.py --budget 10m --by-sequence --ensemble 2   # 2 runs of 5m each

``--ensemble K`` splits the budget into K runs (seeds SEED..SEED+K-1, one split), scores
each, then ``pixelseg ensemble`` of them: the printed table is the ensemble's.

CamVid's 30 validation images come from sequence 0016E5, which training also shows, while
171 of its 233 test scenes come from Seq05VD, which training never shows: a score on frames
of a known sequence flatters. ``--by-sequence`` re-splits the 150 shared images by the
sequence in their file names: training on 0016E5 (95 images), validation (the best epoch)
on 0001TP (22), and the score on 0006R0 (33), a sequence neither saw.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

import pixelseg
from pixelseg.config import parse_duration
from pixelseg.engine.train import TrainResult
from pixelseg.errors import SettingsError
from pixelseg.inference.options import check_scales

# Badrinarayanan et al., TPAMI 2017, CamVid test set, all 367 training images, VGG16 encoder
SEGNET = {"miou": 0.601, "global_accuracy": 0.904, "class_accuracy": 0.712}


SEQUENCES = {"train": "0016E5", "val": "0001TP", "test": "0006R0"}


def by_sequence(root: Path, out: Path) -> Path:
    """The shared train/ + val/ images re-split by sequence (symbolic links, SegNet layout)."""
    for split, sequence in SEQUENCES.items():
        for sub, annot in ((split, False), (f"{split}annot", True)):
            (out / sub).mkdir(parents=True)
            for source in ("train", "val"):
                folder = root / (f"{source}annot" if annot else source)
                for path in sorted(folder.glob(f"{sequence}_*.png")):
                    (out / sub / path.name).symlink_to(path.resolve())
    return out


def train_ensemble(
    data: str | Path, run: Path, args: argparse.Namespace, settings: dict, split: str
) -> tuple[Path, TrainResult, list[dict]]:  # fmt: skip
    """K runs of budget/K (seeds seed..seed+K-1, the split of seed), then their ensemble;
    returns the ensemble's folder, the first run's result and each run's scores."""
    budget = parse_duration(args.budget) / args.ensemble
    runs, results, scores = [], [], []
    for k in range(args.ensemble):
        member = run.parent / f"{run.name}-member{k}"
        seeds = {"seed": args.seed + k, "split_seed": args.seed}
        results.append(
            pixelseg.train(data, out=member, time_budget=f"{budget:.0f}s", **seeds, **settings)
        )
        scores.append(pixelseg.evaluate(member, data, split=split, progress=False))
        runs.append(member)
    return pixelseg.ensemble(runs, run), results[0], scores


def _setting(item: str) -> tuple[str, object]:
    """``key=value`` → (key, value read as JSON, else as text): ``epochs=5``, ``crop=192x256``."""
    key, _, value = item.partition("=")
    if key in ("seed", "time_budget", "out"):
        raise SystemExit(f"--set {key}: use the benchmark's own option")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/camvid")
    parser.add_argument("--budget", default="10m")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="keep the run here (default: a temporary folder)")
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument("--by-sequence", action="store_true",
                        help="train, validate and score on three different sequences")  # fmt: skip
    parser.add_argument("--scratch", action="store_true",
                        help="no pretrained weights (--encoder-weights none)")  # fmt: skip
    parser.add_argument("--tta", action="store_true",
                        help="also score with test-time augmentation (evaluate --tta)")  # fmt: skip
    parser.add_argument("--tta-scales", metavar="S,S,...",
                        help="also score at these scales, e.g. 1,1.25,1.5")  # fmt: skip
    parser.add_argument("--ensemble", type=int, default=1, metavar="K",
                        help="K runs of BUDGET/K each, scored as one ensemble")  # fmt: skip
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a training setting, e.g. crop=192x256 (repeatable)")  # fmt: skip
    args = parser.parse_args()
    scales = None
    if args.tta_scales:  # checked before the budget is spent, not after
        try:
            scales = check_scales([float(s) for s in args.tta_scales.split(",")])
        except (ValueError, SettingsError) as exc:
            parser.error(f"--tta-scales {args.tta_scales}: {exc}")
    settings = dict(_setting(item) for item in args.set)
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(args.out or Path(tmp) / "camvid")
        data, split = args.data, "val"
        if args.by_sequence:
            data, split = by_sequence(Path(args.data), Path(tmp) / "data"), "test"
        t0 = time.perf_counter()
        if args.scratch:
            settings["encoder_weights"] = "none"
        if args.ensemble > 1:
            run, result, members = train_ensemble(data, run, args, settings, split)
        else:
            result = pixelseg.train(data, out=run, time_budget=args.budget, seed=args.seed,
                                    **settings)  # fmt: skip
        seconds = time.perf_counter() - t0
        m = pixelseg.evaluate(run, data, split=split, progress=False)
        # (written to a folder of its own: the run's metrics.json stays the plain score)
        tta = pixelseg.evaluate(run, data, split=split, tta=True, out=Path(tmp) / "tta",
                                progress=False) if args.tta else None  # fmt: skip
        tta_ms = pixelseg.evaluate(run, data, split=split, tta=args.tta, tta_scales=scales,
                                   out=Path(tmp) / "tta-scales", progress=False
                                   ) if scales else None  # fmt: skip
        config = json.loads((run / "config.json").read_text())
    where = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"{torch.get_num_threads()} CPU threads"
    )
    scored = "test sequence 0006R0" if args.by_sequence else "val"
    print(
        f"\nCamVid {scored}, trained {seconds / 60:.1f} min ({len(result.history)} epochs, "
        f"best {result.best_epoch}) on {where}"
    )
    crop = config["train"].get("crop")
    print(f"settings: {config['model']} {config['model_kwargs']}, size {config['size']}"
          f"{f', trained on {crop[0]}x{crop[1]} patches' if crop else ''}, "
          f"batch {config['train']['batch_size']}, loss {config['train']['loss']}")  # fmt: skip
    print(f"{'':<22}{'pixelseg':>10}{'SegNet':>10}")
    for key, ref in SEGNET.items():
        print(f"{key:<22}{m[key]:>10.3f}{ref:>10.3f}")
    if tta:
        print(f"{'miou with --tta':<22}{tta['miou']:>10.3f}")
    if tta_ms:
        print(f"{'miou with --tta-scales':<22}{tta_ms['miou']:>10.3f}  ({tta_ms['tta']})")
    if args.ensemble > 1:
        print(f"the ensemble of {args.ensemble} runs; each alone: mIoU "
              + ", ".join(f"{x['miou']:.3f}" for x in members))  # fmt: skip
    print("per-class IoU:")
    for name, row in m["per_class"].items():
        print(f"  {name:<20}{row['iou']:>8.3f}")
    if args.json:
        results = {"budget": args.budget, "seconds": seconds, "epochs": len(result.history),
                   "best_epoch": result.best_epoch, "config": config, "metrics": m,
                   "metrics_tta": tta, "metrics_tta_scales": tta_ms,
                   "segnet": SEGNET}  # fmt: skip
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
