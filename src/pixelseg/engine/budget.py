"""``--time-budget``: plan the number of epochs from how long the first ones take."""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from pixelseg.config import TrainConfig
from pixelseg.engine.finetune import group_schedules
from pixelseg.engine.schedule import Schedule

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from pixelseg.engine.state import TrainingState

END_SECONDS = 3.0  # kept from a time budget for what follows the last epoch
EPOCH_STEPS = 50  # the fewest training steps in an epoch under a time budget


@dataclass
class Clock:
    """Wall-clock bookkeeping for ``--time-budget``: when each epoch started."""

    budget: float  # seconds for the whole run
    started: float
    ceiling: int  # the most epochs the run may have
    tops: list[float] = field(default_factory=list)

    @property
    def per_epoch(self) -> float:
        """A typical epoch, checkpoints included: the median, leaving out the first epoch
        (it carries start-up costs) once there are others."""
        durations = [b - a for a, b in zip(self.tops, self.tops[1:], strict=False)]
        return statistics.median(durations[1:] or durations)

    @staticmethod
    def replan(epoch: int, planned: int) -> bool:
        """Plan after the first epoch, then again after epochs 3, 7, 15... (once the slower
        first epoch can be left out, and as the median settles) while the run is in the
        first half of its plan; each new plan continues the decay from the rate reached."""
        return epoch == 2 or (epoch >= 4 and (epoch & (epoch - 1)) == 0 and epoch < planned / 2)

    def seconds_left(self) -> float:
        return self.budget - (time.perf_counter() - self.started) - END_SECONDS

    def to_state(self) -> dict:
        """For ``last.pt``: the time used so far and the epochs' start times, relative to the
        run's start, so a resumed run gets what is left of its budget (the time between a
        kill and the restart does not count)."""
        now = time.perf_counter()
        return {"budget": self.budget, "elapsed": now - self.started, "ceiling": self.ceiling,
                "tops": [t - self.started for t in self.tops]}  # fmt: skip

    @classmethod
    def from_state(cls, state: dict) -> Clock:
        started = time.perf_counter() - state["elapsed"]
        tops = [started + t for t in state["tops"]]
        return cls(state["budget"], started, state["ceiling"], tops)

    def room_for_an_epoch(self) -> bool:
        # a tenth of an epoch in reserve, for the noise of a shared machine
        return self.seconds_left() >= 1.1 * self.per_epoch


def planned_epochs(clock: Clock, done: int) -> int:
    """How many epochs fit in what is left of the budget, ``done`` being finished."""
    return min(clock.ceiling, done + max(1, int(clock.seconds_left() // (1.1 * clock.per_epoch))))


def plan_epochs(
    cfg: TrainConfig, epochs: int, t: TrainingState, steps: int, per_epoch: float,
) -> TrainConfig:  # fmt: skip
    """Fit the cosine schedule to ``epochs`` (from :func:`planned_epochs`)."""
    done = len(t.history)
    step = done * steps
    if step < cfg.warmup_epochs * steps:  # still warming up: a fresh schedule
        t.schedule = Schedule(epochs * steps, cfg.warmup_epochs * steps)
    else:  # a new cosine from the rate reached, so the rate never jumps
        t.schedule = Schedule(epochs * steps, begin=step, start=t.schedule(step))
    # every optimizer group follows the new curve (a zoo model's encoder has its own group)
    t.scheduler.lr_lambdas[:] = group_schedules(t.schedule, t.optimizer, cfg, steps)
    log.info(
        f"time budget {cfg.time_budget}: an epoch takes {per_epoch:.2f} s, planning "
        f"{epochs} epoch{'s' * (epochs > 1)}"
    )
    return replace(cfg, epochs=epochs)
