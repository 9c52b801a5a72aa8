"""torchrun on CPUs (gloo): training, evaluation and prediction with two processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pixelseg
from pixelseg.cli import main
from pixelseg.engine.distributed import World, world_from_env

TRAIN = ["--model-arg", "base_channels=8", "--model-arg", "depth=2", "--size", "32",
         "--batch-size", "2", "--lr", "0.003", "--device", "cpu"]  # fmt: skip


def torchrun(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node=2", "-m", "pixelseg", *args]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "last.pt", weights_only=True)["model"]


@pytest.fixture(scope="module")
def ddp_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two epochs with two processes, through ``pixelseg train --nproc 2``."""
    run = tmp_path_factory.mktemp("ddp") / "run"
    args = ["train", str(tiny_data), "--out", str(run), "--epochs", "2", *TRAIN, "--nproc", "2"]
    assert main(args) == 0
    return run


def test_two_process_training_writes_one_run(ddp_run: Path, tiny_data: Path) -> None:
    config = json.loads((ddp_run / "config.json").read_text())
    state = torch.load(ddp_run / "last.pt", weights_only=True)
    assert state["finished"] and state["epoch"] == 2 and state["world_size"] == 2
    assert not any(k.startswith("module.") for k in state["model"])  # the plain model's keys
    # the validation score chosen in training is exactly a one-process evaluation's
    best = config["best"]
    one = pixelseg.evaluate(
        ddp_run, tiny_data, split="val", threshold=0.5, apply_postprocess=False,
        out=ddp_run / "val1", progress=False,
    )  # fmt: skip
    assert one["dice"] == best["dice"]


def test_two_process_evaluation_equals_one_process(
    ddp_run: Path, tiny_data: Path, tmp_path: Path
) -> None:
    main(["evaluate", str(ddp_run), str(tiny_data), "--split", "all", "--out", str(tmp_path / "1")])
    torchrun("evaluate", str(ddp_run), str(tiny_data), "--split", "all", "--out",
             str(tmp_path / "2"))  # fmt: skip
    one = json.loads((tmp_path / "1" / "metrics.json").read_text())
    two = json.loads((tmp_path / "2" / "metrics.json").read_text())
    assert one == two and one["n_images"] == 12
    assert (tmp_path / "1" / "per_image.csv").read_bytes() == (
        tmp_path / "2" / "per_image.csv"
    ).read_bytes()


def test_two_process_prediction_equals_one_process(
    ddp_run: Path, tiny_data: Path, tmp_path: Path
) -> None:
    images = str(tiny_data / "images")
    main(["predict", str(ddp_run), images, "--out", str(tmp_path / "1"), "--instances"])
    done = torchrun("predict", str(ddp_run), images, "--out", str(tmp_path / "2"), "--instances")
    assert done.stdout.count("wrote 60 outputs for 12 image(s)") == 1  # rank 0 reports
    one = sorted(p.name for p in (tmp_path / "1").iterdir())
    assert one == sorted(p.name for p in (tmp_path / "2").iterdir()) and len(one) == 60
    for name in one:
        assert (tmp_path / "1" / name).read_bytes() == (tmp_path / "2" / name).read_bytes(), name
    # each process resumes its own share: half the masks gone, half the images redone
    for mask in sorted((tmp_path / "2").glob("*_mask.png"))[::2]:
        mask.unlink()
    again = torchrun("predict", str(ddp_run), images, "--out", str(tmp_path / "2"),
                     "--instances", "--resume")  # fmt: skip
    assert again.stdout.count("wrote 30 outputs for 12 image(s) (6 image(s) done before") == 1
    for name in one:
        assert (tmp_path / "1" / name).read_bytes() == (tmp_path / "2" / name).read_bytes(), name


# rank 0 SIGKILLs itself right after the checkpoint of epoch 2, step 1; torchrun then
# stops the other process too: a crash of the whole job in the middle of an epoch
KILLER = """
import os, signal, sys
from pixelseg.cli import main
from pixelseg.engine import checkpoint

save = checkpoint.save_state
def save_then_die(run_dir, state):
    save(run_dir, state)
    if state["epoch"] == 1 and (state["progress"] or {}).get("step") == 1:
        os.kill(os.getpid(), signal.SIGKILL)
checkpoint.save_state = save_then_die
sys.exit(main(sys.argv[1:]))
"""


def test_two_process_run_killed_mid_epoch_resumes_to_the_same_weights(
    tiny_data: Path, tmp_path: Path
) -> None:
    """Each process gets its own random state and data position back, so a job killed in
    the middle of an epoch and started again ends with the uninterrupted job's weights."""
    full, part = tmp_path / "full", tmp_path / "part"
    args = ["train", str(tiny_data), "--epochs", "3", "--save-every", "1", *TRAIN]
    torchrun(*args, "--out", str(full))
    killer = tmp_path / "killer.py"
    killer.write_text(KILLER)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node=2", str(killer), *args, "--out", str(part)]  # fmt: skip
    crashed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert crashed.returncode != 0
    state = torch.load(part / "last.pt", weights_only=True)
    assert (state["epoch"], state["progress"]["step"], state["finished"]) == (1, 1, False)
    done = torchrun(*args, "--out", str(part))  # the same command again: it resumes
    assert "holds an unfinished run: resuming it" in done.stderr + done.stdout
    a, b = _weights(full), _weights(part)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_world_without_torchrun_is_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    world = world_from_env()
    assert world == World() and world.is_main and not world.distributed
    assert world.broadcast({"a": 1}) == {"a": 1} and world.gather(3) == [3]
    assert world.share(10) == (0, 10) and not world.any(False)
    assert [World(r, r, 3).share(10) for r in range(3)] == [(0, 3), (3, 6), (6, 10)]


def test_nproc_is_refused_under_torchrun(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, tiny_data: Path
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(["train", str(tiny_data), "--nproc", "2"]) == 2
    assert "under torchrun leave it out" in capsys.readouterr().err


def test_a_worker_exits_at_once_with_its_output_flushed() -> None:
    """torchrun workers leave through exit_process (gloo's threads outlive the group after
    DDP and crashed the interpreter's teardown now and then): the piped, still-buffered
    output must not be lost, and the exit code must be the command's."""
    code = (
        "import sys; from pixelseg.engine.distributed import exit_process; "
        "print('written', end=''); sys.stderr.write('noted'); exit_process(3)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert (done.returncode, done.stdout, done.stderr) == (3, "written", "noted")


def test_two_processes_share_one_disk_cache(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rank 0 decodes the pairs into the cache; rank 1 waits and opens the same files."""
    monkeypatch.setenv("PIXELSEG_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    torchrun("train", str(tiny_data), "--out", str(run), "--epochs", "1", "--model", "unet",
             *TRAIN, "--cache", "disk")  # fmt: skip
    folders = sorted(p.name for p in (tmp_path / "cache").iterdir() if p.name != "checks")
    assert len(folders) == 2 and not [f for f in folders if f.startswith(".")]  # train, val
    assert (run / "model.safetensors").is_file()
