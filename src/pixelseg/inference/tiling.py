"""Sliding-window inference: large images in overlapping tiles, blended with Gaussian weights.

A fully convolutional network can run on any size, but memory grows with the image: a
U-Net's activations for an 8000x6000 picture do not fit anywhere. Here the image is cut
into ``tile`` x ``tile`` windows that overlap by ``overlap`` of a tile, run in batches of
``batch`` windows, and each window's logits are added into one accumulator weighted by a
Gaussian centred on the window (as nnU-Net does). Predictions near a tile's border, where
the network sees the least context, count least, so tile borders leave no seams. Memory
is the uint8 image, one float accumulator (classes x pixels) and one batch of windows.

Windows are spread evenly so the last one ends at the image's edge (no padding of the
image itself); an image no larger than one tile is a single window of its own size, and
then the result is the network's output on the whole image (the weights cancel).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from pixelseg.errors import SettingsError

SIGMA_SCALE = 1 / 8  # Gaussian sigma as a fraction of the tile side (nnU-Net's choice)


def window_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of windows of ``tile`` pixels covering ``length`` pixels, consecutive
    windows sharing at least ``overlap`` of a tile, the first at 0 and the last at the end."""
    if tile < 1:
        raise SettingsError(f"tile must be >= 1 pixel, got {tile}")
    if not 0 <= overlap < 1:
        raise SettingsError(f"overlap must be in [0, 1), got {overlap}")
    if length <= tile:
        return [0]
    stride = max(1, int(tile * (1 - overlap)))
    count = math.ceil((length - tile) / stride) + 1
    step = (length - tile) / (count - 1)
    return [round(i * step) for i in range(count)]


def gaussian_weights(height: int, width: int) -> torch.Tensor:
    """(H, W) weights, 1 at the centre, falling off with sigma = side / 8, never 0 (every
    pixel of a window counts a little, so a border pixel that only one window covers still
    gets a prediction)."""

    def profile(n: int) -> torch.Tensor:
        x = torch.arange(n, dtype=torch.float32) - (n - 1) / 2
        return torch.exp(-0.5 * (x / max(n * SIGMA_SCALE, 1e-3)) ** 2)

    weights = profile(height)[:, None] * profile(width)[None, :]
    return weights.clamp_min(1e-3)


@torch.no_grad()
def sliding_window(
    image: torch.Tensor,
    forward: Callable[[torch.Tensor], torch.Tensor],
    tile: int,
    overlap: float = 0.25,
    batch: int = 4,
) -> torch.Tensor:
    """Blend ``forward`` over overlapping tiles of ``image``.

    ``image``: (C, H, W), any dtype ``forward`` accepts (pixelseg passes uint8 and lets
    ``forward`` normalise on the device). ``forward``: (N, C, h, w) → (N, K, h, w) logits.
    Returns (K, H, W) float32 on the CPU: the Gaussian-weighted mean of the windows' logits.
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    _, height, width = image.shape
    th, tw = min(tile, height), min(tile, width)
    boxes = [
        (y, x)
        for y in window_starts(height, tile, overlap)
        for x in window_starts(width, tile, overlap)
    ]
    weights = gaussian_weights(th, tw)
    total: torch.Tensor | None = None
    weight_sum = torch.zeros(height, width)
    for first in range(0, len(boxes), batch):
        chunk = boxes[first : first + batch]
        windows = torch.stack([image[:, y : y + th, x : x + tw] for y, x in chunk])
        out = forward(windows).float().cpu()
        if total is None:
            total = torch.zeros(out.shape[1], height, width)
        for (y, x), logits in zip(chunk, out, strict=True):
            total[:, y : y + th, x : x + tw].addcmul_(logits, weights)
            weight_sum[y : y + th, x : x + tw] += weights
    assert total is not None  # there is always at least one window
    return total.div_(weight_sum)
