"""Mixed precision and channels_last in training: what each buys on this machine.

For each model, pixelseg's own training loop (``train_one_epoch``: cached data,
augmentation, AdamW, bce+dice) runs with each precision (float32, bf16 autocast, and fp16
with a gradient scaler on CUDA) in each memory layout (NCHW, channels_last). The runs of
one model are interleaved, ``--repeats`` rounds after a warm-up, and each figure is the
median; ``ratio`` is img/s over float32 NCHW's in the same run. This is the measurement
behind ``--precision auto`` and ``--channels-last auto`` (pixelseg.engine.precision).

    python benchmarks/precision.py                       # unet, lesson-unet (+ smp-unet)
    python benchmarks/precision.py --quick               # 128x128, fewer steps
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
from train_speed import apply_quick, pixelseg_loop, synthetic_dataset, timing_arguments

from pixelseg.data.transforms import Augment, BatchTransform
from pixelseg.engine.device import resolve_device
from pixelseg.engine.precision import Precision
from pixelseg.models import ModelError, create_model


def variants(device: torch.device) -> list[Precision]:
    names = ["fp32", "bf16"] + (["fp16"] if device.type == "cuda" else [])
    return [Precision(n, layout, device.type) for n in names for layout in (False, True)]


def measure(name: str, args, dataset, device) -> list[dict]:
    transform = BatchTransform(*dataset.channel_stats(), Augment())
    times: dict[Precision, list[float]] = {v: [] for v in variants(device)}
    models = {}
    for v in times:
        torch.manual_seed(0)
        models[v] = v.prepare_model(create_model(name).to(device))
    for round_ in range(args.repeats + 1):  # round 0 warms up every variant
        for v, model in models.items():
            speed = pixelseg_loop(model, dataset, transform, args.batch_size, args.steps,
                                  device, 0, precision=v, scaler=v.scaler())  # fmt: skip
            if round_:
                times[v].append(speed)
    base = statistics.median(times[variants(device)[0]])
    return [
        {
            "model": name,
            "precision": v.name,
            "channels_last": v.channels_last,
            "img_s": statistics.median(t),
            "ratio": statistics.median(t) / base,
        }  # fmt: skip
        for v, t in times.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="unet,lesson-unet,smp-unet")
    timing_arguments(parser, steps=6)
    args = apply_quick(parser.parse_args())
    device = resolve_device(args.device)
    dataset = synthetic_dataset(args.steps * args.batch_size, args.size)
    rows = []
    print(f"{device}, {torch.get_num_threads()} threads, {args.size}x{args.size}, batch "
          f"{args.batch_size}, {args.steps} steps, median of {args.repeats}")  # fmt: skip
    print(f"{'model':<14}{'precision':<10}{'layout':<15}{'img/s':>8}{'ratio':>8}")
    for name in args.models.split(","):
        try:
            create_model(name)
        except ModelError as error:  # e.g. smp-unet without the zoo extra
            print(f"{name:<14}skipped: {error}")
            continue
        for row in measure(name, args, dataset, device):
            rows.append(row)
            layout = "channels_last" if row["channels_last"] else "NCHW"
            print(f"{name:<14}{row['precision']:<10}{layout:<15}{row['img_s']:>8.2f}"
                  f"{row['ratio']:>8.2f}", flush=True)  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps({"device": str(device), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
