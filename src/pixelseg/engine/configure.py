"""Settings derived from the data set (nnU-Net style), each one printed with its reason.

What the user gives always wins; these fill in what was left to pixelseg.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from pixelseg.config import TrainConfig
from pixelseg.data.classes import median_frequency_weights, resolve_classes
from pixelseg.data.dataset import SegmentationDataset
from pixelseg.data.layouts import detect_format
from pixelseg.models import create_model


def resolve_class_settings(cfg: TrainConfig, log: Callable[[str], None]) -> TrainConfig:
    """Fill in the number of classes, their names and the ignore index from the data."""
    fmt = cfg.format if cfg.format != "auto" else detect_format(Path(cfg.data))
    c = resolve_classes(fmt, cfg.data, cfg.num_classes, cfg.class_names, cfg.ignore_index)
    log(
        f"classes: {c.why}"
        + (f"; ignore index {c.ignore_index}" if c.ignore_index is not None else "")
    )
    return replace(
        cfg, num_classes=c.num_classes, class_names=c.names, ignore_index=c.ignore_index,
        class_colors=cfg.class_colors or c.colors,
    )  # fmt: skip


def choose_class_weights(
    cfg: TrainConfig, train_set: SegmentationDataset, log: Callable[[str], None]
) -> list[float] | None:
    """Loss weights per class from the training masks, as ``cfg.class_weights`` asks.

    ``auto`` uses median-frequency balancing when the rarest class is over 10x rarer than
    the most common one (then an unweighted loss mostly learns the common classes).
    """
    if cfg.class_weights == "none":
        return None
    n = max(cfg.num_classes, 2)  # binary: [background, foreground]
    weights = median_frequency_weights(train_set.masks, n, cfg.ignore_index)
    present = [w for w in weights if w > 0]
    imbalance = max(present) / min(present) if present else 1.0
    if cfg.class_weights == "auto" and imbalance <= 10:
        log(f"class weights: none (class frequencies within {imbalance:.1f}x of each other)")
        return None
    log(f"class weights (median frequency): {', '.join(f'{w:.2f}' for w in weights)}")
    return weights


AUTO_LONG_SIDE = 256  # pixels on the longer side when the size is left to pixelseg


def choose_size(
    cfg: TrainConfig, heights: list[int], widths: list[int], stride: int,
    log: Callable[[str], None],
) -> TrainConfig:  # fmt: skip
    """Pick ``cfg.size`` from the images when the user gave none.

    The median image shape is scaled so its longer side is ``AUTO_LONG_SIDE`` (never up),
    keeping the aspect ratio, and each side is rounded to a multiple of the network's
    stride, so no padding is needed and nothing is squashed.
    """
    if cfg.size is not None:
        return cfg
    h, w = sorted(heights)[len(heights) // 2], sorted(widths)[len(widths) // 2]
    scale = min(1.0, AUTO_LONG_SIDE / max(h, w))
    size = tuple(max(stride, round(side * scale / stride) * stride) for side in (h, w))
    log(
        f"size: {size[0]}x{size[1]} (median image {h}x{w}, longer side to at most "
        f"{AUTO_LONG_SIDE}, aspect ratio kept, multiples of the model's stride {stride})"
    )
    return replace(cfg, size=size)


WIDTHS = (32, 16, 8)  # base_channels the default U-Net may get under a time budget
MIN_EPOCHS = 25  # what a budget should leave room for, for the schedule to converge


def choose_width(
    cfg: TrainConfig, n_train: int, in_channels: int, budget: float, device: torch.device,
    log: Callable[[str], None],
) -> TrainConfig:  # fmt: skip
    """Under a time budget, give the default U-Net the widest width that still trains for
    ``MIN_EPOCHS`` epochs, judged by timing two training steps of each candidate.

    Only when the model and its width were left to pixelseg.
    """
    if cfg.model != "unet" or "base_channels" in cfg.model_kwargs:
        return cfg
    steps = max(1, n_train // cfg.batch_size)
    chosen, reason = WIDTHS[-1], ""
    for width in WIDTHS:
        step = _step_seconds(cfg, width, in_channels, device)
        epoch = 1.25 * step * steps  # plus validation and checkpoints, roughly
        epochs = int(budget // epoch)
        reason = f"about {epoch:.1f} s an epoch, {epochs} epochs in the budget"
        if epochs >= MIN_EPOCHS:
            chosen = width
            break
    log(f"model width: base_channels={chosen} ({reason})")
    return replace(cfg, model_kwargs={**cfg.model_kwargs, "base_channels": chosen})


def _step_seconds(cfg: TrainConfig, width: int, in_channels: int, device: torch.device) -> float:
    """Seconds for one training step of ``unet`` at this width (the faster of two, after one)."""
    model = create_model(
        "unet", in_channels=in_channels, num_classes=cfg.num_classes,
        **{**cfg.model_kwargs, "base_channels": width},
    ).to(device)  # fmt: skip
    optimizer = torch.optim.AdamW(model.parameters())
    x = torch.randn(cfg.batch_size, in_channels, *cfg.size, device=device)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        loss = model(x).float().square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times[1:])
