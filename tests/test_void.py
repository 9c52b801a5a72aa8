"""Binary masks with a void value (0 background, 1 object, 255 uncertain border, as
PASCAL VOC exports them): never read as foreground, honoured by training and metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixelseg.cli import main
from pixelseg.config import TrainConfig
from pixelseg.data.io import read_mask
from pixelseg.engine.evaluate import evaluate_run
from pixelseg.engine.train import fit
from pixelseg.errors import DataError
from settings import FAST


@pytest.fixture(scope="module")
def void_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """32 images of a bright disc on noise; masks 1 inside, a 255 ring around it, 0 out."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("void") / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    yy, xx = np.mgrid[:48, :48]
    for i in range(32):
        cy, cx, r = rng.integers(16, 32), rng.integers(16, 32), rng.integers(6, 12)
        d = np.hypot(yy - cy, xx - cx)
        mask = np.where(d < r, 1, np.where(d < r + 3, 255, 0)).astype(np.uint8)
        image = rng.integers(0, 90, (48, 48, 3)).astype(np.uint8)
        image[d < r] = np.clip(image[d < r].astype(int) + 140, 0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"v{i:02d}.png")
        Image.fromarray(mask).save(root / "masks" / f"v{i:02d}.png")
    return root


def test_a_void_value_is_never_read_as_foreground(void_data: Path, tmp_path: Path) -> None:
    path = void_data / "masks" / "v00.png"
    with pytest.raises(DataError, match="v00.png: mask values 0, 1 and 255: is 255 void"):
        read_mask(path)
    mask = read_mask(path, ignore_index=255)
    assert set(np.unique(mask).tolist()) == {0, 1, 255}
    raw = np.asarray(Image.open(path))
    assert np.array_equal(mask, raw)
    # an image with background and void only, and a 0/255 mask with void 128
    only_void = tmp_path / "only_void.png"
    Image.fromarray(np.where(raw == 1, 0, raw).astype(np.uint8)).save(only_void)
    assert read_mask(only_void, ignore_index=255).max() == 255
    assert (read_mask(only_void, ignore_index=255) == 1).sum() == 0
    grey = tmp_path / "grey.png"
    Image.fromarray(np.where(raw == 1, 255, np.where(raw == 255, 128, 0)).astype(np.uint8)).save(
        grey
    )
    assert np.array_equal(
        read_mask(grey, ignore_index=128), raw.clip(0, 1) * (raw != 255) + (raw == 255) * 128
    )
    all_void = tmp_path / "all_void.png"
    Image.fromarray(np.full(raw.shape, 255, np.uint8)).save(all_void)
    with pytest.raises(DataError, match="all_void.png: every pixel is void"):
        read_mask(all_void, ignore_index=255)
    from pixelseg.data.classes import resolve_classes

    with pytest.raises(ValueError, match="--ignore-index 1 is a class of binary masks"):
        resolve_classes("folders", void_data, None, ignore_index=1)
    # a palette mask as VOC stores it: indices 0, 1 and 255
    palette = Image.fromarray(raw, mode="P")
    palette.putpalette([0, 0, 0, 128, 0, 0] + [0, 0, 0] * 253 + [224, 224, 192])
    palette.save(tmp_path / "voc.png")
    assert np.array_equal(read_mask(tmp_path / "voc.png", ignore_index=255), raw)


def test_check_names_the_ambiguity_and_accepts_the_void_value(void_data: Path, capsys) -> None:
    assert main(["check", str(void_data)]) == 1
    err = capsys.readouterr().err
    assert "v00.png: mask values 0, 1 and 255" in err and "--ignore-index 255" in err
    assert main(["check", str(void_data), "--ignore-index", "255"]) == 0
    out = capsys.readouterr().out
    assert "(ignored)" in out and "no problems found" in out


def test_training_and_scores_ignore_the_void_ring(void_data: Path, tmp_path: Path) -> None:
    """Trained with --ignore-index 255 the model finds the objects (not the ring), and the
    scores leave the ring out: far above a model that predicts the ring."""
    settings = {**FAST, "size": 48, "epochs": 15, "patience": 0}
    run = fit(TrainConfig(data=str(void_data), out=str(tmp_path / "run"), ignore_index=255,
                          **settings)).run_dir  # fmt: skip
    metrics = evaluate_run(run, void_data, split="all", progress=False)
    assert metrics["dice"] > 0.8, metrics["dice"]
    # the same scoring of the ring itself as the prediction: what the old reading learned
    from pixelseg.metrics import BinaryMetrics

    ring_scores = BinaryMetrics()
    for p in sorted((void_data / "masks").iterdir()):
        raw = np.asarray(Image.open(p))
        ring_scores.update(raw == 255, raw == 1, raw != 255)
    assert ring_scores.compute()["dice"] < 0.05
    assert metrics["dice"] > ring_scores.compute()["dice"] + 0.7
