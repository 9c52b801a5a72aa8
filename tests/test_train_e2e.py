"""End to end on tiny data: train → files on disk → reload → evaluate → predict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import pixelseg
from pixelseg.config import TrainConfig
from pixelseg.engine.train import fit
from pixelseg.models.saved import load_model
from settings import FAST


@pytest.fixture(scope="module")
def trained_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("e2e") / "run"
    return fit(TrainConfig(data=str(tiny_data), out=str(out), epochs=3, **FAST)).run_dir


def test_run_folder_holds_everything(trained_run: Path) -> None:
    for name in (
        "config.json",
        "model.safetensors",
        "history.csv",
        "curves.png",
        "split.json",
        "last.pt",
    ):
        assert (trained_run / name).is_file(), name
    config = json.loads((trained_run / "config.json").read_text())
    assert config["model"] == "unet" and config["size"] == [32, 32]
    assert config["model_kwargs"] == {"base_channels": 8, "depth": 2}
    assert len(config["mean"]) == 3 and all(s > 0 for s in config["std"])
    split = json.loads((trained_run / "split.json").read_text())
    stems = split["train"] + split["val"] + split["test"]
    assert sorted(stems) == [f"img{i:02d}" for i in range(12)]
    history = (trained_run / "history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,train_loss,val_loss,val_dice") and len(history) == 4
    assert Image.open(trained_run / "curves.png").size[0] > 100


def test_weights_reload_to_identical_outputs(trained_run: Path) -> None:
    model, config = load_model(trained_run)
    state = load_file(str(trained_run / "model.safetensors"))
    assert set(state) == set(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    again, _ = load_model(trained_run)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))


def test_same_seed_same_result(tiny_data: Path, tmp_path: Path) -> None:
    a = fit(TrainConfig(data=str(tiny_data), out=str(tmp_path / "a"), epochs=2, **FAST))
    b = fit(TrainConfig(data=str(tiny_data), out=str(tmp_path / "b"), epochs=2, **FAST))
    wa = load_file(str(a.run_dir / "model.safetensors"))
    wb = load_file(str(b.run_dir / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a.history[-1]["train_loss"] == b.history[-1]["train_loss"]


def test_resume_continues_to_the_same_weights(tiny_data: Path, tmp_path: Path) -> None:
    """Stop a run after epoch 1 (as a crash would), resume it: same weights as one go."""
    cfg = {"data": str(tiny_data), "epochs": 3, "patience": 0, **FAST}
    full = fit(TrainConfig(out=str(tmp_path / "full"), **cfg))

    def crash_after_first_epoch(row: dict) -> None:
        if row["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(TrainConfig(out=str(tmp_path / "part"), **cfg), on_epoch_end=crash_after_first_epoch)
    resumed = fit(TrainConfig(out=str(tmp_path / "part"), **cfg), resume=True)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    assert resumed.history[-1]["train_loss"] == full.history[-1]["train_loss"]
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "part" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_refuses_to_overwrite_a_run(trained_run: Path, tiny_data: Path) -> None:
    with pytest.raises(pixelseg.PixelsegError, match="already holds a finished run"):
        fit(TrainConfig(data=str(tiny_data), out=str(trained_run), epochs=1, **FAST))


def test_evaluate_writes_metrics_at_original_size(trained_run: Path, tiny_data: Path) -> None:
    metrics = pixelseg.evaluate(trained_run, tiny_data, split="all", progress=False)
    assert metrics["n_images"] == 12
    for key in (
        "dice",
        "iou",
        "dice_micro",
        "iou_micro",
        "pixel_accuracy",
        "precision",
        "recall",
        "specificity",
    ):
        assert 0.0 <= metrics[key] <= 1.0, key
    saved = json.loads((trained_run / "metrics.json").read_text())
    assert saved["dice"] == metrics["dice"]
    rows = (trained_run / "per_image.csv").read_text().splitlines()
    assert len(rows) == 13 and rows[0].startswith("stem,dice,iou")
    assert (trained_run / "worst.png").is_file()


def test_predictor_accepts_paths_pil_and_arrays(trained_run: Path, tiny_data: Path) -> None:
    predictor = pixelseg.load(trained_run, device="cpu")
    path = tiny_data / "images" / "img00.png"
    image = np.asarray(Image.open(path))
    from_path = predictor.predict(path)
    assert from_path.shape == image.shape[:2] and from_path.dtype == np.uint8
    assert set(np.unique(from_path)) <= {0, 1}
    assert np.array_equal(from_path, predictor.predict(Image.open(path)))
    assert np.array_equal(from_path, predictor.predict(image))
    assert np.array_equal(from_path, predictor.predict(image.astype(np.float32) / 255))
    big = np.asarray(Image.fromarray(image).resize((97, 61)))
    assert predictor.predict(big).shape == (61, 97)
    prob = predictor.predict_proba(image)
    assert prob.shape == image.shape[:2] and prob.min() >= 0 and prob.max() <= 1
    everything = pixelseg.load(trained_run, device="cpu", threshold=0.0).predict(image)
    assert np.array_equal(everything, np.ones_like(from_path))


def test_learns_the_tiny_task(tiny_data: Path, tmp_path: Path) -> None:
    """Bright discs on dark noise: a few epochs must give a clearly better-than-chance Dice."""
    result = fit(
        TrainConfig(data=str(tiny_data), out=str(tmp_path / "learn"), epochs=12, patience=0, **FAST)
    )
    assert result.best_score > 0.8, result.history


def test_multiclass_end_to_end(tmp_path: Path) -> None:
    """Three classes (background, bright disc, dark square) in index masks, through the CLI."""
    from pixelseg.cli import main

    rng = np.random.default_rng(0)
    root = tmp_path / "mc"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(12):
        mask = np.zeros((40, 48), np.uint8)
        yy, xx = np.mgrid[:40, :48]
        mask[(yy - 12) ** 2 + (xx - 14) ** 2 < 60] = 1
        mask[24:36, 28 + i % 6 : 40 + i % 6] = 2
        image = rng.integers(90, 130, (40, 48, 3)).astype(np.uint8)
        image[mask == 1] = 240
        image[mask == 2] = 10
        Image.fromarray(image).save(root / "images" / f"m{i:02d}.png")
        Image.fromarray(mask).save(root / "masks" / f"m{i:02d}.png")
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                str(root),
                "--num-classes",
                "3",
                "--out",
                str(run),
                "--epochs",
                "6",
                "--size",
                "32",
                "--model-arg",
                "base_channels=8",
                "--model-arg",
                "depth=2",
                "--batch-size",
                "4",
                "--lr",
                "3e-3",
            ]
        )
        == 0
    )
    assert json.loads((run / "config.json").read_text())["num_classes"] == 3
    assert main(["evaluate", str(run), str(root), "--split", "all"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("miou", "dice", "global_accuracy", "class_accuracy", "per_class", "n_images"):
        assert key in metrics, key
    assert metrics["n_images"] == 12 and set(metrics["per_class"]) == {"0", "1", "2"}
    assert metrics["global_accuracy"] > 0.7
    predictor = pixelseg.load(run)
    mask = predictor.predict(root / "images" / "m00.png")
    assert mask.shape == (40, 48) and set(np.unique(mask)) <= {0, 1, 2}
    assert predictor.predict_proba(root / "images" / "m00.png").shape == (3, 40, 48)


def test_greyscale_data_trains_with_one_channel(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    root = tmp_path / "grey"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(8):
        mask = np.zeros((30, 30), np.uint8)
        mask[5 + i : 20 + i, 8:22] = 255
        image = rng.integers(0, 60, (30, 30)).astype(np.uint8)
        image[mask > 0] += 150
        Image.fromarray(image).save(root / "images" / f"g{i}.png")  # mode L
        Image.fromarray(mask).save(root / "masks" / f"g{i}.png")
    result = fit(TrainConfig(data=str(root), out=str(tmp_path / "run"), epochs=2, **FAST))
    config = json.loads((result.run_dir / "config.json").read_text())
    assert config["in_channels"] == 1 and len(config["mean"]) == 1
    predictor = pixelseg.load(result.run_dir)
    assert predictor.predict(root / "images" / "g0.png").shape == (30, 30)
    # the same data forced to three channels
    forced = fit(
        TrainConfig(data=str(root), out=str(tmp_path / "rgb"), epochs=1, in_channels=3, **FAST)
    )
    assert json.loads((forced.run_dir / "config.json").read_text())["in_channels"] == 3
