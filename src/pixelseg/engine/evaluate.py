"""Evaluation at each image's original resolution.

Predictions are made at the training size, then the logits are resized back to the
original image size and compared with the original mask file, as the segmentation
literature does (scoring at the training resolution would flatter the model: thin
structures and borders are blurred away by the down-sampling).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from pixelseg.data.dataset import SegmentationDataset
from pixelseg.data.io import read_image
from pixelseg.data.layouts import find_samples
from pixelseg.data.split import SPLITS, load_split, select
from pixelseg.data.transforms import BatchTransform
from pixelseg.engine import distributed
from pixelseg.engine.distributed import World
from pixelseg.errors import PixelsegError, SettingsError
from pixelseg.files import write_json
from pixelseg.inference.logits import logits_to_mask, resize_logits
from pixelseg.inference.options import check_scales
from pixelseg.inference.postprocess import postprocess
from pixelseg.inference.tta import describe_views, tta_model
from pixelseg.metrics import BinaryMetrics, MulticlassMetrics
from pixelseg.models.saved import load_model
from pixelseg.report import plot_confusion, plot_grid, write_csv
from pixelseg.runconfig import RunConfig


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
    world: World | None = None,
) -> tuple[dict, list[dict], dict[int, np.ndarray]]:
    """Score ``model`` on ``dataset`` (built with ``keep_original=True``).

    Binary masks get ``postprocess_steps`` (see :mod:`pixelseg.inference.postprocess`)
    before scoring.

    Returns ``(metrics, per_image_rows, predictions)``; ``predictions`` maps item index to its
    original-size mask and is only filled with ``keep_predictions``. With ``loss_fn``,
    ``metrics["loss"]`` is its mean over the set at the training size (the same pass
    serves both, so validation runs the model once). In a distributed ``world`` each process
    scores every ``world.size``-th image and the results are gathered: every process returns
    the metrics and rows of the whole set (rank 0 also the predictions), which on a CPU equal
    those of one process exactly.
    """
    if not dataset.keep_original:
        raise ValueError("evaluate_model() needs a dataset built with keep_original=True")
    world = world or World()
    metrics = _new_metrics(dataset.num_classes, ignore_index, class_names)
    model.eval()
    rows, predictions, total_loss = [], {}, 0.0
    share = Subset(dataset, range(world.rank, len(dataset), world.size))
    for batch in DataLoader(share, batch_size=batch_size):
        images, masks = transform(batch, device)
        logits = model(images)
        if loss_fn is not None:
            total_loss += loss_fn(logits, masks).item() * len(images)
        for index, logit in zip(batch["index"].tolist(), logits.float().cpu(), strict=True):
            truth = dataset.original_masks[index]
            pred = logits_to_mask(resize_logits(logit, truth.shape), threshold).numpy()
            if dataset.num_classes == 1 and postprocess_steps:
                pred = postprocess(pred, postprocess_steps)
            truths = _binary_truth(truth, ignore_index) if dataset.num_classes == 1 else (truth,)
            row = metrics.update(pred, *truths)
            rows.append({"index": index, "stem": dataset.samples[index].stem, **row})
            if keep_predictions:
                predictions[index] = pred
    if world.distributed:
        metrics, rows, predictions, total_loss = _gather(
            world, metrics, rows, predictions, total_loss, dataset.num_classes, ignore_index,
            class_names,
        )  # fmt: skip
    result = metrics.compute()
    if loss_fn is not None:
        result["loss"] = total_loss / len(dataset)
    return result, [{k: v for k, v in r.items() if k != "index"} for r in rows], predictions


def _binary_truth(
    truth: np.ndarray, ignore_index: int | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """A binary mask's (foreground, valid pixels): void pixels count in no score."""
    if ignore_index is None:
        return truth == 1, None
    return truth == 1, truth != ignore_index


def _new_metrics(
    num_classes: int, ignore_index: int | None, class_names: list[str] | None
) -> BinaryMetrics | MulticlassMetrics:
    if num_classes == 1:
        return BinaryMetrics()
    return MulticlassMetrics(num_classes, ignore_index=ignore_index, class_names=class_names)


def _gather(
    world: World, metrics: BinaryMetrics | MulticlassMetrics, rows: list[dict],
    predictions: dict, total_loss: float, num_classes: int, ignore_index: int | None,
    class_names: list[str] | None,
) -> tuple[BinaryMetrics | MulticlassMetrics, list[dict], dict, float]:  # fmt: skip
    """Every process's share put together, as one process would have computed it."""
    parts = world.gather((metrics, rows, total_loss))
    rows = sorted((r for part in parts for r in part[1]), key=lambda r: r["index"])
    total_loss = sum(part[2] for part in parts)
    shared = world.gather_to_main(predictions)  # full-size masks: only rank 0 draws them
    predictions = {k: v for part in shared or [] for k, v in part.items()}
    merged = _new_metrics(num_classes, ignore_index, class_names)
    if isinstance(merged, BinaryMetrics):
        for r in rows:  # the per-image sums again, in the images' order
            merged.add_counts(r["tp"], r["fp"], r["fn"], r["tn"])
    else:
        for part in parts:
            merged.merge(part[0])
    return merged, rows, predictions, total_loss


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
        truths = _binary_truth(truth, dataset.ignore_index)
        for k, t in enumerate(grid):
            dice_sums[k] += BinaryMetrics().update(proba > t, *truths)["dice"]
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
        truths = _binary_truth(truth, dataset.ignore_index)
        for k, steps in enumerate(POSTPROCESS_OPTIONS):
            sums[k] += BinaryMetrics().update(postprocess(pred, steps), *truths)["dice"]
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
    tta_scales: Sequence[float] | None = None,
) -> dict:
    """Score a run on ``data``; write ``metrics.json``, ``per_image.csv`` and ``worst.png``.

    ``split`` is ``test``, ``val`` or ``train`` (from the run's own ``split.json``) or ``all``
    (every pair in ``data``, e.g. a separate test set). Files go to ``out`` (default: the
    run folder). ``apply_postprocess=False`` scores masks without the run's clean-up steps;
    ``tta`` scores the test-time-augmented predictions (:mod:`pixelseg.inference.tta`);
    ``tta_scales`` averages views at these multiples of the training size (with ``tta``,
    flipped at each). Launched by torchrun, the processes share the images and rank 0
    writes the (identical) results.
    """
    if split not in ("all", *SPLITS):
        raise SettingsError(f"split must be one of all, {', '.join(SPLITS)}; got {split!r}")
    if tta_rotations and not tta:
        raise SettingsError("tta_rotations extends tta; set both")
    scales = check_scales(tta_scales) if tta_scales is not None else None
    world, dev, joined = distributed.start(device)
    try:
        return _evaluate_run(
            Path(run), data, split, format, threshold, out, dev, batch_size, n_worst,
            progress and world.is_main, apply_postprocess, tta, tta_rotations, scales, world,
        )  # fmt: skip
    finally:
        distributed.stop(joined)


def _evaluate_run(
    run: Path, data: str | Path, split: str, format: str, threshold: float | None,
    out: str | Path | None, dev: torch.device, batch_size: int, n_worst: int, progress: bool,
    apply_postprocess: bool, tta: bool, tta_rotations: bool,
    scales: tuple[float, ...] | None, world: World,
) -> dict:  # fmt: skip
    model, config = load_model(run, dev)
    model, size = tta_model(model, config.size, tta=tta, rotations=tta_rotations,
                            upright=config.upright, scales=scales)  # fmt: skip
    _, samples = find_samples(data, format)
    if split == "val" and config.train.get("train_on_val"):
        warnings.warn(
            f"{run} trained on its validation images (--train-on-val): their scores are "
            "scores on seen images",
            stacklevel=3,
        )
    missing: list[str] = []  # the split's images that are not in data
    if split != "all" and all(s.subset is not None for s in samples):
        # a data set with its own split (SegNet's test/ + testannot/...): the split named
        # is its folder, which is also what a run trained on it kept
        present = sorted({s.subset for s in samples}, key=SPLITS.index)
        samples = [s for s in samples if s.subset == split]
        if not samples:
            raise PixelsegError(
                f"{data} has no {split}/ images (it holds {', '.join(present)}); "
                f"use --split {' or --split '.join(present)}, or --split all"
            )
    elif split != "all":
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
        missing = sorted(set(wanted) - {s.stem for s in samples})
        if missing:  # scored on fewer images than the split holds: never silently
            shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
            warnings.warn(
                f"{len(missing)} of the run's {len(wanted)} {split} images are not in {data} "
                f"({shown}); scoring the other {len(samples)}",
                stacklevel=3,
            )
    dataset = SegmentationDataset(
        samples,
        size,  # the training size, or the largest test-time scale of it
        config.num_classes,
        keep_original=True,
        progress=progress,
        channels=config.in_channels,
        colors=config.class_colors,
        ignore_index=config.ignore_index,
        cache="auto",  # on disk past a size, as training does
    )
    t = config.threshold if threshold is None else threshold
    steps = list(config.postprocess) if apply_postprocess else []
    metrics, rows, preds = evaluate_model(
        model,
        dataset,
        BatchTransform(config.mean, config.std),
        dev,
        t,
        config.ignore_index,
        config.class_names,
        batch_size,
        keep_predictions=True,
        postprocess_steps=steps,
        world=world,
    )
    views = describe_views(tta, tta_rotations, config.upright, scales)
    metrics = {**metrics, "split": split, "data": str(data), "tta": views,
               "missing_images": len(missing)}  # fmt: skip
    if config.num_classes == 1:
        metrics["threshold"] = t
        metrics["postprocess"] = steps
    if world.is_main:
        _write_report(metrics, rows, preds, config, samples, dataset, out or run, n_worst)
    return metrics


def _write_report(
    metrics: dict, rows: list[dict], preds: dict[int, np.ndarray], config: RunConfig,
    samples: list, dataset: SegmentationDataset, out: str | Path, n_worst: int,
) -> None:  # fmt: skip
    """``metrics.json``, ``per_image.csv``, ``worst.png`` (and ``confusion.png``)."""
    out_dir = Path(out)
    write_json(out_dir / "metrics.json", metrics)
    write_csv(out_dir / "per_image.csv", rows)
    if config.num_classes > 1:
        plot_confusion(
            metrics["confusion_matrix"], list(metrics["per_class"]), out_dir / "confusion.png"
        )
    key = config.score_name
    worst = sorted(range(len(rows)), key=lambda i: rows[i][key])[:n_worst]
    plot_grid(
        [(read_image(samples[i].image), dataset.original_masks[i], preds[i]) for i in worst],
        out_dir / "worst.png",
        [f"{rows[i]['stem']}  {key} {rows[i][key]:.3f}" for i in worst],
    )
