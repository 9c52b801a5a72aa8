"""``config.json`` through one typed object: round trips, defaults, unknown keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pixelseg.errors import PixelsegError
from pixelseg.runconfig import CONFIG_FILE, RunConfig
from settings import run_config


def test_a_config_survives_the_file_unchanged(tmp_path: Path) -> None:
    config = run_config([32, 48], 3, class_names=["a", "b", "c"], source_size=[64, 96],
                        best={"epoch": 2, "miou": 0.5}, train={"epochs": 2})  # fmt: skip
    path = config.write(tmp_path)
    assert path == tmp_path / CONFIG_FILE
    data = json.loads(path.read_text())
    assert data["size"] == [32, 48] and data["mean"] == [0.5] * 3 and data["postprocess"] == []
    again = RunConfig.read(tmp_path)
    assert again == config and again.size == (32, 48) and again.threshold == 0.5


def test_an_older_config_gets_the_defaults(tmp_path: Path) -> None:
    """Runs written before the threshold and clean-up steps were chosen still load."""
    data = run_config([32, 32]).to_dict()
    for key in ("threshold", "postprocess", "source_size", "best", "train"):
        del data[key]
    (tmp_path / CONFIG_FILE).write_text(json.dumps({**data, "postprocess": None}))
    config = RunConfig.read(tmp_path)
    assert config.threshold == 0.5 and config.postprocess == () and config.source_size is None


def test_unknown_keys_are_named_and_wrong_shapes_refused(tmp_path: Path) -> None:
    data = {**run_config([32, 32]).to_dict(), "calibration": {"t": 0.4}}
    (tmp_path / CONFIG_FILE).write_text(json.dumps(data))
    with pytest.warns(UserWarning, match=r"config.json: ignoring key\(s\).*calibration"):
        RunConfig.read(tmp_path)
    (tmp_path / CONFIG_FILE).write_text(json.dumps({**data, "size": 32}))
    with pytest.raises(PixelsegError, match="config.json: .*damaged"):
        RunConfig.read(tmp_path)
    with pytest.raises(PixelsegError, match="not a pixelseg run folder"):
        RunConfig.read(tmp_path / "elsewhere")
