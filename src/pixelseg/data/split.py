"""A seeded, optionally stratified train/val/test split, saved with the run.

The split is stored by sample *stem* in ``split.json`` so ``pixelseg evaluate`` can find the
test images again later, whatever order the files are listed in.
"""

from __future__ import annotations

import json
import random
import re
from collections import defaultdict
from pathlib import Path

from pixelseg.data.layouts import Sample
from pixelseg.errors import DataError, SettingsError
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
        raise SettingsError(
            "val_fraction and test_fraction must be in [0, 1) and sum to less than 1"
        )
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


# "0016E5_07959", "0006R0_f00960", "patient12-slice040": a sequence (or patient) name, then
# a zero-padded frame number of at least 3 digits
_SEQUENCE = re.compile(r"^(.*[A-Za-z].*?)[_-][A-Za-z]*(\d{3,})$")
MIN_SEQUENCES = 3  # one each for train, val and test at least


def sequences(stems: list[str]) -> list[str] | None:
    """The sequence of each stem when the file names show sequences, else None.

    Names show sequences when every stem is ``<name>_<frame>`` with at least
    ``MIN_SEQUENCES`` names, several frames each, and frame numbers of one width per name
    (zero-padded, as video frames and slices are numbered). Names of classes numbered
    1, 2, ... 100 (``Abyssinian_1``, as in Oxford-IIIT Pets) are not sequences.
    """
    names = []
    widths: dict[str, set[int]] = defaultdict(set)
    for stem in stems:
        match = _SEQUENCE.match(stem)
        if match is None:
            return None
        names.append(match.group(1))
        widths[match.group(1)].add(len(match.group(2)))
    counts = defaultdict(int)
    for name in names:
        counts[name] += 1
    if len(counts) < MIN_SEQUENCES or min(counts.values()) < 2:
        return None
    if any(len(w) > 1 for w in widths.values()):
        return None
    return names


def make_sequence_split(
    stems: list[str], groups: list[str], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[str]] | None:
    """Whole sequences to test, then to val, until each holds its fraction of the images,
    so neither shares a scene with training: frames of one video are near-copies, and a
    validation frame whose neighbours were trained on flatters every score it gives.
    None when that leaves training less than half of the images."""
    members: dict[str, list[str]] = defaultdict(list)
    for stem, group in zip(stems, groups, strict=True):
        members[group].append(stem)
    order = sorted(members)
    random.Random(seed).shuffle(order)
    split: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    wanted = {"test": test_fraction * len(stems), "val": val_fraction * len(stems)}
    for group in order:
        size = len(members[group])
        # a sequence goes to a held-out part that is still short, if it does not overfill it
        part = next(
            (k for k in ("test", "val")
             if len(split[k]) < wanted[k] and len(split[k]) + size <= 2 * wanted[k]),
            "train",
        )  # fmt: skip
        split[part] += members[group]
    short = any(wanted[k] > 0 and not split[k] for k in ("test", "val"))
    if short or len(split["train"]) < len(stems) / 2:
        return None
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
    try:
        split = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: invalid JSON ({exc})") from None
    if not isinstance(split, dict):
        raise DataError(f"{path}: a JSON object of {', '.join(SPLITS)} lists was expected")
    missing = [k for k in SPLITS if k not in split]
    if missing:
        raise DataError(f"{path}: split file lacks {', '.join(missing)}")
    return split
