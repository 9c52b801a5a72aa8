"""pixelseg ensemble: trained runs combined into one run that averages their probabilities."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import pixelseg
from pixelseg.cli import main
from pixelseg.errors import PixelsegError
from pixelseg.models import create_model
from pixelseg.models.ensemble import Ensemble
from pixelseg.runconfig import RunConfig
from settings import FAST_ARGS


def _members(num_classes: int) -> list[torch.nn.Module]:
    torch.manual_seed(0)
    kwargs = {"base_channels": 4, "depth": 2, "num_classes": num_classes}
    return [create_model("unet", **kwargs).eval(), create_model("unet", **kwargs).eval()]


@pytest.mark.parametrize("num_classes", [1, 3])
def test_the_output_is_the_mean_probability(num_classes: int) -> None:
    """Each member sees the input normalised as it was trained; softmax (sigmoid) of the
    ensemble's logits is the mean of the members' probabilities."""
    members = _members(num_classes)
    mean, std = [[0.5] * 3, [0.4, 0.45, 0.5]], [[0.25] * 3, [0.2, 0.22, 0.3]]
    pixels = torch.rand(2, 3, 32, 32)
    own = [member((pixels - torch.tensor(m)[:, None, None]) / torch.tensor(s)[:, None, None])
           for member, m, s in zip(members, mean, std, strict=True)]  # fmt: skip
    proba = torch.sigmoid if num_classes == 1 else (lambda t: t.softmax(1))
    expected = (proba(own[0]) + proba(own[1])) / 2
    with torch.no_grad():
        logits = Ensemble(members, mean, std)((pixels - 0.5) / 0.25)
    assert logits.shape == (2, num_classes, 32, 32)
    assert torch.allclose(proba(logits), expected, atol=1e-5)
    assert not torch.allclose(proba(own[0]), expected, atol=1e-3)  # the members differ


def _train(data: Path, out: Path, *extra: str) -> Path:
    assert main(["train", str(data), "--out", str(out), "--epochs", "1", *FAST_ARGS, *extra]) == 0
    return out


@pytest.fixture(scope="module")
def two_runs(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two runs of one split (--split-seed 0) from different seeds."""
    root = tmp_path_factory.mktemp("members")
    return [_train(tiny_data, root / f"seed{s}", "--seed", str(s), "--split-seed", "0")
            for s in (0, 1)]  # fmt: skip


def test_split_seed_keeps_the_split_and_seed_changes_the_weights(two_runs: list[Path]) -> None:
    a, b = (json.loads((run / "split.json").read_text()) for run in two_runs)
    assert a == b and a["test"]
    weights = [(run / "model.safetensors").read_bytes() for run in two_runs]
    assert weights[0] != weights[1]


def test_ensemble_from_the_command_line_evaluates_predicts_and_exports(
    two_runs: list[Path], tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "ensemble"
    assert main(["ensemble", *map(str, two_runs), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "mean probability of 2 runs" in printed and "(the members' mean)" in printed
    split = json.loads((out / "split.json").read_text())
    assert split == json.loads((two_runs[0] / "split.json").read_text())
    config = json.loads((out / "config.json").read_text())
    members = [json.loads((r / "config.json").read_text()) for r in two_runs]
    assert config["model"] == "ensemble" and len(config["model_kwargs"]["members"]) == 2
    assert config["threshold"] == pytest.approx(sum(m["threshold"] for m in members) / 2, abs=1e-4)
    assert main(["evaluate", str(out), str(tiny_data), "--split", "test"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_images"] == len(split["test"]) and 0 <= metrics["dice"] <= 1
    masks = tmp_path / "masks"
    assert main(["predict", str(out), str(tiny_data / "images"), "--out", str(masks)]) == 0
    assert len(list(masks.glob("*_mask.png"))) == len(list((tiny_data / "images").iterdir()))
    assert main(["export", str(out), "--out", str(tmp_path / "e.onnx")]) == 0
    assert "largest difference" in capsys.readouterr().out


def test_the_api_predicts_with_the_members_mean(two_runs: list[Path], tmp_path: Path) -> None:
    out = pixelseg.ensemble(two_runs, tmp_path / "ensemble")
    image = (torch.rand(40, 48, 3) * 255).to(torch.uint8).numpy()
    probas = [pixelseg.load(run).predict_proba(image) for run in [*two_runs, out]]
    assert probas[2].shape == (40, 48)
    assert abs(probas[2] - (probas[0] + probas[1]) / 2).max() < 1e-4


def test_members_of_other_splits_keep_only_images_none_of_them_saw(
    two_runs: list[Path], tiny_data: Path, tmp_path: Path
) -> None:
    other = _train(tiny_data, tmp_path / "other", "--split-seed", "5")
    out = pixelseg.ensemble([two_runs[0], other], tmp_path / "ensemble")
    splits = [json.loads((r / "split.json").read_text()) for r in (two_runs[0], other, out)]
    assert splits[0] != splits[1]
    seen = set(splits[0]["train"]) | set(splits[1]["train"])
    assert set(splits[2]["train"]) == seen
    for part in ("val", "test"):
        assert set(splits[2][part]) == (set(splits[0][part]) & set(splits[1][part])) - seen


def test_runs_that_cannot_be_combined_are_refused_by_name(
    two_runs: list[Path], tiny_data: Path, tmp_path: Path
) -> None:
    bigger = _train(tiny_data, tmp_path / "bigger", "--split-seed", "0", "--size", "48")
    with pytest.raises(PixelsegError, match=r"bigger: size \(48, 48\), but .*seed0 has \(32, 32\)"):
        pixelseg.ensemble([two_runs[0], bigger], tmp_path / "e1")
    with pytest.raises(PixelsegError, match="two or more runs"):
        pixelseg.ensemble([two_runs[0]], tmp_path / "e2")
    with pytest.raises(PixelsegError, match=r"seed1: exists and is not an empty folder"):
        pixelseg.ensemble(two_runs, two_runs[1])
    assert not (tmp_path / "e1").exists() and not (tmp_path / "e2").exists()
    ensemble = pixelseg.ensemble(two_runs, tmp_path / "e3")
    with pytest.raises(PixelsegError, match=r"e3: already an ensemble"):
        pixelseg.ensemble([two_runs[0], ensemble], tmp_path / "e4")


def test_a_member_trained_on_its_val_images_leaves_none_for_validation(
    two_runs: list[Path], tiny_data: Path, tmp_path: Path
) -> None:
    both = _train(tiny_data, tmp_path / "both", "--split-seed", "0", "--train-on-val")
    out = pixelseg.ensemble([two_runs[0], both], tmp_path / "ensemble")
    split = json.loads((out / "split.json").read_text())
    member = json.loads((two_runs[0] / "split.json").read_text())
    assert split["val"] == [] and split["test"] == member["test"]
    assert set(member["val"]) <= set(split["train"])
    assert json.loads((out / "config.json").read_text())["train"]["train_on_val"] is True


def test_one_upright_member_keeps_upside_down_views_out_of_tta(
    two_runs: list[Path], tmp_path: Path
) -> None:
    """A member trained with left-right flips only never saw an upside-down image, so the
    ensemble's test-time augmentation must not show it one."""
    upright = tmp_path / "upright"
    shutil.copytree(two_runs[1], upright)
    config = json.loads((upright / "config.json").read_text())
    config["train"]["flips"] = "horizontal"
    (upright / "config.json").write_text(json.dumps(config))
    assert not RunConfig.read(two_runs[0]).upright
    out = pixelseg.ensemble([two_runs[0], upright], tmp_path / "ensemble")
    assert RunConfig.read(out).upright


def test_a_damaged_member_list_names_the_config(two_runs: list[Path], tmp_path: Path) -> None:
    out = pixelseg.ensemble(two_runs, tmp_path / "ensemble")
    config = json.loads((out / "config.json").read_text())
    del config["model_kwargs"]["members"][1]["mean"]
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(PixelsegError, match=r"config\.json: an ensemble member needs model, "):
        pixelseg.load(out)
