"""Sliding-window inference: coverage, blending, bounded batches, and the CLI."""

from __future__ import annotations

import json
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
from pixelseg.inference.tiling import gaussian_weights, sliding_window, window_starts
from settings import FAST, run_config


@pytest.mark.parametrize(
    ("length", "tile", "overlap"), [(100, 32, 0.25), (512, 512, 0.5), (513, 512, 0.25), (7, 32, 0)]
)
def test_windows_cover_the_image_and_overlap_enough(length: int, tile: int, overlap: float) -> None:
    starts = window_starts(length, tile, overlap)
    assert starts[0] == 0
    assert starts[-1] + min(tile, length) == length  # the last window ends at the edge
    gaps = np.diff(starts)
    assert (gaps > 0).all() and (gaps <= tile * (1 - overlap)).all()


def test_bad_tiling_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="overlap"):
        window_starts(100, 32, 1.0)
    with pytest.raises(ValueError, match="tile"):
        window_starts(100, 0, 0.25)
    with pytest.raises(ValueError, match="batch"):
        sliding_window(torch.zeros(3, 8, 8), lambda x: x, 4, batch=0)


def test_gaussian_weights_peak_in_the_centre_and_never_vanish() -> None:
    w = gaussian_weights(33, 20)
    assert w.shape == (33, 20)
    assert w[16].argmax() in (9, 10) and w[:, 9].argmax() == 16
    assert 0.95 < w.max() <= 1.0 and w.min() >= 1e-3


def test_pointwise_model_tiled_equals_whole_image() -> None:
    """A 1x1 convolution sees no context, so any seam would be a blending error."""
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 2, 1)
    image = torch.rand(3, 100, 130)
    tiled = sliding_window(image, model, tile=32, overlap=0.25, batch=3)
    whole = model(image[None])[0]
    assert tiled.shape == (2, 100, 130)
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=1e-5)


def test_image_within_one_tile_is_one_forward_pass() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 1, 5, padding=2))
    image = torch.rand(3, 40, 50)
    calls = []

    def forward(x: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(x.shape))
        return model(x)

    tiled = sliding_window(image, forward, tile=64)
    assert calls == [(1, 3, 40, 50)]
    torch.testing.assert_close(tiled, model(image[None])[0], atol=1e-6, rtol=1e-6)


def test_batches_of_tiles_bound_the_work_per_pass() -> None:
    image = torch.rand(3, 300, 500)
    shapes = []

    def forward(x: torch.Tensor) -> torch.Tensor:
        shapes.append(tuple(x.shape))
        return x[:, :1]

    out = sliding_window(image, forward, tile=64, overlap=0.5, batch=3)
    windows = len(window_starts(300, 64, 0.5)) * len(window_starts(500, 64, 0.5))
    assert sum(s[0] for s in shapes) == windows
    assert all(n <= 3 and h == 64 and w == 64 for n, _, h, w in shapes)
    torch.testing.assert_close(out, image[:1], atol=1e-5, rtol=1e-5)


def test_gaussian_blending_hides_tile_borders(monkeypatch: pytest.MonkeyPatch) -> None:
    """With real context (zero-padded 3x3 convolutions) a tile's border pixels differ from
    the whole image's; Gaussian weights make them count little, so the blended result is far
    closer to the whole-image output than a plain average of the tiles."""
    import pixelseg.inference.tiling

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 1, 3, padding=1)
    )
    image = torch.rand(3, 96, 96)
    with torch.no_grad():
        whole = model(image[None])[0]
        gaussian = sliding_window(image, model, tile=32, overlap=0.5)
        flat_weights = lambda h, w: torch.ones(h, w)  # noqa: E731
        monkeypatch.setattr(pixelseg.inference.tiling, "gaussian_weights", flat_weights)
        flat = sliding_window(image, model, tile=32, overlap=0.5)
    # the image's own 2-pixel border is zero-padded in both and left out
    g_err = (gaussian - whole).abs()[:, 2:-2, 2:-2]
    f_err = (flat - whole).abs()[:, 2:-2, 2:-2]
    assert f_err.mean() > 0  # the tiles really do see less context
    assert g_err.mean() < 0.1 * f_err.mean() and g_err.max() < f_err.max()


class _Pointwise(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _predictor(source_size: list[int] | None, **options) -> Predictor:
    torch.manual_seed(0)
    config = run_config([32, 48], source_size=source_size)
    return Predictor(_Pointwise(), config, torch.device("cpu"), PredictOptions(**options))


def test_tiling_uses_the_training_scale() -> None:
    predictor = _predictor(source_size=[64, 96])  # training halved its images
    assert predictor.tile_scale() == (0.5, 0.5)
    image = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    whole = predictor.logits([image])[0]
    # the halved image (32x48) is one 64-pixel tile: the same as whole-image
    tiled = _predictor(source_size=[64, 96], tile=64).logits([image])[0]
    assert tiled.shape == (1, 64, 96)
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=1e-5)
    predictor = _predictor(source_size=[64, 96], tile=64, scale=1.0)
    assert predictor.tile_scale() == (1.0, 1.0)
    with pytest.warns(UserWarning, match="--scale"):  # an older run: says what to do
        assert _predictor(source_size=None).tile_scale() == (1.0, 1.0)


def test_predict_cli_tiles_a_large_image(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "run"
    fit(TrainConfig(data=str(tiny_data), out=str(run), epochs=1, **FAST))
    config = json.loads((run / "config.json").read_text())
    assert config["source_size"] == [40, 48]  # the tiny images, trained at 32x32
    big = Image.open(next((tiny_data / "images").iterdir())).resize((300, 200))
    big.save(tmp_path / "big.png")
    out = tmp_path / "o"
    args = ["predict", str(run), str(tmp_path / "big.png"), "--out", str(out)]
    assert main([*args, "--tile", "48", "--overlap", "0.5", "--tta", "--tta-rotations"]) == 0
    mask = np.asarray(Image.open(out / "big_mask.png"))
    assert mask.shape == (200, 300) and set(np.unique(mask)) <= {0, 255}
    assert main([*args, "--tile", "64", "--scale", "1", "--batch-size", "2"]) == 0
    for bad, message in [
        (["--overlap", "0.5"], "add --tile"),
        (["--tile", "64", "--overlap", "1"], "--overlap must be in [0, 1)"),
        (["--tile", "64", "--scale", "0"], "--scale must be > 0"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--tile", "8"], "at least 16"),
        (["--tta-rotations"], "--tta-rotations extends --tta"),
    ]:
        assert main([*args, *bad]) == 2
        assert message in capsys.readouterr().err
