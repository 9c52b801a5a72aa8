"""A map-style dataset that decodes and resizes every pair once and keeps them in memory.

Epochs then cost no JPEG/BMP decoding (PH2's 768x560 BMPs take milliseconds each, which
dominates a small model's step time on a CPU). Images are resized with Pillow's antialiased
bilinear filter and masks with nearest neighbour, so masks keep exact class indices; both
are stored as uint8. Augmentation and normalisation happen later, per batch, on the
training device (:mod:`pixelseg.data.transforms`).

For evaluation (``keep_original=True``) the dataset also keeps each original-size mask, so
metrics can be computed at the image's own resolution as the literature does.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from pixelseg.data.cache import DiskArrays, use_disk
from pixelseg.data.imageops import resize_image, resize_mask, to_channels
from pixelseg.data.io import read_image, read_mask
from pixelseg.data.layouts import Sample
from pixelseg.errors import DataError


def to_uint8_tensor(image: np.ndarray) -> torch.Tensor:
    """HxWxC uint8 array → (C, H, W) uint8 tensor (a copy: PIL's arrays are read-only)."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)


class SegmentationDataset(Dataset):
    """Samples decoded once, resized to ``size`` = (height, width), cached as uint8.

    Items are dicts of compact tensors: ``image`` (C, H, W) uint8, ``mask`` (H, W) uint8 and
    ``index``; a :class:`~pixelseg.data.transforms.BatchTransform` turns a batch of them into
    model input on the device (augmentation, normalisation). With ``keep_original`` the
    original-size masks are kept in ``original_masks`` for evaluation at the original
    resolution.

    ``cache``: ``memory`` keeps the pairs in this process (``images`` and ``masks`` are
    then (N, C, H, W) and (N, H, W) tensors); ``disk`` decodes them once into files that
    later runs reuse (:mod:`pixelseg.data.cache`), so memory does not grow with the data
    set; ``auto`` takes disk past :data:`pixelseg.data.cache.MEMORY_LIMIT` bytes.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        size: tuple[int, int],
        num_classes: int = 1,
        keep_original: bool = False,
        progress: bool = False,
        channels: int = 3,
        colors: list[list[int]] | None = None,
        ignore_index: int | None = None,
        cache: str = "memory",
    ) -> None:
        if not samples:
            raise ValueError("a dataset needs at least one sample")
        self.samples = list(samples)
        self.size = (int(size[0]), int(size[1]))
        self.num_classes = num_classes
        self.channels = channels
        self.colors = colors
        self.ignore_index = ignore_index  # masks hold it where pixels are void
        self.keep_original = keep_original
        self.disk: DiskArrays | None = None
        if use_disk(cache, len(self.samples), self.size, channels):
            settings = {"num_classes": num_classes, "colors": colors,
                        "ignore_index": ignore_index, "keep_original": keep_original}  # fmt: skip
            self.disk = DiskArrays.open(self.samples, self.size, channels, settings, self.load,
                                        progress)  # fmt: skip
            self.original_masks: Sequence[np.ndarray] = (
                _OriginalMasks(self.disk) if keep_original else []
            )
            self.original_sizes = [self.disk.original_size(i) for i in range(len(self))]
        else:
            self._load_in_memory(progress)

    def load(self, sample: Sample) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One pair decoded: the image (HxWxC) and mask at training size, and the mask at
        its own size. A bad pair raises :class:`DataError` naming the file."""
        image = to_channels(read_image(sample.image), self.channels)
        if sample.mask is None:
            raise DataError(f"{sample.image}: no mask found for this image")
        mask = read_mask(sample.mask, self.num_classes, self.colors, self.ignore_index)
        if image.shape[:2] != mask.shape:
            raise DataError(f"{sample.mask}: mask size differs from image {sample.image}")
        return resize_image(image, self.size), resize_mask(mask, self.size), mask

    def _load_in_memory(self, progress: bool) -> None:
        images, masks, problems = [], [], []
        self.original_masks = []
        self.original_sizes: list[tuple[int, int]] = []  # (height, width) before resizing
        iterator = self.samples
        if progress:
            from tqdm.auto import tqdm

            iterator = tqdm(self.samples, desc="loading", unit="img", leave=False, disable=None)
        for sample in iterator:
            try:
                image, mask, original = self.load(sample)
            except DataError as exc:
                problems.append(str(exc))
                continue
            images.append(image)
            masks.append(mask)
            self.original_sizes.append(original.shape)
            if self.keep_original:
                self.original_masks.append(original)
        if problems:
            raise DataError("Cannot load the data set:", problems)
        self.images = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
        self.masks = torch.from_numpy(np.stack(masks))  # N,H,W u8

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        if self.disk is None:
            return {"image": self.images[index], "mask": self.masks[index], "index": index}
        image = torch.from_numpy(self.disk.image(index).copy())
        return {"image": image, "mask": torch.from_numpy(self.disk.mask(index).copy()),
                "index": index}  # fmt: skip

    def iter_masks(self) -> Iterator[torch.Tensor]:
        """Each (H, W) uint8 mask at training size, one at a time."""
        for index in range(len(self)):
            yield self[index]["mask"]

    def median_original_size(self) -> tuple[int, int]:
        """The median (height, width) of the images before they were resized."""
        heights, widths = zip(*self.original_sizes, strict=True)
        return int(np.median(heights)), int(np.median(widths))

    def channel_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the cached images in [0, 1] (for normalisation),
        summed image by image in float64 so that no float copy of the set is made."""
        total = torch.zeros(self.channels, dtype=torch.float64)
        squares = torch.zeros(self.channels, dtype=torch.float64)
        for index in range(len(self)):
            x = self[index]["image"].double().div_(255).flatten(1)
            total += x.sum(1)
            squares += (x * x).sum(1)
        n = len(self) * self.size[0] * self.size[1]
        mean = total / n
        var = (squares - n * mean * mean) / max(n - 1, 1)  # unbiased, as torch.std
        return mean.tolist(), var.clamp_min(0).sqrt().clamp_min(1e-3).tolist()


class _OriginalMasks(Sequence):
    """The original-size masks of a disk cache, read when asked for."""

    def __init__(self, disk: DiskArrays) -> None:
        self.disk = disk

    def __len__(self) -> int:
        return self.disk.layout.n

    def __getitem__(self, index: int) -> np.ndarray:  # type: ignore[override]
        return self.disk.original_mask(index)
