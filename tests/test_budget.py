"""Time-budget planning: when to re-plan, and a re-plan never makes the rate jump."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from pixelseg.config import TrainConfig
from pixelseg.engine.budget import Clock, plan_epochs, planned_epochs
from pixelseg.engine.schedule import Schedule


def test_replans_early_and_then_less_and_less_often() -> None:
    assert [e for e in range(1, 60) if Clock.replan(e, planned=60)] == [2, 4, 8, 16]
    assert [e for e in range(1, 60) if Clock.replan(e, planned=20)] == [2, 4, 8]


@pytest.mark.parametrize("seconds_left", [30.0, 300.0])  # fewer or more epochs than planned
def test_a_new_plan_continues_from_the_rate_reached(seconds_left: float) -> None:
    steps, done = 10, 8
    old = Schedule(40 * steps, warmup=steps)
    now = time.perf_counter()
    clock = Clock(budget=seconds_left + 3.0, started=now, ceiling=1000,
                  tops=[now - 9 + i for i in range(9)])  # fmt: skip  # 1 s epochs
    t = SimpleNamespace(history=[{}] * done, schedule=old,
                        scheduler=SimpleNamespace(lr_lambdas=[old]))  # fmt: skip
    cfg = TrainConfig(data="unused", num_classes=1, time_budget="1h", warmup_epochs=1)
    epochs = planned_epochs(clock, done)
    planned = plan_epochs(cfg, epochs, t, steps, clock.per_epoch, lambda _: None).epochs
    assert planned == epochs
    assert planned != 40
    new = t.scheduler.lr_lambdas[0]
    assert new is t.schedule
    assert new(done * steps) == pytest.approx(old(done * steps))  # no jump
    assert new(planned * steps) == pytest.approx(0.01)  # decays to 1% at the new end
