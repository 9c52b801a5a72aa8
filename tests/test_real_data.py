"""The issue's checks on the real data sets (tiny settings: this tests plumbing, not quality)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

import pixelseg
from pixelseg.cli import main
from pixelseg.data.layouts import find_samples


def test_ph2_train_evaluate_predict(real_data: Path, tmp_path: Path) -> None:
    ph2 = real_data / "ph2"
    run = tmp_path / "ph2run"
    assert (
        main(
            [
                "train",
                str(ph2),
                "--model",
                "lesson-unet",
                "--size",
                "64",
                "--epochs",
                "1",
                "--out",
                str(run),
            ]
        )
        == 0
    )
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == "lesson-unet" and config["size"] == [64, 64]
    split = json.loads((run / "split.json").read_text())
    assert sum(map(len, split.values())) == 100 and len(split["test"]) == 15

    assert main(["evaluate", str(run), str(ph2), "--split", "all"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["n_images"] == 100 and 0 < metrics["dice"] <= 1

    _, samples = find_samples(ph2)
    image_path = samples[0].image
    assert main(["predict", str(run), str(image_path), "--out", str(tmp_path / "pred")]) == 0
    mask = Image.open(tmp_path / "pred" / f"{image_path.stem}_mask.png")
    assert mask.size == Image.open(image_path).size  # the original ~768x560, not 64x64
    assert set(np.unique(np.asarray(mask))) <= {0, 255}


def test_membrane_greyscale_folders(real_data: Path, tmp_path: Path, capsys) -> None:
    membrane = real_data / "membrane" / "train"
    assert main(["check", str(membrane)]) == 0
    assert "channels: 1 (greyscale images)" in capsys.readouterr().out
    run = tmp_path / "mrun"
    assert (
        main(
            [
                "train",
                str(membrane),
                "--size",
                "64",
                "--epochs",
                "1",
                "--out",
                str(run),
                "--model-arg",
                "base_channels=8",
            ]
        )
        == 0
    )
    assert (run / "model.safetensors").is_file()
    assert json.loads((run / "config.json").read_text())["in_channels"] == 1  # greyscale EM
    predictor = pixelseg.load(run)
    image = membrane / "image" / "0.png"
    mask = predictor.predict(image)
    assert mask.shape == (512, 512)
    rgb = np.repeat(np.asarray(Image.open(image))[..., None], 3, axis=2)
    assert np.array_equal(predictor.predict(rgb), mask)  # colour input is made grey first
