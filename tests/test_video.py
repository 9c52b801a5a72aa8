"""Video prediction: frames in, frames out, with PyAV (the ``video`` extra)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixelseg.cli import main
from pixelseg.config import TrainConfig
from pixelseg.engine.train import fit
from settings import FAST

av = pytest.importorskip("av", reason="the video extra (PyAV) is not installed")


def _write_clip(path: Path, frames: list[np.ndarray], fps: int = 10) -> None:
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        odd = stream.height % 2 or stream.width % 2
        stream.pix_fmt = "yuv444p" if odd else "yuv420p"  # 4:2:0 needs even sides
        for array in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        container.mux(stream.encode())


def _read_clip(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


@pytest.fixture
def run(tiny_data: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    fit(TrainConfig(data=str(tiny_data), out=str(out), epochs=3, **FAST))
    return out


def test_predict_video_with_cutout_and_background(
    run: Path, tiny_data: Path, tmp_path: Path
) -> None:
    images = sorted((tiny_data / "images").iterdir())[:7]
    frames = [np.asarray(Image.open(p).convert("RGB").resize((64, 48))) for p in images]
    clip = tmp_path / "clip.mp4"
    _write_clip(clip, frames)
    Image.new("RGB", (20, 20), (0, 177, 64)).save(tmp_path / "green.png")
    out = tmp_path / "o"
    args = ["predict", str(run), str(clip), "--out", str(out), "--cutout"]
    assert main([*args, "--background", str(tmp_path / "green.png"), "--batch-size", "3"]) == 0
    overlay = _read_clip(out / "clip_overlay.mp4")
    composite = _read_clip(out / "clip_composite.mp4")
    assert len(overlay) == len(composite) == 7
    assert overlay[0].shape == composite[0].shape == (48, 64, 3)
    masks = sorted((out / "clip_masks").iterdir())
    cutouts = sorted((out / "clip_cutout").iterdir())
    assert [p.name for p in masks] == [f"{i:06d}.png" for i in range(1, 8)]
    assert len(cutouts) == 7
    mask = np.asarray(Image.open(masks[0]))
    cut = Image.open(cutouts[0])
    assert mask.shape == (48, 64) and set(np.unique(mask)) <= {0, 255}
    assert cut.mode == "RGBA" and cut.size == (64, 48)
    assert np.array_equal(np.asarray(cut)[..., 3] > 0, mask > 0)  # alpha is the mask
    assert not list(out.glob(".*partial*"))  # no temporary outputs left behind
    # odd sides: encoded one pixel larger, masks at the frame's own size
    _write_clip(tmp_path / "odd.mp4", [f[:47, :63] for f in frames[:2]])
    assert main(["predict", str(run), str(tmp_path / "odd.mp4"), "--out", str(out)]) == 0
    assert np.asarray(Image.open(out / "odd_masks" / "000001.png")).shape == (47, 63)
    assert _read_clip(out / "odd_overlay.mp4")[0].shape == (48, 64, 3)


def test_bad_videos_are_named(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all" * 10)
    out = tmp_path / "o"
    assert main(["predict", str(run), str(broken), "--out", str(out)]) == 2
    assert "broken.mp4: cannot read this video" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())
    assert main(["predict", str(run), str(broken), "--out", str(out), "--instances"]) == 2
    assert "apply to images, not to videos" in capsys.readouterr().err


def test_missing_pyav_says_what_to_install(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    clip = tmp_path / "clip.mp4"
    _write_clip(clip, [np.zeros((16, 16, 3), np.uint8)])
    monkeypatch.setitem(sys.modules, "av", None)  # import av now raises ImportError
    assert main(["predict", str(run), str(clip), "--out", str(tmp_path / "o")]) == 2
    assert "pip install 'pixelseg[video]'" in capsys.readouterr().err


def test_a_failure_mid_clip_leaves_no_partial_outputs(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pixelseg.inference.options import Outputs, PredictOptions
    from pixelseg.inference.predictor import Predictor
    from pixelseg.inference.video import predict_video

    clip = tmp_path / "clip.mp4"
    _write_clip(clip, [np.full((32, 32, 3), i * 20, np.uint8) for i in range(6)])
    predictor = Predictor.from_run(run, "cpu", PredictOptions(batch_size=3))
    calls = []
    original = predictor.to_mask

    def failing(logit, threshold=None):
        calls.append(1)
        if len(calls) == 4:  # the second batch of three
            raise RuntimeError("simulated failure")
        return original(logit, threshold)

    monkeypatch.setattr(predictor, "to_mask", failing)
    out = tmp_path / "o"
    with pytest.raises(RuntimeError, match="simulated"):
        predict_video(predictor, clip, out, Outputs(cutout=True), progress=False)
    assert list(out.iterdir()) == []  # neither temporary nor finished outputs
    with pytest.raises(ValueError, match="batch-size"):
        PredictOptions(batch_size=0)


def test_two_clips_with_one_name_get_their_own_outputs(run: Path, tmp_path: Path) -> None:
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        _write_clip(tmp_path / folder / "clip.mp4", [np.zeros((16, 16, 3), np.uint8)])
    out = tmp_path / "o"
    clips = [str(tmp_path / "a" / "clip.mp4"), str(tmp_path / "b" / "clip.mp4")]
    assert main(["predict", str(run), *clips, "--out", str(out)]) == 0
    assert (out / "clip_overlay.mp4").is_file() and (out / "clip_2_overlay.mp4").is_file()


def test_temporal_smoothing_steadies_a_flickering_mask(tiny_data: Path, tmp_path: Path) -> None:
    """A still scene under sensor noise: each frame alone flips pixels near the threshold;
    the moving average of the logits keeps the mask steadier, frame to frame."""
    from pixelseg.inference.video import TemporalSmoothing

    run = tmp_path / "run"  # trained long enough to find the objects (3 epochs: all foreground)
    fit(TrainConfig(data=str(tiny_data), out=str(run), epochs=12, **FAST))

    average = TemporalSmoothing(0.75)
    assert average(np.full(3, 4.0)).tolist() == [4.0] * 3  # the first frame as it is
    assert average(np.zeros(3)).tolist() == [3.0] * 3  # 0.75 x 4 + 0.25 x 0
    still = np.asarray(Image.open(next((tiny_data / "images").iterdir())).convert("RGB"))
    rng = np.random.default_rng(0)
    noisy = [np.clip(still + rng.normal(0, 80, still.shape), 0, 255).astype(np.uint8)
             for _ in range(16)]  # fmt: skip
    _write_clip(tmp_path / "still.mp4", noisy)

    def flicker(smooth: str) -> float:
        out = tmp_path / f"o{smooth}"
        args = ["predict", str(run), str(tmp_path / "still.mp4"), "--out", str(out)]
        assert main([*args, "--smooth", smooth]) == 0
        masks = [np.asarray(Image.open(p)) > 0 for p in sorted((out / "still_masks").iterdir())]
        return float(np.mean([(a != b).mean() for a, b in zip(masks, masks[1:], strict=False)]))

    alone, smoothed = flicker("0"), flicker("0.75")
    assert alone > 0.005, alone  # the noise does make single frames flicker
    assert smoothed < 0.5 * alone, (smoothed, alone)
    assert main(["predict", str(run), str(tmp_path / "still.mp4"), "--out",
                 str(tmp_path / "x"), "--smooth", "1"]) == 2  # fmt: skip
