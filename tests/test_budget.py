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
                        scheduler=SimpleNamespace(lr_lambdas=[old]),
                        optimizer=SimpleNamespace(param_groups=[{}]))  # fmt: skip
    cfg = TrainConfig(data="unused", num_classes=1, time_budget="1h", warmup_epochs=1)
    epochs = planned_epochs(clock, done)
    planned = plan_epochs(cfg, epochs, t, steps, clock.per_epoch).epochs
    assert planned == epochs
    assert planned != 40
    new = t.scheduler.lr_lambdas[0]
    assert new is t.schedule
    assert new(done * steps) == pytest.approx(old(done * steps))  # no jump
    assert new(planned * steps) == pytest.approx(0.01)  # decays to 1% at the new end


def test_a_new_plan_moves_every_optimizer_group_and_keeps_the_frozen_encoder() -> None:
    """A zoo model's encoder has an optimizer group (and schedule) of its own: a re-plan
    must end its cosine with the rest's, and keep it frozen for as long as asked."""
    import torch

    from pixelseg.engine.finetune import group_schedules

    steps, done = 10, 3
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    optimizer = torch.optim.AdamW(
        [{"params": net[1].parameters()}, {"params": net[0].parameters(), "lr": 1e-4}], lr=1e-3
    )
    cfg = TrainConfig(data="unused", num_classes=1, time_budget="1h", warmup_epochs=1,
                      freeze_encoder_epochs=5, encoder_weights="imagenet")  # fmt: skip
    cfg = cfg.with_defaults()
    old = Schedule(cfg.epochs * steps, warmup=steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, group_schedules(old, optimizer, cfg, steps)
    )
    t = SimpleNamespace(history=[{}] * done, schedule=old, scheduler=scheduler, optimizer=optimizer)
    plan_epochs(cfg, 12, t, steps, 1.0)
    decoder, encoder = scheduler.lr_lambdas
    assert decoder is t.schedule and encoder.frozen == 5 * steps
    assert [encoder(s) for s in (0, 49)] == [0.0, 0.0]  # frozen for 5 epochs
    for step in (50, 80, 12 * steps):  # then the same multiplier as the rest: one curve
        assert encoder(step) == decoder(step)
    assert encoder(12 * steps) == pytest.approx(0.01)
