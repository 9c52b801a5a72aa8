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

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

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
    original-size masks are kept in ``original_masks`` (a list, as their sizes differ) for
    evaluation at the original resolution.
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
    ) -> None:
        if not samples:
            raise ValueError("a dataset needs at least one sample")
        self.samples = list(samples)
        self.size = (int(size[0]), int(size[1]))
        self.num_classes = num_classes
        self.ignore_index = ignore_index  # masks hold it where pixels are void
        self.keep_original = keep_original
        self.original_masks: list[np.ndarray] = []
        self.original_sizes: list[tuple[int, int]] = []  # (height, width) before resizing
        images, masks, problems = [], [], []
        iterator = self.samples
        if progress:
            from tqdm.auto import tqdm

            iterator = tqdm(self.samples, desc="loading", unit="img", leave=False, disable=None)
        for sample in iterator:
            try:
                image = to_channels(read_image(sample.image), channels)
                if sample.mask is None:
                    raise DataError(f"{sample.image}: no mask found for this image")
                mask = read_mask(sample.mask, num_classes, colors, ignore_index)
            except DataError as exc:
                problems.append(str(exc))
                continue
            if image.shape[:2] != mask.shape:
                problems.append(f"{sample.mask}: mask size differs from image {sample.image}")
                continue
            images.append(resize_image(image, self.size))
            masks.append(resize_mask(mask, self.size))
            self.original_sizes.append(mask.shape)
            if keep_original:
                self.original_masks.append(mask)
        if problems:
            raise DataError("Cannot load the data set:", problems)
        self.images = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
        self.masks = torch.from_numpy(np.stack(masks))  # N,H,W u8

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.images[index], "mask": self.masks[index], "index": index}

    def median_original_size(self) -> tuple[int, int]:
        """The median (height, width) of the images before they were resized."""
        heights, widths = zip(*self.original_sizes, strict=True)
        return int(np.median(heights)), int(np.median(widths))

    def channel_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the cached images in [0, 1] (for normalisation)."""
        x = self.images.float().div_(255)
        return x.mean(dim=(0, 2, 3)).tolist(), x.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
