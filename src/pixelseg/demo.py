"""``pixelseg demo``: the whole job on built-in synthetic dermoscopy images, offline.

Generates a small data set, trains the U-Net, evaluates it on the held-out test
split at the original resolution, and writes pictures to look at. Settings are chosen to
finish in a few minutes on a 2-core laptop CPU.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from pixelseg.config import TrainConfig
from pixelseg.data.io import read_image, read_mask
from pixelseg.data.layouts import find_samples
from pixelseg.data.split import load_split, select
from pixelseg.data.synthetic import write_synthetic_dataset
from pixelseg.engine.evaluate import evaluate_run
from pixelseg.engine.train import fit
from pixelseg.errors import PixelsegError, SettingsError
from pixelseg.inference import load
from pixelseg.metrics import BinaryMetrics
from pixelseg.report import plot_grid

# Small enough for a CPU, big enough to reach test Dice >= 0.9 on the synthetic lesions.
DEMO_IMAGES = 240
DEMO_IMAGE_SIZE = (192, 256)  # generated images, (height, width)
DEMO_TRAIN = {
    "model": "unet",
    "model_kwargs": {"base_channels": 16},
    "size": (96, 128),
    "epochs": 20,
    "batch_size": 8,
    "lr": 3e-3,
    "patience": 0,
}


def run_demo(
    out: str | Path = "pixelseg-demo",
    epochs: int | None = None,
    n_images: int | None = None,
    device: str = "auto",
    progress: bool = True,
) -> dict:
    """Run the demo into ``out`` (``out/data``, ``out/run``); return the test metrics."""
    start = time.perf_counter()
    out = Path(out)
    _claim(out)
    data_dir, run_dir = out / "data", out / "run"
    n = DEMO_IMAGES if n_images is None else n_images
    if n < 4 or (epochs is not None and epochs < 1):
        raise SettingsError("the demo needs at least 4 images and 1 epoch")
    if not (data_dir / "images").is_dir() or len(list((data_dir / "images").iterdir())) != n:
        shutil.rmtree(data_dir, ignore_errors=True)
        print(f"generating {n} synthetic dermoscopy images in {data_dir} ...")
        write_synthetic_dataset(data_dir, n=n, size=DEMO_IMAGE_SIZE, seed=0)
    shutil.rmtree(run_dir, ignore_errors=True)  # the demo's own previous run
    settings = {**DEMO_TRAIN, "epochs": DEMO_TRAIN["epochs"] if epochs is None else epochs}
    cfg = TrainConfig(
        data=str(data_dir), out=str(run_dir), device=device, progress=progress, **settings
    )
    result = fit(cfg)
    metrics = evaluate_run(run_dir, data_dir, "test", device=device, progress=progress)
    overlays = write_overlays(run_dir, data_dir, device)
    elapsed = time.perf_counter() - start
    print()
    print("pixelseg demo: synthetic dermoscopy lesions, U-Net")
    print(f"  best val dice   {result.best_score:.4f} (epoch {result.best_epoch})")
    for key in ("dice", "iou", "dice_micro", "pixel_accuracy", "precision", "recall"):
        print(f"  test {key:<15}{metrics[key]:.4f}")
    print(f"  test images     {metrics['n_images']}")
    print(f"  time            {elapsed:.0f} s")
    print(
        f"  run folder      {run_dir}  (config.json, model.safetensors, curves.png, metrics.json)"
    )
    print(f"  pictures        {overlays}, {run_dir / 'worst.png'}, {run_dir / 'curves.png'}")
    print(f"  next: pixelseg predict {run_dir} <image or folder> --out predictions")
    return metrics


MARKER = ".pixelseg-demo"


def _claim(out: Path) -> None:
    """Make ``out`` the demo's folder; refuse a non-empty folder the demo did not create.

    The demo replaces its own ``data/`` and ``run/`` on every run, so it must never do that
    in a folder that holds someone's work.
    """
    if out.exists() and not (out / MARKER).exists() and any(out.iterdir()):
        raise PixelsegError(
            f"{out} is not empty and was not made by `pixelseg demo`; choose another --out"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by pixelseg demo; its data/ and run/ are replaced on rerun\n")


def write_overlays(run_dir: Path, data_dir: Path, device: str = "auto", n: int = 6) -> Path:
    """``overlays.png``: image | truth | prediction for the first ``n`` test images."""
    predictor = load(run_dir, device=device)
    test = load_split(run_dir / "split.json")["test"]
    samples = select(find_samples(data_dir)[1], test)[:n]
    rows, titles = [], []
    for sample in samples:
        image, truth = read_image(sample.image), read_mask(sample.mask)
        pred = predictor.predict(image)
        dice = BinaryMetrics().update(pred, truth)["dice"]
        rows.append((image, truth, pred))
        titles.append(f"{sample.stem}  dice {dice:.3f}")
    return plot_grid(rows, run_dir / "overlays.png", titles)
