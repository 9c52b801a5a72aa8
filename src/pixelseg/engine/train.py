"""Training: ``fit(config)`` runs the whole job, ``train_one_epoch`` one pass.

Shaped after torchvision's references/segmentation/train.py: a short epoch function, an
evaluation at the original resolution after each epoch, and the best checkpoint kept by
validation score (Dice for binary, mIoU for multi-class), with early stopping.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

import pixelseg
from pixelseg.config import TrainConfig
from pixelseg.data.check import check_samples
from pixelseg.data.dataset import SegmentationDataset
from pixelseg.data.layouts import Sample, find_samples
from pixelseg.data.split import foreground_strata, load_split, make_split, save_split
from pixelseg.data.transforms import Augment, BatchTransform
from pixelseg.engine import checkpoint
from pixelseg.engine.device import resolve_device, seed_everything
from pixelseg.engine.evaluate import evaluate
from pixelseg.errors import PixelsegError
from pixelseg.losses import build_loss
from pixelseg.models import count_parameters, create_model
from pixelseg.report import plot_curves, write_csv


@dataclass
class TrainResult:
    run_dir: Path
    best_epoch: int
    best_score: float
    score_name: str
    history: list[dict]


def warmup_cosine(total_steps: int, warmup_steps: int):
    """LR multiplier: linear warm-up, then cosine decay to 1% of the base LR."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def train_one_epoch(
    model: torch.nn.Module,
    loader: DataLoader,
    transform: BatchTransform,
    loss_fn: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
    bar: tqdm | None = None,
) -> float:
    """One pass over ``loader``; returns the mean training loss."""
    model.train()
    total, count = 0.0, 0
    for batch in loader:
        images, masks = transform(batch, device)
        loss = loss_fn(model(images), masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += loss.item() * len(images)
        count += len(images)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{total / count:.4f}", refresh=False)
    return total / max(count, 1)


def prepare_split(
    cfg: TrainConfig, samples: list[Sample], fractions: list[float], run_dir: Path
) -> dict[str, list[str]]:
    """Reuse the run's ``split.json`` when resuming, else make (and save) a stratified split."""
    path = run_dir / "split.json"
    if path.is_file():
        return load_split(path)
    if all(s.group is not None for s in samples):
        strata = [s.group for s in samples]  # e.g. PH2's diagnosis
    else:
        strata = foreground_strata(fractions)  # small / medium / large objects
    split = make_split(
        [s.stem for s in samples], cfg.val_fraction, cfg.test_fraction, cfg.seed, strata
    )
    save_split(path, split)
    return split


def select(samples: list[Sample], stems: list[str]) -> list[Sample]:
    wanted = set(stems)
    return [s for s in samples if s.stem in wanted]


def run_config(cfg: TrainConfig, mean: list[float], std: list[float], in_channels: int) -> dict:
    """What ``config.json`` holds: enough to rebuild the model and its preprocessing."""
    return {
        "pixelseg_version": pixelseg.__version__,
        "model": cfg.model,
        "model_kwargs": cfg.model_kwargs,
        "in_channels": in_channels,
        "num_classes": cfg.num_classes,
        "size": list(cfg.size),
        "mean": mean,
        "std": std,
        "threshold": cfg.threshold,
        "ignore_index": cfg.ignore_index,
        "class_names": cfg.class_names,
        "score_name": cfg.score_name,
        "train": cfg.to_dict(),
    }


def build_datasets(
    cfg: TrainConfig, run_dir: Path
) -> tuple[SegmentationDataset, SegmentationDataset]:
    """Check the data, split it (or reuse the run's split) and cache train/val at ``cfg.size``."""
    fmt, samples = find_samples(cfg.data, cfg.format)
    report = check_samples(cfg.data, fmt, samples, cfg.num_classes, cfg.progress, cfg.ignore_index)
    report.raise_if_problems()  # refuse to train on a broken data set
    split = prepare_split(cfg, samples, [info.foreground for info in report.infos], run_dir)
    train_set = SegmentationDataset(select(samples, split["train"]), cfg.size, cfg.num_classes)
    # A data set too small to hold out a validation split validates on its training images.
    val_samples = select(samples, split["val"]) or select(samples, split["train"])
    val_set = SegmentationDataset(val_samples, cfg.size, cfg.num_classes, keep_original=True)
    return train_set, val_set


def fit(
    cfg: TrainConfig, resume: bool = False, on_epoch_end: Callable[[dict], None] | None = None
) -> TrainResult:
    """Train a model as ``cfg`` says and write the run folder ``cfg.out``.

    With ``resume``, continue from the run folder's ``last.pt`` (same split, model,
    optimizer, scheduler and random state) up to ``cfg.epochs``. ``on_epoch_end`` is called
    with each epoch's history row after its checkpoint is written (raise to stop).
    """
    run_dir = Path(cfg.out)
    state = checkpoint.load_state(run_dir) if resume else None
    if resume and state is None:
        raise PixelsegError(f"{run_dir}: nothing to resume (no {checkpoint.STATE_FILE})")
    if not resume and (run_dir / checkpoint.STATE_FILE).exists():
        raise PixelsegError(
            f"{run_dir} already holds a run; use --resume to continue it or choose another --out"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    log = tqdm.write if cfg.progress else (lambda *_: None)

    train_set, val_set = build_datasets(cfg, run_dir)
    # Normalise with the training images' own statistics (kept from the first session).
    mean, std = (state["mean"], state["std"]) if state else train_set.channel_stats()
    train_tf = BatchTransform(mean, std, Augment() if cfg.augment else None)
    eval_tf = BatchTransform(mean, std)
    config = run_config(cfg, mean, std, in_channels=train_set.images.shape[1])
    model = create_model(
        cfg.model,
        in_channels=config["in_channels"],
        num_classes=cfg.num_classes,
        **cfg.model_kwargs,
    ).to(device)
    loss_fn = build_loss(cfg.loss, cfg.num_classes, ignore_index=cfg.ignore_index)
    generator = torch.Generator().manual_seed(cfg.seed)  # the shuffling order, saved for resume
    train_loader = DataLoader(
        train_set,
        batch_size=cfg.batch_size,
        shuffle=True,
        drop_last=len(train_set) > cfg.batch_size,
        generator=generator,
        num_workers=cfg.workers,
        persistent_workers=cfg.workers > 0,
    )
    steps = len(train_loader)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(cfg.epochs * steps, cfg.warmup_epochs * steps)
    )

    history: list[dict] = []
    start_epoch, best_score, best_epoch = 1, -1.0, 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        generator.set_state(state["loader_rng"])
        history, best_score, best_epoch = state["history"], state["best_score"], state["best_epoch"]
        start_epoch = state["epoch"] + 1

    score_name = cfg.score_name
    log(
        f"pixelseg: {cfg.model} ({count_parameters(model):,} parameters) on {device}; "
        f"{len(train_set)} train / {len(val_set)} val images at {cfg.size[0]}x{cfg.size[1]}; "
        f"loss {cfg.loss}; {cfg.epochs} epochs"
    )
    for epoch in range(start_epoch, cfg.epochs + 1):
        t0 = time.perf_counter()
        with tqdm(
            total=steps,
            desc=f"epoch {epoch}/{cfg.epochs}",
            unit="batch",
            leave=False,
            disable=not cfg.progress,
        ) as bar:
            train_loss = train_one_epoch(
                model, train_loader, train_tf, loss_fn, optimizer, scheduler, device, bar
            )
        metrics, _, _ = evaluate(
            model,
            val_set,
            eval_tf,
            device,
            cfg.threshold,
            cfg.ignore_index,
            cfg.class_names,
            cfg.batch_size,
            loss_fn=loss_fn,
        )
        score, val_loss = metrics[score_name], metrics["loss"]
        row = {
            "epoch": epoch,
            "train_loss": round(train_loss, 6),
            "val_loss": round(val_loss, 6),
            f"val_{score_name}": round(score, 6),
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": round(time.perf_counter() - t0, 2),
        }
        history.append(row)
        improved = score > best_score
        if improved:
            best_score, best_epoch = score, epoch
            checkpoint.save_weights(run_dir, model)
            checkpoint.write_json(
                run_dir / checkpoint.CONFIG_FILE,
                {**config, "best": {"epoch": epoch, score_name: score}},
            )
        checkpoint.save_state(
            run_dir,
            {
                "epoch": epoch,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "loader_rng": generator.get_state(),
                "history": history,
                "best_score": best_score,
                "best_epoch": best_epoch,
                "mean": mean,
                "std": std,
                "config": cfg.to_dict(),
            },
        )
        write_csv(run_dir / "history.csv", history)
        log(
            f"epoch {epoch:3d}/{cfg.epochs}  train_loss {train_loss:.4f}  val_loss {val_loss:.4f}  "
            f"val_{score_name} {score:.4f}{'  *best*' if improved else ''}"
        )
        if on_epoch_end is not None:
            on_epoch_end(row)
        if cfg.patience and epoch - best_epoch >= cfg.patience:
            log(f"early stopping: no better val_{score_name} for {cfg.patience} epochs")
            break
    plot_curves(history, run_dir / "curves.png", score_name)
    return TrainResult(run_dir, best_epoch, best_score, score_name, history)
