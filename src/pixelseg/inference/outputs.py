"""The files ``pixelseg predict`` writes for each image, whatever engine made the mask
(torch or ONNX Runtime): no torch here, so the ONNX path never loads it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

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

__all__ = ["predict_files", "unique_stems", "write_legend", "write_mask_outputs"]


def unique_stems(paths: Sequence[Path]) -> list[str]:
    """Names for the inputs' outputs: their stems, made unique (``a``, ``a_2``…).

    Unique against every name given so far (``a.png``, ``a.jpg``, ``a_2.png`` give ``a``,
    ``a_2``, ``a_2_2``), ignoring case (macOS and Windows folders do), and never a name of
    dots only: ``..png``'s stem ``.`` would name the output folder itself and write
    ``<out>_mask.png`` beside it.
    """
    taken: set[str] = set()
    stems = []
    for p in paths:
        base = p.stem if p.stem.strip(".") else "unnamed"
        stem, n = base, 1
        while stem.lower() in taken:
            n += 1
            stem = f"{base}_{n}"
        taken.add(stem.lower())
        stems.append(stem)
    return stems


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
    paths: Sequence[Path],
    out_dir: str | Path,
    outputs: Outputs | None = None,
    progress: bool = True,
    stems: Sequence[str] | None = None,
    first_id: int = 1,
    legend: bool = True,
) -> list[Path]:
    """Write ``<stem>_mask.png`` and ``<stem>_overlay.png`` per image, and the ``outputs``
    asked for (see :class:`~pixelseg.inference.options.Outputs`); returns the files written.

    ``stems`` names the outputs (default: the inputs' stems, made unique); a process of a
    distributed run passes its share of the whole list's, and only one writes the
    ``legend``. The images with ``instances`` get COCO ids counting from ``first_id``.

    Binary masks are saved as 0/255, multi-class masks as class indices plus a colour-coded
    ``<stem>_color.png`` (colours explained by ``legend.png``); the probability
    image is the foreground (binary) or winning-class (multi-class) probability × 255.
    """
    from tqdm.auto import tqdm

    outputs = outputs or Outputs()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    stems = list(stems) if stems is not None else unique_stems(paths)
    if len(stems) != len(paths):
        raise ValueError(f"{len(stems)} stems for {len(paths)} images")
    bar = tqdm(total=len(paths), desc="predicting", unit="img", disable=None if progress else True)
    # Tiled prediction batches tiles, not images: one large image's logits at a time.
    options = predictor.options
    step = 1 if options.tile is not None else options.batch_size
    for start in range(0, len(paths), step):
        images = [read_image(p) for p in paths[start : start + step]]
        for i, (image, logit) in enumerate(zip(images, predictor.logits(images), strict=True)):
            n = start + i
            written += _write_one(predictor, out_dir / stems[n], image, logit, outputs,
                                  first_id + n, paths[n])  # fmt: skip
            bar.update(1)
    bar.close()
    if legend and predictor.num_classes > 1:
        written.append(write_legend(predictor, out_dir))
    return written


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
