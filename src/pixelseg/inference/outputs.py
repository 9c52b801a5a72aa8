"""The files ``pixelseg predict`` writes for each image, whatever engine made the mask
(torch or ONNX Runtime): no torch here, so the ONNX path never loads it."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from pixelseg.data.io import read_image
from pixelseg.files import write_bytes, write_json
from pixelseg.inference.cutout import composite, cutout
from pixelseg.inference.instances import Instances, color_instances, to_coco, to_csv
from pixelseg.inference.options import Outputs
from pixelseg.report import color_mask, overlay, plot_legend, save_png

if TYPE_CHECKING:
    from pixelseg.inference.base import SegmentationPredictor
    from pixelseg.runconfig import RunConfig

T = TypeVar("T")

__all__ = [
    "Item", "StemNamer", "Written", "batched", "output_names", "predict_files", "unique_stems",
    "write_legend", "write_mask_outputs",
]  # fmt: skip


class StemNamer:
    """Names for the inputs' outputs, one input at a time: their stems, made unique.

    Unique against every name given so far (``a.png``, ``a.jpg``, ``a_2.png`` give ``a``,
    ``a_2``, ``a_2_2``), ignoring case (macOS and Windows folders do), and never a name of
    dots only: ``..png``'s stem ``.`` would name the output folder itself and write
    ``<out>_mask.png`` beside it. Holds one lowercase name per input seen (a million
    inputs: tens of MB), so a folder can be named as it is walked.
    """

    def __init__(self) -> None:
        self.taken: set[str] = set()

    def __call__(self, path: Path) -> str:
        base = path.stem if path.stem.strip(".") else "unnamed"
        stem, n = base, 1
        while stem.lower() in self.taken:
            n += 1
            stem = f"{base}_{n}"
        self.taken.add(stem.lower())
        return stem


def unique_stems(paths: Sequence[Path]) -> list[str]:
    """:class:`StemNamer`'s names for a list of inputs."""
    name = StemNamer()
    return [name(p) for p in paths]


@dataclass
class Written:
    """What a prediction wrote: how many files, which (only when asked to keep them: a
    million images' paths are most of a gigabyte), and how many images were done before."""

    keep: bool = True
    files: list[Path] = field(default_factory=list)
    count: int = 0
    skipped: int = 0

    def add(self, paths: list[Path]) -> None:
        self.count += len(paths)
        if self.keep:
            self.files += paths


@dataclass(frozen=True)
class Item:
    """One image to predict: where it is, the name of its outputs, its COCO image id."""

    path: Path
    stem: str
    image_id: int


def output_names(stem: str, outputs: Outputs, num_classes: int) -> list[str]:
    """The files :func:`predict_files` writes for one image, in the order it writes them;
    with ``resume``, an image whose files all exist is done (each was written atomically,
    so a file that exists is whole)."""
    names = ["mask", "overlay"] + ["color"] * (num_classes > 1)
    names += ["prob"] * outputs.probabilities + ["uncertainty"] * outputs.uncertainty
    files = [f"{stem}_{n}.png" for n in names]
    if outputs.instances:
        files += [f"{stem}_instances.{ext}" for ext in ("json", "csv", "png")]
    files += [f"{stem}_cutout.png"] * outputs.cutout
    files += [f"{stem}_composite.png"] * (outputs.background is not None)
    return files


def write_mask_outputs(
    prefix: str | Path, image: np.ndarray, mask: np.ndarray, config: RunConfig,
    top_proba: np.ndarray | None = None,
) -> list[Path]:  # fmt: skip
    """``<prefix>_mask.png`` (0/255 for binary, class indices otherwise),
    ``<prefix>_overlay.png``, for multi-class runs ``<prefix>_color.png``, and with
    ``top_proba`` (HxW in [0, 1]) ``<prefix>_prob.png``."""
    num_classes = config.num_classes
    saved = mask * 255 if num_classes == 1 else mask  # binary masks as 0/255, visible as is
    files = [
        save_png(f"{prefix}_mask.png", saved.astype(np.uint8)),
        save_png(f"{prefix}_overlay.png", overlay(image, mask)),
    ]
    if num_classes > 1:
        files.append(save_png(f"{prefix}_color.png", color_mask(mask, config.class_colors)))
    if top_proba is not None:
        files.append(save_png(f"{prefix}_prob.png", (top_proba * 255).round().astype(np.uint8)))
    return files


def predict_files(
    predictor: SegmentationPredictor,
    items: Iterable[Item] | Sequence[Path],
    out_dir: str | Path,
    outputs: Outputs | None = None,
    progress: bool = True,
    resume: bool = False,
    legend: bool = True,
    keep_files: bool = True,
) -> Written:
    """Write ``<stem>_mask.png`` and ``<stem>_overlay.png`` per image, and the ``outputs``
    asked for (see :class:`~pixelseg.inference.options.Outputs`); returns how many files
    were written (and, with ``keep_files``, which) and how many images were skipped as done.

    ``items`` may be a lazy stream (a folder being walked): images are read ahead on
    threads while the model runs, and each one's files are written as soon as its logits
    are ready, so memory holds a few batches, never the whole folder. Paths get the names
    of :func:`unique_stems` and COCO ids counting from 1. With ``resume``, an image whose
    files all exist (:func:`output_names`) is skipped unread. Only the process that writes
    the ``legend`` should ask for it.

    Binary masks are saved as 0/255, multi-class masks as class indices plus a colour-coded
    ``<stem>_color.png`` (colours explained by ``legend.png``); the probability
    image is the foreground (binary) or winning-class (multi-class) probability × 255.
    """
    from tqdm.auto import tqdm

    outputs = outputs or Outputs()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    done = Written(keep_files)

    def todo() -> Iterator[Item]:
        for item in _as_items(items):
            names = output_names(item.stem, outputs, predictor.num_classes)
            if resume and all((out_dir / n).is_file() for n in names):
                done.skipped += 1
                bar.update(1)
            else:
                yield item

    bar = tqdm(desc="predicting", unit="img", disable=None if progress else True)
    # Tiled prediction batches tiles, not images: one large image's logits at a time.
    options = predictor.options
    step = 1 if options.tile is not None else options.batch_size
    # a tiled image is a large one: decode it when its turn comes, not two more beside it
    ahead = 0 if options.tile is not None else 2
    for batch in _read_ahead(todo(), step, ahead):
        images = [image for _, image in batch]
        for (item, image), logit in zip(batch, predictor.logits(images), strict=True):
            done.add(_write_one(predictor, out_dir / item.stem, image, logit, outputs,
                                item.image_id, item.path))  # fmt: skip
            bar.update(1)
    bar.close()
    if legend and predictor.num_classes > 1:
        done.add([write_legend(predictor, out_dir)])
    return done


def _as_items(items: Iterable[Item] | Sequence[Path]) -> Iterator[Item]:
    name = StemNamer()
    for n, item in enumerate(items, 1):
        yield item if isinstance(item, Item) else Item(Path(item), name(Path(item)), n)


def _read_ahead(
    items: Iterator[Item], size: int, ahead: int
) -> Iterator[list[tuple[Item, np.ndarray]]]:
    """Batches of ``size`` decoded images, the next ``ahead`` batches decoding on threads
    (Pillow lets go of the GIL while it decodes) while the caller runs the model on this
    one (2 ahead was enough to hide decoding)."""
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        pending: deque[list[tuple[Item, Future]]] = deque()
        for chunk in batched(items, size):
            pending.append([(item, pool.submit(read_image, item.path)) for item in chunk])
            if len(pending) > ahead:
                yield [(item, future.result()) for item, future in pending.popleft()]
        while pending:
            yield [(item, future.result()) for item, future in pending.popleft()]


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of ``size`` items (the last may be shorter), read lazily
    (``itertools.batched`` from Python 3.12, which pixelseg cannot assume)."""
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _write_one(
    predictor: SegmentationPredictor, prefix: Path, image: np.ndarray, logit: Any,
    outputs: Outputs, image_id: int, path: Path,
) -> list[Path]:  # fmt: skip
    """The files of one image, from its logits."""
    mask = predictor.to_mask(logit)
    top = predictor.top_proba(logit) if outputs.probabilities else None
    written = write_mask_outputs(prefix, image, mask, predictor.config, top)
    if outputs.uncertainty:
        level = (predictor.uncertainty(logit) * 255).round().astype(np.uint8)
        written.append(save_png(f"{prefix}_uncertainty.png", level))
    if outputs.instances:
        found = predictor.instances_of(logit, mask)
        written += _write_instances(prefix, image, found, image_id, path,
                                    predictor.config.class_names)  # fmt: skip
    if outputs.cutout:
        written.append(save_png(f"{prefix}_cutout.png", cutout(image, mask, outputs.feather)))
    if outputs.background is not None:
        picture = composite(image, mask, outputs.background, outputs.feather)
        written.append(save_png(f"{prefix}_composite.png", picture))
    return written


def write_legend(predictor: SegmentationPredictor, out_dir: str | Path) -> Path:
    """``legend.png``: what the colours of the ``<stem>_color.png`` masks mean."""
    names = predictor.config.class_names or [str(i) for i in range(predictor.num_classes)]
    return plot_legend(names, Path(out_dir) / "legend.png", predictor.config.class_colors)


def _write_instances(
    prefix: Path, image: np.ndarray, found: Instances, image_id: int, path: Path,
    class_names: list[str] | None,
) -> list[Path]:  # fmt: skip
    """``<prefix>_instances.json`` (COCO results), ``.csv`` and ``.png``."""
    return [
        write_json(f"{prefix}_instances.json", to_coco(found, image_id, path.name, class_names)),
        write_bytes(f"{prefix}_instances.csv", to_csv(found, class_names).encode()),
        save_png(f"{prefix}_instances.png", color_instances(image, found)),
    ]
