"""ONNX export (checked against PyTorch) and ``predict --engine onnx`` without torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from pixelseg.cli import main
from pixelseg.config import TrainConfig
from pixelseg.engine.train import fit
from settings import FAST

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")

from pixelseg.inference.export import export_onnx  # noqa: E402
from pixelseg.inference.onnx import resize_logits  # noqa: E402


@pytest.fixture(scope="module")
def run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "run"
    fit(TrainConfig(data=str(tiny_data), out=str(out), epochs=3, **FAST))
    return out


@pytest.mark.parametrize("size", [(5, 7), (40, 33), (3, 64)])
def test_numpy_resize_matches_torch(size: tuple[int, int]) -> None:
    logits = np.random.default_rng(0).normal(size=(2, 16, 12)).astype(np.float32)
    expected = F.interpolate(torch.from_numpy(logits)[None], size=size, mode="bilinear",
                             align_corners=False)[0].numpy()  # fmt: skip
    np.testing.assert_allclose(resize_logits(logits, size), expected, atol=1e-5)


@pytest.mark.parametrize("dynamic", [False, True])
def test_export_matches_pytorch(run: Path, tmp_path: Path, dynamic: bool) -> None:
    result = export_onnx(run, tmp_path / "m.onnx", dynamic=dynamic)
    assert result.path.is_file() and result.max_abs_diff < 1e-4
    assert len(result.shapes) == (3 if dynamic else 1)  # dynamic: other batch and odd sizes
    assert (1, 3, 67, 93) in result.shapes or not dynamic


def test_a_graph_that_computes_something_else_is_refused_and_not_written(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check after tracing is a gate, not a report: a graph whose logits are not the
    model's (here: another model's graph) fails the export and leaves no file."""
    from pixelseg.inference import export
    from pixelseg.models import create_model

    real = export.onnx_bytes
    other = create_model("lesson-unet").eval()
    monkeypatch.setattr(export, "onnx_bytes", lambda _m, *a, **k: real(other, *a, **k))
    with pytest.raises(export.PixelsegError, match="does not compute what the model does"):
        export_onnx(run, tmp_path / "m.onnx", dynamic=True)
    assert not (tmp_path / "m.onnx").exists()


def test_predict_with_onnx_runtime_equals_torch_and_loads_no_torch(
    run: Path, tiny_data: Path, tmp_path: Path
) -> None:
    assert main(["export", str(run), "--dynamic"]) == 0
    images = str(tiny_data / "images")
    assert main(["predict", str(run), images, "--out", str(tmp_path / "t"), "--probabilities",
                 "--cutout"]) == 0  # fmt: skip
    script = (
        "import sys; from pixelseg.cli import main; "
        f"code = main(['predict', {str(run)!r}, {images!r}, '--out', {str(tmp_path / 'o')!r}, "
        "'--probabilities', '--cutout', '--engine', 'onnx']); "
        "print(code, 'torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.stdout.split()[-2:] == ["0", "False"], done.stderr[-2000:]
    names = sorted(p.name for p in (tmp_path / "t").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "o").iterdir()) and len(names) == 48
    for name in names:
        a = np.asarray(Image.open(tmp_path / "t" / name)).astype(int)
        b = np.asarray(Image.open(tmp_path / "o" / name)).astype(int)
        assert a.shape == b.shape
        assert np.abs(a - b).max() <= 1, name  # a probability may round the other way


def test_onnx_engine_without_clean_up_steps_loads_no_scipy(
    run: Path, tiny_data: Path, tmp_path: Path
) -> None:
    """scipy.ndimage takes ~0.2 s to import, a third of a one-image cold start: only the
    clean-up steps, feathered cut-outs and instances may load it."""
    assert main(["export", str(run)]) == 0
    image = str(next((tiny_data / "images").iterdir()))
    script = (
        "import sys; from pixelseg.cli import main; "
        f"code = main(['predict', {str(run)!r}, {image!r}, '--out', {str(tmp_path / 'o')!r}, "
        "'--cutout', '--no-postprocess', '--engine', 'onnx']); "
        "print(code, 'scipy.ndimage' in sys.modules, 'scipy' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.stdout.split()[-3:] == ["0", "False", "False"], done.stderr[-2000:]


def test_onnx_engine_says_what_it_lacks(
    run: Path, tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    image = str(next((tiny_data / "images").iterdir()))
    args = ["predict", str(run), image, "--out", str(tmp_path / "o"), "--engine", "onnx"]
    assert main([*args, "--tta"]) == 2
    assert "--tta not available with --engine onnx" in capsys.readouterr().err
    assert main([*args, "--tta-scales", "1,1.5"]) == 2
    assert "--tta-scales not available with --engine onnx" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps({"size": [8, 8]}))
    assert main(["predict", str(empty), image, "--out", str(tmp_path / "p"), "--engine",
                 "onnx"]) == 2  # fmt: skip
    assert "pixelseg export" in capsys.readouterr().err


def test_serve_with_the_onnx_engine(run: Path, tiny_data: Path, tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from pixelseg.serve.app import ServeSettings, create_app

    export_onnx(run, dynamic=True)
    image = next((tiny_data / "images").iterdir()).read_bytes()
    answers = {}
    for engine in ("torch", "onnx"):
        app = create_app(ServeSettings(run=str(run), engine=engine))
        with TestClient(app, base_url="http://127.0.0.1:8000") as c:
            png = {"content-type": "image/png"}
            answers[engine] = c.post("/predict", content=image, headers=png).content
            summary = c.post("/predict?output=json", content=image, headers=png).json()
            assert summary["width"] > 0 and "instances" in summary
            assert c.post("/predict?output=probabilities", content=image,
                          headers=png).status_code == 200  # fmt: skip
    assert answers["torch"] == answers["onnx"]  # the same mask PNG, byte for byte


@pytest.mark.parametrize(("fill", "folded"), [(0.0, 1), (1.0, 0)])
def test_zero_padding_is_folded_into_the_convolution(fill: float, folded: int) -> None:
    """TensorFlow-style uneven padding before a strided conv becomes the Conv's own pads
    (a Pad of ones is left alone); the graph still computes what the model does."""
    import onnx

    from pixelseg.inference.export import onnx_bytes
    from pixelseg.inference.onnx import open_session

    model = torch.nn.Sequential(torch.nn.ConstantPad2d((0, 1, 0, 1), fill),
                                torch.nn.Conv2d(3, 4, 3, stride=2)).eval()  # fmt: skip
    graph = onnx_bytes(model, (1, 3, 16, 16))
    kinds = [node.op_type for node in onnx.load_from_string(graph).graph.node]
    assert kinds.count("Pad") == 1 - folded
    x = torch.randn(1, 3, 16, 16)
    got = open_session(graph).run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).numpy(), atol=1e-5)


def test_the_encoders_padding_leaves_no_pad_before_a_conv() -> None:
    import onnx

    from pixelseg.inference.export import onnx_bytes
    from pixelseg.models import create_model

    graph = onnx.load_from_string(onnx_bytes(create_model("lite-unet-fast").eval(), (1, 3, 64, 64)))
    readers = {name: node.op_type for node in graph.graph.node for name in node.input}
    pads = [node for node in graph.graph.node if node.op_type == "Pad"]
    # only the model's own padding of the input to a multiple of 32 is left
    assert len(pads) == 1 and pads[0].input[0] == "image"
    assert all(readers.get(p.output[0]) != "Conv" or p.input[0] == "image" for p in pads)


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.97, 1.0])
def test_threshold_on_logits_gives_the_torch_engines_masks(threshold: float) -> None:
    """The onnx engine compares logits with the threshold's logit, not a sigmoid of every
    pixel with the threshold: its masks must be the torch engine's, at 0 and 1 too (where a
    float32 sigmoid that rounds to 0 or 1 would not be)."""
    from pixelseg.inference.logits import logits_to_mask
    from pixelseg.inference.onnx import logit_of

    logits = np.random.default_rng(0).normal(scale=6, size=(64, 64)).astype(np.float32)
    logits[0, :3] = np.float32(logit_of(threshold)) if 0 < threshold < 1 else 0
    expected = logits_to_mask(torch.from_numpy(logits)[None], threshold).numpy() == 1
    got = logits > logit_of(threshold)
    assert (got[1:] == expected[1:]).all()
    assert (got[0, 3:] == expected[0, 3:]).all()  # the 3 pixels on it may round either way
