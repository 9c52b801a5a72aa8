"""What changes while training, and what ``last.pt`` keeps of it to resume exactly.

A checkpoint is written after every epoch and, with ``save_every``, every N steps inside
one. It holds the model, optimizer, scheduler and learning-rate schedule, the random
generators' states, the history and best score, and the position in the data: the epoch
and, mid-epoch, the step and the running loss. The order of the samples is a function of
(seed, epoch) alone (:class:`~pixelseg.engine.sampling.EpochSampler`), so the position is
all it takes to see exactly the batches that were left. With fp16 autocast the gradient
scaler's state is saved too (bf16 and float32 need none).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from pixelseg.config import TrainConfig
from pixelseg.engine.ema import WeightAverage
from pixelseg.engine.optimizer import load_optimizer_state
from pixelseg.engine.precision import Precision
from pixelseg.engine.schedule import Schedule


@dataclass
class Progress:
    """How far training got inside an epoch: steps done and their summed loss.

    The loss is summed on the training device (:meth:`add_loss`): reading a GPU value
    makes the host wait for every queued kernel, so ``loss_sum`` is only brought up to
    date by :meth:`settle`, when something reads it (the progress bar now and then, a
    checkpoint, the end of the epoch). The sum is float64 and in step order, the same
    additions as summing ``loss.item()`` values in Python.
    """

    step: int = 0
    loss_sum: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self._running: torch.Tensor | None = None  # not a field: never saved

    def add_loss(self, loss: torch.Tensor, n: int) -> None:
        """Add a step's mean loss over ``n`` images, without a host sync."""
        if self._running is None:
            self._running = torch.tensor(self.loss_sum, dtype=torch.float64, device=loss.device)
        self._running += loss.detach().double() * n
        self.step += 1
        self.count += n

    def settle(self) -> Progress:
        """Bring ``loss_sum`` up to date (one host sync); returns self."""
        if self._running is not None:
            self.loss_sum = self._running.item()
        return self


def random_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_random_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside DistributedDataParallel (whose state_dict keys carry ``module.``)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


@dataclass
class TrainingState:
    """Everything that changes while training and is saved in ``last.pt`` to resume."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    schedule: Schedule
    history: list[dict]
    class_weights: list[float] | None = None
    best_score: float = -1.0
    best_epoch: int = 0
    patience_start: int = 0  # early stopping counts epochs from max(this, best_epoch)
    precision: Precision = field(default_factory=lambda: Precision("fp32", False, "cpu"))
    scaler: torch.amp.GradScaler | None = None  # fp16 autocast only
    ema: WeightAverage | None = None  # the averaged weights, validated and saved instead

    def evaluated_model(self) -> torch.nn.Module:
        """The weights that are validated and saved: the average when there is one."""
        return self.ema.model if self.ema is not None else unwrap(self.model)

    def state(
        self, epoch: int, cfg: TrainConfig, mean: list[float], std: list[float],
        progress: Progress | None = None, finished: bool = False,
    ) -> dict:  # fmt: skip
        """``epoch``: the last finished epoch; ``progress``: the steps done after it."""
        return {
            "epoch": epoch, "progress": asdict(progress.settle()) if progress else None,
            "finished": finished, "model": unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "schedule": asdict(self.schedule), "random": random_state(),
            "history": self.history, "best_score": self.best_score,
            "best_epoch": self.best_epoch, "mean": mean, "std": std, "config": cfg.to_dict(),
            "class_weights": self.class_weights, "patience_start": self.patience_start,
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "ema": self.ema.state_dict() if self.ema else None,
        }  # fmt: skip

    def restore(
        self, state: dict, rank: int = 0, world_size: int = 1
    ) -> tuple[int, Progress | None]:
        """Load a saved state; returns the epoch to continue and the progress inside it.

        Each process of a distributed run takes back its own random state and progress
        (the run must resume with as many processes as it had; see ``fit``).
        """
        unwrap(self.model).load_state_dict(state["model"])
        load_optimizer_state(self.optimizer, state["optimizer"])
        # LambdaLR would also restore the saved Schedule's fields over the one chosen for
        # this session (which differs when the run was given more epochs): drop them.
        lambdas = [None] * len(self.optimizer.param_groups)
        self.scheduler.load_state_dict({**state["scheduler"], "lr_lambdas": lambdas})
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema"):
            self.ema.load_state_dict(state["ema"])
        randoms = state.get("random_ranks") or [state["random"]]
        progresses = state.get("progress_ranks") or [state.get("progress")]
        mine = rank if len(randoms) == world_size else 0
        restore_random_state(randoms[mine])
        self.history = state["history"]
        self.best_score, self.best_epoch = state["best_score"], state["best_epoch"]
        self.patience_start = state.get("patience_start", 0)
        progress = progresses[mine] if mine < len(progresses) else None
        return state["epoch"] + 1, Progress(**progress) if progress else None
