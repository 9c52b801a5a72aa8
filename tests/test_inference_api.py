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
