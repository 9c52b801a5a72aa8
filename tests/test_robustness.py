"""Fixes for problems found in review: resume rules, schedules, odd masks and inputs, safety."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pixelseg
from pixelseg.cli import main
from pixelseg.config import TrainConfig
from pixelseg.data.io import read_image, read_mask
from pixelseg.data.layouts import find_samples
from pixelseg.engine.train import Schedule, fit, resume
from pixelseg.errors import DataError, PixelsegError
from pixelseg.inference.base import as_rgb_array
from settings import FAST


def test_schedule_warms_up_then_decays_and_continues_smoothly() -> None:
    s = Schedule(total=100, warmup=10)
    assert s(0) == pytest.approx(0.1) and s(9) == pytest.approx(1.0)
    values = [s(i) for i in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))
    assert s(100) == pytest.approx(0.01)
    # a run extended at step 60: a new cosine from where it was, never jumping up
    more = Schedule(total=200, begin=60, start=s(59))
    assert more(60) == pytest.approx(s(59)) and more(200) == pytest.approx(0.01)
    assert all(more(i) >= more(i + 1) for i in range(60, 200))


def test_resume_refuses_to_change_the_model(tiny_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    fit(TrainConfig(data=str(tiny_data), out=str(run), epochs=1, **FAST))
    with pytest.raises(ValueError, match="cannot change model_kwargs"):
        resume(run, model_kwargs={"base_channels": 16})
    with pytest.raises(ValueError, match="cannot change lr"):
        fit(
            TrainConfig(data=str(tiny_data), out=str(run), epochs=2, **{**FAST, "lr": 1e-2}),
            resume=True,
        )


def test_resume_with_more_epochs_continues_the_learning_rate(
    tiny_data: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    first = fit(TrainConfig(data=str(tiny_data), out=str(run), epochs=2, patience=0, **FAST))
    longer = resume(run, epochs=4)
    lrs = [row["lr"] for row in longer.history]
    assert [row["epoch"] for row in longer.history] == [1, 2, 3, 4]
    assert lrs[:2] == [row["lr"] for row in first.history]
    assert lrs[2] <= lrs[1] and lrs[3] <= lrs[2]


def test_early_stopping_counts_patience_from_the_resume(tiny_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    fit(TrainConfig(data=str(tiny_data), out=str(run), epochs=2, patience=0, **FAST))
    # pretend the best epoch was long ago: a resumed run still gets `patience` epochs
    import torch

    state = torch.load(run / "last.pt", weights_only=True)
    state["best_epoch"] = 0
    torch.save(state, run / "last.pt")
    result = resume(run, epochs=10, patience=2)
    assert len(result.history) >= 4


def test_a_new_run_makes_a_new_split(tiny_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "split.json").write_text(json.dumps({"train": ["x"], "val": [], "test": []}))
    fit(TrainConfig(data=str(tiny_data), out=str(run), epochs=1, **FAST))
    split = json.loads((run / "split.json").read_text())
    assert sum(map(len, split.values())) == 12


def test_bad_model_option_fails_before_any_file_is_written(tiny_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(ValueError, match="bogus"):
        fit(
            TrainConfig(
                data=str(tiny_data),
                out=str(run),
                epochs=1,
                **{**FAST, "model_kwargs": {"bogus": 1}},
            )
        )
    assert not run.exists()


def test_demo_refuses_a_folder_it_did_not_make(tmp_path: Path, capsys) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "important.txt").write_text("keep me")
    assert main(["demo", "--out", str(tmp_path), "--epochs", "1", "--images", "8"]) == 2
    assert "was not made by `pixelseg demo`" in capsys.readouterr().err
    assert (tmp_path / "data" / "important.txt").read_text() == "keep me"


def test_predict_skips_its_own_outputs_and_checks_threshold(
    tiny_data: Path, tmp_path: Path, capsys
) -> None:
    run = tmp_path / "run"
    fit(TrainConfig(data=str(tiny_data), out=str(run), epochs=1, **FAST))
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.open(tiny_data / "images" / "img00.png").save(inputs / "a.png")
    out = inputs / "pred"
    for _ in range(2):
        assert main(["predict", str(run), str(inputs), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a_mask.png", "a_overlay.png"]
    assert main(["predict", str(run), str(inputs), "--out", str(out), "--threshold", "7"]) == 2
    assert "threshold must be a probability" in capsys.readouterr().err
    assert main(["predict", str(run), str(inputs), "--out", str(out), "--batch-size", "0"]) == 2


def _save(path: Path, array: np.ndarray, **kw) -> Path:
    Image.fromarray(array).save(path, **kw)
    return path


def test_binary_masks_in_awkward_encodings(tmp_path: Path) -> None:
    shape = np.zeros((6, 8), np.uint8)
    shape[2:5, 3:7] = 1
    # a palette mask whose foreground colour is dark red (VOC style)
    pal = Image.fromarray(shape, mode="P")
    pal.putpalette([0, 0, 0, 128, 0, 0] + [0] * 762)
    pal.save(tmp_path / "voc.png")
    assert np.array_equal(read_mask(tmp_path / "voc.png"), shape)
    # grey 0/100 and pure red RGB
    assert np.array_equal(read_mask(_save(tmp_path / "grey.png", shape * 100)), shape)
    red = np.zeros((6, 8, 3), np.uint8)
    red[shape == 1] = (255, 0, 0)
    assert np.array_equal(read_mask(_save(tmp_path / "red.png", red)), shape)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    image = np.zeros((4, 6, 3), np.uint8)
    image[0, 0] = 255
    exif = Image.Exif()
    exif[0x0112] = 3  # rotated 180 degrees
    Image.fromarray(image).save(tmp_path / "rot.jpg", exif=exif, quality=100)
    out = read_image(tmp_path / "rot.jpg")
    assert out.shape == (4, 6, 3)
    assert out[-1, -1].mean() > 200 and out[0, 0].mean() < 50


def test_arrays_and_pil_images_convert_like_files(tmp_path: Path) -> None:
    grey16 = np.arange(48, dtype=np.uint16).reshape(6, 8) * 1300
    path = tmp_path / "deep.png"
    Image.fromarray(grey16).save(path)
    from_file = read_image(path)
    assert np.array_equal(as_rgb_array(Image.open(path)), from_file)
    assert np.abs(as_rgb_array(grey16).astype(int) - from_file.astype(int)).max() <= 1


def test_decompression_bomb_is_a_data_error(tmp_path: Path, monkeypatch) -> None:
    path = _save(tmp_path / "big.png", np.zeros((64, 64), np.uint8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(DataError, match="big.png: image too large"):
        read_image(path)


def test_pairs_with_shared_names_get_stable_names(tmp_path: Path) -> None:
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        _save(tmp_path / sub / "x.png", np.zeros((4, 4, 3), np.uint8))
        _save(tmp_path / sub / "x_mask.png", np.zeros((4, 4), np.uint8))
    lines = ["a/x.png,a/x_mask.png", "b/x.png,b/x_mask.png"]
    (tmp_path / "one.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "two.csv").write_text("\n".join(reversed(lines)) + "\n")
    stems_one = {s.stem: s.image.parent.name for s in find_samples(tmp_path / "one.csv")[1]}
    stems_two = {s.stem: s.image.parent.name for s in find_samples(tmp_path / "two.csv")[1]}
    assert stems_one == stems_two == {"a__x": "a", "b__x": "b"}


def test_resume_without_a_run_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(PixelsegError, match="nothing to resume"):
        resume(tmp_path)


def test_python_api_resume(tiny_data: Path, tmp_path: Path) -> None:
    import pixelseg

    run = tmp_path / "run"
    pixelseg.train(tiny_data, out=run, epochs=1, **FAST)
    result = pixelseg.train(tiny_data, out=run, resume=True, epochs=2)
    assert [row["epoch"] for row in result.history] == [1, 2]
    with pytest.raises(ValueError, match="unknown setting"):
        pixelseg.resume(run, epoch=3)


def test_class_index_masks_are_refused_as_binary(tmp_path: Path) -> None:
    mask = (np.arange(48).reshape(6, 8) % 12).astype(np.uint8)
    with pytest.raises(DataError, match="look like class indices"):
        read_mask(_save(tmp_path / "camvid_like.png", mask))
    assert read_mask(tmp_path / "camvid_like.png", num_classes=12).max() == 11


def test_run_files_are_readable_by_others(tiny_data: Path, tmp_path: Path) -> None:
    import os

    old = os.umask(0o022)
    try:
        fit(TrainConfig(data=str(tiny_data), out=str(tmp_path / "run"), epochs=1, **FAST))
    finally:
        os.umask(old)
    for name in ("config.json", "model.safetensors", "split.json", "history.csv"):
        assert (tmp_path / "run" / name).stat().st_mode & 0o777 == 0o644, name


def test_two_images_train_and_explain_the_empty_test_split(
    tiny_folders: Path, tmp_path: Path, capsys
) -> None:
    for p in sorted((tiny_folders / "images").iterdir())[2:]:
        p.unlink()
    run = tmp_path / "run"
    with pytest.warns(UserWarning, match="no image held out for validation"):
        fit(TrainConfig(data=str(tiny_folders), out=str(run), epochs=1, **FAST))
    assert main(["evaluate", str(run), str(tiny_folders)]) == 2
    assert "test split is empty" in capsys.readouterr().err
    assert main(["evaluate", str(run), str(tiny_folders), "--split", "all"]) == 0


def test_interrupted_run_given_more_epochs_gets_a_longer_decay(
    tiny_data: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"

    def stop_after_two(row: dict) -> None:
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(
            TrainConfig(data=str(tiny_data), out=str(run), epochs=6, patience=0, **FAST),
            on_epoch_end=stop_after_two,
        )
    result = resume(run, epochs=10)
    lrs = [row["lr"] for row in result.history]
    assert len(lrs) == 10
    assert all(b <= a for a, b in zip(lrs[1:], lrs[2:], strict=False))  # no jump up
    floor = 0.01 * FAST["lr"]
    assert lrs[6] > 2 * floor  # epoch 7 is not yet at the end of the (new, longer) decay
    assert lrs[9] == pytest.approx(floor)


class _TwoLevelModel(torch.nn.Module):
    """Probability 0.3 on bright pixels, 0.1 elsewhere: only a threshold in (0.1, 0.3) works."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = torch.where(x[:, :1] > 0, torch.tensor(0.3), torch.tensor(0.1))
        return torch.log(p / (1 - p))


def test_threshold_calibration_finds_the_working_threshold(tiny_data: Path) -> None:
    from pixelseg.data.dataset import SegmentationDataset
    from pixelseg.data.transforms import BatchTransform
    from pixelseg.engine.evaluate import calibrate_threshold

    samples = find_samples(tiny_data)[1]
    dataset = SegmentationDataset(samples, (40, 48), keep_original=True)
    transform = BatchTransform((0.5,) * 3, (0.25,) * 3)
    threshold, dice = calibrate_threshold(_TwoLevelModel(), dataset, transform, torch.device("cpu"))
    assert threshold == 0.25 and dice > 0.95  # ties in (0.1, 0.3) go to the one nearest 0.5


def test_training_stores_a_calibrated_threshold_unless_given(
    tiny_data: Path, tmp_path: Path
) -> None:
    auto = fit(TrainConfig(data=str(tiny_data), out=str(tmp_path / "a"), epochs=2, **FAST))
    threshold = json.loads((auto.run_dir / "config.json").read_text())["threshold"]
    assert threshold in [round(0.05 * i, 2) for i in range(1, 20)]
    given = fit(
        TrainConfig(data=str(tiny_data), out=str(tmp_path / "b"), epochs=2, threshold=0.7, **FAST)
    )
    assert json.loads((given.run_dir / "config.json").read_text())["threshold"] == 0.7


def test_time_budget_plans_the_epochs_and_is_respected(tiny_data: Path, tmp_path: Path) -> None:
    import time

    from pixelseg.engine.budget import EPOCH_STEPS

    budget = 8.0
    start = time.perf_counter()
    result = fit(
        TrainConfig(
            data=str(tiny_data),
            out=str(tmp_path / "run"),
            patience=0,
            time_budget=f"{budget:g}s",
            **FAST,
        )
    )
    elapsed = time.perf_counter() - start
    assert elapsed < budget + 3.0, elapsed  # a tenth of an epoch per epoch is kept in reserve
    assert len(result.history) >= 3
    saved = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    planned = saved["config"]["epochs"]
    assert len(result.history) <= planned < 1000  # the plan replaced the ceiling
    # 12 tiny images, batch 4: an epoch is still EPOCH_STEPS steps (many passes)
    assert saved["schedule"]["total"] == planned * EPOCH_STEPS
    # the learning rate followed the planned schedule down towards 1% of the base rate (a
    # machine that slows down mid-run ends it before the plan's end, hence the margin)
    assert result.history[-1]["lr"] < 0.75 * FAST["lr"]


def test_bad_time_budget_is_refused_before_anything_runs(tiny_data: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read the duration"):
        TrainConfig(data=str(tiny_data), out=str(tmp_path / "r"), time_budget="15 minutes")


def test_size_follows_the_images_aspect_ratio(tmp_path: Path) -> None:
    from conftest import write_pair

    root = tmp_path / "wide"
    for i in range(6):
        write_pair(root / "images", root / "masks", f"w{i}", size=(300, 600), seed=i)
    settings = {k: v for k, v in FAST.items() if k != "size"}
    result = fit(TrainConfig(data=str(root), out=str(tmp_path / "run"), epochs=1, **settings))
    config = json.loads((result.run_dir / "config.json").read_text())
    assert config["size"] == [128, 256]  # 300x600 scaled to a longer side of 256, stride 4


@pytest.fixture(scope="module")
def small_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("damaged") / "run"
    return fit(TrainConfig(data=str(tiny_data), out=str(out), epochs=1, **FAST)).run_dir


def _damaged_copy(run: Path, tmp_path: Path, damage) -> Path:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    damage(copy)
    return copy


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _drop_model_key(run: Path) -> None:
    config = json.loads((run / "config.json").read_text())
    del config["model"]
    (run / "config.json").write_text(json.dumps(config))


def _other_model(run: Path) -> None:
    config = json.loads((run / "config.json").read_text())
    config["model_kwargs"] = {**config["model_kwargs"], "base_channels": 16}
    (run / "config.json").write_text(json.dumps(config))


def _unknown_model(run: Path) -> None:
    config = json.loads((run / "config.json").read_text())
    config["model"] = "no-such-net"
    (run / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("damage", "names", "says"),
    [
        (lambda r: _truncate(r / "model.safetensors"), "model.safetensors", "truncated"),
        (_drop_model_key, "config.json", "no model"),
        (_other_model, "model.safetensors", "do not fit the unet"),
        (_unknown_model, "config.json", "no-such-net"),
        (lambda r: (r / "config.json").write_text("[1, 2]"), "config.json", "JSON object"),
    ],
    ids=[
        "truncated-weights",
        "config-without-model",
        "weights-of-another-model",
        "unknown-model",
        "config-not-an-object",
    ],  # fmt: skip
)
@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_a_damaged_run_folder_is_one_clear_line(
    small_run: Path, tiny_data: Path, tmp_path: Path, capsys, damage, names: str, says: str,
    command: str,
) -> None:  # fmt: skip
    run = _damaged_copy(small_run, tmp_path, damage)
    image = next((tiny_data / "images").iterdir())
    target = [str(image), "--out", str(tmp_path / "o")] if command == "predict" else [
        str(tiny_data), "--split", "all"]  # fmt: skip
    assert main([command, str(run), *target, "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert str(run / names) in err and says in err, err


def test_a_damaged_training_state_is_one_clear_line(
    tiny_data: Path, tmp_path: Path, capsys
) -> None:
    run = tmp_path / "run"

    def crash_after_epoch_1(row: dict) -> None:
        raise RuntimeError("crash")

    with pytest.raises(RuntimeError):
        fit(TrainConfig(data=str(tiny_data), out=str(run), epochs=2, **FAST),
            on_epoch_end=crash_after_epoch_1)  # fmt: skip
    _truncate(run / "last.pt")
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{run / 'last.pt'}: unreadable, truncated or damaged" in err and "Traceback" not in err


def test_output_names_never_collide_or_leave_the_folder(
    small_run: Path, tiny_data: Path, tmp_path: Path
) -> None:
    from pixelseg.inference.outputs import unique_stems

    names = ["a.png", "a.jpg", "a_2.png", "A.png", "..png", "b.png"]
    assert unique_stems([Path(n) for n in names]) == ["a", "a_2", "a_2_2", "A_3", "unnamed", "b"]
    inputs = tmp_path / "in"
    inputs.mkdir()
    source = Image.open(next((tiny_data / "images").iterdir()))
    for name in names[:3] + ["..png"]:
        source.save(inputs / name, format="PNG")
    out = tmp_path / "out"
    files = [str(inputs / name) for name in names[:3] + ["..png"]]  # (a folder skips dot files)
    assert main(["predict", str(small_run), *files, "--out", str(out)]) == 0
    masks = sorted(p.name for p in out.glob("*_mask.png"))
    assert masks == ["a_2_2_mask.png", "a_2_mask.png", "a_mask.png", "unnamed_mask.png"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("out")] == ["out"]


def test_evaluate_says_how_many_split_images_are_missing(
    small_run: Path, tiny_data: Path, tmp_path: Path
) -> None:
    import shutil

    wanted = json.loads((small_run / "split.json").read_text())["test"]
    assert len(wanted) >= 2
    copy = tmp_path / "data"
    shutil.copytree(tiny_data, copy)
    gone = sorted(copy.rglob(f"{wanted[0]}.*"))
    assert gone
    for p in gone:
        p.unlink()
    with pytest.warns(UserWarning, match=f"1 of the run's {len(wanted)} test images are not in"):
        metrics = pixelseg.evaluate(small_run, copy, out=tmp_path / "scores", progress=False)
    assert metrics["missing_images"] == 1 and metrics["n_images"] == len(wanted) - 1


def test_a_bug_keeps_its_traceback_and_a_user_error_does_not(
    monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """Only pixelseg's own exceptions are user errors; a stray ValueError is a bug to report."""
    import pixelseg.cli as cli

    def buggy(args) -> int:
        raise ValueError("operands could not be broadcast together")

    monkeypatch.setattr(cli, "cmd_models", buggy)
    with pytest.raises(ValueError, match="broadcast"):
        main(["models"])
    assert main(["train", "data", "--time-budget", "soon"]) == 2  # a SettingsError
    assert "cannot read the duration 'soon'" in capsys.readouterr().err


def test_a_garbage_split_file_is_one_clear_line(
    small_run: Path, tiny_data: Path, tmp_path: Path, capsys
) -> None:
    run = _damaged_copy(small_run, tmp_path, lambda r: (r / "split.json").write_text("{oops"))
    assert main(["evaluate", str(run), str(tiny_data), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and f"{run / 'split.json'}: invalid JSON" in err, err
