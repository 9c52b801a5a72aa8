"""Class tables: the names (and optional colours) of a multi-class data set's classes.

A data set may ship ``classes.json`` (a list of names, or of ``{"name": ..., "color":
[r, g, b]}`` objects, or an object ``{"classes": [...], "ignore_index": N}``) or
``classes.csv`` (a header with ``name`` and optionally ``r,g,b``), in its root folder. The
row order is the class index. The CamVid layout prepared for SegNet ships no table but is
well known, so it is recognised (11 classes, 11 = void) unless a table says otherwise.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from pixelseg.errors import DataError, SettingsError

CAMVID_CLASSES = (
    "Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
    "Pedestrian", "Bicyclist",
)  # fmt: skip
CAMVID_VOID = 11


@dataclass(frozen=True)
class ClassTable:
    names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...] | None = None
    ignore_index: int | None = None
    source: str = ""

    def __post_init__(self) -> None:
        if len(self.names) < 2:
            raise DataError(f"{self.source}: a class table needs at least two classes")
        if len(set(self.names)) != len(self.names):
            raise DataError(f"{self.source}: class names must be unique")
        if self.colors is not None and len(self.colors) != len(self.names):
            raise DataError(f"{self.source}: one colour per class is needed")


def load_class_table(root: str | Path) -> ClassTable | None:
    """The table in ``root/classes.json`` or ``root/classes.csv``, if there is one."""
    root = Path(root)
    if not root.is_dir():
        return None
    if (root / "classes.json").is_file():
        return _from_json(root / "classes.json")
    if (root / "classes.csv").is_file():
        return _from_csv(root / "classes.csv")
    return None


def _from_json(path: Path) -> ClassTable:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON ({exc})") from None
    ignore = None
    if isinstance(data, dict):
        ignore = data.get("ignore_index")
        data = data.get("classes", [])
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a list of class names or {{name, color}} objects")
    names, colors = [], []
    for entry in data:
        if isinstance(entry, str):
            names.append(entry)
        elif isinstance(entry, dict) and "name" in entry:
            names.append(str(entry["name"]))
            if "color" in entry:
                colors.append(tuple(int(c) for c in entry["color"]))
        else:
            raise DataError(f"{path}: cannot read class entry {entry!r}")
    return ClassTable(tuple(names), tuple(colors) or None, ignore, str(path))


def _from_csv(path: Path) -> ClassTable:
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    if not rows or "name" not in rows[0]:
        raise DataError(f"{path}: expected a header with a 'name' column (and optionally r,g,b)")
    names = tuple(row["name"].strip() for row in rows)
    colors = None
    if {"r", "g", "b"} <= set(rows[0]):
        try:
            colors = tuple((int(r["r"]), int(r["g"]), int(r["b"])) for r in rows)
        except ValueError as exc:
            raise DataError(f"{path}: bad colour value ({exc})") from None
    return ClassTable(names, colors, None, str(path))


def parse_class_names(text: str) -> tuple[str, ...]:
    """``--classes``: comma-separated names, or the path of a classes.json/classes.csv."""
    path = Path(text)
    if path.is_file():
        table = _from_json(path) if path.suffix.lower() == ".json" else _from_csv(path)
        return table.names
    return tuple(name.strip() for name in text.split(",") if name.strip())


def known_table(fmt: str, root: str | Path) -> ClassTable | None:
    """The class table for ``root``: its own file, else the SegNet CamVid classes."""
    table = load_class_table(root)
    if table is not None:
        return table
    if fmt == "segnet":
        return ClassTable(CAMVID_CLASSES, None, CAMVID_VOID, "SegNet CamVid layout")
    return None


@dataclass(frozen=True)
class ClassSettings:
    """The classes a run uses, settled from the user's settings and the data."""

    num_classes: int
    names: list[str] | None
    ignore_index: int | None
    colors: list[list[int]] | None  # RGB per class, for colour-coded mask files
    why: str


def resolve_classes(
    fmt: str,
    root: str | Path,
    num_classes: int | None,
    class_names: list[str] | None = None,
    ignore_index: int | None = None,
) -> ClassSettings:
    """Settle the classes from what the user gave and the data set's class table.

    What the user gave wins; the rest comes from the data set's class table; a data set
    without one is binary (foreground vs background) unless told otherwise.
    """
    table = known_table(fmt, root)
    if ignore_index in (0, 1) and (num_classes == 1 or (num_classes is None and table is None)):
        raise SettingsError(
            f"--ignore-index {ignore_index} is a class of binary masks (0 background, 1 "
            "foreground); void needs another value, e.g. 255"
        )
    if num_classes is None:
        if class_names:
            num_classes = len(class_names)
        elif table is not None:
            num_classes = len(table.names)
        else:
            why = "binary masks (no class table in the data)"
            return ClassSettings(1, class_names, ignore_index, None, why)
    why = f"{num_classes} classes"
    colors = None
    if table is not None and len(table.names) == num_classes:
        class_names = class_names or list(table.names)
        if ignore_index is None:
            ignore_index = table.ignore_index
        colors = [list(c) for c in table.colors] if table.colors else None
        why += f", names and ignore index from {table.source}"
    if class_names is not None and len(class_names) != num_classes:
        raise SettingsError(f"{len(class_names)} class names given for {num_classes} classes")
    if class_names is not None and len(set(class_names)) != len(class_names):
        raise SettingsError(f"class names must be distinct, got {', '.join(class_names)}")
    return ClassSettings(num_classes, class_names, ignore_index, colors, why)


def median_frequency_weights(
    masks: Iterable[torch.Tensor], num_classes: int, ignore_index: int | None = None
) -> list[float]:
    """SegNet's median-frequency balancing: ``w_c = median(f) / f_c``.

    ``f_c`` is the pixels of class ``c`` divided by the pixels of the images in which ``c``
    appears (Eigen & Fergus 2015, used by SegNet on CamVid). ``masks``: (N, H, W) integers.
    A class that never appears gets weight 0 (it cannot be learned from this data).
    """
    counts = torch.zeros(num_classes, dtype=torch.float64)
    image_pixels = torch.zeros(num_classes, dtype=torch.float64)
    for mask in masks:
        values = mask.long().flatten()
        valid = (
            values[(values != ignore_index) & (values < num_classes)]
            if ignore_index is not None
            else values[values < num_classes]
        )
        per_class = torch.bincount(valid, minlength=num_classes).double()
        counts += per_class
        image_pixels += (per_class > 0).double() * valid.numel()
    present = counts > 0
    freq = torch.where(present, counts / image_pixels.clamp_min(1), torch.zeros_like(counts))
    median = freq[present].median() if present.any() else torch.tensor(1.0, dtype=torch.float64)
    weights = torch.where(present, median / freq.clamp_min(1e-12), torch.zeros_like(freq))
    return [round(float(w), 6) for w in weights]
