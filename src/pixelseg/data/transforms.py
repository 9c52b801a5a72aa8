"""Turning cached uint8 batches into model input: joint augmentation and normalisation.

Augmentation runs on whole batches on the training device (GPU or CPU), after the
uint8 batch has been moved there: per-sample augmentation in DataLoader workers made
the CPU the bottleneck of GPU training, with the GPU idle most of the time.

Geometry (flips, rotation, scale, and the crop when training on patches) is applied to
image and mask together with one affine grid per sample; images are sampled bilinearly and
masks with nearest neighbour, so class indices are never blended. Colour jitter touches the
image only. The random parameters are drawn from torch's global CPU generator, so a seeded
run is reproducible on any device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Augment:
    """Random training-time transforms; each field is a strength (0 or False disables it)."""

    hflip: bool = True
    vflip: bool = True
    rotate_degrees: float = 20.0
    scale: float = 0.15  # zoom factor drawn from [1 - scale, 1 + scale]
    color: float = 0.15  # brightness/contrast/saturation jitter
    # (height, width) of a random window to return instead of the whole image: the model
    # then trains on patches at the images' resolution and predicts on whole images
    crop: tuple[int, int] | None = None

    @classmethod
    def crop_only(cls, crop: tuple[int, int]) -> Augment:
        """Random windows of ``crop`` and nothing else (training with augmentation off)."""
        return cls(hflip=False, vflip=False, rotate_degrees=0.0, scale=0.0, color=0.0, crop=crop)

    def __call__(
        self, images: torch.Tensor, masks: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``images``: (N, C, H, W) float in [0, 1]; ``masks``: (N, H, W) integer.

        A single (C, H, W) image with an (H, W) mask works too. Returns new tensors.
        """
        if images.dim() == 3:
            out_images, out_masks = self(images[None], masks[None])
            return out_images[0], out_masks[0]
        n = images.shape[0]
        # the flips are drawn first, then the rotation and zoom, whichever path applies them
        hflip = torch.rand(n) < 0.5 if self.hflip else torch.zeros(n, dtype=torch.bool)
        vflip = torch.rand(n) < 0.5 if self.vflip else torch.zeros(n, dtype=torch.bool)
        if self.rotate_degrees > 0 or self.scale > 0 or self._cropping(images):
            images, masks = self._affine(images, masks, hflip, vflip)  # flips included
        else:
            if self.hflip:
                images, masks = _flip_some(images, masks, hflip, dim=-1)
            if self.vflip:
                images, masks = _flip_some(images, masks, vflip, dim=-2)
        if self.color > 0:
            images = self._jitter(images)
        return images, masks

    def _uniform(self, n: int, spread: float, centre: float = 0.0) -> torch.Tensor:
        return centre + (torch.rand(n, dtype=torch.float64) * 2 - 1) * spread

    def _cropping(self, images: torch.Tensor) -> bool:
        return self.crop is not None and tuple(self.crop) != tuple(images.shape[-2:])

    def _affine(
        self, images: torch.Tensor, masks: torch.Tensor, hflip: torch.Tensor, vflip: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Flip, rotate, zoom and crop each sample with one grid: a flip is a sign in the
        matrix, which saves two passes over the batch per flip (it samples pixel centres
        exactly), and a crop is a smaller output grid placed at random."""
        n, _, h, w = images.shape
        oh, ow = self.crop if self._cropping(images) else (h, w)
        angle = self._uniform(n, math.radians(self.rotate_degrees))
        zoom = self._uniform(n, self.scale, centre=1.0)
        cos, sin = angle.cos() / zoom, angle.sin() / zoom
        # theta maps output to input coordinates, so flipping the input first negates the
        # row that gives its x (hflip) or y (vflip)
        sx = 1.0 - 2.0 * hflip.double()
        sy = 1.0 - 2.0 * vflip.double()
        # In pixels the map is [[sx cos, -sx sin], [sy sin, sy cos]]; affine_grid works in
        # coordinates normalised by each grid's half-sides, so entry (i, j) is scaled by the
        # output's half-side j over the input's half-side i. A rotation stays a rotation on
        # non-square images, and a crop keeps the input's pixel size.
        a, b = sx * cos * ow / w, -sx * sin * oh / w
        c, d = sy * sin * ow / h, sy * cos * oh / h
        tx, ty = self._window_centres(n, a.abs() + b.abs(), c.abs() + d.abs(), w, h, (oh, ow))
        theta = torch.stack([torch.stack([a, b, tx], 1), torch.stack([c, d, ty], 1)], 1).to(
            images.device, images.dtype
        )
        grid = F.affine_grid(theta, [n, 1, oh, ow], align_corners=False)
        images = F.grid_sample(
            images, grid, mode="bilinear", padding_mode="reflection", align_corners=False
        )
        masks = F.grid_sample(
            masks[:, None].to(images.dtype),
            grid,
            mode="nearest",
            padding_mode="reflection",
            align_corners=False,
        )[:, 0].to(masks.dtype)
        return images, masks

    def _window_centres(
        self, n: int, reach_x: torch.Tensor, reach_y: torch.Tensor, w: int, h: int,
        out: tuple[int, int],
    ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """Where each output window is centred in the input (normalised coordinates): at the
        centre for whole images, else uniformly where the window stays inside the image
        (``reach``: its half-extent, rotated and zoomed, in normalised units). The window
        moves by whole pixels, so an unrotated, unzoomed crop copies pixels exactly."""
        if out == (h, w):
            zero = torch.zeros(n, dtype=torch.float64)
            return zero, zero
        centres = []
        for reach, side in ((reach_x, w), (reach_y, h)):
            # pixels the window may move (the 1e-6: 7 pixels must not round down to 6)
            slack = ((1 - reach).clamp_min(0) * side + 1e-6).floor()
            offset = (torch.rand(n, dtype=torch.float64) * (slack + 1)).floor()  # 0..slack
            centres.append((offset - slack / 2) * 2 / side)
        return centres[0], centres[1]

    def _jitter(self, images: torch.Tensor) -> torch.Tensor:
        """Brightness b, contrast c about the image's mean m, saturation s about each pixel's
        grey g, in that order: ``((b x - b m) c + b m - grey) s + grey``, which expands to
        ``b c s x + b c (1 - s) g + b m (1 - c)``: one pass over the batch, not nine."""
        n = images.shape[0]

        def factor() -> torch.Tensor:
            return self._uniform(n, self.color, 1.0).to(images.device, images.dtype)

        b, c = factor().view(n, 1, 1, 1), factor().view(n, 1, 1, 1)
        offset = b * (1 - c) * images.mean(dim=(1, 2, 3), keepdim=True)
        if images.shape[1] == 3:
            s = factor().view(n, 1, 1, 1)
            offset = offset + (b * c * (1 - s)) * images.mean(1, keepdim=True)
            scale = b * c * s
        else:
            scale = b * c
        return torch.addcmul(offset, images, scale).clamp_(0, 1)


def _flip_some(
    images: torch.Tensor, masks: torch.Tensor, chosen: torch.Tensor, dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip the samples where ``chosen`` (N bools) is true along ``dim``."""
    chosen = chosen.to(images.device)
    images = torch.where(chosen.view(-1, 1, 1, 1), images.flip(dim), images)
    masks = torch.where(chosen.view(-1, 1, 1), masks.flip(dim), masks)
    return images, masks


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Per-channel ``(x - mean) / std`` for (C, H, W) or (N, C, H, W) tensors."""
    m = torch.tensor(mean, dtype=images.dtype, device=images.device).view(-1, 1, 1)
    s = torch.tensor(std, dtype=images.dtype, device=images.device).view(-1, 1, 1)
    return torch.addcmul(-m / s, images, 1 / s)  # one pass: x / s - m / s


@dataclass
class BatchTransform:
    """A cached batch (uint8 images, uint8 masks) → model input on ``device``.

    Moves the compact uint8 tensors (4x smaller than float) to the device, converts them
    to [0, 1] floats, augments them there when ``augment`` is set, then normalises.
    Returns ``(images (N, C, H, W) float32, masks (N, H, W) int64)``; a batch without
    ``"mask"`` (prediction) gives ``masks`` None.
    """

    mean: Sequence[float]
    std: Sequence[float]
    augment: Augment | None = None

    def __call__(
        self, batch: dict, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        images = batch["image"].to(device, non_blocking=True).float().div_(255)
        masks = batch.get("mask")
        if masks is not None:
            masks = masks.to(device, non_blocking=True).long()
        if self.augment is not None:
            images, masks = self.augment(images, masks)
        return normalize(images, self.mean, self.std), masks
