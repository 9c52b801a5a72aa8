"""The tutorial and the lab notebooks run top to bottom (small settings) and show what they
promise. The committed copies carry no outputs."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

DOCS = Path(__file__).resolve().parents[1] / "docs"
NOTEBOOKS = ["tutorial.ipynb", "lab-body-segmentation.ipynb"]


def _execute(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data: Path) -> list:
    monkeypatch.setenv("PIXELSEG_TUTORIAL_FAST", "1")
    monkeypatch.setenv("PIXELSEG_TUTORIAL_OUT", str(tmp_path / "runs"))
    monkeypatch.setenv("PIXELSEG_DATA", str(data))
    monkeypatch.delenv("PIXELSEG_MADS", raising=False)
    nb = nbformat.read(DOCS / name, as_version=4)
    # a cell error raises CellExecutionError, naming the cell
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()  # fmt: skip
    assert os.environ["PIXELSEG_TUTORIAL_FAST"] == "1"
    return [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]


def _text(outputs: list) -> str:
    return "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")


def _images(outputs: list) -> int:
    return sum("image/png" in o.get("data", {}) for o in outputs)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebooks_have_no_outputs(name: str) -> None:
    nb = nbformat.read(DOCS / name, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


def test_tutorial_runs_and_shows_the_lesson(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, real_data: Path
) -> None:
    outputs = _execute("tutorial.ipynb", tmp_path, monkeypatch, real_data)
    text = _text(outputs)
    assert "100 image/mask pairs" in text and "(layout: ph2)" in text  # the real PH2 images
    assert "instances: 4 objects" in text
    assert "dec_conv0        (1, 384, 32, 32)" in text  # U-Net's skip concatenation
    assert "lowest loss 0.313 for mask=1, 0.693 for mask=0" in text  # the lesson's bug
    assert "lowest loss 0.000000 for mask=1, 0.000000 for mask=0" in text
    for model in ("lesson-segnet", "lesson-unet", "default (20s)"):
        assert model in text.split("model                     Dice")[1]
    assert _images(outputs) == 5  # the sample, instances, loss curves, comparison, prediction


@pytest.mark.parametrize("data", ["people", "stand-in"])
def test_lab_runs_and_replaces_backgrounds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, real_data: Path, data: str
) -> None:
    """On the shared people photos when they are there, else on the synthetic stand-in."""
    root = real_data if data == "people" else tmp_path / "no-shared-data"
    outputs = _execute("lab-body-segmentation.ipynb", tmp_path, monkeypatch, root)
    text = _text(outputs)
    if data == "people":
        assert "200 valid pairs of 200 in people" in text and "problems: 0" in text
        assert not (tmp_path / "runs" / "lab" / "mads-standin").exists()
    else:
        assert "120 valid pairs of 120 in mads-standin" in text and "problems: 0" in text
        assert "_cutout.png RGBA (512, 384)" in text and "_composite.png RGB (512, 384)" in text
    assert "test Dice" in text
    assert text.count("_cutout.png RGBA") == 3 and text.count("_composite.png RGB") == 3
    # MediaPipe is scored only where its environment was built (not in CI)
    assert ("MediaPipe's environment is not here" in text) != ("MediaPipe 0." in text)
    assert _images(outputs) == 2  # the data, the new backgrounds
