"""Cut-outs and composites for background replacement."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixelseg.cli import main
from pixelseg.config import TrainConfig
from pixelseg.engine.train import fit
from pixelseg.inference.cutout import alpha_from_mask, composite, cutout, parse_background
from settings import FAST


def _scene() -> tuple[np.ndarray, np.ndarray]:
    image = np.full((20, 30, 3), 200, np.uint8)
    mask = np.zeros((20, 30), np.uint8)
    mask[5:15, 10:20] = 1
    return image, mask


def test_cutout_alpha_is_the_mask() -> None:
    image, mask = _scene()
    rgba = cutout(image, mask)
    assert rgba.shape == (20, 30, 4) and rgba.dtype == np.uint8
    assert np.array_equal(rgba[..., :3], image)
    assert set(np.unique(rgba[..., 3])) == {0, 255}
    assert np.array_equal(rgba[..., 3] == 255, mask == 1)
    soft = alpha_from_mask(mask, feather=2.0)
    assert 0 < soft[5, 10] < 1 and soft[10, 15] > 0.9 and soft[0, 0] < 0.01
    with pytest.raises(ValueError, match="feather"):
        alpha_from_mask(mask, -1)


def test_composite_over_a_colour_and_a_picture() -> None:
    image, mask = _scene()
    green = composite(image, mask, (0, 177, 64))
    assert (green[0, 0] == [0, 177, 64]).all() and (green[10, 15] == 200).all()
    picture = np.zeros((10, 15, 3), np.uint8)
    picture[..., 2] = 255  # blue, half the size: resized to the image
    blue = composite(image, mask, picture)
    assert blue.shape == image.shape and (blue[0, 0] == [0, 0, 255]).all()


def test_parse_background(tmp_path: Path) -> None:
    assert parse_background("green") == (0, 128, 0)
    assert parse_background("#00b140") == (0, 177, 64)
    assert parse_background("0,177,64") == (0, 177, 64)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "back.png")
    assert parse_background(str(tmp_path / "back.png")).shape == (4, 4, 3)
    for bad in ("notacolour", "1,2", "0,0,300"):
        with pytest.raises(ValueError, match="neither an image file nor a colour"):
            parse_background(bad)


def test_predict_writes_cutouts_and_composites(tiny_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    fit(TrainConfig(data=str(tiny_data), out=str(run), epochs=1, **FAST))
    image = next((tiny_data / "images").iterdir())
    out = tmp_path / "out"
    args = ["predict", str(run), str(image), "--out", str(out)]
    assert main([*args, "--cutout", "--background", "red", "--feather", "1.5"]) == 0
    size = Image.open(image).size
    rgba = Image.open(out / f"{image.stem}_cutout.png")
    assert rgba.mode == "RGBA" and rgba.size == size
    assert Image.open(out / f"{image.stem}_composite.png").size == size
    assert main([*args, "--background", "notacolour"]) == 2


@pytest.mark.parametrize("feather", [16.0, 20.0, 50.0])
def test_a_wide_feather_matches_the_full_blur(feather: float) -> None:
    """Wide blurs are computed on a shrunk alpha (bounded cost): within 2% of the full one."""
    from scipy import ndimage

    mask = np.zeros((300, 451), np.uint8)
    mask[60:240, 90:300] = 1
    mask[20:40, 400:430] = 2
    exact = ndimage.gaussian_filter((mask > 0).astype(np.float32), feather)
    fast = alpha_from_mask(mask, feather)
    assert fast.shape == mask.shape and fast.min() >= 0 and fast.max() <= 1
    assert np.abs(fast - exact).max() < 0.02
