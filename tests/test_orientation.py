"""Images with an up: measured from the masks, trained without upside-down flips, and
test-time augmentation that shows the model only the views it trained on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pixelseg.cli import main
from pixelseg.config import TrainConfig
from pixelseg.data.orientation import mask_asymmetry
from pixelseg.data.transforms import Augment
from pixelseg.engine.train import fit
from pixelseg.errors import SettingsError
from pixelseg.inference.options import PredictOptions
from pixelseg.inference.predictor import Predictor
from pixelseg.inference.tta import tta_views
from settings import FAST, run_config


def _masks(fill, n: int = 12) -> list[torch.Tensor]:
    """``n`` 48x48 masks, each made by ``fill(mask, rng)``."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        mask = np.zeros((48, 48), np.uint8)
        fill(mask, rng)
        out.append(torch.from_numpy(mask))
    return out


def _standing(mask: np.ndarray, rng: np.random.Generator) -> None:
    """A figure rising from the bottom edge near the middle (a person in a photo)."""
    w, h = rng.integers(8, 18), rng.integers(20, 40)
    x = 24 - w // 2 + rng.integers(-6, 7)
    mask[48 - h :, x : x + w] = 1


def _centred(mask: np.ndarray, rng: np.random.Generator) -> None:
    """A blob near the middle, shifted a little (a lesion in a dermoscopy image)."""
    cy, cx, r = rng.integers(18, 30), rng.integers(18, 30), rng.integers(6, 14)
    yy, xx = np.ogrid[:48, :48]
    mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1


def test_masks_with_an_up_are_told_from_masks_without() -> None:
    standing = mask_asymmetry(_masks(_standing), 1)
    assert standing.upright and standing.vertical > 0.3 > standing.horizontal
    centred = mask_asymmetry(_masks(_centred, n=60), 1)
    assert not centred.upright and centred.vertical < 0.1


def test_lopsided_both_ways_is_no_up() -> None:
    """Objects always in the bottom-left corner differ as much left-right as top-bottom:
    that is a framing habit, not an up (an aerial or a slide image), so both flips stay."""

    def corner(mask: np.ndarray, rng: np.random.Generator) -> None:
        mask[30 + rng.integers(0, 6) :, : 10 + rng.integers(0, 6)] = 1

    asymmetry = mask_asymmetry(_masks(corner), 1)
    assert asymmetry.vertical > 0.5 and asymmetry.horizontal > 0.5
    assert not asymmetry.upright


def test_classes_and_void_in_the_measure() -> None:
    """Multi-class: every class's rows count (sky above, road below); void counts in none."""
    scene = torch.zeros(48, 48, dtype=torch.uint8)  # class 0: sky
    scene[24:] = 1  # class 1: road
    assert mask_asymmetry([scene] * 3, num_classes=2).upright
    void_above = torch.zeros(48, 48, dtype=torch.uint8)
    void_above[:24] = 255  # no foreground anywhere: nothing to be lopsided
    assert mask_asymmetry([void_above], 1, ignore_index=255).vertical == 0.0
    assert mask_asymmetry([void_above], 1).upright  # counted as foreground, it would be


def test_augment_without_vertical_flips_keeps_the_top_on_top() -> None:
    torch.manual_seed(0)
    images = torch.zeros(64, 3, 16, 16)
    masks = torch.zeros(64, 16, 16, dtype=torch.long)
    masks[:, :4] = 1  # the top rows
    plain = {"rotate_degrees": 0.0, "scale": 0.0, "color": 0.0}
    _, kept = Augment(vflip=False, **plain)(images, masks)
    assert bool((kept[:, :4] == 1).all()) and not kept[:, 4:].any()
    _, flipped = Augment(**plain)(images, masks)
    upside_down = flipped[:, -4:].flatten(1).all(1)
    assert 10 < int(upside_down.sum()) < 54  # about half of the 64


def test_upright_models_get_the_left_right_views_only() -> None:
    assert tta_views(upright=True) == [(0, False), (0, True)]
    with pytest.raises(SettingsError, match="--tta without --tta-rotations"):
        tta_views(rotations=True, upright=True)

    class Speck(torch.nn.Module):  # a speck of foreground in the top-left corner
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            logits = torch.full((x.shape[0], 1, *x.shape[2:]), -10.0)
            logits[:, :, :3, :3] = 10.0
            return logits

    config = run_config([32, 32], train={"flips": "horizontal"})
    assert config.upright and not run_config([32, 32]).upright
    predictor = Predictor(Speck(), config, torch.device("cpu"), PredictOptions(tta=True))
    proba = predictor.predict_proba(np.zeros((32, 32, 3), np.uint8))
    # one view of two puts it in each top corner, none in the bottom ones
    assert proba[0, 0] == pytest.approx(0.5, abs=1e-3)
    assert proba[0, 31] == pytest.approx(0.5, abs=1e-3)
    assert proba[31, 0] < 1e-3 and proba[31, 31] < 1e-3


def _write_standing(root: Path) -> Path:
    """Twelve photos of bright figures standing on the bottom edge, with their masks."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, mask in enumerate(_masks(_standing)):
        m = mask.numpy()
        rng = np.random.default_rng(i)
        image = rng.integers(0, 80, (48, 48, 3)).astype(np.uint8)
        image[m == 1] = 200
        Image.fromarray(image).save(root / "images" / f"p{i:02d}.png")
        Image.fromarray(m * 255).save(root / "masks" / f"p{i:02d}.png")
    return root


def test_training_on_photos_with_an_up_flips_left_right_only(
    tmp_path: Path, logs: list[str]
) -> None:
    data = _write_standing(tmp_path / "standing")
    run = tmp_path / "run"
    fit(TrainConfig(data=str(data), out=str(run), epochs=2, **FAST))
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["flips"] == "horizontal"
    assert any(m.startswith("flips: left-right only (the images have an up") for m in logs)
    args = ["evaluate", str(run), str(data), "--split", "all", "--out", str(tmp_path / "e")]
    assert main([*args, "--tta"]) == 0
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["tta"] == "left-right flips"
    assert main([*args, "--tta", "--tta-rotations"]) == 2  # refused, with the reason
    # the user's word wins over the data's
    both = tmp_path / "both"
    assert main(["train", str(data), "--out", str(both), "--flips", "both", "--epochs", "1",
                 "--model", "unet", "--size", "32"]) == 0  # fmt: skip
    assert json.loads((both / "config.json").read_text())["train"]["flips"] == "both"


def test_flips_setting_is_checked() -> None:
    with pytest.raises(SettingsError, match="flips must be one of auto, both, horizontal"):
        TrainConfig(data=".", flips="vertical")
