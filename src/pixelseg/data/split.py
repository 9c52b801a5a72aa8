"""A seeded, optionally stratified train/val/test split, saved with the run.

The split is stored by sample *stem* in ``split.json`` so ``pixelseg evaluate`` can find the
test images again later, whatever order the files are listed in.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path

from pixelseg.data.layouts import Sample
from pixelseg.files import write_json

SPLITS = ("train", "val", "test")


def make_split(
    stems: list[str],
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    strata: list[str] | None = None,
) -> dict[str, list[str]]:
    """Split ``stems`` into train/val/test.

    With ``strata`` (one label per stem, e.g. a diagnosis or a lesion-size bin), each label
    is split in the same proportions, so a small test set still holds every kind of case.
    Val and test get at least one sample each when there are three or more samples.
    """
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError("val_fraction and test_fraction must be in [0, 1) and sum to less than 1")
    if strata is not None and len(strata) != len(stems):
        raise ValueError(f"got {len(strata)} strata for {len(stems)} samples")
    if len(set(stems)) != len(stems):
        raise ValueError("sample names must be unique to be split")
    rng = random.Random(seed)
    labels = strata or [""] * len(stems)
    groups: dict[str, list[str]] = defaultdict(list)
    for stem, label in sorted(zip(stems, labels, strict=True)):
        groups[label].append(stem)
    for label in sorted(groups):
        rng.shuffle(groups[label])

    n = len(stems)
    n_val, n_test = round(n * val_fraction), round(n * test_fraction)
    if n >= 3:  # a split with an empty val or test set is useless for early stopping / reporting
        n_val = max(n_val, 1) if val_fraction > 0 else 0
        n_test = max(n_test, 1) if test_fraction > 0 else 0
    sizes = {label: len(members) for label, members in groups.items()}
    val_quota = _allocate(sizes, n_val)
    test_quota = _allocate({k: sizes[k] - val_quota[k] for k in sizes}, n_test)
    split: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for label, members in groups.items():
        v, t = val_quota[label], test_quota[label]
        split["val"] += members[:v]
        split["test"] += members[v : v + t]
        split["train"] += members[v + t :]
    return {k: sorted(v) for k, v in split.items()}


def _allocate(sizes: dict[str, int], total: int) -> dict[str, int]:
    """Share ``total`` among strata in proportion to their sizes (largest remainder method)."""
    n = sum(sizes.values())
    if n == 0 or total == 0:
        return {k: 0 for k in sizes}
    exact = {k: total * size / n for k, size in sizes.items()}
    quota = {k: int(v) for k, v in exact.items()}
    by_remainder = sorted(sizes, key=lambda k: (exact[k] - quota[k], sizes[k], k), reverse=True)
    for k in by_remainder[: total - sum(quota.values())]:
        quota[k] += 1
    return {k: min(q, sizes[k]) for k, q in quota.items()}


def foreground_strata(fractions: list[float], bins: int = 3) -> list[str]:
    """Label each sample by its foreground-fraction tercile (small / medium / large objects)."""
    if not fractions:
        return []
    ranked = sorted(fractions)
    cuts = [ranked[int(len(ranked) * q / bins)] for q in range(1, bins)]
    return [str(sum(f >= c for c in cuts)) for f in fractions]


def select(samples: list[Sample], stems: list[str]) -> list[Sample]:
    """The samples named in ``stems`` (e.g. one part of a split), in their original order."""
    wanted = set(stems)
    return [s for s in samples if s.stem in wanted]


def save_split(path: str | Path, split: dict[str, list[str]]) -> None:
    write_json(path, split)


def load_split(path: str | Path) -> dict[str, list[str]]:
    split = json.loads(Path(path).read_text())
    missing = [k for k in SPLITS if k not in split]
    if missing:
        raise ValueError(f"{path}: split file lacks {missing}")
    return split
