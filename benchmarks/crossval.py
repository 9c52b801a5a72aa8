"""K-fold cross-validation of training recipes on a binary data set (PH2, ISBI membranes).

Each fold holds out a fifth of the images (stratified by the data set's groups, e.g. PH2's
diagnosis); every recipe trains on the other images only, with no access to the held-out
ones, and is scored on them at their original resolution (mean Dice and IoU over images,
the threshold each recipe chose). Recipes:

- ``default``: ``pixelseg.train(fold, time_budget=BUDGET)`` and nothing else, i.e. what
  ``pixelseg train DATA --time-budget BUDGET`` does (it makes its own val/test split of the
  fold's training images, picks size, width, loss and schedule, calibrates the threshold);
- ``baseline``: the plain script a user would write in 30 lines (below): a width-16, depth-4
  U-Net, BCE + Dice, flips / rot90 / colour jitter, AdamW with a cosine decay over the same
  wall-clock BUDGET, 128x128 inputs, all the fold's training images, threshold 0.5;
- ``scratch``: the default with ``--encoder-weights none``: no pretrained weights, so the
  U-Net from scratch that was the default before pretrained encoders;
- ``lite-scratch``: ``lite-unet`` from random weights (what the ImageNet weights add);
- ``ensemble``: two runs of the default with half the budget each (other seeds, one split),
  scored as their ``pixelseg ensemble`` (``ensemble:members=3`` for three of a third);
- ``smp-unet``: the zoo's U-Net with a ResNet-34 encoder (``--encoder``) from random
  weights, under the same budget, size chosen by pixelseg as for ``default`` (needs the
  zoo extra; no pretrained weights, which cannot be downloaded here);
- ``lesson-unet``, ``lesson-segnet``: the lesson's models at the lesson notebook's settings
  (256x256, Adam lr 1e-3 and weight decay 1e-6, BCE, batch 32, ``--lesson-epochs`` 30, a
  tenth of the images held out, no augmentation), through pixelseg (so with its cosine
  learning-rate decay, calibrated threshold and post-processing).

    python benchmarks/crossval.py --data ../shared/data/ph2 --budget 15m
    python benchmarks/crossval.py --data ../shared/data/membrane --recipes default --budget 3m
    python benchmarks/crossval.py --data ../shared/data/people --recipes default,scratch

A pixelseg recipe takes settings after colons, to compare variants in one run:
``default:encoder_lr_scale=1.0`` (values are read as JSON, else kept as text);
``default:encoder=tf_efficientnet_lite2`` trains ``lite-unet`` on that encoder instead. With
``--budget none`` the pixelseg recipes train without a time budget (give ``epochs=N``), so
a fast machine can replay the number of steps a slow one fits in its budget.

``--final-too`` also scores each pixelseg run's last epoch (its ``last.pt`` weights) beside
the epoch the run kept (the best on its own validation images), at no extra training.

Wall time grows with folds x recipes: with ``--budget 15m`` the default and baseline
recipes take 15 minutes a fold each. ``--folds-to-run 0,1`` runs some folds only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import shutil
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import pixelseg
from pixelseg.config import parse_duration
from pixelseg.data.io import read_image, read_mask
from pixelseg.data.layouts import Sample, find_samples
from pixelseg.engine.checkpoint import load_state
from pixelseg.metrics import BinaryMetrics
from pixelseg.models.saved import build_model, save_weights
from pixelseg.runconfig import CONFIG_FILE, RunConfig

RECIPES = (
    "default",
    "scratch",
    "lite-scratch",
    "ensemble",
    "baseline",
    "lesson-unet",
    "lesson-segnet",
    "smp-unet",
)


def make_folds(samples: list[Sample], k: int, seed: int = 0) -> list[list[Sample]]:
    """Deal the samples into ``k`` folds, each group (e.g. diagnosis) spread evenly."""
    groups: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        groups[s.group or ""].append(s)
    rng = random.Random(seed)
    folds: list[list[Sample]] = [[] for _ in range(k)]
    i = 0
    for name in sorted(groups):
        members = sorted(groups[name], key=lambda s: s.stem)
        rng.shuffle(members)
        for s in members:
            folds[i % k].append(s)
            i += 1
    return folds


def link_subset(samples: list[Sample], fmt: str, root: Path) -> Path:
    """A data folder holding only ``samples`` (symbolic links), in a layout pixelseg reads.

    PH2 keeps its own layout (and its diagnosis table, which pixelseg stratifies by);
    anything else becomes ``images/`` + ``masks/``.
    """
    if fmt == "ph2":
        images_dir = root / "PH2Dataset" / "PH2 Dataset images"
        images_dir.mkdir(parents=True)
        table = samples[0].image.parents[3] / "PH2_dataset.csv"
        if table.is_file():
            (root / "PH2Dataset" / table.name).symlink_to(table.resolve())
        for s in samples:
            case = s.image.parents[1]
            (images_dir / case.name).symlink_to(case.resolve(), target_is_directory=True)
        return root
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for s in samples:
        (root / "images" / f"{s.stem}{s.image.suffix}").symlink_to(s.image.resolve())
        (root / "masks" / f"{s.stem}{s.mask.suffix}").symlink_to(s.mask.resolve())
    return root


# ---- the 30-line baseline ---------------------------------------------------------------------


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )  # fmt: skip


class PlainUNet(nn.Module):
    def __init__(self, cin: int = 3, width: int = 16, depth: int = 4):
        super().__init__()
        chans = [width * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList([_block(cin, chans[0])])
        self.down.extend(_block(a, b) for a, b in zip(chans, chans[1:], strict=False))
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(b, a, 2, 2) for a, b in zip(chans, chans[1:], strict=False)
        )
        self.dec = nn.ModuleList(_block(2 * a, a) for a in chans[:-1])
        self.head = nn.Conv2d(chans[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for up, dec, skip in zip(self.up[::-1], self.dec[::-1], skips[-2::-1], strict=True):
            x = dec(torch.cat([up(x), skip], 1))
        return self.head(x)


def _load(samples: list[Sample], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for s in samples:
        x = torch.from_numpy(read_image(s.image).copy()).permute(2, 0, 1)[None].float() / 255
        y = torch.from_numpy(read_mask(s.mask, 1)).float()[None, None]
        xs.append(F.interpolate(x, (size, size), mode="bilinear", antialias=True))
        ys.append(F.interpolate(y, (size, size), mode="nearest"))
    return torch.cat(xs), torch.cat(ys)


def train_baseline(samples: list[Sample], budget: float, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    random.seed(seed)
    x, y = _load(samples, 128)
    model = PlainUNet()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < budget:
        for g in opt.param_groups:  # cosine decay over the wall-clock budget
            g["lr"] = 1e-3 * 0.5 * (1 + math.cos(math.pi * elapsed / budget))
        idx = torch.randint(len(x), (8,))
        xb, yb = x[idx].clone(), y[idx].clone()
        if random.random() < 0.5:
            xb, yb = xb.flip(3), yb.flip(3)
        if random.random() < 0.5:
            xb, yb = xb.flip(2), yb.flip(2)
        k = random.randint(0, 3)
        xb, yb = xb.rot90(k, (2, 3)), yb.rot90(k, (2, 3))
        xb = (xb * (0.8 + 0.4 * torch.rand(8, 3, 1, 1)) + 0.1 * torch.randn(8, 1, 1, 1)).clamp(0, 1)
        logits = model(xb)
        p = torch.sigmoid(logits)
        dice = 1 - (2 * (p * yb).sum() + 1) / (p.sum() + yb.sum() + 1)
        loss = F.binary_cross_entropy_with_logits(logits, yb) + dice
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def score_baseline(model: nn.Module, samples: list[Sample]) -> dict:
    """Mean per-image Dice/IoU at each image's original size, by pixelseg's own metric code
    (as the other recipes are scored)."""
    metrics = BinaryMetrics()
    for s in samples:
        image = read_image(s.image)
        x = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float() / 255
        logits = model(F.interpolate(x, (128, 128), mode="bilinear", antialias=True))
        logits = F.interpolate(logits, image.shape[:2], mode="bilinear")
        metrics.update((logits[0, 0] > 0).numpy(), read_mask(s.mask, 1) > 0)
    m = metrics.compute()
    return {
        "dice": m["dice"], "iou": m["iou"], "threshold": 0.5,
        "settings": "128x128 width 16 batch 8",
    }  # fmt: skip


# ---- one recipe on one fold -------------------------------------------------------------------


def run_recipe(
    recipe: str, train_dir: Path, test_dir: Path, train_samples: list[Sample],
    test_samples: list[Sample], out: Path, args: argparse.Namespace,
) -> dict:  # fmt: skip
    recipe, overrides = parse_recipe(recipe)
    budget = None if args.budget == "none" else args.budget
    if recipe == "baseline":
        if budget is None:
            raise SystemExit("the baseline recipe needs a time budget (--budget 15m)")
        model = train_baseline(train_samples, parse_duration(budget), args.seed)
        return score_baseline(model, test_samples)
    if recipe == "ensemble":
        return run_ensemble(train_dir, test_dir, out, args, overrides)
    if recipe == "default":
        settings = {"time_budget": budget}
    elif recipe == "scratch":
        settings = {"time_budget": budget, "encoder_weights": "none"}
    elif recipe == "lite-scratch":
        settings = {"time_budget": budget, "model": "lite-unet", "encoder_weights": "none"}
    elif recipe == "smp-unet":
        settings = {
            "time_budget": budget, "model": "smp-unet",
            "model_kwargs": {"encoder": args.encoder}, "encoder_weights": "none",
        }  # fmt: skip
    else:  # the lesson notebook's settings: 256x256, Adam 1e-3 (weight decay 1e-6), BCE,
        # batch 32, 30 epochs, 10% held out, no augmentation
        settings = {
            "model": recipe, "size": 256, "epochs": args.lesson_epochs, "loss": "bce",
            "augment": False, "lr": 1e-3, "weight_decay": 1e-6, "warmup_epochs": 0,
            "batch_size": 32, "patience": 0, "val_fraction": 0.1, "test_fraction": 0.0,
        }  # fmt: skip
    settings.update(with_encoder(overrides))
    result = pixelseg.train(train_dir, out=out, seed=args.seed, progress=False, **settings)
    m = pixelseg.evaluate(out, test_dir, split="all", progress=False)
    config = json.loads((out / "config.json").read_text())
    h, w = config["size"]
    scores = {
        "dice": m["dice"], "iou": m["iou"], "threshold": m["threshold"],
        "postprocess": "+".join(m["postprocess"]) or "none", "epochs": len(result.history),
        "best_epoch": config["best"]["epoch"],
        "settings": f"{config['model']} {h}x{w} {config['model_kwargs'] or ''} "
        f"{config['train'].get('flips', 'both')} flips batch {config['train']['batch_size']}",
    }  # fmt: skip
    if args.final_too:
        final = final_epoch_run(out)
        f = pixelseg.evaluate(final, test_dir, split="all", progress=False)
        scores.update(final_dice=f["dice"], final_iou=f["iou"])
    return scores


def run_ensemble(
    train_dir: Path, test_dir: Path, out: Path, args: argparse.Namespace, overrides: dict
) -> dict:  # fmt: skip
    """K default runs of budget/K each (seeds seed..seed+K-1, the split of seed), scored
    as one ensemble; each member's own Dice is kept too."""
    if args.budget == "none":
        raise SystemExit("the ensemble recipe needs a time budget (--budget 15m)")
    k = int(overrides.pop("members", 2))
    overrides = with_encoder(overrides)
    budget = f"{parse_duration(args.budget) / k:.0f}s"
    members, dice = [], []
    for i in range(k):
        member = out.parent / f"{out.name}-member{i}"
        pixelseg.train(train_dir, out=member, seed=args.seed + i, split_seed=args.seed,
                       time_budget=budget, progress=False, **overrides)  # fmt: skip
        dice.append(pixelseg.evaluate(member, test_dir, split="all", progress=False)["dice"])
        members.append(member)
    pixelseg.ensemble(members, out)
    m = pixelseg.evaluate(out, test_dir, split="all", progress=False)
    config = json.loads((out / "config.json").read_text())
    h, w = config["size"]
    return {
        "dice": m["dice"], "iou": m["iou"], "threshold": m["threshold"],
        "postprocess": "+".join(m["postprocess"]) or "none", "member_dice": dice,
        "settings": f"ensemble of {k} at {h}x{w}, {budget} each (alone: "
        + ", ".join(f"{d:.4f}" for d in dice) + ")",
    }  # fmt: skip


def final_epoch_run(run: Path) -> Path:
    """A copy of ``run`` whose weights are the last epoch's (from ``last.pt``) instead of
    the best validation epoch's; the threshold and clean-up steps stay the best epoch's."""
    final = run.parent / f"{run.name}-final"
    final.mkdir()
    shutil.copy(run / CONFIG_FILE, final / CONFIG_FILE)
    model = build_model(RunConfig.read(run))
    model.load_state_dict(load_state(run)["model"])
    save_weights(final, model)
    return final


def with_encoder(overrides: dict) -> dict:
    """A recipe's settings, with ``encoder=NAME`` made ``lite-unet`` on that encoder (model
    options need a model)."""
    if "encoder" not in overrides:
        return overrides
    rest = {k: v for k, v in overrides.items() if k != "encoder"}
    return {**rest, "model": "lite-unet", "model_kwargs": {"encoder": overrides["encoder"]}}


def parse_recipe(text: str) -> tuple[str, dict]:
    """``default:encoder_lr_scale=1.0:epochs=60`` -> ("default", {...})."""
    name, *pairs = text.split(":")
    overrides = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return name, overrides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--folds-to-run", help="comma-separated fold numbers (default: all)")
    parser.add_argument("--budget", default="15m", help="wall-clock budget of default/baseline")
    parser.add_argument("--lesson-epochs", type=int, default=30)
    parser.add_argument("--encoder", default="resnet34", help="encoder of the smp-unet recipe")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--final-too", action="store_true",
        help="pixelseg recipes: also score the last epoch's weights (not the best on val)",
    )  # fmt: skip
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument(
        "--keep", metavar="DIR",
        help="keep each fold's data links and runs in DIR/fold<i>/ (default: a temporary folder)",
    )  # fmt: skip
    args = parser.parse_args()
    recipes = args.recipes.split(",")
    unknown = sorted({parse_recipe(r)[0] for r in recipes} - set(RECIPES))
    if unknown:
        parser.error(f"unknown recipes {unknown}; choose from {', '.join(RECIPES)}")
    fmt, samples = find_samples(args.data)
    folds = make_folds(samples, args.folds, args.seed)
    to_run = (
        [int(i) for i in args.folds_to_run.split(",")] if args.folds_to_run else range(args.folds)
    )
    results: dict = {
        "data": args.data, "folds": args.folds, "budget": args.budget,
        "threads": torch.get_num_threads(), "torch": torch.__version__, "runs": [],
    }  # fmt: skip
    print(f"{'fold':>4} {'recipe':<24}{'dice':>8}{'iou':>8}{'thresh':>8}{'seconds':>9}")
    folder = contextlib.nullcontext(args.keep) if args.keep else tempfile.TemporaryDirectory()
    with folder as tmp:
        for i in to_run:
            test = folds[i]
            train = [s for j, f in enumerate(folds) if j != i for s in f]
            train_dir = link_subset(train, fmt, Path(tmp) / f"fold{i}" / "train")
            test_dir = link_subset(test, fmt, Path(tmp) / f"fold{i}" / "test")
            for number, recipe in enumerate(recipes):
                t0 = time.perf_counter()
                out = Path(tmp) / f"fold{i}" / f"run-{number}"
                r = run_recipe(recipe, train_dir, test_dir, train, test, out, args)
                r.update(fold=i, recipe=recipe, seconds=time.perf_counter() - t0,
                         n_train=len(train), n_test=len(test))  # fmt: skip
                results["runs"].append(r)
                final = f", final epoch {r['final_dice']:.4f}" if "final_dice" in r else ""
                print(f"{i:>4} {recipe:<24}{r['dice']:>8.4f}{r['iou']:>8.4f}"
                      f"{r['threshold']:>8.2f}{r['seconds']:>9.0f}  {r.get('settings', '')} "
                      f"{r.get('epochs', '')} epochs (best {r.get('best_epoch', '-')}){final}, "
                      f"post-processing {r.get('postprocess', 'none')}", flush=True)  # fmt: skip
    print("\nmean over folds:")
    for recipe in recipes:
        runs = [r for r in results["runs"] if r["recipe"] == recipe]
        dice = [r["dice"] for r in runs]
        results[recipe] = {
            "dice": statistics.mean(dice),
            "dice_sd": statistics.stdev(dice) if len(dice) > 1 else 0.0,
            "iou": statistics.mean(r["iou"] for r in runs),
            "seconds": sum(r["seconds"] for r in runs),
        }
        finals = [r["final_dice"] for r in runs if "final_dice" in r]
        if finals:
            results[recipe]["final_dice"] = statistics.mean(finals)
        s = results[recipe]
        final = f", final epoch {s['final_dice']:.4f}" if finals else ""
        print(f"  {recipe:<24} Dice {s['dice']:.4f} (sd {s['dice_sd']:.4f}) IoU {s['iou']:.4f}"
              f"{final}  {s['seconds'] / 60:.1f} min for {len(runs)} folds")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
