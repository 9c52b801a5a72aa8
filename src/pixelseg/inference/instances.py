"""Objects from a semantic mask: connected components per class, as COCO results and CSV.

Semantic segmentation says which class each pixel has, not which object it belongs to;
for counting and measuring (moles, cells, people) the separate objects of one class are
its connected components. Two pixels belong to the same object when they are neighbours:
by default 4-connectivity (sharing an edge), so objects that touch only at a corner stay
two; ``connectivity=8`` joins them. An object inside another's hole is its own object.

Each object is written in the COCO *results* format (what detectors submit and
``pycocotools`` reads: ``COCO.loadRes``, ``mask.decode``): category, ``bbox`` as
[x, y, width, height], ``area``, ``score`` (the mean predicted probability of the class
over the object) and ``segmentation`` as compressed RLE, which is exact (polygons cannot
hold holes).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import numpy as np

from pixelseg.errors import SettingsError


@dataclass(frozen=True)
class Instance:
    """One connected object of one class; ``id`` is its value in the label image."""

    id: int
    category: int
    area: int
    bbox: tuple[int, int, int, int]  # x, y, width, height
    score: float
    centroid: tuple[float, float]  # x, y: the mean column and row index of its pixels


@dataclass
class Instances:
    """The objects of one image and its label image (HxW int32, 0 = no object)."""

    labels: np.ndarray
    items: list[Instance]

    def __len__(self) -> int:
        return len(self.items)

    def mask(self, instance: Instance) -> np.ndarray:
        """HxW bool mask of one object."""
        return self.labels == instance.id


def find_instances(
    mask: np.ndarray,
    proba: np.ndarray | None = None,
    background: int | None = 0,
    connectivity: int = 4,
) -> Instances:
    """Connected components of every class in ``mask`` except ``background``.

    ``mask``: HxW class indices. ``proba``: CxHxW probabilities (C = 1 for binary: the
    foreground's), for each object's score (1.0 without). Objects are numbered 1, 2, ...
    class by class, each class's in raster order of their first pixel.
    """
    from scipy import ndimage  # here, not at the top: its import alone takes ~0.2 s

    if connectivity not in (4, 8):
        raise SettingsError(f"connectivity must be 4 or 8, got {connectivity}")
    if mask.ndim != 2:
        raise ValueError(f"expected an HxW mask, got shape {mask.shape}")
    structure = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    labels = np.zeros(mask.shape, np.int32)
    items: list[Instance] = []
    for category in np.unique(mask).tolist():
        if category == background:
            continue
        components, count = ndimage.label(mask == category, structure)
        if count == 0:
            continue
        ids = np.arange(1, count + 1)
        areas = np.bincount(components.ravel(), minlength=count + 1)[1:]
        centroids = ndimage.center_of_mass(components > 0, components, ids)
        if proba is None:
            scores = np.ones(count)
        else:
            if proba.shape[0] == 1:  # binary: the foreground's probability, or background's
                channel = proba[0] if category else 1 - proba[0]
            else:
                channel = proba[category]
            scores = ndimage.mean(channel, components, ids)
        boxes = ndimage.find_objects(components)
        first = len(items)
        for i, box in enumerate(boxes):
            y, x = box
            items.append(
                Instance(
                    id=first + i + 1, category=int(category), area=int(areas[i]),
                    bbox=(x.start, y.start, x.stop - x.start, y.stop - y.start),
                    score=float(scores[i]),
                    centroid=(float(centroids[i][1]), float(centroids[i][0])),
                )
            )  # fmt: skip
        inside = components > 0
        labels[inside] = components[inside] + first
    return Instances(labels, items)


def background_class(num_classes: int, class_names: list[str] | None) -> int | None:
    """The class that holds no objects: 0 for binary runs and for multi-class runs whose
    class 0 is unnamed or named background; else none (CamVid's class 0 is Sky)."""
    if num_classes == 1 or not class_names or class_names[0].lower() in ("background", "bg"):
        return 0
    return None


def rle_encode(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE of an HxW bool mask: run lengths of 0s and 1s alternately,
    starting with 0s (possibly an empty run), in column-major order."""
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], edges, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return counts


def rle_decode(counts: list[int], size: tuple[int, int]) -> np.ndarray:
    """The HxW bool mask of an uncompressed COCO RLE (``size`` = (height, width))."""
    height, width = size
    if sum(counts) != height * width:
        raise ValueError(f"RLE covers {sum(counts)} pixels, not {height}x{width}")
    values = np.arange(len(counts)) % 2 == 1
    flat = np.repeat(values, counts)
    return flat.reshape(width, height).T


def rle_to_string(counts: list[int]) -> str:
    """Compress RLE counts to COCO's string form (as pycocotools' ``rleToString``): each
    count, after the third minus the count two before, in 5-bit groups with a continuation
    bit, offset into printable ASCII."""
    chars = []
    for i, count in enumerate(counts):
        x = count - counts[i - 2] if i > 2 else count
        more = True
        while more:
            c = x & 0x1F
            x >>= 5  # an arithmetic shift, as in C on a signed long
            more = x != -1 if c & 0x10 else x != 0
            chars.append(chr(c + 48 + (0x20 if more else 0)))
    return "".join(chars)


def rle_from_string(text: str) -> list[int]:
    """Counts of a COCO compressed RLE string (the inverse of :func:`rle_to_string`)."""
    counts: list[int] = []
    p = 0
    while p < len(text):
        x, k, more = 0, 0, True
        while more:
            c = ord(text[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)  # sign-extend
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def instance_rle(instances: Instances, instance: Instance) -> dict:
    """``{"size": [h, w], "counts": str}`` for one object, computed from its bounding box
    (not the whole image), so many objects on a large image stay cheap."""
    height, width = instances.labels.shape
    x0, y0, w, h = instance.bbox
    crop = instances.labels[y0 : y0 + h, x0 : x0 + w] == instance.id
    cols, rows = np.nonzero(crop.T)  # column-major order, as COCO's RLE
    index = (cols + x0).astype(np.int64) * height + rows + y0
    breaks = np.flatnonzero(np.diff(index) != 1)
    starts = np.concatenate([index[:1], index[breaks + 1]])
    ends = np.concatenate([index[breaks], index[-1:]]) + 1
    bounds = np.stack([starts, ends], axis=1).ravel()
    counts = np.diff(np.concatenate([[0], bounds, [height * width]])).tolist()
    if counts[-1] == 0:
        counts.pop()
    return {"size": [height, width], "counts": rle_to_string(counts)}


def class_name(names: list[str] | None, category: int) -> str:
    """A class's name: ``names[category]``; a binary run's one name (``--classes lesion``)
    names its foreground, class 1; the index itself when there is no name."""
    if names and len(names) == 1 and category == 1:
        return names[0]
    if names and 0 <= category < len(names):
        return names[category]
    return str(category)


def to_coco(
    instances: Instances, image_id: int, file_name: str, class_names: list[str] | None = None
) -> list[dict]:
    """The objects as COCO result dicts (extra keys: ``file_name``, ``category_name``)."""
    results = []
    for item in instances.items:
        results.append(
            {
                "image_id": image_id, "file_name": file_name, "id": item.id,
                "category_id": item.category,
                "category_name": class_name(class_names, item.category),
                "bbox": list(item.bbox), "area": item.area, "score": round(item.score, 6),
                "segmentation": instance_rle(instances, item),
            }
        )  # fmt: skip
    return results


CSV_COLUMNS = ["id", "class", "class_name", "area", "x", "y", "width", "height",
               "centroid_x", "centroid_y", "score"]  # fmt: skip


def to_csv(instances: Instances, class_names: list[str] | None = None) -> str:
    """One row per object: id, class, area in pixels, bounding box, centroid and score."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for item in instances.items:
        name = class_name(class_names, item.category)
        writer.writerow(
            [item.id, item.category, name, item.area, *item.bbox,
             f"{item.centroid[0]:.1f}", f"{item.centroid[1]:.1f}", f"{item.score:.4f}"]
        )  # fmt: skip
    return buffer.getvalue()


def color_instances(image: np.ndarray, instances: Instances, alpha: float = 0.5) -> np.ndarray:
    """HxWx3 uint8: each object tinted in its own colour over ``image``, outlined in white."""
    rng = np.random.default_rng(0)  # the same colours for the same ids, run after run
    palette = np.concatenate(
        [np.zeros((1, 3)), rng.integers(60, 256, (len(instances) + 1, 3))]
    ).astype(np.float32)
    labels = instances.labels
    tint = palette[labels]
    inside = (labels > 0)[..., None]
    out = np.where(inside, (1 - alpha) * image + alpha * tint, image)
    edge = np.zeros(labels.shape, bool)
    edge[1:] |= labels[1:] != labels[:-1]
    edge[:-1] |= labels[:-1] != labels[1:]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    out[edge & (labels > 0)] = 255
    return out.round().astype(np.uint8)
