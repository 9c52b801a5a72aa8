"""``--train-on-val``: the validation images train too, the last epoch is kept, and nothing
is calibrated on images the model has seen."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pixelseg.cli import main
from settings import FAST_ARGS


def _train(data: Path, run: Path, *extra: str) -> dict:
    assert main(["train", str(data), "--out", str(run), *FAST_ARGS, "--epochs", "3", *extra]) == 0
    return json.loads((run / "config.json").read_text())


def test_validation_images_train_too_and_the_last_epoch_is_kept(
    tiny_data: Path, tmp_path: Path, logs: list[str]
) -> None:
    split = None
    for flag in ((), ("--train-on-val",)):
        logs.clear()
        run = tmp_path / ("all" if flag else "plain")
        config = _train(tiny_data, run, *flag)
        started = next(m for m in logs if m.startswith("pixelseg: unet"))
        # the same split either way (12 pairs: 8 train, 2 val, 2 test); only what trains differs
        saved = json.loads((run / "split.json").read_text())
        assert split is None or saved == split
        split = saved
        trained = len(split["train"]) + (len(split["val"]) if flag else 0)
        assert f"{trained} train / {len(split['val'])} val images" in started
    assert config["train"]["train_on_val"] is True
    assert config["best"]["epoch"] == 3  # the last epoch, whatever its validation score
    assert config["threshold"] == 0.5 and config["postprocess"] == []  # nothing calibrated
    assert any("the validation images train too" in m for m in logs)
    assert not any(m.startswith("threshold ") for m in logs)
    with pytest.warns(UserWarning, match="trained on its validation images"):
        assert main(["evaluate", str(run), str(tiny_data), "--split", "val"]) == 0
    # the test images stay out of training and are scored as usual
    assert main(["evaluate", str(run), str(tiny_data)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["n_images"] == len(split["test"])
