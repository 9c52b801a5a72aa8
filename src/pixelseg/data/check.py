"""Checking a data set before training (nnU-Net style: fail early, name every bad file).

:func:`check_dataset` decodes every image and mask once and collects *all* problems
instead of stopping at the first, so a user can fix a folder in one pass.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from pixelseg.data.io import read_image, read_mask
from pixelseg.data.layouts import Sample, find_samples
from pixelseg.errors import DataError


@dataclass
class SampleInfo:
    stem: str
    height: int
    width: int
    foreground: float  # fraction of pixels that are not class 0
    grey: bool = False  # all three channels equal (a greyscale image, whatever its file mode)


@dataclass
class DatasetReport:
    root: str
    format: str
    samples: list[Sample]
    infos: list[SampleInfo] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    mask_values: dict[int, int] = field(default_factory=dict)  # class index -> pixel count

    def raise_if_problems(self) -> None:
        if self.problems:
            raise DataError(
                f"{self.root}: {len(self.problems)} problem(s) in the data set", self.problems
            )

    @property
    def channels(self) -> int:
        """1 when every readable image is greyscale, else 3 (RGB)."""
        return 1 if self.infos and all(i.grey for i in self.infos) else 3

    def summary(self) -> dict:
        heights = [i.height for i in self.infos]
        widths = [i.width for i in self.infos]
        fg = [i.foreground for i in self.infos]
        stats = {
            "root": self.root,
            "format": self.format,
            "n_samples": len(self.samples),
            "n_valid": len(self.infos),
            "problems": list(self.problems),
            "mask_values": {str(k): v for k, v in sorted(self.mask_values.items())},
            "channels": self.channels,
        }
        if self.infos:
            stats.update(
                height={
                    "min": min(heights),
                    "median": int(np.median(heights)),
                    "max": max(heights),
                },
                width={"min": min(widths), "median": int(np.median(widths)), "max": max(widths)},
                foreground_fraction={
                    "min": round(min(fg), 4),
                    "median": round(float(np.median(fg)), 4),
                    "max": round(max(fg), 4),
                },
            )
        return stats


def inspect_sample(
    sample: Sample,
    num_classes: int = 1,
    ignore_index: int | None = None,
    colors: list[list[int]] | None = None,
) -> tuple[SampleInfo | None, list[str], Counter]:
    """Decode one pair; return its info (None if unusable), its problems and its mask values."""
    problems: list[str] = []
    image = mask = None
    try:
        image = read_image(sample.image)
    except DataError as exc:
        problems.append(str(exc))
    if sample.mask is None:
        problems.append(f"{sample.image}: no mask found for this image")
    else:
        try:
            mask = read_mask(sample.mask, num_classes, colors, ignore_index)
        except DataError as exc:
            problems.append(str(exc))
    if image is None or mask is None:
        return None, problems, Counter()
    if image.shape[:2] != mask.shape:
        problems.append(
            f"{sample.mask}: mask size {mask.shape[1]}x{mask.shape[0]} differs from image size "
            f"{image.shape[1]}x{image.shape[0]} ({sample.image.name})"
        )
        return None, problems, Counter()
    values, counts = np.unique(mask, return_counts=True)
    hist = Counter(dict(zip(values.tolist(), counts.tolist(), strict=True)))
    if num_classes > 1:
        bad = sorted(v for v in hist if v >= num_classes and v != ignore_index)
        if bad:
            hint = "; it looks like a binary mask (use 1 class)" if set(hist) <= {0, 255} else ""
            problems.append(f"{sample.mask}: class values {bad} outside 0..{num_classes - 1}{hint}")
    grey = bool((image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all())
    counted = mask != ignore_index if ignore_index is not None else np.ones(mask.shape, bool)
    foreground = float(((mask > 0) & counted).sum() / max(counted.sum(), 1))  # void apart
    info = SampleInfo(sample.stem, image.shape[0], image.shape[1], foreground, grey)
    return info, problems, hist


def check_samples(
    root: str | Path,
    fmt: str,
    samples: list[Sample],
    num_classes: int = 1,
    progress: bool = False,
    ignore_index: int | None = None,
    colors: list[list[int]] | None = None,
    remember: bool = False,
) -> DatasetReport:
    """Check every pair. With ``remember``, each pair's result is kept in the disk cache's
    folder (:mod:`pixelseg.data.cache`) under its files' paths, sizes and modification
    times, and a later check of an unchanged pair reads it back instead of decoding the
    files again: a rerun on a large data set decodes only what changed."""
    report = DatasetReport(str(root), fmt, samples)
    totals: Counter = Counter()
    settings = {"num_classes": num_classes, "ignore_index": ignore_index, "colors": colors}
    memo = _Memo(root, fmt, settings) if remember else None
    iterator = samples
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(samples, desc="checking", unit="img", leave=False, disable=None)
    for sample in iterator:
        found = memo.get(sample) if memo else None
        if found is None:
            found = inspect_sample(sample, num_classes, ignore_index, colors)
            if memo:
                memo.put(sample, found)
        info, problems, hist = found
        report.problems.extend(problems)
        totals.update(hist)
        if info is not None:
            report.infos.append(info)
    if memo:
        memo.save()
    report.mask_values = dict(totals)
    return report


class _Memo:
    """Check results by file identity, in ``<cache>/checks/<data set and settings>.json``."""

    VERSION = 1  # of what an entry holds: a change makes older entries misses

    def __init__(self, root: str | Path, fmt: str, settings: dict) -> None:
        from pixelseg.data.cache import cache_root

        key = json.dumps([self.VERSION, str(Path(root).resolve()), fmt, settings],
                         sort_keys=True)  # fmt: skip
        name = hashlib.sha256(key.encode()).hexdigest()[:20]
        self.path = cache_root() / "checks" / f"{name}.json"
        try:
            self.entries = json.loads(self.path.read_text())["entries"]
        except (OSError, ValueError, KeyError, TypeError):  # none yet, or unreadable: start over
            self.entries = {}
        self.seen: dict = {}

    @staticmethod
    def _identity(sample: Sample) -> str:
        parts = []
        for path in (sample.image, sample.mask):
            info = os.stat(path) if path is not None else None
            parts.append(f"{path}|{info.st_size}|{info.st_mtime_ns}" if info else "-")
        return "||".join(parts)

    def get(self, sample: Sample) -> tuple[SampleInfo | None, list[str], Counter] | None:
        key = self._identity(sample)
        entry = self.entries.get(key)
        try:
            info = SampleInfo(**entry[0]) if entry[0] else None
            found = info, [str(p) for p in entry[1]], Counter(
                {int(k): int(v) for k, v in entry[2].items()})  # fmt: skip
        except (TypeError, ValueError, AttributeError, IndexError, KeyError):
            return None  # none, or not what this version writes: check the pair again
        if info is not None and info.stem != sample.stem:
            return None
        self.seen[key] = entry
        return found

    def put(self, sample: Sample, found: tuple[SampleInfo | None, list[str], Counter]) -> None:
        info, problems, hist = found
        self.seen[self._identity(sample)] = [asdict(info) if info else None, problems,
                                             {str(k): v for k, v in hist.items()}]  # fmt: skip

    def save(self) -> None:
        """Keep this check's pairs only (files gone or changed are dropped)."""
        from pixelseg.files import write_json

        if self.seen != self.entries:
            write_json(self.path, {"entries": self.seen})


def check_dataset(
    root: str | Path,
    format: str = "auto",
    num_classes: int = 1,
    progress: bool = False,
    ignore_index: int | None = None,
    colors: list[list[int]] | None = None,
) -> DatasetReport:
    """Find and check every pair under ``root``. Never raises for bad files: see ``.problems``."""
    fmt, samples = find_samples(root, format)
    return check_samples(root, fmt, samples, num_classes, progress, ignore_index, colors)
