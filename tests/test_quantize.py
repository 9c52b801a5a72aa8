"""``pixelseg export RUN --int8``: a statically quantized graph, scored against float32."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import pixelseg
from pixelseg.cli import main
from pixelseg.config import TrainConfig
from pixelseg.data.io import read_image
from pixelseg.engine.train import fit
from settings import FAST

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed")

from pixelseg.inference.export import export_onnx  # noqa: E402


@pytest.fixture(scope="module")
def run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("int8") / "run"
    fit(TrainConfig(data=str(tiny_data), out=str(out), epochs=4, **FAST))
    return out


def test_int8_export_writes_a_quantized_graph_and_says_what_it_costs(
    run: Path, tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["export", str(run), "--int8", "--out", str(tmp_path / "int8.onnx")]) == 0
    printed = capsys.readouterr().out
    assert "(int8)" in printed and "int8: validation dice" in printed, printed
    ops = {node.op_type for node in onnx.load(tmp_path / "int8.onnx").graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ: int8 between the layers

    report = export_onnx(run, tmp_path / "again.onnx", int8=True).int8
    # the float32 score is the run's validation Dice as `pixelseg evaluate` computes it
    metrics = pixelseg.evaluate(run, tiny_data, split="val", out=tmp_path / "e", progress=False)
    assert report.images == metrics["n_images"] > 0
    assert report.float_score == pytest.approx(metrics["dice"], abs=2e-3)
    assert 0 <= report.int8_score <= 1
    assert report.calibration_images == len(json.loads((run / "split.json").read_text())["train"])
    assert report.float_ms > 0 and report.int8_ms > 0


def test_int8_masks_follow_the_float_model(run: Path, tiny_data: Path, tmp_path: Path) -> None:
    """The quantized graph computes nearly what the float one does: the same mask on
    nearly every pixel of every image, not merely a similar score."""
    from pixelseg.inference.onnx import OnnxPredictor, open_session
    from pixelseg.runconfig import RunConfig

    float_path, int8_path = tmp_path / "float.onnx", tmp_path / "int8.onnx"
    export_onnx(run, float_path)
    export_onnx(run, int8_path, int8=True)
    config = RunConfig.read(run)
    full, small = (OnnxPredictor(open_session(p), config) for p in (float_path, int8_path))
    images = [read_image(p) for p in sorted((tiny_data / "images").iterdir())]
    agreement = [(full.predict(im) == small.predict(im)).mean() for im in images]
    assert np.mean(agreement) >= 0.95, agreement


def test_int8_needs_the_runs_training_images_and_finds_moved_ones_with_data(
    run: Path, tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    moved = tmp_path / "run"
    shutil.copytree(run, moved)
    config = json.loads((moved / "config.json").read_text())
    config["train"]["data"] = str(tmp_path / "gone")
    (moved / "config.json").write_text(json.dumps(config))
    out = tmp_path / "m.onnx"
    assert main(["export", str(moved), "--int8", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "gone") in err and "--data" in err
    assert not out.exists()  # nothing half-done is left
    assert main(["export", str(moved), "--int8", "--out", str(out), "--data", str(tiny_data)]) == 0
    assert out.is_file()
