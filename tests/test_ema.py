"""The weight average (``--ema``): its arithmetic, and that a run validates, saves and
resumes the averaged weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pixelseg.config import TrainConfig
from pixelseg.engine import checkpoint
from pixelseg.engine.ema import WeightAverage
from pixelseg.engine.train import fit
from pixelseg.models.saved import WEIGHTS_FILE
from settings import FAST


def _net() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))


def test_the_average_warms_up_then_follows_with_its_decay() -> None:
    model = _net()
    with torch.no_grad():
        model[0].weight.zero_()
    ema = WeightAverage(model, decay=0.5)
    with torch.no_grad():
        model[0].weight.fill_(1.0)
    ema.update(model)  # first decay (1 + 0) / (10 + 0) = 0.1: 90% of the way
    assert torch.allclose(ema.model[0].weight, torch.full_like(model[0].weight, 0.9))
    ema.update(model)  # then (1 + 1) / (10 + 1) = 0.18...
    assert torch.allclose(ema.model[0].weight, torch.full_like(model[0].weight, 1 - 0.1 * 2 / 11))
    for _ in range(20):
        ema.update(model)
    assert ema.current_decay() == 0.5  # capped at decay once (1 + n) / (10 + n) passes it
    # integer buffers (batch-norm's counter) are copied, not averaged
    assert ema.model[1].num_batches_tracked == model[1].num_batches_tracked
    assert not any(p.requires_grad for p in ema.model.parameters())


def test_state_round_trip_and_bad_decay() -> None:
    model = _net()
    a = WeightAverage(model, 0.9)
    with torch.no_grad():
        model[0].bias.add_(3.0)
    a.update(model)
    b = WeightAverage(_net(), 0.9)
    b.load_state_dict(a.state_dict())
    assert b.updates == 1 and torch.equal(b.model[0].bias, a.model[0].bias)
    for decay in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="decay"):
            WeightAverage(model, decay)
    with pytest.raises(ValueError, match="ema must be in"):
        TrainConfig(data="x", ema=1.0)


def test_a_run_validates_and_saves_the_average(tiny_data: Path, tmp_path: Path) -> None:
    run = fit(TrainConfig(data=str(tiny_data), out=str(tmp_path / "r"), epochs=1, ema=0.5, **FAST))
    saved = load_file(str(run.run_dir / WEIGHTS_FILE))
    state = torch.load(run.run_dir / checkpoint.STATE_FILE, weights_only=True)
    average, raw = state["ema"]["model"], state["model"]
    assert state["ema"]["updates"] > 0
    assert all(torch.equal(saved[k], average[k]) for k in saved)
    # the saved weights are not the raw ones: the average lags behind the last step
    assert any(not torch.equal(saved[k], raw[k]) for k in saved if raw[k].is_floating_point())
