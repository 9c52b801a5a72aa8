"""Resizing and channel conversion of numpy images, shared by training and by inference
engines that run without torch (ONNX Runtime)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from pixelseg.errors import SettingsError

__all__ = ["resize_image", "resize_mask", "to_channels"]


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an HxWxC uint8 image to ``size`` = (height, width), bilinear and antialiased."""
    if image.shape[:2] == tuple(size):
        return image
    if image.shape[2] == 1:  # Pillow wants HxW for a single channel
        grey = Image.fromarray(image[..., 0]).resize((size[1], size[0]), Image.BILINEAR)
        return np.asarray(grey)[..., None]
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))


def to_channels(rgb: np.ndarray, channels: int) -> np.ndarray:
    """HxWx3 RGB → HxWx``channels``: 3 as is, 1 as luminance (equal to a grey file's values)."""
    if channels == 3:
        return rgb
    if channels == 1:
        return np.asarray(Image.fromarray(rgb).convert("L"))[..., None]
    raise SettingsError(f"images can have 1 or 3 channels, not {channels}")


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an HxW index mask with nearest neighbour (never invents class values)."""
    if mask.shape == tuple(size):
        return mask
    return np.asarray(Image.fromarray(mask).resize((size[1], size[0]), Image.NEAREST))
