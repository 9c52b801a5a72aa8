"""Instances from semantic masks: counts, COCO RLE round trips (against pycocotools), CSV."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

from pixelseg.cli import main
from pixelseg.config import TrainConfig
from pixelseg.engine.train import fit
from pixelseg.inference.instances import (
    color_instances,
    find_instances,
    instance_rle,
    rle_decode,
    rle_encode,
    rle_from_string,
    rle_to_string,
    to_coco,
    to_csv,
)
from settings import FAST

# pycocotools 2.0 calls numpy.asarray(copy=False) on its own objects
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _hand_made() -> np.ndarray:
    """Two squares touching at one corner, a ring with a dot in its hole, a lone pixel."""
    m = np.zeros((20, 30), np.uint8)
    m[1:4, 1:4] = 1
    m[4:7, 4:7] = 1  # meets the first square at a corner only
    m[10:17, 10:17] = 1
    m[12:15, 12:15] = 0  # the ring's hole...
    m[13, 13] = 1  # ...with an object of its own inside
    m[0, 29] = 1
    return m


def test_counts_with_touching_corners_and_nested_objects() -> None:
    mask = _hand_made()
    four = find_instances(mask)
    assert len(four) == 5  # two squares, ring, dot, pixel
    assert sorted(i.area for i in four.items) == [1, 1, 9, 9, 40]
    eight = find_instances(mask, connectivity=8)
    assert len(eight) == 4  # the corner joins the squares; the dot stays apart from the ring
    ring = max(four.items, key=lambda i: i.area)
    assert ring.bbox == (10, 10, 7, 7)
    assert not four.mask(ring)[13, 13]  # the hole's dot is not part of the ring
    with pytest.raises(ValueError, match="connectivity"):
        find_instances(mask, connectivity=6)


def test_labels_number_each_object_once() -> None:
    found = find_instances(_hand_made())
    assert sorted(np.unique(found.labels).tolist()) == list(range(len(found) + 1))
    for item in found.items:
        assert found.mask(item).sum() == item.area


def test_multiclass_objects_and_scores() -> None:
    mask = np.zeros((10, 10), np.uint8)
    mask[0:3, 0:3] = 1
    mask[5:8, 5:8] = 2
    mask[0:2, 7:10] = 2
    proba = np.zeros((3, 10, 10), np.float32)
    proba[1, 0:3, 0:3] = 0.8
    proba[2] = 0.6
    found = find_instances(mask, proba)
    assert [(i.category, i.area) for i in found.items] == [(1, 9), (2, 6), (2, 9)]
    assert [round(i.score, 4) for i in found.items] == [0.8, 0.6, 0.6]
    with_sky = find_instances(mask, proba, background=None)  # class 0 counts too
    assert [i.category for i in with_sky.items].count(0) == 1


def test_ids_are_unique_across_classes_and_centroids_are_pixel_means() -> None:
    mask = np.zeros((8, 8), np.uint8)
    mask[0:2, 0:2] = 1
    mask[0:2, 4:6] = 2
    mask[5:8, 0:3] = 1
    found = find_instances(mask)
    assert [i.id for i in found.items] == [1, 2, 3]
    for item in found.items:  # each id marks exactly its own object's pixels
        ys, xs = np.nonzero(found.labels == item.id)
        assert set(mask[ys, xs].tolist()) == {item.category} and len(ys) == item.area
        assert item.centroid == pytest.approx((xs.mean(), ys.mean()))


def test_class_names_of_binary_and_multiclass_runs() -> None:
    from pixelseg.inference.instances import class_name

    assert class_name(["lesion"], 1) == "lesion"  # a binary run's one name: its foreground
    assert class_name(["sky", "road"], 1) == "road"
    assert class_name(None, 3) == "3" and class_name(["a", "b"], 5) == "5"
    found = find_instances(_hand_made())
    assert {r["category_name"] for r in to_coco(found, 1, "a.png", ["lesion"])} == {"lesion"}
    assert "lesion" in to_csv(found, ["lesion"])


def test_binary_background_objects_are_scored_by_their_own_probability() -> None:
    mask = np.array([[0, 1]], np.uint8)
    proba = np.array([[[0.2, 0.9]]], np.float32)  # foreground probabilities
    found = find_instances(mask, proba, background=None)
    scores = {i.category: round(i.score, 4) for i in found.items}
    assert scores == {0: 0.8, 1: 0.9}


def test_rle_round_trips_and_matches_pycocotools() -> None:
    rng = np.random.default_rng(0)
    masks = [rng.random((37, 23)) > p for p in (0.1, 0.5, 0.97)]
    masks += [np.ones((5, 4), bool), np.zeros((5, 4), bool), _hand_made() > 0]
    for m in masks:
        counts = rle_encode(m)
        assert np.array_equal(rle_decode(counts, m.shape), m)
        text = rle_to_string(counts)
        assert rle_from_string(text) == counts
        reference = coco_mask.encode(np.asfortranarray(m.astype(np.uint8)))
        assert text == reference["counts"].decode()
    with pytest.raises(ValueError, match="pixels"):
        rle_decode([3, 2], (2, 2))


def test_instance_rle_from_the_box_equals_the_whole_image_encoding() -> None:
    found = find_instances(_hand_made())
    for item in found.items:
        rle = instance_rle(found, item)
        assert rle["counts"] == rle_to_string(rle_encode(found.mask(item)))
        decoded = coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode()})
        assert np.array_equal(decoded.astype(bool), found.mask(item))
        assert coco_mask.area({"size": rle["size"], "counts": rle["counts"].encode()}) == item.area


def test_coco_results_load_with_pycocotools() -> None:
    from pycocotools.coco import COCO

    mask = _hand_made()
    found = find_instances(mask)
    results = to_coco(found, image_id=7, file_name="a.png", class_names=["bg", "mole"])
    assert {r["category_name"] for r in results} == {"mole"}
    gt = COCO()
    gt.dataset = {
        "images": [{"id": 7, "height": 20, "width": 30, "file_name": "a.png"}],
        "categories": [{"id": 1, "name": "mole"}],
        "annotations": [],
    }
    gt.createIndex()
    loaded = gt.loadRes(json.loads(json.dumps(results)))  # through JSON, as from a file
    assert len(loaded.getAnnIds(imgIds=[7])) == 5
    for r in results:
        box = coco_mask.toBbox({"size": [20, 30], "counts": r["segmentation"]["counts"]})
        assert box.tolist() == r["bbox"]


def test_csv_and_picture() -> None:
    found = find_instances(_hand_made())
    rows = list(csv.DictReader(io.StringIO(to_csv(found))))
    assert len(rows) == 5 and sum(int(r["area"]) for r in rows) == int((_hand_made() > 0).sum())
    image = np.full((20, 30, 3), 100, np.uint8)
    picture = color_instances(image, found)
    assert picture.shape == image.shape
    assert (picture[_hand_made() == 0] == 100).all()
    assert (picture[_hand_made() > 0] != 100).any(axis=-1).all()


def test_predict_cli_instances(tiny_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    fit(TrainConfig(data=str(tiny_data), out=str(run), epochs=3, **FAST))
    image = next((tiny_data / "images").iterdir())
    out = tmp_path / "o"
    assert main(["predict", str(run), str(image), "--out", str(out), "--instances"]) == 0
    results = json.loads((out / f"{image.stem}_instances.json").read_text())
    mask = np.asarray(Image.open(out / f"{image.stem}_mask.png")) > 0
    rows = list(csv.DictReader(io.StringIO((out / f"{image.stem}_instances.csv").read_text())))
    assert len(rows) == len(results) == len(find_instances(mask.astype(np.uint8))) >= 1
    union = np.zeros_like(mask)
    for r in results:
        seg = {"size": r["segmentation"]["size"], "counts": r["segmentation"]["counts"].encode()}
        union |= coco_mask.decode(seg).astype(bool)
        assert 0 < r["score"] <= 1
    assert np.array_equal(union, mask)  # the objects cover the mask exactly
    picture = Image.open(out / f"{image.stem}_instances.png")
    assert picture.size == Image.open(image).size
