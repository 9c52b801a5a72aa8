"""The ``pixelseg`` command, called in-process through ``pixelseg.cli.main``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixelseg.cli import main
from settings import FAST_ARGS as FAST


def test_models_lists_lesson_counts(capsys: pytest.CaptureFixture) -> None:
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "lesson-segnet" in out and "780,865" in out
    assert "lesson-unet" in out and "974,417" in out
    assert "\nunet " in out and "smp-unetplusplus" in out  # the zoo's, installed or not


def test_check_passes_on_good_data(tiny_data: Path, tmp_path: Path, capsys) -> None:
    report = tmp_path / "report.json"
    assert main(["check", str(tiny_data), "--json", str(report)]) == 0
    assert "no problems found" in capsys.readouterr().out
    assert json.loads(report.read_text())["n_samples"] == 12


def test_check_names_every_bad_file(tiny_folders: Path, capsys) -> None:
    (tiny_folders / "images" / "img00.png").write_bytes(b"not an image at all")
    Image.new("L", (10, 10)).save(tiny_folders / "masks" / "img01.png")  # wrong size
    (tiny_folders / "masks" / "img02.png").unlink()  # missing mask
    assert main(["check", str(tiny_folders)]) == 1
    err = capsys.readouterr().err
    assert "3 problem(s)" in err
    assert "img00.png: cannot read image" in err
    assert "img01.png: mask size 10x10 differs from image size 48x40" in err
    assert "img02.png: no mask found" in err


def test_train_refuses_bad_data(tiny_folders: Path, tmp_path: Path, capsys) -> None:
    (tiny_folders / "masks" / "img03.png").unlink()
    code = main(
        ["train", str(tiny_folders), "--out", str(tmp_path / "run"), "--epochs", "1", *FAST]
    )
    assert code == 2
    assert "img03.png: no mask found" in capsys.readouterr().err
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_unknown_model_is_a_clear_error(tiny_data: Path, tmp_path: Path, capsys) -> None:
    code = main(["train", str(tiny_data), "--out", str(tmp_path / "r"), "--model", "segformer"])
    assert code == 2
    err = capsys.readouterr().err
    valid = "lesson-segnet, lesson-unet, lite-unet, lite-unet-fast, smp-deeplabv3,"
    assert f"Valid models: {valid}" in err


def test_train_evaluate_predict(tiny_data: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    assert main(["train", str(tiny_data), "--out", str(run), "--epochs", "2", *FAST]) == 0
    assert "best val_dice" in capsys.readouterr().out
    assert main(["train", "--resume", str(run), "--epochs", "3"]) == 0
    assert len((run / "history.csv").read_text().splitlines()) == 4  # header + 3 epochs

    assert main(["evaluate", str(run), str(tiny_data), "--split", "test"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    split = json.loads((run / "split.json").read_text())
    assert metrics["n_images"] == len(split["test"]) and metrics["split"] == "test"

    # a folder of inputs of other sizes and formats, two of them sharing a stem
    inputs = tmp_path / "inputs"
    (inputs / "sub").mkdir(parents=True)
    image = Image.open(tiny_data / "images" / "img05.png")
    image.resize((77, 51)).save(inputs / "a.jpg")
    image.save(inputs / "sub" / "a.bmp")
    out = tmp_path / "pred"
    assert main(["predict", str(run), str(inputs), "--out", str(out), "--probabilities"]) == 0
    mask = np.asarray(Image.open(out / "a_mask.png"))
    assert mask.shape == (51, 77) and set(np.unique(mask)) <= {0, 255}
    assert np.asarray(Image.open(out / "a_2_mask.png")).shape == (40, 48)
    assert Image.open(out / "a_overlay.png").size == (77, 51)
    assert Image.open(out / "a_prob.png").size == (77, 51)


def test_predict_names_a_missing_input(tiny_data: Path, tmp_path: Path, capsys) -> None:
    assert (
        main(["predict", str(tmp_path / "norun"), str(tiny_data), "--out", str(tmp_path / "o")])
        == 2
    )
    assert "not a pixelseg run folder" in capsys.readouterr().err


def test_demo_runs_end_to_end(tmp_path: Path, capsys) -> None:
    """The demo's full path on a shortened schedule (its quality is a benchmark, not a test)."""
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--epochs", "1", "--images", "20"]) == 0
    text = capsys.readouterr().out
    assert "test dice" in text
    for name in ("overlays.png", "worst.png", "curves.png", "metrics.json", "config.json"):
        assert (out / "run" / name).is_file(), name
    assert len(list((out / "data" / "images").iterdir())) == 20
    shutil.rmtree(out)
