"""Multi-class data: the SegNet/CamVid layout, class tables, ignore index, class weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pixelseg.cli import main
from pixelseg.data.classes import (
    CAMVID_CLASSES,
    load_class_table,
    median_frequency_weights,
    parse_class_names,
    resolve_classes,
)
from pixelseg.data.layouts import find_samples
from pixelseg.errors import DataError


def _scene(rng: np.random.Generator, h: int = 36, w: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """Sky (0) above road (3), a car (8) box, a void (11) strip: an easy CamVid-like scene."""
    mask = np.zeros((h, w), np.uint8)
    mask[h // 2 :] = 3
    x = int(rng.integers(4, w - 16))
    mask[h // 2 - 6 : h // 2 + 4, x : x + 12] = 8
    mask[:, :2] = 11
    colors = {0: (120, 170, 240), 3: (90, 90, 90), 8: (200, 30, 30), 11: (0, 0, 0)}
    image = np.zeros((h, w, 3), np.uint8)
    for value, color in colors.items():
        image[mask == value] = color
    noise = rng.integers(-15, 16, image.shape)
    return np.clip(image.astype(int) + noise, 0, 255).astype(np.uint8), mask


@pytest.fixture
def tiny_camvid(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path / "camvid"
    for subset, n in (("train", 10), ("val", 4)):
        (root / subset).mkdir(parents=True)
        (root / f"{subset}annot").mkdir()
        for i in range(n):
            image, mask = _scene(rng)
            Image.fromarray(image).save(root / subset / f"{subset}{i:02d}.png")
            Image.fromarray(mask).save(root / f"{subset}annot" / f"{subset}{i:02d}.png")
    return root


def test_segnet_layout_keeps_its_own_split(tiny_camvid: Path) -> None:
    fmt, samples = find_samples(tiny_camvid)
    assert fmt == "segnet" and len(samples) == 14
    assert sorted({s.subset for s in samples}) == ["train", "val"]
    assert all(s.mask is not None and s.mask.parent.name.endswith("annot") for s in samples)


def test_segnet_layout_resolves_to_camvid_classes(tiny_camvid: Path) -> None:
    c = resolve_classes("segnet", tiny_camvid, None)
    assert (c.num_classes, c.names, c.ignore_index) == (11, list(CAMVID_CLASSES), 11)
    assert "SegNet CamVid" in c.why
    # what the user says wins
    assert resolve_classes("segnet", tiny_camvid, None, ignore_index=255).ignore_index == 255


def test_binary_data_stays_binary(tiny_data: Path) -> None:
    c = resolve_classes("folders", tiny_data, None)
    assert (c.num_classes, c.names, c.ignore_index) == (1, None, None)
    with pytest.raises(ValueError, match="2 class names given for 3 classes"):
        resolve_classes("folders", tiny_data, 3, ["a", "b"])


def test_class_tables_from_json_and_csv(tmp_path: Path) -> None:
    (tmp_path / "classes.json").write_text(
        json.dumps(
            {
                "classes": [
                    {"name": "bg", "color": [0, 0, 0]},
                    {"name": "cat", "color": [9, 8, 7]},
                ],
                "ignore_index": 255,
            }
        )
    )
    table = load_class_table(tmp_path)
    assert table.names == ("bg", "cat") and table.colors[1] == (9, 8, 7)
    assert table.ignore_index == 255
    other = tmp_path / "other"
    other.mkdir()
    (other / "classes.csv").write_text("name,r,g,b\nground,0,0,0\ntree,0,255,0\nsky,0,0,255\n")
    assert load_class_table(other).names == ("ground", "tree", "sky")
    assert parse_class_names(str(other / "classes.csv")) == ("ground", "tree", "sky")
    assert parse_class_names("a, b,c") == ("a", "b", "c")
    (other / "classes.csv").write_text("label\nx\n")
    with pytest.raises(DataError, match="'name' column"):
        load_class_table(other)


def test_median_frequency_weights_by_hand() -> None:
    # image 1: 6 px of class 0, 2 px of class 1; image 2: 4 px class 0, 4 px class 2
    masks = torch.tensor([[0, 0, 0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 2, 2, 2, 2]]).view(2, 2, 4)
    # f0 = 10/16, f1 = 2/8, f2 = 4/8; median = 1/2
    weights = median_frequency_weights(masks, 3)
    assert weights == pytest.approx([0.5 / (10 / 16), 0.5 / (2 / 8), 1.0])
    # the ignore value counts nowhere; an absent class gets weight 0
    masks[0, 0, 0] = 255
    assert median_frequency_weights(masks, 4, ignore_index=255)[3] == 0.0


def test_camvid_like_end_to_end(tiny_camvid: Path, tmp_path: Path, capsys) -> None:
    assert main(["check", str(tiny_camvid)]) == 0
    out = capsys.readouterr().out
    assert "layout: segnet" in out and "Car" in out and "(ignored)" in out
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                str(tiny_camvid),
                "--out",
                str(run),
                "--epochs",
                "8",
                "--size",
                "32x48",
                "--model-arg",
                "base_channels=8",
                "--model-arg",
                "depth=2",
                "--batch-size",
                "2",
                "--lr",
                "5e-3",
                "--class-weights",
                "median-frequency",
            ]
        )
        == 0
    )
    config = json.loads((run / "config.json").read_text())
    assert config["num_classes"] == 11 and config["ignore_index"] == 11
    assert config["class_names"][8] == "Car" and len(config["class_weights"]) == 11
    split = json.loads((run / "split.json").read_text())
    assert len(split["train"]) == 10 and len(split["val"]) == 4 and split["test"] == []

    assert main(["evaluate", str(run), str(tiny_camvid), "--split", "val"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["per_class"]) == set(CAMVID_CLASSES)
    assert metrics["per_class"]["Sky"]["iou"] > 0.5 and metrics["global_accuracy"] > 0.6
    assert np.isnan(metrics["per_class"]["Pole"]["iou"])  # absent from truth and prediction
    assert (run / "confusion.png").is_file() and "threshold" not in metrics

    pred = tmp_path / "pred"
    image = tiny_camvid / "val" / "val00.png"
    assert main(["predict", str(run), str(image), "--out", str(pred)]) == 0
    assert (pred / "legend.png").is_file()
    colored = np.asarray(Image.open(pred / "val00_color.png"))
    assert colored.shape == (36, 48, 3)
    indices = np.asarray(Image.open(pred / "val00_mask.png"))
    assert set(np.unique(indices)) <= set(range(11))


def test_real_camvid_check_names_every_class(real_data: Path, capsys) -> None:
    assert main(["check", str(real_data / "camvid")]) == 0
    out = capsys.readouterr().out
    assert "pairs: 150" in out and "11 classes" in out
    for name in CAMVID_CLASSES:
        assert name in out, name


def test_colour_coded_masks_through_a_class_table(tmp_path: Path, capsys) -> None:
    """RGB masks (e.g. CamVid's original colour labels) mapped through classes.json colours."""
    colors = {"background": [0, 0, 0], "road": [128, 64, 128], "car": [64, 0, 128]}
    root = tmp_path / "rgbmasks"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.json").write_text(
        json.dumps([{"name": n, "color": c} for n, c in colors.items()])
    )
    rng = np.random.default_rng(0)
    for i in range(6):
        index = np.zeros((24, 32), np.uint8)
        index[12:] = 1
        index[8:16, 4 + i : 14 + i] = 2
        rgb = np.array(list(colors.values()), np.uint8)[index]
        Image.fromarray(rgb).save(root / "masks" / f"s{i}.png")
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(
            root / "images" / f"s{i}.png"
        )
    from pixelseg.data.io import read_mask

    assert np.array_equal(
        read_mask(root / "masks" / "s0.png", 3, list(colors.values()))[12:, 0],
        np.ones(12, np.uint8),
    )
    assert main(["check", str(root)]) == 0
    out = capsys.readouterr().out
    assert "3 classes" in out and "road" in out and "car" in out
    # a colour missing from the table is named
    bad = np.zeros((24, 32, 3), np.uint8)
    bad[0, 0] = (1, 2, 3)
    Image.fromarray(bad).save(root / "masks" / "s5.png")
    assert main(["check", str(root)]) == 1
    assert "s5.png: colours not in the class table: (1, 2, 3)" in capsys.readouterr().err


def test_colour_coded_masks_train_and_evaluate(tmp_path: Path) -> None:
    from pixelseg.config import TrainConfig
    from pixelseg.engine.evaluate import evaluate_run
    from pixelseg.engine.train import fit
    from settings import FAST

    colors = [[0, 0, 0], [255, 255, 0]]
    root = tmp_path / "rgb"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.csv").write_text("name,r,g,b\nground,0,0,0\nsun,255,255,0\n")
    for i in range(8):
        index = np.zeros((20, 20), np.uint8)
        index[2 + i : 10 + i, 5:12] = 1
        Image.fromarray(np.array(colors, np.uint8)[index]).save(root / "masks" / f"c{i}.png")
        Image.fromarray((index * 200 + 20).astype(np.uint8)).save(root / "images" / f"c{i}.png")
    run = fit(TrainConfig(data=str(root), out=str(tmp_path / "run"), epochs=2, **FAST)).run_dir
    config = json.loads((run / "config.json").read_text())
    assert config["num_classes"] == 2 and config["class_colors"] == colors
    metrics = evaluate_run(run, root, split="all", progress=False)
    assert metrics["n_images"] == 8 and set(metrics["per_class"]) == {"ground", "sun"}


def test_a_test_only_segnet_folder_is_scored_and_refused_for_training(
    tiny_camvid: Path, tmp_path: Path, capsys
) -> None:
    """A held-out set kept as test/ + testannot/ alone: evaluate scores it (--split test
    picks that folder), training asks for train/."""
    import shutil

    from pixelseg.config import TrainConfig
    from pixelseg.engine.train import fit
    from settings import FAST

    run = fit(TrainConfig(data=str(tiny_camvid), out=str(tmp_path / "run"), epochs=1, **FAST))
    held = tmp_path / "held-out"
    held.mkdir()
    shutil.copytree(tiny_camvid / "val", held / "test")
    shutil.copytree(tiny_camvid / "valannot", held / "testannot")
    fmt, samples = find_samples(held)
    assert fmt == "segnet" and {s.subset for s in samples} == {"test"} and len(samples) == 4
    out = tmp_path / "scores"
    assert main(["evaluate", str(run.run_dir), str(held), "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["n_images"] == 4
    assert main(["evaluate", str(run.run_dir), str(held), "--split", "val"]) == 2
    assert "has no val/ images (it holds test); use --split test" in capsys.readouterr().err
    with pytest.raises(DataError, match="no training images .*holds test/ only"):
        fit(TrainConfig(data=str(held), out=str(tmp_path / "bad"), epochs=1, **FAST))


def test_class_names_must_be_distinct() -> None:
    from pixelseg.data.classes import resolve_classes
    from pixelseg.errors import SettingsError

    with pytest.raises(SettingsError, match="distinct"):
        resolve_classes("folders", "unused", 3, ["sky", "road", "sky"], None)


def test_training_on_patches_predicts_whole_images(
    tiny_camvid: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--crop``: steps see random patches; validation, the saved size and predictions
    are whole images."""
    import pixelseg
    from pixelseg.data.transforms import BatchTransform

    seen: list[tuple[bool, tuple[int, ...]]] = []
    real = BatchTransform.__call__

    def recording(self, batch, device):
        images, masks = real(self, batch, device)
        seen.append((self.augment is not None, tuple(images.shape[-2:])))
        return images, masks

    monkeypatch.setattr(BatchTransform, "__call__", recording)
    run = tmp_path / "run"
    result = pixelseg.train(
        tiny_camvid, out=run, epochs=2, size="32x48", crop="16x24", batch_size=2,
        model="unet", model_kwargs={"base_channels": 8, "depth": 2}, progress=False,
    )  # fmt: skip
    config = json.loads((run / "config.json").read_text())
    assert config["size"] == [32, 48] and config["train"]["crop"] == [16, 24]
    assert len(result.history) == 2 and 0 <= result.history[-1]["val_miou"] <= 1
    pred = tmp_path / "pred"
    assert main(["predict", str(run), str(tiny_camvid / "val" / "val00.png"), "--out",
                 str(pred)]) == 0  # fmt: skip
    assert np.asarray(Image.open(pred / "val00_mask.png")).shape == (36, 48)
    # training batches were patches of the cached 32x48 images; every other batch was whole
    assert {shape for augmented, shape in seen if augmented} == {(16, 24)}
    assert {shape for augmented, shape in seen if not augmented} == {(32, 48)}
