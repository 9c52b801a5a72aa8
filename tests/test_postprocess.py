"""Binary clean-up: largest object, filled holes, and the choice made on validation images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from pixelseg.cli import main
from pixelseg.config import TrainConfig
from pixelseg.data.dataset import SegmentationDataset
from pixelseg.data.layouts import find_samples
from pixelseg.data.transforms import BatchTransform
from pixelseg.engine.evaluate import choose_postprocess
from pixelseg.engine.train import fit
from pixelseg.inference.postprocess import fill_holes, keep_largest, postprocess, remove_small
from settings import FAST, run_config


def test_keep_largest_counts_corner_neighbours_as_one_object() -> None:
    mask = np.zeros((8, 8), np.uint8)
    mask[1:3, 1:3] = 1  # 4 pixels
    mask[3, 3] = 1  # touches the square at a corner: same object (8-connectivity)
    mask[6:8, 5:8] = 1  # 6 pixels, a separate object: the largest
    kept = keep_largest(mask)
    assert kept.sum() == 6 and kept[6:8, 5:8].all() and kept.dtype == np.uint8
    mask[6:8, 5:8] = 0
    mask[6, 6] = 1
    assert keep_largest(mask).sum() == 5  # square + corner pixel beat the single pixel
    empty = np.zeros((4, 4), np.uint8)
    assert keep_largest(empty).sum() == 0


def test_fill_holes_and_order() -> None:
    ring = np.zeros((9, 9), np.uint8)
    ring[1:6, 1:6] = 1
    ring[3, 3] = 0
    assert fill_holes(ring).sum() == 25
    ring[8, 8] = 1  # a speck: kept by fill_holes alone, dropped by keep_largest
    assert fill_holes(ring).sum() == 26
    both = postprocess(ring, ["fill_holes", "keep_largest"])
    assert both.sum() == 25 and both[8, 8] == 0
    assert postprocess(ring, []) is ring
    with pytest.raises(ValueError, match="unknown post-processing"):
        postprocess(ring, ["dilate"])


class _Fixed(torch.nn.Module):
    """Predicts the true square plus a stray speck in a far corner."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.full((x.shape[0], 1, *x.shape[2:]), -10.0)
        logits[:, :, 8:24, 8:24] = 10.0
        logits[:, :, 0:3, 0:3] = 10.0
        return logits


def _square_dataset(root: Path) -> SegmentationDataset:
    for d in ("images", "masks"):
        (root / d).mkdir()
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 255
    for i in range(3):
        Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(root / f"images/{i}.png")
        Image.fromarray(mask).save(root / f"masks/{i}.png")
    _, samples = find_samples(root)
    return SegmentationDataset(samples, (32, 32), 1, keep_original=True, progress=False)


def test_choose_postprocess_keeps_what_helps(tmp_path: Path) -> None:
    dataset = _square_dataset(tmp_path)
    transform = BatchTransform([0.5] * 3, [0.25] * 3)
    steps, scores = choose_postprocess(_Fixed(), dataset, transform, torch.device("cpu"), 0.5)
    assert steps == ["keep_largest"]  # filling holes adds nothing here, so it is left out
    assert scores["keep_largest"] == pytest.approx(1.0)
    assert scores["none"] == pytest.approx(2 * 256 / (256 + 265))


def test_predictor_applies_the_runs_steps(tmp_path: Path) -> None:
    from pixelseg.inference.options import PredictOptions
    from pixelseg.inference.predictor import Predictor

    config = run_config([32, 32], threshold=0.5, postprocess=["keep_largest"])
    predictor = Predictor(_Fixed(), config, torch.device("cpu"))
    image = np.zeros((64, 64, 3), np.uint8)
    cleaned = predictor.predict(image)
    options = PredictOptions(postprocess=())
    raw = Predictor(_Fixed(), config, torch.device("cpu"), options).predict(image)
    assert ndimage.label(raw)[1] == 2  # the square and the speck
    assert ndimage.label(cleaned)[1] == 1 and np.array_equal(cleaned, keep_largest(raw))


def test_training_stores_the_choice_and_the_cli_can_skip_it(
    tiny_data: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    fit(TrainConfig(data=str(tiny_data), out=str(run), epochs=1, **FAST))
    config = json.loads((run / "config.json").read_text())
    assert "postprocess" in config and set(config["postprocess"]) <= {"keep_largest", "fill_holes"}
    config["postprocess"] = ["fill_holes"]  # force a step to see the flag turn it off
    (run / "config.json").write_text(json.dumps(config))
    image = next((tiny_data / "images").iterdir())
    for flags, name in (([], "on"), (["--no-postprocess"], "off")):
        assert main(["predict", str(run), str(image), "--out", str(tmp_path / name), *flags]) == 0
    on = np.array(Image.open(tmp_path / "on" / f"{image.stem}_mask.png")) > 0
    off = np.array(Image.open(tmp_path / "off" / f"{image.stem}_mask.png")) > 0
    assert np.array_equal(on, ndimage.binary_fill_holes(off))
    assert main(["evaluate", str(run), str(tiny_data), "--split", "all", "--no-postprocess"]) == 0
    assert json.loads((run / "metrics.json").read_text())["postprocess"] == []
    assert main(["evaluate", str(run), str(tiny_data), "--split", "all"]) == 0
    assert json.loads((run / "metrics.json").read_text())["postprocess"] == ["fill_holes"]
    skipped = tmp_path / "skipped"
    fit(TrainConfig(data=str(tiny_data), out=str(skipped), epochs=1, postprocess="none", **FAST))
    assert json.loads((skipped / "config.json").read_text())["postprocess"] == []


class _Clean(_Fixed):
    """Predicts the true square only: no step can help."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = super().forward(x)
        logits[:, :, 0:3, 0:3] = -10.0
        return logits


def test_steps_that_change_nothing_are_left_out(tmp_path: Path) -> None:
    dataset = _square_dataset(tmp_path)
    transform = BatchTransform([0.5] * 3, [0.25] * 3)
    steps, scores = choose_postprocess(_Clean(), dataset, transform, torch.device("cpu"), 0.5)
    assert steps == [] and set(scores.values()) == {1.0}


def test_remove_small_drops_only_small_objects() -> None:
    mask = np.zeros((10, 10), np.uint8)
    mask[0:2, 0:2] = 1  # 4 pixels
    mask[5:9, 5:9] = 1  # 16 pixels
    assert remove_small(mask, 5).sum() == 16
    assert remove_small(mask, 4).sum() == 20  # an object of exactly min_area stays
    assert remove_small(mask, 0) is mask
    assert postprocess(mask, [], min_area=17).sum() == 0
    with pytest.raises(ValueError, match="min_area"):
        postprocess(mask, [], min_area=-1)


def test_predict_flags_replace_the_runs_steps(tiny_data: Path, tmp_path: Path) -> None:
    from pixelseg.inference.options import PredictOptions
    from pixelseg.inference.predictor import Predictor

    config = run_config([32, 32], threshold=0.5, postprocess=[])
    predictor = Predictor(_Fixed(), config, torch.device("cpu"))
    image = np.zeros((64, 64, 3), np.uint8)
    raw = predictor.predict(image)
    options = PredictOptions(min_area=100)  # the speck (about 6x6) goes, the square stays
    predictor = Predictor(_Fixed(), config, torch.device("cpu"), options)
    assert np.array_equal(predictor.predict(image), keep_largest(raw))

    run = tmp_path / "run"
    fit(TrainConfig(data=str(tiny_data), out=str(run), epochs=1, **FAST))
    image_file = next((tiny_data / "images").iterdir())
    out = tmp_path / "out"
    args = ["predict", str(run), str(image_file), "--out", str(out), "--min-area", "1000000"]
    assert main([*args, "--keep-largest"]) == 0
    assert not (np.array(Image.open(out / f"{image_file.stem}_mask.png")) > 0).any()
    assert main(["predict", str(run), str(image_file), "--out", str(out), "--min-area", "-3"]) == 2
