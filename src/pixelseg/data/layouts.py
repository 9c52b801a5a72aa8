"""Finding (image, mask) pairs in the folder layouts people actually have.

Supported layouts (``format``):

- ``ph2``: the PH2 database as distributed: ``PH2 Dataset images/IMDxxx/IMDxxx_Dermoscopic_Image/
  IMDxxx.bmp`` with ``IMDxxx_lesion/IMDxxx_lesion.bmp``. ``_roi`` folders and ``.jpg`` copies
  are ignored. ``PH2_dataset.csv`` (if present) gives each image's diagnosis, used to stratify
  the split.
- ``segnet``: the CamVid layout prepared for SegNet: ``train/`` + ``trainannot/``, and
  optionally ``val/`` + ``valannot/`` and ``test/`` + ``testannot/``, with index masks. The
  data set's own split is kept.
- ``folders``: the MADS/Kaggle layout ``images/`` + ``masks/`` with matching file stems (the
  mask's extension may differ; a suffix such as ``_mask``, ``_lesion``, ``_label`` or
  ``_segmentation`` is accepted, see ``_MASK_SUFFIXES``). Folder names are matched without
  regard to case (``images``/``image``/``imgs``, ``masks``/``labels``/``label``/``gt``...),
  in the data folder or one folder down (the top folder of an unpacked download).
- ``pairs``: a CSV or text file with one ``image,mask`` pair per line (paths relative to the
  file), for anything else.

Pairs are always matched by name, never by the order a directory walk happens to return.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pixelseg.data.io import IMAGE_EXTENSIONS, is_image_file
from pixelseg.errors import DataError, SettingsError

FORMATS = ("auto", "ph2", "segnet", "folders", "pairs")
_IMAGE_DIRS = ("images", "image", "imgs", "img")
_MASK_DIRS = ("masks", "mask", "labels", "label", "annotations", "gt")
_MASK_SUFFIXES = (
    "_mask",
    "_masks",
    "_lesion",
    "_label",
    "_labels",
    "_segmentation",
    "_gt",
    "-mask",
)
_PH2_IMAGES = "PH2 Dataset images"


@dataclass(frozen=True)
class Sample:
    """One image and its mask (``mask`` is None when no mask was found)."""

    stem: str
    image: Path
    mask: Path | None
    group: str | None = None  # a label to stratify the split by (e.g. PH2's diagnosis)
    subset: str | None = None  # the data set's own split ("train", "val", "test"), if it has one


def find_samples(root: str | Path, format: str = "auto") -> tuple[str, list[Sample]]:
    """Return ``(format, samples)`` for the data set at ``root``, sorted by stem."""
    root = Path(root)
    if format not in FORMATS:
        raise SettingsError(f"Unknown data format {format!r}. Valid formats: {', '.join(FORMATS)}")
    if not root.exists():
        raise DataError(f"{root}: no such file or folder")
    if format == "auto":
        format = detect_format(root)
    finder = {
        "ph2": _find_ph2,
        "segnet": _find_segnet,
        "folders": _find_folders,
        "pairs": _find_pairs,
    }[format]
    samples = sorted(finder(root), key=lambda s: s.stem)
    if not samples:
        raise DataError(f"{root}: no images found (format {format})")
    return format, samples


def detect_format(root: Path) -> str:
    if root.is_file():
        return "pairs"
    if _ph2_images_dir(root) is not None:
        return "ph2"
    if _segnet_dirs(root):
        return "segnet"
    if _image_mask_dirs(root) is not None:
        return "folders"
    raise DataError(
        f"{root}: cannot tell the data layout. Expected PH2's '{_PH2_IMAGES}' folder, an "
        f"'images/' + 'masks/' pair of folders, or a CSV of image,mask pairs (see --format)."
    )


# ---- PH2 -------------------------------------------------------------------------------------


def _ph2_images_dir(root: Path) -> Path | None:
    for candidate in (root / _PH2_IMAGES, root / "PH2Dataset" / _PH2_IMAGES):
        if candidate.is_dir():
            return candidate
    return None


def _ph2_diagnoses(images_dir: Path) -> dict[str, str]:
    csv_path = images_dir.parent / "PH2_dataset.csv"
    if not csv_path.is_file():
        return {}
    with open(csv_path, newline="", encoding="utf-8-sig") as f:  # the file starts with a BOM
        rows = list(csv.reader(f))
    return {r[0].strip(): r[1].strip() for r in rows[1:] if len(r) >= 2}


def _find_ph2(root: Path) -> list[Sample]:
    images_dir = _ph2_images_dir(root)
    if images_dir is None:
        raise DataError(f"{root}: no '{_PH2_IMAGES}' folder (PH2 layout)")
    diagnoses = _ph2_diagnoses(images_dir)
    samples = []
    for case in sorted(p for p in images_dir.iterdir() if p.is_dir()):
        name = case.name
        image = _first_bmp(case / f"{name}_Dermoscopic_Image", name)
        if image is None:
            continue  # not a case folder
        mask = _first_bmp(case / f"{name}_lesion", f"{name}_lesion")
        samples.append(Sample(name, image, mask, diagnoses.get(name)))
    return samples


def _first_bmp(folder: Path, stem: str) -> Path | None:
    if not folder.is_dir():
        return None
    exact = folder / f"{stem}.bmp"
    if exact.is_file():
        return exact
    bmps = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".bmp")
    return bmps[0] if bmps else None


# ---- SegNet's CamVid layout: train/ + trainannot/, val/ + valannot/, test/ + testannot/ -----

SUBSETS = ("train", "val", "test")


def _segnet_dirs(root: Path) -> dict[str, tuple[Path, Path]]:
    """The subsets present as ``X/`` + ``Xannot/`` folder pairs: any of them, so a held-out
    ``test/`` + ``testannot/`` alone can be scored (training needs ``train/``)."""
    if not root.is_dir():
        return {}
    return {
        subset: (root / subset, root / f"{subset}annot")
        for subset in SUBSETS
        if (root / subset).is_dir() and (root / f"{subset}annot").is_dir()
    }


def _find_segnet(root: Path) -> list[Sample]:
    dirs = _segnet_dirs(root)
    if not dirs:
        raise DataError(
            f"{root}: expected folder pairs such as 'train/' + 'trainannot/' (SegNet layout: "
            "train, val and test, each with its annot folder)"
        )
    samples = []
    for subset, (images_dir, masks_dir) in dirs.items():
        images = _index_by_stem(sorted(p for p in images_dir.iterdir() if is_image_file(p)))
        masks = _index_by_stem(sorted(p for p in masks_dir.iterdir() if is_image_file(p)))
        for stem, path in images.items():
            samples.append(Sample(stem, path, masks.get(stem), subset=subset))
    clashes = [stem for stem, n in Counter(s.stem for s in samples).items() if n > 1]
    if clashes:
        raise DataError(f"{root}: the same name in two subsets", sorted(clashes))
    return samples


# ---- images/ + masks/ ------------------------------------------------------------------------


def _child_dir(parent: Path, names: tuple[str, ...]) -> Path | None:
    by_lower = {p.name.lower(): p for p in parent.iterdir() if p.is_dir()}
    return next((by_lower[n] for n in names if n in by_lower), None)


def _image_mask_dirs(root: Path) -> tuple[Path, Path] | None:
    """``root/images`` + ``root/masks``, or the same one folder down (a Kaggle zip's top folder)."""
    if not root.is_dir():
        return None
    found = []
    for folder in [root, *sorted(p for p in root.iterdir() if p.is_dir())]:
        images, masks = _child_dir(folder, _IMAGE_DIRS), _child_dir(folder, _MASK_DIRS)
        if images is not None and masks is not None:
            if folder == root:
                return images, masks
            found.append((images, masks))
    if len(found) > 1:
        names = ", ".join(str(images.parent) for images, _ in found)
        raise DataError(f"{root}: several data sets inside ({names}); point at one of them")
    return found[0] if found else None


def _mask_key(stem: str) -> str:
    for suffix in _MASK_SUFFIXES:
        if stem.lower().endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def _index_by_stem(files: list[Path], key=lambda s: s) -> dict[str, Path]:
    index: dict[str, Path] = {}
    clashes = []
    for f in files:
        k = key(f.stem)
        if k in index:
            clashes.append(f"{index[k]} and {f} have the same name")
        index[k] = f
    if clashes:
        raise DataError("Two files share a name, so pairs are ambiguous:", clashes)
    return index


def _find_folders(root: Path) -> list[Sample]:
    dirs = _image_mask_dirs(root)
    if dirs is None:
        raise DataError(f"{root}: expected an 'images/' folder and a 'masks/' folder")
    images_dir, masks_dir = dirs
    images = _index_by_stem(sorted(p for p in images_dir.iterdir() if is_image_file(p)))
    masks = _index_by_stem(sorted(p for p in masks_dir.iterdir() if is_image_file(p)))
    if not set(images) & set(masks):  # try stripping mask suffixes like "_mask"
        masks = _index_by_stem(sorted(masks.values()), key=_mask_key)
    return [Sample(stem, path, masks.get(stem)) for stem, path in images.items()]


# ---- explicit pair list -----------------------------------------------------------------------


def _find_pairs(path: Path) -> list[Sample]:
    if not path.is_file() or path.suffix.lower() in IMAGE_EXTENSIONS:
        raise DataError(f"{path}: the 'pairs' format needs a CSV/text file of image,mask lines")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: not a CSV/text file of image,mask pairs ({exc})") from None
    pairs = []
    for lineno, row in enumerate(rows, start=1):
        row = [c.strip() for c in row if c.strip()]
        if not row or row[0].startswith("#"):
            continue  # blank or comment
        if lineno == 1 and Path(row[0]).suffix.lower() not in IMAGE_EXTENSIONS:
            continue  # a header such as "image,mask" or "image_path,mask_path"
        pairs.append((row[0], row[1] if len(row) > 1 else None))
    # Images that share a file name are named by their path instead, so a sample's name
    # (used by split.json) never depends on the order of the lines.
    counts = Counter(Path(image).stem for image, _ in pairs)
    samples = []
    for image, mask in pairs:
        stem = Path(image).stem
        if counts[stem] > 1:
            stem = Path(image).with_suffix("").as_posix().replace("/", "__")
        samples.append(Sample(stem, path.parent / image, path.parent / mask if mask else None))
    return samples


def list_images(inputs: list[str | Path], exclude: str | Path | None = None) -> list[Path]:
    """Expand files and folders (recursively, sorted) into a list of image files for prediction.

    Files under ``exclude`` (the output folder) are skipped, so predicting a folder that
    holds earlier outputs does not predict the predictions.
    """
    return list(iter_images(inputs, exclude))


def iter_images(inputs: list[str | Path], exclude: str | Path | None = None) -> Iterator[Path]:
    """:func:`list_images`, lazily: a folder of a million images is walked as it is read
    (one directory listing in memory at a time), in the same sorted order. The inputs are
    checked first (:func:`check_inputs`), before the first path is given."""
    check_inputs(inputs, exclude)
    skip = Path(exclude).resolve() if exclude is not None else None
    for item in map(Path, inputs):
        if item.is_dir():
            yield from _walk_sorted(item, skip)
        else:
            yield item


def check_inputs(inputs: list[str | Path], exclude: str | Path | None = None) -> None:
    """Every input exists, and every folder holds an image outside ``exclude`` (found by
    looking until the first one, in any order: a folder of a million files is neither
    sorted nor walked whole for this)."""
    skip = Path(exclude).resolve() if exclude is not None else None
    for item in map(Path, inputs):
        if not item.exists():
            raise DataError(f"{item}: no such file or folder")
        if item.is_dir() and not _has_image(item, skip):
            raise DataError(f"{item}: no images in this folder")


def _has_image(folder: Path, skip: Path | None) -> bool:
    if _skipped(folder, skip):
        return False
    with os.scandir(folder) as scan:
        folders = []
        for entry in scan:
            if entry.is_dir(follow_symlinks=False):
                folders.append(folder / entry.name)
            elif is_image_file(folder / entry.name):
                return True
    return any(_has_image(sub, skip) for sub in folders)


def _skipped(folder: Path, skip: Path | None) -> bool:
    """``folder`` is the output folder, or inside it: never predict the predictions."""
    return skip is not None and (folder.resolve() == skip or skip in folder.resolve().parents)


def _walk_sorted(folder: Path, skip: Path | None) -> Iterator[Path]:
    """The image files under ``folder``, depth first with each directory's entries sorted
    by name (the order of ``sorted(folder.rglob(...))``), never entering ``skip``."""
    if _skipped(folder, skip):
        return
    with os.scandir(folder) as scan:
        entries = sorted(scan, key=lambda e: e.name)
    for entry in entries:
        path = folder / entry.name
        if entry.is_dir(follow_symlinks=False):
            yield from _walk_sorted(path, skip)
        elif is_image_file(path):
            yield path
