"""Data larger than memory: training's memory against the number of images, and prediction
over a large folder that is killed half-way and resumed.

    python benchmarks/large_data.py make /tmp/big --n 20000           # the data, once
    python benchmarks/large_data.py train /tmp/big --counts 2000 20000 [--steps 200]
    python benchmarks/large_data.py predict /tmp/big --n 20000

``make`` writes ``n`` synthetic 512x512 pairs (pixelseg.data.synthetic's shapes): ``--distinct``
different ones (default 1000), then hard links to them under further names up to ``n``, so
the folder holds ``n`` files to list, decode and cache at a fraction of the time and disk.

``train`` runs, in a fresh process per count, pixelseg's training pipeline on the first
``count`` pairs: the data set cached on disk (``cache="disk"``: decoded once, reused later)
or in memory, pixelseg's loader order (EpochSampler) and batch transform (augmentation and
normalisation), and the default U-Net's training step in the precision ``auto`` picks,
for ``--steps`` steps. Each process reports its peak RSS, the time the cache took to build
(first run) and to open again (second), and the share of the step time spent waiting for
data. ``predict`` trains a small run on 200 pairs, then predicts the whole folder twice:
once straight through (images per second), once killed with SIGKILL half-way and resumed
with ``--resume``; the two output folders must be identical, file for file.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

CHILD = r"""
import json, resource, sys, time
import torch
from pixelseg.data.dataset import SegmentationDataset
from pixelseg.data.layouts import find_samples
from pixelseg.data.transforms import Augment, BatchTransform
from pixelseg.engine.precision import choose_precision
from pixelseg.engine.sampling import EpochSampler
from pixelseg.losses import build_loss
from pixelseg.models import create_model, prefers_channels_last

data, cache = sys.argv[1], sys.argv[3]
count, steps, size = int(sys.argv[2]), int(sys.argv[4]), int(sys.argv[5])
samples = find_samples(data)[1][:count]
torch.manual_seed(0)
start = time.perf_counter()
dataset = SegmentationDataset(samples, (size, size), cache=cache)
built = time.perf_counter() - start
start = time.perf_counter()
dataset = SegmentationDataset(samples, (size, size), cache=cache)
reopened = time.perf_counter() - start
model = create_model("unet", num_classes=1)
precision = choose_precision("auto", "auto", torch.device("cpu"), prefers_channels_last("unet"))
model = precision.prepare_model(model)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
loss_fn = build_loss("bce+dice", 1)
transform = BatchTransform([0.5] * 3, [0.25] * 3, Augment())
sampler = EpochSampler(len(dataset), seed=0)
loader = torch.utils.data.DataLoader(dataset, batch_size=8, sampler=sampler, drop_last=True)
waited = stepped = 0.0
batches = iter(loader)
for step in range(steps + 3):  # the first 3 steps warm up and are not counted
    t0 = time.perf_counter()
    try:
        batch = next(batches)
    except StopIteration:  # (the smallest set may hold fewer batches than the steps)
        sampler.set_epoch(step)
        batches = iter(loader)
        batch = next(batches)
    t1 = time.perf_counter()
    images, masks = transform(batch, torch.device("cpu"))
    with precision.autocast():
        loss = loss_fn(model(precision.prepare_batch(images)).float(), masks)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    t2 = time.perf_counter()
    if step >= 3:
        waited += t1 - t0
        stepped += t2 - t0
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"count": count, "cache": cache, "rss_mib": round(rss, 1),
                  "build_s": round(built, 1), "reopen_s": round(reopened, 2),
                  "data_wait": round(waited / stepped, 4),
                  "step_ms": round(1000 * stepped / steps, 1),
                  "precision": precision.describe()}))
"""


def make(root: Path, n: int, distinct: int, size: int) -> None:
    from pixelseg.data.synthetic import write_synthetic_dataset

    start = time.perf_counter()
    images, masks = root / "images", root / "masks"
    if not (root / "distinct.txt").is_file():
        write_synthetic_dataset(root, n=min(n, distinct), size=(size, size), seed=1)
        (root / "distinct.txt").write_text("\n".join(sorted(p.name for p in images.iterdir())))
    originals = (root / "distinct.txt").read_text().split()
    digits = len(str(n - 1))
    for i in range(len(originals), n):
        name = f"synth_{i:0{max(4, digits)}d}.png"
        source = originals[i % len(originals)]
        for folder in (images, masks):
            if not (folder / name).exists():
                os.link(folder / source, folder / name)
    print(f"{n} pairs ({len(originals)} distinct) at {size}x{size} in {root}: "
          f"{time.perf_counter() - start:.0f} s")  # fmt: skip


def train(root: Path, counts: list[int], steps: int, size: int, caches: list[str]) -> list:
    rows = []
    with tempfile.TemporaryDirectory() as cache_dir:
        env = {**os.environ, "PIXELSEG_CACHE": cache_dir}
        for cache in caches:
            for count in counts:
                done = subprocess.run(
                    [sys.executable, "-c", CHILD, str(root), str(count), cache, str(steps),
                     str(size)], capture_output=True, text=True, env=env,
                )  # fmt: skip
                if done.returncode != 0:
                    sys.exit(done.stderr[-3000:])
                rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
                print(json.dumps(rows[-1]), flush=True)
    disk = [r for r in rows if r["cache"] == "disk"]
    if len(disk) >= 2:
        print(f"disk cache: peak RSS {disk[-1]['count']} / {disk[0]['count']} images: "
              f"{disk[-1]['rss_mib'] / disk[0]['rss_mib']:.3f}")  # fmt: skip
    return rows


def predict(root: Path, n: int, work: Path) -> dict:
    from pixelseg.cli import main as pixelseg

    run = work / "run"
    if not (run / "model.safetensors").is_file():
        subset = work / "subset"
        for folder in ("images", "masks"):
            (subset / folder).mkdir(parents=True, exist_ok=True)
            for p in sorted((root / folder).iterdir())[:200]:
                if not (subset / folder / p.name).exists():
                    os.link(p, subset / folder / p.name)
        code = pixelseg(["train", str(subset), "--out", str(run), "--model", "unet", "--epochs",
                         "2", "--model-arg", "base_channels=8", "--size", "128"])  # fmt: skip
        assert code == 0
    command = [sys.executable, "-m", "pixelseg", "predict", str(run), str(root / "images"),
               "--device", "cpu"]  # fmt: skip
    whole = work / "whole"
    start = time.perf_counter()
    subprocess.run([*command, "--out", str(whole)], check=True, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    print(f"uninterrupted: {n} images in {seconds:.0f} s, {n / seconds:.1f} images/s", flush=True)
    # the same, killed once half the masks are written, then resumed
    resumed = work / "resumed"
    resumed.mkdir(exist_ok=True)
    process = subprocess.Popen([*command, "--out", str(resumed)], stderr=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL)  # fmt: skip
    while sum(1 for _ in resumed.glob("*_mask.png")) < n // 2 and process.poll() is None:
        time.sleep(0.5)
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = sum(1 for _ in resumed.glob("*_mask.png"))
    start = time.perf_counter()
    subprocess.run([*command, "--out", str(resumed), "--resume"], check=True,
                   stderr=subprocess.DEVNULL)  # fmt: skip
    rest = time.perf_counter() - start
    names = sorted(p.name for p in whole.iterdir())
    same = names == sorted(p.name for p in resumed.iterdir() if not p.name.startswith("."))
    differ = [m for m in names if (whole / m).read_bytes() != (resumed / m).read_bytes()]
    result = {"images": n, "seconds": round(seconds, 1), "images_per_s": round(n / seconds, 1),
              "killed_after_masks": before, "resume_seconds": round(rest, 1),
              "same_names": same, "files": len(names), "files_differing": len(differ)}  # fmt: skip
    print(json.dumps(result))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("make")
    p.add_argument("root", type=Path)
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--distinct", type=int, default=1000)
    p.add_argument("--size", type=int, default=512)
    p = sub.add_parser("train")
    p.add_argument("root", type=Path)
    p.add_argument("--counts", type=int, nargs="+", default=[2000, 20000])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--size", type=int, default=256, help="training size (square)")
    p.add_argument("--caches", nargs="+", default=["disk", "memory"])
    p = sub.add_parser("predict")
    p.add_argument("root", type=Path)
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "large_predict")
    args = parser.parse_args()
    if args.command == "make":
        make(args.root, args.n, args.distinct, args.size)
    elif args.command == "train":
        train(args.root, args.counts, args.steps, args.size, args.caches)
    else:
        args.work.mkdir(parents=True, exist_ok=True)
        predict(args.root, args.n, args.work)


if __name__ == "__main__":
    np.seterr(all="ignore")
    Image.MAX_IMAGE_PIXELS = None
    main()
