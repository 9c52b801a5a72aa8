"""The interface both engines' predictors implement, and what they share on top of it.

A predictor (``pixelseg.load(run, engine=...)``) turns images into logits at their own
size (:meth:`SegmentationPredictor.logits`) and logits into masks (``to_mask``); the rest
(masks of one image or a batch, a folder written to disk, a shard of it under torchrun) is
built from those two here, once, for PyTorch's :class:`~pixelseg.inference.predictor.Predictor`
and ONNX Runtime's :class:`~pixelseg.inference.onnx.OnnxPredictor` alike. Logits are
``torch.Tensor`` for the first and ``np.ndarray`` for the second; callers only hand them
back to the predictor.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from pixelseg.data.io import read_image, to_rgb, to_uint8
from pixelseg.errors import SettingsError
from pixelseg.inference.options import Outputs, PredictOptions
from pixelseg.runconfig import RunConfig

ImageLike = str | Path | Image.Image | np.ndarray
Logits = Any  # (C, H, W): a torch.Tensor (torch engine) or an np.ndarray (onnx engine)

__all__ = [
    "FolderResult", "ImageLike", "SegmentationPredictor", "as_rgb_array", "check_options",
    "check_shard",
]  # fmt: skip


def as_rgb_array(image: ImageLike) -> np.ndarray:
    """A path, PIL image or numpy array → HxWx3 uint8, converted exactly as files are.

    Arrays may be HxW or HxWxC (C = 1, 3, 4) of any numeric type, scaled by
    :func:`pixelseg.data.io.to_uint8` (uint16 from 65535, floats in [0, 1] by 255).
    """
    if isinstance(image, (str, Path)):
        return read_image(image)
    if isinstance(image, Image.Image):
        return to_rgb(image, "image")
    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected a path, PIL image or numpy array, got {type(image).__name__}")
    arr = image[..., None] if image.ndim == 2 else image
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(
            f"expected an HxW or HxWxC image with C in 1, 3, 4; got shape {image.shape}"
        )
    if arr.shape[2] == 4:
        warnings.warn("image: alpha channel dropped", stacklevel=2)
    arr = to_uint8(arr[..., :3])
    return np.ascontiguousarray(np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr)


def check_shard(shard: tuple[int, int]) -> None:
    """``shard = (rank, size)``: part ``rank`` of ``size``, as torchrun's processes split a
    folder."""
    rank, size = shard
    if size < 1 or not 0 <= rank < size:
        raise SettingsError(f"shard must be (rank, size) with 0 <= rank < size, got {shard}")


@dataclass(frozen=True)
class FolderResult:
    """What :meth:`SegmentationPredictor.predict_folder` did: the files this shard wrote,
    and how many images and videos all shards had between them."""

    files: list[Path]  # empty unless predict_folder was asked to keep them
    images: int
    videos: int
    skipped: int = 0  # this shard's images found done already (resume)
    written: int = 0  # how many files this shard wrote

    def summary(self, total_files: int | None = None, total_skipped: int | None = None) -> str:
        counts = [f"{self.images} image(s)"] + [f"{self.videos} video(s)"] * bool(self.videos)
        n = self.written if total_files is None else total_files
        skipped = self.skipped if total_skipped is None else total_skipped
        done = f" ({skipped} image(s) done before, skipped)" if skipped else ""
        return f"wrote {n} outputs for {' and '.join(counts)}{done}"


def check_options(options: PredictOptions, num_classes: int) -> None:
    """Refuse the binary clean-up options on a multi-class run."""
    if num_classes > 1 and (options.postprocess or options.min_area):
        raise SettingsError("--keep-largest, --fill-holes and --min-area apply to binary runs only")


class SegmentationPredictor(Protocol):
    """A trained run ready to segment images of any size, with its options fixed."""

    config: RunConfig  # the run's description of its model
    options: PredictOptions
    size: tuple[int, int]  # the model's input (height, width)
    num_classes: int  # 1: binary

    @property
    def threshold(self) -> float:
        """Binary runs: the probability above which a pixel is foreground (the options',
        else the one the run calibrated on its validation images)."""
        if self.options.threshold is not None:
            return self.options.threshold
        return self.config.threshold

    @property
    def postprocess(self) -> list[str]:
        """Binary clean-up steps: the options', else those the run chose on its
        validation images."""
        steps = self.options.postprocess
        return list(self.config.postprocess if steps is None else steps)

    def logits(self, images: Sequence[ImageLike]) -> list[Logits]:
        """(C, H, W) logits at each image's own size."""
        ...

    def model_logits(self, images: Sequence[np.ndarray]) -> list[Logits]:
        """(C, h, w) logits at the model's size, whole images (for the service, which
        brings them to an image's size as late as it can with :meth:`upsample`)."""
        ...

    def upsample(self, logit: Logits, size: tuple[int, int]) -> Logits: ...

    def to_mask(self, logit: Logits, threshold: float | None = None) -> np.ndarray:
        """HxW uint8 mask (binary: {0, 1} after the clean-up steps; else class indices).
        ``threshold`` overrides the predictor's for this call (the service's per request)."""
        ...

    def top_proba(self, logit: Logits) -> np.ndarray:
        """HxW probability of the foreground (binary) or of the winning class."""
        ...

    def uncertainty(self, logit: Logits) -> np.ndarray:
        """HxW entropy of the probabilities in [0, 1] (1: a coin toss)."""
        ...

    def instances_of(self, logit: Logits, mask: np.ndarray) -> Any:
        """The separate objects of ``mask`` (:class:`pixelseg.inference.instances.Instances`)."""
        ...

    # What both engines share, built on the methods above.

    def predict(self, image: ImageLike) -> np.ndarray:
        """HxW uint8 mask at the image's size: {0, 1} for binary, class indices otherwise."""
        return self.predict_batch([image])[0]

    def predict_batch(self, images: Sequence[ImageLike]) -> list[np.ndarray]:
        return [self.to_mask(logit) for logit in self.logits(images)]

    def predict_folder(
        self,
        inputs: Sequence[str | Path],
        out: str | Path,
        outputs: Outputs | None = None,
        shard: tuple[int, int] = (0, 1),
        progress: bool = True,
        resume: bool = False,
        keep_files: bool = True,
    ) -> FolderResult:
        """Segment image files, folders of them (recursively) and videos into ``out``.

        Writes ``<stem>_mask.png`` and ``<stem>_overlay.png`` per image (and per video
        ``<stem>_overlay.mp4`` with ``<stem>_masks/``), plus the ``outputs`` asked for;
        ``legend.png`` for multi-class runs. Names are the inputs' stems made unique over
        all inputs, images first. Folders are walked lazily and each image's files written
        as it is done, so a folder of any size streams through in constant memory.

        ``shard = (rank, size)`` writes only every ``size``-th image from the ``rank``-th
        (and videos alike) under the names and ids one process would give them; only part
        0 writes the legend. With ``resume``, images (and videos) whose files are all
        there already are skipped: a run that was stopped, or killed, continues where it
        left off. ``keep_files=False`` returns counts only (a million paths would be most
        of a gigabyte).
        """
        from pixelseg.data.layouts import check_inputs, iter_images
        from pixelseg.inference.outputs import Item, StemNamer, predict_files, write_legend
        from pixelseg.inference.video import is_video_file, predict_video

        outputs = outputs or Outputs()
        rank, size = shard
        check_shard(shard)
        inputs = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
        check_inputs(inputs, exclude=out)  # a mistyped path fails before anything is written
        videos = [Path(p) for p in inputs if Path(p).is_file() and is_video_file(p)]
        if videos and outputs.image_only():
            shown = " and ".join(outputs.image_only())
            raise SettingsError(f"{shown} apply to images, not to videos ({videos[0]})")
        name, counts = StemNamer(), {"images": 0}

        def mine() -> Iterator[Item]:  # this shard's images, named as all are walked
            for path in iter_images(inputs, exclude=out):
                if is_video_file(path):
                    continue
                item = Item(path, name(path), counts["images"] + 1)
                counts["images"] += 1
                if (item.image_id - 1) % size == rank:
                    yield item

        done = predict_files(self, mine(), out, outputs, progress, resume, legend=False,
                             keep_files=keep_files)  # fmt: skip
        stems = [name(v) for v in videos]  # clip.mp4 beside clip.png: clip_2
        for i, (video, stem) in enumerate(zip(videos, stems, strict=True)):
            if i % size == rank:
                done.add(predict_video(self, video, out, outputs, progress, stem, resume))
        if rank == 0 and counts["images"] and self.num_classes > 1:
            done.add([write_legend(self, out)])
        return FolderResult(done.files, counts["images"], len(videos), done.skipped, done.count)
