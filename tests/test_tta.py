"""Test-time augmentation: flipped copies, and views at several sizes, averaged as
probabilities."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pixelseg.cli import main
from pixelseg.config import TrainConfig
from pixelseg.engine.train import fit
from pixelseg.errors import SettingsError
from pixelseg.inference.options import PredictOptions
from pixelseg.inference.predictor import Predictor
from settings import FAST, run_config


class _Corner(torch.nn.Module):
    """Fixed logits: a centred square (flip-symmetric) and a speck in the top-left corner."""

    def __init__(self, classes: int = 1) -> None:
        super().__init__()
        self.classes = classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.full((x.shape[0], self.classes, *x.shape[2:]), -10.0)
        logits[:, -1, 8:24, 8:24] = 10.0
        logits[:, -1, 0:3, 0:3] = 10.0
        if self.classes > 1:
            logits[:, 0] = 0.0
        return logits


def _predictor(classes: int = 1, **options) -> Predictor:
    config = run_config([32, 32], classes)
    return Predictor(_Corner(classes), config, torch.device("cpu"), PredictOptions(**options))


def test_tta_averages_flipped_views() -> None:
    predictor = _predictor()
    image = np.zeros((32, 32, 3), np.uint8)
    plain = predictor.predict(image)
    assert plain[0:3, 0:3].all() and plain[8:24, 8:24].all()
    predictor = _predictor(tta=True)
    averaged = predictor.predict_proba(image)
    # the speck is in one view of four; each flip moves it to another corner
    assert averaged[0, 0] == pytest.approx(0.25, abs=1e-3)
    assert averaged[31, 31] == pytest.approx(0.25, abs=1e-3)
    assert averaged[16, 16] == pytest.approx(1.0, abs=1e-3)  # symmetric: unchanged
    mask = predictor.predict(image)
    assert not mask[0:3, 0:3].any() and mask[8:24, 8:24].all()


def test_tta_keeps_multiclass_probabilities_normalised() -> None:
    predictor = _predictor(classes=3, tta=True)
    proba = predictor.predict_proba(np.zeros((32, 32, 3), np.uint8))
    assert proba.shape == (3, 32, 32)
    assert np.allclose(proba.sum(0), 1.0, atol=1e-4)


@pytest.mark.parametrize("rotations", [False, True])
def test_tta_views_are_mapped_back(rotations: bool) -> None:
    """A pointwise model commutes with flips and rotations, so averaging its views must give
    its plain output back, also on a non-square input (where a wrong inverse would fail)."""
    torch.manual_seed(0)
    config = run_config([24, 40])
    model = torch.nn.Conv2d(3, 1, 1)
    predictor = Predictor(model, config, torch.device("cpu"))
    image = np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    plain = predictor.predict_proba(image)
    options = PredictOptions(tta=True, tta_rotations=rotations)
    predictor = Predictor(model, config, torch.device("cpu"), options)
    np.testing.assert_allclose(predictor.predict_proba(image), plain, atol=1e-5)


def test_rotations_add_the_quarter_turned_views() -> None:
    from pixelseg.inference.tta import tta_views

    assert len(tta_views()) == 4 and len(set(tta_views(rotations=True))) == 8
    predictor = _predictor(tta=True, tta_rotations=True)
    proba = predictor.predict_proba(np.zeros((32, 32, 3), np.uint8))
    # the corner speck: 2 of the 8 views put it in each corner
    for corner in [(0, 0), (0, 31), (31, 0), (31, 31)]:
        assert proba[corner] == pytest.approx(0.25, abs=1e-3)


def test_predict_cli_tta(tiny_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    fit(TrainConfig(data=str(tiny_data), out=str(run), epochs=1, **FAST))
    image = next((tiny_data / "images").iterdir())
    assert main(["predict", str(run), str(image), "--out", str(tmp_path / "o"), "--tta"]) == 0
    assert (tmp_path / "o" / f"{image.stem}_mask.png").is_file()


def test_uncertainty_is_highest_where_views_disagree(tiny_data: Path, tmp_path: Path) -> None:
    from pixelseg.inference.predictor import uncertainty_map

    certain = torch.tensor([[[10.0, -10.0]]])
    coin = torch.tensor([[[0.0, 0.0]]])
    assert uncertainty_map(certain).max() < 0.01 and uncertainty_map(coin).min() > 0.99
    three = torch.zeros(3, 1, 1)  # three equally likely classes: the maximum, 1
    assert uncertainty_map(three).item() == pytest.approx(1.0)
    predictor = _predictor(tta=True)
    logits = predictor.logits([np.zeros((32, 32, 3), np.uint8)])[0]
    level = uncertainty_map(logits)
    assert level[0, 0] > 0.7 and level[16, 16] < 0.05  # the speck: 1 view of 4
    run = tmp_path / "run"
    fit(TrainConfig(data=str(tiny_data), out=str(run), epochs=1, **FAST))
    image = next((tiny_data / "images").iterdir())
    out = tmp_path / "o"
    assert main(["predict", str(run), str(image), "--out", str(out), "--tta", "--uncertainty"]) == 0
    assert Image.open(out / f"{image.stem}_uncertainty.png").size == Image.open(image).size


def test_evaluate_scores_the_augmented_predictions(tiny_data: Path, tmp_path: Path) -> None:
    import pixelseg

    run = tmp_path / "run"
    fit(TrainConfig(data=str(tiny_data), out=str(run), epochs=8, **FAST))
    plain = pixelseg.evaluate(run, tiny_data, split="all", out=tmp_path / "a", progress=False)
    args = ["evaluate", str(run), str(tiny_data), "--split", "all", "--out", str(tmp_path / "b")]
    assert main([*args, "--tta", "--tta-rotations"]) == 0
    import json

    augmented = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert plain["tta"] is None and augmented["tta"] == "flips and rotations"
    assert augmented["n_images"] == plain["n_images"]
    assert augmented["dice"] != plain["dice"]  # other predictions, so another score
    assert main([*args, "--tta-rotations"]) == 2


class _SeesLarge(torch.nn.Module):
    """Foreground wherever the input is at least ``width`` pixels wide, and records the
    (height, width) of every view it is shown."""

    def __init__(self, width: int, classes: int = 1) -> None:
        super().__init__()
        self.width, self.classes, self.seen = width, classes, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(tuple(x.shape[-2:]))
        sign = 1.0 if x.shape[-1] >= self.width else -1.0
        logits = torch.zeros((x.shape[0], self.classes, *x.shape[2:]))
        logits[:, -1] = 10.0 * sign
        return logits


def test_scales_show_the_model_views_of_each_size() -> None:
    config = run_config([24, 40])
    image = np.zeros((50, 70, 3), np.uint8)
    model = _SeesLarge(48)
    options = PredictOptions(tta_scales=(1.5, 0.75, 1))
    predictor = Predictor(model, config, torch.device("cpu"), options)
    assert predictor.size == (36, 60)  # images come in at the largest view
    proba = predictor.predict_proba(image)
    assert model.seen == [(18, 30), (24, 40), (36, 60)]  # each scale of the training size
    assert proba.shape == (50, 70)
    np.testing.assert_allclose(proba, 1 / 3, atol=1e-4)  # one view of three sees it
    model.seen.clear()
    flipped = Predictor(
        model, config, torch.device("cpu"), PredictOptions(tta=True, tta_scales=(1, 2))
    )
    np.testing.assert_allclose(flipped.predict_proba(image), 0.5, atol=1e-4)
    assert model.seen == [(24, 40)] * 4 + [(48, 80)] * 4  # the four flips at each scale


def test_scales_keep_multiclass_probabilities_normalised() -> None:
    config = run_config([24, 40], num_classes=3)
    options = PredictOptions(tta_scales=(1, 1.5, 2))
    predictor = Predictor(_SeesLarge(48, classes=3), config, torch.device("cpu"), options)
    image = np.zeros((30, 50, 3), np.uint8)
    proba = predictor.predict_proba(image)
    assert proba.shape == (3, 30, 50)
    np.testing.assert_allclose(proba.sum(0), 1.0, atol=1e-4)
    # class 2 wins in the two views at least 48 wide (60 and 80), loses in the third
    np.testing.assert_allclose(proba[2], 2 / 3, atol=1e-3)
    assert (predictor.predict(image) == 2).all()


@pytest.mark.parametrize("tta", [False, True])
def test_scaled_views_are_mapped_back(tta: bool) -> None:
    """A pointwise model on a smooth image gives about its plain output at any size, so the
    views, each resized back, must average to about the plain prediction (a view put back
    upside down or shifted would not)."""
    torch.manual_seed(0)
    config = run_config([24, 40])
    model = torch.nn.Conv2d(3, 1, 1)
    y, x = np.mgrid[0:48, 0:80]
    image = np.stack([x * 3, y * 5, (x + y) * 2], -1).astype(np.uint8)  # smooth ramps
    plain = Predictor(model, config, torch.device("cpu")).predict_proba(image)
    options = PredictOptions(tta=tta, tta_scales=(0.75, 1.0, 1.5))
    scaled = Predictor(model, config, torch.device("cpu"), options).predict_proba(image)
    assert np.abs(scaled - plain).mean() < 0.01
    np.testing.assert_allclose(scaled[4:-4, 4:-4], plain[4:-4, 4:-4], atol=0.03)


@pytest.mark.parametrize(
    ("scales", "message"),
    [((), "at least one"), ((0.0, 1.0), "must each be in"), ((1.0, 5.0), "must each be in"),
     ((1.0, float("nan")), "must each be in"), ((1.0, 1.0), "a scale twice")],
)  # fmt: skip
def test_bad_scales_are_refused(scales: tuple, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        PredictOptions(tta_scales=scales)


def test_scales_are_sorted_and_not_for_tiles() -> None:
    assert PredictOptions(tta_scales=[1.5, 1]).tta_scales == (1.0, 1.5)
    with pytest.raises(SettingsError, match="with --tile the size is set by --scale"):
        PredictOptions(tta_scales=(1.0, 1.5), tile=64)


def test_scales_from_the_cli_and_the_api(tiny_data: Path, tmp_path: Path, capsys) -> None:
    import csv
    import json

    import pixelseg
    from pixelseg.metrics import BinaryMetrics

    run = tmp_path / "run"
    fit(TrainConfig(data=str(tiny_data), out=str(run), epochs=8, **FAST))
    image = next((tiny_data / "images").iterdir())
    out = tmp_path / "o"
    assert main(["predict", str(run), str(image), "--out", str(out), "--tta-scales", "1,1.5"]) == 0
    written = np.asarray(Image.open(out / f"{image.stem}_mask.png"))
    predictor = pixelseg.load(run, tta_scales=[1, 1.5])
    assert predictor.size == tuple(round(1.5 * s) for s in predictor.config.size)
    assert ((written > 0) == (predictor.predict(np.asarray(Image.open(image))) > 0)).all()

    # evaluate scores what the predictor predicts, image by image
    args = ["evaluate", str(run), str(tiny_data), "--split", "all", "--out", str(tmp_path / "b")]
    assert main([*args, "--tta-scales", "1,1.5"]) == 0
    scaled = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert scaled["tta"] == "scales 1, 1.5"
    with open(tmp_path / "b" / "per_image.csv") as f:
        rows = {row["stem"]: float(row["dice"]) for row in csv.DictReader(f)}
    assert len(rows) == 12
    for stem, dice in rows.items():
        mask = predictor.predict(np.asarray(Image.open(tiny_data / "images" / f"{stem}.png")))
        truth = np.asarray(Image.open(tiny_data / "masks" / f"{stem}.png")) > 0
        assert BinaryMetrics().update(mask > 0, truth)["dice"] == pytest.approx(dice, abs=0.005)
    plain = pixelseg.evaluate(run, tiny_data, split="all", out=tmp_path / "a", progress=False)
    assert plain["tta"] is None and scaled["n_images"] == plain["n_images"]

    with pytest.raises(SystemExit):  # argparse's own error for a type it cannot read
        main([*args, "--tta-scales", "1,x"])
    assert "comma-separated numbers" in capsys.readouterr().err
    assert main([*args, "--tta-scales", "0,1"]) == 2
    assert "--tta-scales must each be in (0, 4]" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("tta", "rotations", "upright", "scales", "words"),
    [(False, False, False, None, None), (True, False, True, None, "left-right flips"),
     (True, True, False, (1.0, 1.5), "flips and rotations at scales 1, 1.5"),
     (False, False, False, (1.25,), "scales 1.25")],
)  # fmt: skip
def test_metrics_name_the_views(tta, rotations, upright, scales, words) -> None:
    from pixelseg.inference.tta import describe_views

    assert describe_views(tta, rotations, upright, scales) == words
