"""Training and inference throughput: pixelseg's loop against a bare PyTorch loop.

For each model, both loops train the same architecture with AdamW (pixelseg's fused
kernel; the bare loop's ``torch.optim.AdamW(params)`` as a user writes it), the same loss
(bce+dice), batch size and image size; the bare loop feeds pre-stacked tensors with no
augmentation, so ``overhead`` (bare img/s ÷ pixelseg img/s) is what pixelseg's data
pipeline (cached dataset, augmentation, DataLoader) and bookkeeping cost, less what its
optimizer saves. Each figure is
the median of ``--repeats`` timed runs after one warm-up.

    python benchmarks/train_speed.py --size 256 --batch-size 8 --steps 10
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from pixelseg.data.dataset import SegmentationDataset
from pixelseg.data.layouts import find_samples
from pixelseg.data.synthetic import write_synthetic_dataset
from pixelseg.data.transforms import Augment, BatchTransform, normalize
from pixelseg.engine.device import resolve_device
from pixelseg.engine.optimizer import adamw
from pixelseg.engine.train import train_one_epoch
from pixelseg.losses import build_loss
from pixelseg.models import count_parameters, create_model


def synthetic_dataset(n: int, size: int) -> SegmentationDataset:
    """``n`` built-in synthetic pairs at ``size`` x ``size``, decoded and cached in memory."""
    with tempfile.TemporaryDirectory() as tmp:
        root = write_synthetic_dataset(Path(tmp) / "data", n=n, size=(size, size))
        return SegmentationDataset(find_samples(root)[1], (size, size))


def timing_arguments(parser: argparse.ArgumentParser, steps: int) -> None:
    """The options speed.py and precision.py share (``--quick``: see :func:`apply_quick`)."""
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="128x128, 4 steps, 5 repeats")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", help="also write the figures here")


def apply_quick(args: argparse.Namespace) -> argparse.Namespace:
    if args.quick:
        args.size, args.steps, args.repeats = 128, 4, 5
    return args


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def pixelseg_loop(
    model, dataset, transform, batch_size, steps, device, workers, precision=None, scaler=None
) -> float:
    """img/s of ``train_one_epoch`` over ``steps`` batches of the cached, augmented dataset
    (``precision``: an autocast dtype and memory layout, float32 NCHW by default)."""
    loss_fn = build_loss("bce+dice", 1)
    optimizer = adamw(model.parameters(), lr=1e-3)  # as pixelseg train makes it
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    subset = torch.utils.data.Subset(dataset, range(min(len(dataset), steps * batch_size)))
    loader = DataLoader(
        subset,
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )
    sync(device)
    t0 = time.perf_counter()
    train_one_epoch(
        model, loader, transform, loss_fn, optimizer, scheduler, device,
        precision=precision, scaler=scaler,
    )  # fmt: skip
    sync(device)
    return len(loader) * batch_size / (time.perf_counter() - t0)


def bare_loop(model, images, masks, batch_size, steps, device, precision=None) -> float:
    """img/s of the textbook loop on tensors already in memory (on the device), with the
    same autocast and memory layout as ``precision`` (none by default) and the optimizer
    as a user writes it, ``torch.optim.AdamW(model.parameters())`` (pixelseg's is fused)."""
    loss_fn = build_loss("bce+dice", 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images, masks = images.to(device), masks.to(device)
    if precision is not None:
        images = precision.prepare_batch(images)
    autocast = precision.autocast if precision is not None else contextlib.nullcontext
    model.train()
    sync(device)
    t0 = time.perf_counter()
    for step in range(steps):
        i = (step * batch_size) % (len(images) - batch_size + 1)
        with autocast():
            loss = loss_fn(model(images[i : i + batch_size]), masks[i : i + batch_size])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    sync(device)
    return steps * batch_size / (time.perf_counter() - t0)


@torch.no_grad()
def inference(model, images, batch_size, device) -> float:
    model.eval()
    x = images[:batch_size].to(device)
    model(x)
    sync(device)
    t0 = time.perf_counter()
    reps = 5
    for _ in range(reps):
        model(x)
    sync(device)
    return reps * batch_size / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="lesson-segnet,lesson-unet,unet")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8, help="training steps per timed run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.manual_seed(0)
    dataset = synthetic_dataset(args.steps * args.batch_size, args.size)
    mean, std = dataset.channel_stats()
    transform = BatchTransform(mean, std, Augment())
    images = normalize(dataset.images.float() / 255, mean, std)
    masks = dataset.masks.long()

    results = {
        "device": str(device),
        "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "size": args.size,
        "batch_size": args.batch_size,
        "models": {},
    }
    where = results["gpu"] or f"{results['threads']} threads"
    print(
        f"device {device} ({where}), "
        f"{args.size}x{args.size}, batch {args.batch_size}, median of {args.repeats}"
    )
    print(
        f"{'model':<15}{'params':>11}{'pixelseg img/s':>16}{'bare img/s':>12}"
        f"{'overhead':>10}{'infer img/s':>13}"
    )
    for name in args.models.split(","):
        model = create_model(name).to(device)
        runs = {"pixelseg": [], "bare": [], "infer": []}
        pixelseg_loop(
            model, dataset, transform, args.batch_size, 2, device, args.workers
        )  # warm-up
        bare_loop(model, images, masks, args.batch_size, 2, device)
        for _ in range(args.repeats):
            runs["pixelseg"].append(
                pixelseg_loop(
                    model, dataset, transform, args.batch_size, args.steps, device, args.workers
                )
            )
            runs["bare"].append(
                bare_loop(model, images, masks, args.batch_size, args.steps, device)
            )
            runs["infer"].append(inference(model, images, args.batch_size, device))
        med = {k: statistics.median(v) for k, v in runs.items()}
        overhead = med["bare"] / med["pixelseg"]
        results["models"][name] = {
            "params": count_parameters(model),
            **med,
            "overhead": overhead,
            "runs": runs,
        }
        print(
            f"{name:<15}{count_parameters(model):>11,}{med['pixelseg']:>16.1f}"
            f"{med['bare']:>12.1f}{overhead:>10.2f}{med['infer']:>13.1f}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
