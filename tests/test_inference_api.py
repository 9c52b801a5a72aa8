"""``pixelseg.load``: one way from a run folder to masks, options fixed at construction."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pixelseg
from pixelseg.config import TrainConfig
from pixelseg.engine.train import fit
from pixelseg.errors import SettingsError
from pixelseg.inference import Outputs, PredictOptions
from settings import FAST

INFERENCE = Path(pixelseg.__file__).parent / "inference"


@pytest.fixture(scope="module")
def run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("api") / "run"
    return fit(TrainConfig(data=str(tiny_data), out=str(out), epochs=2, **FAST)).run_dir


def test_options_are_checked_before_anything_is_loaded(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-run"  # never opened: the options fail first
    with pytest.raises(SettingsError, match="unknown prediction option.*tiles.*valid: threshold"):
        pixelseg.load(missing, tiles=512)
    with pytest.raises(SettingsError, match="--tile must be at least 16"):
        pixelseg.load(missing, tile=8)
    with pytest.raises(SettingsError, match="unknown engine 'tensorrt'"):
        pixelseg.load(missing, engine="tensorrt")
    with pytest.raises(SettingsError, match="unknown clean-up"):
        PredictOptions(postprocess=["smooth"])
    with pytest.raises(SettingsError, match="feather"):
        Outputs(feather=-1)


def test_options_are_fixed_and_taken_at_construction(run: Path, tiny_data: Path) -> None:
    image = tiny_data / "images" / "img00.png"
    plain = pixelseg.load(run, device="cpu")
    assert plain.threshold == plain.config.threshold
    with pytest.raises(AttributeError):
        plain.options.tta = True  # frozen: load another predictor instead
    everything = pixelseg.load(run, device="cpu", threshold=0.0, postprocess=())
    assert everything.predict(image).all()
    tta = pixelseg.load(run, device="cpu", tta=True, tta_rotations=True)
    assert tta.predict(image).shape == plain.predict(image).shape


def test_shards_write_together_what_one_process_writes(
    run: Path, tiny_data: Path, tmp_path: Path
) -> None:
    predictor = pixelseg.load(run, device="cpu", batch_size=3)
    outputs = Outputs(instances=True, probabilities=True)
    whole = predictor.predict_folder([tiny_data / "images"], tmp_path / "whole", outputs,
                                     progress=False)  # fmt: skip
    parts = [
        predictor.predict_folder(
            [tiny_data / "images"], tmp_path / "parts", outputs, shard=(rank, 3), progress=False
        )  # fmt: skip
        for rank in range(3)
    ]
    assert whole.images == 12 and all(p.images == 12 for p in parts)
    assert sorted(len(p.files) for p in parts) == [24, 24, 24]  # 4 images x 6 files
    names = sorted(p.name for p in (tmp_path / "whole").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "parts").iterdir()) and len(names) == 72
    for name in names:  # the same bytes, COCO ids included
        assert (tmp_path / "whole" / name).read_bytes() == (tmp_path / "parts" / name).read_bytes()
    with pytest.raises(SettingsError, match="shard"):
        predictor.predict_folder([tiny_data / "images"], tmp_path / "x", shard=(3, 3))


def test_both_engines_write_the_same_uncertainty_and_instances(
    run: Path, tiny_data: Path, tmp_path: Path
) -> None:
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    from pixelseg.inference.export import export_onnx

    export_onnx(run, run / "model.onnx", dynamic=True)
    outputs = Outputs(uncertainty=True, instances=True)
    for engine in ("torch", "onnx"):
        predictor = pixelseg.load(run, engine=engine, device="cpu")
        predictor.predict_folder([tiny_data / "images"], tmp_path / engine, outputs,
                                 progress=False)  # fmt: skip
    names = sorted(p.name for p in (tmp_path / "torch").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "onnx").iterdir()) and len(names) == 72
    for name in (n for n in names if n.endswith("_uncertainty.png")):
        a = np.asarray(Image.open(tmp_path / "torch" / name)).astype(int)
        b = np.asarray(Image.open(tmp_path / "onnx" / name)).astype(int)
        assert np.abs(a - b).max() <= 1, name
    for name in (n for n in names if n.endswith("_instances.csv")):
        rows = [(tmp_path / e / name).read_text().splitlines() for e in ("torch", "onnx")]
        assert len(rows[0]) == len(rows[1]), name  # the same objects


def test_inference_never_imports_the_training_engine() -> None:
    """The arrow runs one way: training uses inference's maths, not the reverse."""
    training = {"pixelseg.engine.train", "pixelseg.engine.evaluate",
                "pixelseg.engine.configure", "pixelseg.engine.budget"}  # fmt: skip
    for path in INFERENCE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = {node.module} | {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                names = {a.name for a in node.names}
            else:
                continue
            assert not names & training, f"{path.name} imports {names & training}"


def test_output_names_are_the_files_written(run: Path, tiny_data: Path, tmp_path: Path) -> None:
    from pixelseg.inference.outputs import output_names

    outputs = Outputs(probabilities=True, uncertainty=True, instances=True, cutout=True,
                      background=(0, 177, 64))  # fmt: skip
    image = tiny_data / "images" / "img00.png"
    done = pixelseg.load(run, device="cpu").predict_folder([image], tmp_path, outputs,
                                                           progress=False)  # fmt: skip
    assert [p.name for p in done.files] == output_names("img00", outputs, 1)


def test_a_killed_prediction_resumes_to_the_same_outputs(
    run: Path, tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """SIGKILL in the middle of an image's files; --resume redoes that image and the rest,
    and skips those finished: the folder ends as an uninterrupted run leaves it."""
    import signal
    import subprocess
    import sys

    from pixelseg.cli import main

    images, full, out = tiny_data / "images", tmp_path / "full", tmp_path / "out"
    args = ["predict", str(run), str(images), "--probabilities", "--device", "cpu",
            "--batch-size", "2"]  # fmt: skip
    assert main([*args, "--out", str(full)]) == 0
    # the 16th PNG: image 6's second file (3 an image), so image 6 is half written
    script = (
        "import os, signal, sys\n"
        "import pixelseg.inference.outputs as outputs\n"
        "from pixelseg.cli import main\n"
        "real, calls = outputs.save_png, []\n"
        "def save_png(path, array):\n"
        "    calls.append(path)\n"
        "    if len(calls) == 17: os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return real(path, array)\n"
        "outputs.save_png = save_png\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    killed = subprocess.run([sys.executable, "-c", script, *args, "--out", str(out)],
                            capture_output=True, text=True)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    before = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert len(before) == 16  # 5 images' 3 files, and image 6's mask
    done = pixelseg.load(run, device="cpu", batch_size=2).predict_folder(
        [images], out, Outputs(probabilities=True), progress=False, resume=True
    )
    assert done.skipped == 5 and len(done.files) == 7 * 3
    names = sorted(p.name for p in full.iterdir())
    assert names == sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    for name in names:
        assert (full / name).read_bytes() == (out / name).read_bytes(), name
    capsys.readouterr()
    assert main([*args, "--out", str(out), "--resume"]) == 0  # all done: nothing rewritten
    assert "wrote 0 outputs for 12 image(s) (12 image(s) done before" in capsys.readouterr().out


def test_predicting_a_folder_into_itself_never_predicts_the_predictions(
    run: Path, tiny_folders: Path
) -> None:
    images = tiny_folders / "images"
    predictor = pixelseg.load(run, device="cpu")
    with pytest.raises(pixelseg.DataError, match="no images in this folder"):
        predictor.predict_folder(images, images, progress=False)  # (a path, not a list)
    out = images / "predicted"  # inside the input: skipped when the input is walked
    first = predictor.predict_folder(images, out, progress=False)
    again = predictor.predict_folder([images], out, progress=False, resume=True)
    assert first.images == again.images == 12 and again.skipped == 12 and again.written == 0
    with pytest.raises(pixelseg.DataError, match="no such file"):
        predictor.predict_folder([images / "ghost.png"], images / "out", progress=False)
    assert not (images / "out").exists()  # refused before anything was written
