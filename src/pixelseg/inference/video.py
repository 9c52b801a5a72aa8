"""Videos, frame by frame: ``pixelseg predict clip.mp4 --cutout --background green.png``.

Each frame is segmented exactly as an image would be (same preprocessing, post-processing,
TTA and tiling settings of the :class:`~pixelseg.inference.predictor.Predictor`), in batches, and
streamed out, so memory does not grow with the clip's length. What is written, for a clip
``STEM.mp4``:

- ``STEM_overlay.mp4``: the prediction tinted and outlined on each frame (H.264);
- ``STEM_masks/000001.png``, ...: one exact mask per frame (0/255, or class indices);
- with a background, ``STEM_composite.mp4``: the foreground over it;
- with cut-outs, ``STEM_cutout/000001.png``, ...: RGBA frames (video codecs in MP4 have no
  alpha channel; editors import numbered PNGs as a clip).

Each output is written under a temporary name and renamed when the clip is done, so an
interrupted run leaves no truncated video and no partial frame folder (and removes its
temporary files). Sound is
not copied. Decoding and encoding use PyAV, FFmpeg's Python binding, an optional extra:
``pip install 'pixelseg[video]'``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from pixelseg.data.imageops import resize_image
from pixelseg.errors import DataError, PixelsegError
from pixelseg.inference.cutout import Background, composite, cutout
from pixelseg.inference.options import Outputs
from pixelseg.inference.outputs import batched
from pixelseg.report import overlay, save_png

if TYPE_CHECKING:
    from pixelseg.inference.base import SegmentationPredictor

VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"})


def is_video_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def _import_av() -> ModuleType:
    try:
        import av
    except ImportError:
        raise PixelsegError(
            "reading videos needs PyAV, which is not installed: pip install 'pixelseg[video]'"
        ) from None
    return av


class _VideoOut:
    """An H.264 MP4 written under a temporary name and renamed by :meth:`finish`."""

    def __init__(self, av: ModuleType, path: Path, fps: Fraction, width: int, height: int) -> None:
        self.path = path
        self.tmp = path.with_name(f".{path.stem}.partial.mp4")
        self.container = av.open(str(self.tmp), mode="w", format="mp4")
        self.stream = self.container.add_stream("libx264", rate=fps)
        # yuv420p (what every player reads) needs even sides: odd frames get one pixel more
        self.stream.width, self.stream.height = width + width % 2, height + height % 2
        self.stream.pix_fmt = "yuv420p"
        self.av = av

    def write(self, rgb: np.ndarray) -> None:
        pad = ((0, rgb.shape[0] % 2), (0, rgb.shape[1] % 2), (0, 0))
        frame = self.av.VideoFrame.from_ndarray(np.pad(rgb, pad, mode="edge"), format="rgb24")
        try:
            self.container.mux(self.stream.encode(frame))
        except self.av.error.FFmpegError as exc:
            raise PixelsegError(f"{self.path}: cannot encode the video ({exc})") from None

    def finish(self) -> Path:
        self.container.mux(self.stream.encode())  # flush the encoder's delayed frames
        self.container.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        self.container.close()
        self.tmp.unlink(missing_ok=True)


class _FramesOut:
    """Numbered PNGs in a folder that gets its final name once every frame is written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = path.with_name(f".{path.name}.partial")
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        self.count = 0

    def write(self, array: np.ndarray) -> None:
        self.count += 1
        save_png(self.tmp / f"{self.count:06d}.png", array)

    def finish(self) -> Path:
        shutil.rmtree(self.path, ignore_errors=True)  # a previous run's frames
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def predict_video(
    predictor: SegmentationPredictor,
    path: str | Path,
    out_dir: str | Path,
    outputs: Outputs | None = None,
    progress: bool = True,
    stem: str | None = None,
    resume: bool = False,
) -> list[Path]:
    """Segment every frame of the video at ``path``, ``predictor.options.batch_size`` at a
    time; ``outputs`` asks for cut-outs and composites. Returns the outputs written (above);
    with ``resume``, nothing when they are all there already (each is renamed into place
    when finished, so one that exists is whole)."""
    from tqdm.auto import tqdm

    outputs = outputs or Outputs()
    background, feather, cutouts = outputs.background, outputs.feather, outputs.cutout
    av = _import_av()
    path, out_dir = Path(path), Path(out_dir)
    stem = stem or path.stem
    names = [f"{stem}_overlay.mp4", f"{stem}_masks"] + [f"{stem}_composite.mp4"] * (
        background is not None) + [f"{stem}_cutout"] * cutouts  # fmt: skip
    if resume and all((out_dir / name).exists() for name in names):
        return []
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read this video ({exc})") from None
    files: dict[str, _VideoOut | _FramesOut] = {}
    bar = None
    try:
        if not container.streams.video:
            raise DataError(f"{path}: the file holds no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # decode with FFmpeg's own threads
        fps = stream.average_rate or Fraction(25)
        bar = tqdm(total=stream.frames or None, desc=path.name, unit="frame",
                   disable=None if progress else True)  # fmt: skip
        batches = batched(_decode(av, container, path), predictor.options.batch_size)
        smooth = TemporalSmoothing(predictor.options.smooth)
        for batch in batches:
            if not files:
                height, width = batch[0].shape[:2]
                if isinstance(background, np.ndarray):  # resized once, not every frame
                    background = resize_image(background, (height, width))
                out_dir.mkdir(parents=True, exist_ok=True)
                _open_outputs(files, av, out_dir / stem, fps, width, height, cutouts,
                              background is not None)  # fmt: skip
            for image, logit in zip(batch, predictor.logits(batch), strict=True):
                mask = predictor.to_mask(smooth(logit))
                _write_frame(files, image, mask, predictor.num_classes, background, feather)
            bar.update(len(batch))
        if not files:
            raise DataError(f"{path}: the video has no frames")
        return [out.finish() for out in files.values()]
    except BaseException:
        for out in files.values():
            with contextlib.suppress(Exception):  # clean up the rest even if one fails
                out.abort()
        raise
    finally:
        if bar is not None:
            bar.close()
        container.close()


class TemporalSmoothing:
    """An exponential moving average of a clip's logits, frame by frame: ``weight`` of the
    frames before and ``1 - weight`` of this one (0 passes each frame through).

    A pixel near the threshold can flip from one frame to the next on sensor noise alone,
    and the mask flickers; averaging the logits over the last few frames (about
    ``1 / (1 - weight)``) steadies it, at the price of a lag as long on moving edges.
    Works on torch tensors and numpy arrays alike (both engines' logits).
    """

    def __init__(self, weight: float) -> None:
        self.weight, self.state = weight, None

    def __call__(self, logit: Any) -> Any:
        if self.weight == 0 or self.state is None or self.state.shape != logit.shape:
            self.state = logit
        else:
            self.state = self.weight * self.state + (1 - self.weight) * logit
        return self.state


def _decode(av: ModuleType, container: Any, path: Path) -> Iterator[np.ndarray]:
    """The video's frames as HxWx3 uint8 RGB arrays; a damaged stream names the file."""
    try:
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="rgb24")
    except av.error.FFmpegError as exc:
        raise DataError(f"{path}: the video stream is damaged ({exc})") from None


def _open_outputs(
    outputs: dict, av: ModuleType, prefix: Path, fps: Fraction, width: int, height: int,
    cutouts: bool, composites: bool,
) -> None:  # fmt: skip
    """Open the outputs into ``outputs`` one by one, so a failure can abort those opened."""
    outputs["overlay"] = _VideoOut(av, Path(f"{prefix}_overlay.mp4"), fps, width, height)
    outputs["masks"] = _FramesOut(Path(f"{prefix}_masks"))
    if composites:
        outputs["composite"] = _VideoOut(av, Path(f"{prefix}_composite.mp4"), fps, width, height)
    if cutouts:
        outputs["cutout"] = _FramesOut(Path(f"{prefix}_cutout"))


def _write_frame(
    outputs: dict, image: np.ndarray, mask: np.ndarray, num_classes: int,
    background: Background | None, feather: float,
) -> None:  # fmt: skip
    outputs["overlay"].write(overlay(image, mask))
    outputs["masks"].write((mask * 255 if num_classes == 1 else mask).astype(np.uint8))
    if "composite" in outputs:
        outputs["composite"].write(composite(image, mask, background, feather))
    if "cutout" in outputs:
        outputs["cutout"].write(cutout(image, mask, feather))
