"""Settings are checked when made and decided once, when a run starts (engine/resolve.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from pixelseg.config import DEFAULT_EPOCHS, MAX_BUDGET_EPOCHS, TrainConfig
from pixelseg.engine.distributed import World
from pixelseg.engine.resolve import resolve


def test_making_settings_only_checks_them() -> None:
    cfg = TrainConfig(data="d", model="smp-unet", size="48x64")
    # nothing is filled in: None and "auto" wait for the run
    assert (cfg.epochs, cfg.patience, cfg.loss, cfg.model_kwargs) == (None, None, None, {})
    assert cfg.size == "48x64"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.epochs = 3  # type: ignore[misc]
    filled = cfg.with_defaults()
    assert (filled.epochs, filled.patience, filled.size) == (DEFAULT_EPOCHS, 10, (48, 64))
    assert filled.model_kwargs == {"encoder": "resnet34"}
    budgeted = TrainConfig(data="d", time_budget="5m", num_classes=3).with_defaults()
    assert (budgeted.epochs, budgeted.patience, budgeted.loss) == (MAX_BUDGET_EPOCHS, 0, "ce+dice")
    assert filled.with_defaults() == filled  # filling twice changes nothing
    with pytest.raises(ValueError, match="size must look like"):
        TrainConfig(data="d", size="big")


def test_a_run_starts_from_settings_with_nothing_left_open(tiny_data: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(
        data=str(tiny_data), out=str(tmp_path), progress=False, encoder_weights="none"
    )
    plan = resolve(cfg, torch.device("cpu"), World(), tmp_path, state=None)
    decided = plan.cfg
    left_open = [f.name for f in dataclasses.fields(decided)
                 if getattr(decided, f.name) in (None, "auto")]  # fmt: skip
    # what may stay open: settings whose None means "off" or "calibrate on validation",
    # and those read from the decoded training masks (class weights, flips)
    assert set(left_open) <= {"time_budget", "threshold", "ignore_index", "class_names",
                              "class_colors", "encoder_lr_scale", "format", "cache",
                              "class_weights", "postprocess", "device", "latency",
                              "crop", "flips"}  # fmt: skip
    assert decided.model == "unet" and decided.in_channels == 3 and decided.num_classes == 1
    assert decided.loss == "bce+dice" and decided.precision in ("fp32", "bf16", "fp16")
    assert decided.size is not None and all(side % plan.stride == 0 for side in decided.size)
    assert sorted(plan.split) == ["test", "train", "val"]
    assert sum(len(v) for v in plan.split.values()) == len(plan.data.samples) == 12
    assert (tmp_path / "split.json").is_file()
    # given settings are kept as given
    given = dataclasses.replace(cfg, size=(32, 48), batch_size=3, model="unet")
    kept = resolve(given, torch.device("cpu"), World(), tmp_path / "b", state=None).cfg
    assert (kept.size, kept.batch_size, kept.model) == ((32, 48), 3, "unet")
