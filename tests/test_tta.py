"""Test-time augmentation: flipped copies averaged, as probabilities."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pixelseg.cli import main
from pixelseg.config import TrainConfig
from pixelseg.engine.train import fit
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
