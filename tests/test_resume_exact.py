"""Exact resumption: a run killed mid-epoch and resumed ends with the same weights as an
uninterrupted run; signals save and stop; a crash while saving keeps the last checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pixelseg.config import TrainConfig
from pixelseg.engine import checkpoint
from pixelseg.engine.interrupt import TrainingInterrupted
from pixelseg.engine.sampling import EpochSampler
from pixelseg.engine.train import fit, resume
from pixelseg.errors import PixelsegError
from pixelseg.models.saved import WEIGHTS_FILE
from settings import FAST

# 12 tiny images, 8 for training at batch 2: 4 steps an epoch
SETTINGS = {**FAST, "batch_size": 2, "epochs": 3, "patience": 0, "save_every": 1}

# Runs training in a child process that SIGKILLs itself right after the first checkpoint
# written in the middle of epoch 2 (after its step 2): no handler, no cleanup, as a crash.
KILLER = """
import json, os, signal, sys
from pixelseg.config import TrainConfig
from pixelseg.engine import checkpoint
from pixelseg.engine.train import fit

save = checkpoint.save_state
def save_then_die(run_dir, state):
    save(run_dir, state)
    progress = state["progress"]
    if state["epoch"] == 1 and progress and progress["step"] == 2:
        os.kill(os.getpid(), signal.SIGKILL)
checkpoint.save_state = save_then_die
fit(TrainConfig(**json.loads(sys.argv[1])))
"""


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / checkpoint.STATE_FILE, weights_only=True)["model"]


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sampler_order_depends_on_seed_and_epoch_only() -> None:
    a, b = EpochSampler(10, seed=3), EpochSampler(10, seed=3)
    a.set_epoch(2)
    b.set_epoch(2, start=4)
    assert list(a)[4:] == list(b) and len(b) == 6
    a.set_epoch(3)
    assert list(a) != list(b)
    shards = [EpochSampler(10, num_samples=25, seed=1, rank=r, world_size=2) for r in (0, 1)]
    for s in shards:
        s.set_epoch(1)
    both = list(shards[0]) + list(shards[1])
    assert len(shards[0]) == len(shards[1]) == 13 and sorted(set(both)) == list(range(10))
    with pytest.raises(ValueError, match="rank"):
        EpochSampler(10, rank=2, world_size=2)


@pytest.mark.parametrize("extra", [{}, {"ema": 0.9}], ids=["raw", "weight-average"])
def test_sigkill_mid_epoch_then_resume_gives_the_same_weights(
    tiny_data: Path, tmp_path: Path, extra: dict
) -> None:
    settings = {**SETTINGS, **extra}
    full = fit(TrainConfig(data=str(tiny_data), out=str(tmp_path / "full"), **settings))
    run = tmp_path / "killed"
    cfg = {"data": str(tiny_data), "out": str(run), **settings}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.run(
        [sys.executable, "-c", KILLER, json.dumps(cfg)], env=env, capture_output=True, text=True
    )
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    state = torch.load(run / checkpoint.STATE_FILE, weights_only=True)
    assert state["epoch"] == 1 and state["progress"]["step"] == 2 and not state["finished"]
    resumed = resume(run)
    assert _same(_weights(run), _weights(tmp_path / "full"))  # bitwise, on this CPU
    best = [load_file(str(r / WEIGHTS_FILE)) for r in (run, tmp_path / "full")]
    assert _same(*best)  # the saved best weights too (the average's, with ema)
    assert resumed.history == [{**r, "seconds": s["seconds"]} for r, s in
                               zip(full.history, resumed.history, strict=True)]  # fmt: skip


def test_rerunning_the_same_command_resumes_an_unfinished_run(
    tiny_data: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"

    def stop_after_epoch_1(row: dict) -> None:
        if row["epoch"] == 1:
            raise RuntimeError("crash")

    cfg = {"data": str(tiny_data), "out": str(run), **SETTINGS}
    with pytest.raises(RuntimeError):
        fit(TrainConfig(**cfg), on_epoch_end=stop_after_epoch_1)
    result = fit(TrainConfig(**cfg))  # no --resume: picked up because it is unfinished
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    with pytest.raises(PixelsegError, match="already holds a finished run"):
        fit(TrainConfig(**cfg))
    other = {**cfg, "out": str(tmp_path / "other")}
    with pytest.raises(RuntimeError):
        fit(TrainConfig(**other), on_epoch_end=stop_after_epoch_1)
    with pytest.raises(ValueError, match="cannot change lr.*another --out"):
        fit(TrainConfig(**{**other, "lr": 0.1}))


def test_sigterm_saves_where_it_is_and_stops(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    calls = {"n": 0}
    real = torch.optim.AdamW.step

    def step_then_signal(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:  # epoch 2, step 2: as if `kill` arrived during the step
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step_then_signal)
    cfg = {"data": str(tiny_data), "out": str(run), **{**SETTINGS, "save_every": 0}}
    with pytest.raises(TrainingInterrupted, match="SIGTERM.*epoch 1 and 2 steps of epoch 2"):
        fit(TrainConfig(**cfg))
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone again
    state = torch.load(run / checkpoint.STATE_FILE, weights_only=True)
    assert (state["epoch"], state["progress"]["step"]) == (1, 2)
    monkeypatch.undo()
    fit(TrainConfig(data=str(tiny_data), out=str(tmp_path / "full"), **SETTINGS))
    resume(run)
    assert _same(_weights(run), _weights(tmp_path / "full"))


def test_a_crash_while_saving_keeps_the_previous_checkpoint(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    cfg = {"data": str(tiny_data), "out": str(run), **SETTINGS}
    fit(TrainConfig(**{**cfg, "epochs": 1}))
    before = (run / checkpoint.STATE_FILE).read_bytes()

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)  # every write fails after its data is written
    with pytest.raises(OSError, match="No space"):
        resume(run, epochs=2)
    monkeypatch.undo()
    assert (run / checkpoint.STATE_FILE).read_bytes() == before
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    assert checkpoint.load_state(run)["epoch"] == 1  # loads, and continues
    assert resume(run, epochs=2).history[-1]["epoch"] == 2


def test_a_rerun_time_budget_run_keeps_what_is_left_of_its_budget(
    tiny_data: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    budget = 15.0  # seconds: room for two short epochs even on a busy machine
    cfg = {"data": str(tiny_data), "out": str(run), **FAST, "time_budget": f"{budget:g}s"}

    def crash_after_epoch_2(row: dict) -> None:
        if row["epoch"] == 2:
            raise RuntimeError("crash")

    with pytest.raises(RuntimeError):
        fit(TrainConfig(**cfg), on_epoch_end=crash_after_epoch_2)
    state = torch.load(run / checkpoint.STATE_FILE, weights_only=True)
    planned, used = state["config"]["epochs"], state["clock"]["elapsed"]
    assert planned < 1000 and 0 < used < budget  # the plan made after epoch 2, and time used
    start = time.perf_counter()
    result = fit(TrainConfig(**cfg))  # the same command: resumes, within the budget left
    assert time.perf_counter() - start < budget - used + 10  # (start-up, calibration on top)
    assert len(result.history) > 2  # (later plans may change the count, within the budget)


def test_resuming_with_another_number_of_processes_is_refused(
    tiny_data: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    fit(TrainConfig(data=str(tiny_data), out=str(run), **{**SETTINGS, "epochs": 1}))
    state = torch.load(run / checkpoint.STATE_FILE, weights_only=True)
    checkpoint.save_state(run, {**state, "world_size": 2})
    with pytest.raises(ValueError, match="trained with 2 process"):
        resume(run, epochs=2)
