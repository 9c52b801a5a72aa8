"""Evaluation at each image's original resolution.

Predictions are made at the training size, then the logits are resized back to the
original image size and compared with the original mask file, as the segmentation
literature does (scoring at the training resolution would flatter the model: thin
structures and borders are blurred away by the down-sampling).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from pixelseg.data.dataset import SegmentationDataset
from pixelseg.data.io import read_image
from pixelseg.data.layouts import find_samples
from pixelseg.data.split import SPLITS, load_split, select
from pixelseg.data.transforms import BatchTransform
from pixelseg.engine.checkpoint import load_model
from pixelseg.engine.device import resolve_device
from pixelseg.errors import PixelsegError
from pixelseg.files import write_json
from pixelseg.metrics import BinaryMetrics, MulticlassMetrics
from pixelseg.postprocess import postprocess
from pixelseg.report import plot_confusion, plot_grid, write_csv


def logits_to_mask(logits: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """(C, H, W) logits → (H, W) uint8 class indices (C == 1: sigmoid > threshold)."""
    if logits.shape[0] == 1:
        if not 0 <= threshold <= 1:
            raise ValueError(f"threshold must be a probability between 0 and 1, got {threshold}")
        return (torch.sigmoid(logits[0]) > threshold).to(torch.uint8)
    return logits.argmax(0).to(torch.uint8)


def logits_to_proba(logits: torch.Tensor) -> torch.Tensor:
    """(C, H, W) or (N, C, H, W) logits → probabilities: sigmoid for one channel, softmax
    over classes."""
    return torch.sigmoid(logits) if logits.shape[-3] == 1 else logits.softmax(-3)


def resize_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(C, h, w) → (C, H, W), bilinear (resizing logits, not hard masks, keeps borders smooth)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)[0]


@torch.no_grad()
def evaluate_model(
    model: torch.nn.Module,
    dataset: SegmentationDataset,
    transform: BatchTransform,
    device: torch.device,
    threshold: float = 0.5,
    ignore_index: int | None = None,
    class_names: list[str] | None = None,
    batch_size: int = 8,
    keep_predictions: bool = False,
    loss_fn: torch.nn.Module | None = None,
    postprocess_steps: Sequence[str] = (),
) -> tuple[dict, list[dict], dict[int, np.ndarray]]:
    """Score ``model`` on ``dataset`` (built with ``keep_original=True``).

    Binary masks get ``postprocess_steps`` (see :mod:`pixelseg.postprocess`) before scoring.

    Returns ``(metrics, per_image_rows, predictions)``; ``predictions`` maps item index to its
    original-size mask and is only filled with ``keep_predictions``. With ``loss_fn``,
    ``metrics["loss"]`` is its mean over the set at the training size (the same pass
    serves both, so validation runs the model once).
    """
    if not dataset.keep_original:
        raise ValueError("evaluate_model() needs a dataset built with keep_original=True")
    num_classes = dataset.num_classes
    metrics = (
        BinaryMetrics()
        if num_classes == 1
        else MulticlassMetrics(num_classes, ignore_index=ignore_index, class_names=class_names)
    )
    model.eval()
    rows, predictions, total_loss = [], {}, 0.0
    for batch in DataLoader(dataset, batch_size=batch_size):
        images, masks = transform(batch, device)
        logits = model(images)
        if loss_fn is not None:
            total_loss += loss_fn(logits, masks).item() * len(images)
        for index, logit in zip(batch["index"].tolist(), logits.float().cpu(), strict=True):
            truth = dataset.original_masks[index]
            pred = logits_to_mask(resize_logits(logit, truth.shape), threshold).numpy()
            if num_classes == 1 and postprocess_steps:
                pred = postprocess(pred, postprocess_steps)
            row = metrics.update(pred, truth)
            rows.append({"stem": dataset.samples[index].stem, **row})
            if keep_predictions:
                predictions[index] = pred
    result = metrics.compute()
    if loss_fn is not None:
        result["loss"] = total_loss / len(dataset)
    return result, rows, predictions


def _original_size_logits(
    model: torch.nn.Module,
    dataset: SegmentationDataset,
    transform: BatchTransform,
    device: torch.device,
    batch_size: int,
) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
    """Each item's (C, H, W) logits resized to its original mask's size, with that mask."""
    model.eval()
    for batch in DataLoader(dataset, batch_size=batch_size):
        images, _ = transform(batch, device)
        for index, logit in zip(batch["index"].tolist(), model(images).float().cpu(), strict=True):
            truth = dataset.original_masks[index]
            yield resize_logits(logit, truth.shape), truth


@torch.no_grad()
def calibrate_threshold(
    model: torch.nn.Module,
    dataset: SegmentationDataset,
    transform: BatchTransform,
    device: torch.device,
    batch_size: int = 8,
) -> tuple[float, float]:
    """The probability threshold in 0.05..0.95 with the best mean per-image Dice on ``dataset``.

    Returns ``(threshold, dice)``. Scored at each image's original size like ``evaluate``.
    Ties go to the threshold closest to 0.5, so a flat curve keeps the usual choice.
    """
    grid = [round(0.05 * i, 2) for i in range(1, 20)]
    dice_sums = np.zeros(len(grid))
    for logit, truth in _original_size_logits(model, dataset, transform, device, batch_size):
        proba = torch.sigmoid(logit[0]).numpy()
        for k, t in enumerate(grid):
            dice_sums[k] += BinaryMetrics().update(proba > t, truth == 1)["dice"]
    best = max(range(len(grid)), key=lambda k: (round(dice_sums[k], 9), -abs(grid[k] - 0.5)))
    return grid[best], float(dice_sums[best] / len(dataset))


POSTPROCESS_OPTIONS = ((), ("fill_holes",), ("keep_largest",), ("keep_largest", "fill_holes"))
MIN_POSTPROCESS_GAIN = 0.001  # mean validation Dice a clean-up step must add to be kept


@torch.no_grad()
def choose_postprocess(
    model: torch.nn.Module,
    dataset: SegmentationDataset,
    transform: BatchTransform,
    device: torch.device,
    threshold: float,
    batch_size: int = 8,
) -> tuple[list[str], dict[str, float]]:
    """The binary clean-up steps with the best mean per-image Dice on ``dataset``.

    Returns ``(steps, dice_by_option)``. An option (in the order none, fill holes, keep
    largest, both) replaces the best so far only if it raises the mean Dice by at least
    ``MIN_POSTPROCESS_GAIN``: a step that changes nothing, or next to nothing, is left out.
    """
    sums = np.zeros(len(POSTPROCESS_OPTIONS))
    for logit, truth in _original_size_logits(model, dataset, transform, device, batch_size):
        pred = logits_to_mask(logit, threshold).numpy()
        for k, steps in enumerate(POSTPROCESS_OPTIONS):
            sums[k] += BinaryMetrics().update(postprocess(pred, steps), truth)["dice"]
    means = sums / len(dataset)
    best = 0  # no clean-up, unless an option beats the best so far by MIN_POSTPROCESS_GAIN
    for k in range(1, len(POSTPROCESS_OPTIONS)):
        if means[k] >= means[best] + MIN_POSTPROCESS_GAIN:
            best = k
    scores = {
        "+".join(steps) or "none": float(means[k]) for k, steps in enumerate(POSTPROCESS_OPTIONS)
    }
    return list(POSTPROCESS_OPTIONS[best]), scores


def evaluate_run(
    run: str | Path,
    data: str | Path,
    split: str = "test",
    format: str = "auto",
    threshold: float | None = None,
    out: str | Path | None = None,
    device: str = "auto",
    batch_size: int = 8,
    n_worst: int = 6,
    progress: bool = True,
    apply_postprocess: bool = True,
    tta: bool = False,
    tta_rotations: bool = False,
) -> dict:
    """Score a run on ``data``; write ``metrics.json``, ``per_image.csv`` and ``worst.png``.

    ``split`` is ``test``, ``val`` or ``train`` (from the run's own ``split.json``) or ``all``
    (every pair in ``data``, e.g. a separate test set). Files go to ``out`` (default: the
    run folder). ``apply_postprocess=False`` scores masks without the run's clean-up steps;
    ``tta`` scores the test-time-augmented predictions (:mod:`pixelseg.tta`).
    """
    from pixelseg.tta import TTAModel  # it builds on this module's logits_to_proba

    if split not in ("all", *SPLITS):
        raise ValueError(f"split must be one of all, {', '.join(SPLITS)}; got {split!r}")
    run = Path(run)
    dev = resolve_device(device)
    model, config = load_model(run, dev)
    if tta_rotations and not tta:
        raise ValueError("tta_rotations extends tta; set both")
    if tta:
        model = TTAModel(model, tta_rotations)
    _, samples = find_samples(data, format)
    if split != "all":
        split_file = run / "split.json"
        if not split_file.is_file():
            raise PixelsegError(f"{run}: no split.json; use --split all")
        wanted = load_split(split_file)[split]
        if not wanted:
            raise PixelsegError(
                f"the run's {split} split is empty; use --split all to score every image in {data}"
            )
        samples = select(samples, wanted)
        if not samples:
            raise PixelsegError(
                f"none of the run's {split} images are in {data}; "
                f"use --split all to score every image there"
            )
    dataset = SegmentationDataset(
        samples,
        tuple(config["size"]),
        config["num_classes"],
        keep_original=True,
        progress=progress,
        channels=config["in_channels"],
        colors=config.get("class_colors"),
    )
    t = float(config.get("threshold", 0.5)) if threshold is None else threshold
    steps = list(config.get("postprocess") or []) if apply_postprocess else []
    metrics, rows, preds = evaluate_model(
        model,
        dataset,
        BatchTransform(config["mean"], config["std"]),
        dev,
        t,
        config.get("ignore_index"),
        config.get("class_names"),
        batch_size,
        keep_predictions=True,
        postprocess_steps=steps,
    )
    views = "flips and rotations" if tta_rotations else "flips" if tta else None
    metrics = {**metrics, "split": split, "data": str(data), "tta": views}
    if config["num_classes"] == 1:
        metrics["threshold"] = t
        metrics["postprocess"] = steps
    out_dir = Path(out) if out is not None else run
    write_json(out_dir / "metrics.json", metrics)
    write_csv(out_dir / "per_image.csv", rows)
    if config["num_classes"] > 1:
        plot_confusion(
            metrics["confusion_matrix"], list(metrics["per_class"]), out_dir / "confusion.png"
        )
    key = config["score_name"]
    worst = sorted(range(len(rows)), key=lambda i: rows[i][key])[:n_worst]
    plot_grid(
        [(read_image(samples[i].image), dataset.original_masks[i], preds[i]) for i in worst],
        out_dir / "worst.png",
        [f"{rows[i]['stem']}  {key} {rows[i][key]:.3f}" for i in worst],
    )
    return metrics
