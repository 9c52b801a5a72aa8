"""Reading images and masks from disk, with errors that name the file.

Every reader returns plain numpy arrays: images as HxWx3 uint8 RGB, masks as HxW uint8
class indices. Binary masks come in many encodings (PH2 stores most lesion masks as
1-bit BMPs but ``IMD002_lesion.bmp`` as 24-bit RGB; others use 0/1 or 0/255 greyscale),
so :func:`read_mask` normalises them all to {0, 1}.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from pixelseg.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def is_image_file(path: Path) -> bool:
    return (
        path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")
    )


def _open(path: Path) -> Image.Image:
    """Open and fully decode ``path`` (a truncated file only fails on decode, not on open)."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path}: cannot read image ({exc})") from None


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as an HxWx3 uint8 RGB array.

    Greyscale images are repeated to three channels, an alpha channel is dropped, and
    16-bit greyscale is scaled to 8 bits from its full range.
    """
    path = Path(path)
    im = _open(path)
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        # 16-bit files are scaled from the full 16-bit range, whatever this image's maximum,
        # so every image of a data set gets the same brightness mapping. (32-bit "I" images
        # holding 8-bit values are left as they are.)
        full = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / full * 255.0, 0, 255)
        im = Image.fromarray(arr.round().astype(np.uint8), mode="L")
    elif im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        warnings.warn(f"{path}: alpha channel dropped", stacklevel=2)
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def read_mask(path: str | Path, num_classes: int = 1) -> np.ndarray:
    """Read a mask as an HxW uint8 array of class indices.

    Binary (``num_classes == 1``): any encoding (1-bit, 0/1 or 0/255 grey, RGB) becomes
    {0, 1}; a pixel is foreground when its grey value (for RGB: its brightest channel) is
    above 127 (files holding only 0/1 are taken as they are).
    Multi-class: the file must hold class indices (greyscale or palette PNG).
    """
    path = Path(path)
    im = _open(path)
    if num_classes == 1:
        if im.mode in ("RGB", "RGBA"):
            # a colour-coded binary mask (e.g. pure red on black) is foreground wherever
            # any channel is bright; converting to grey first would lose pure red (76).
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8).max(axis=2)
        else:
            arr = np.asarray(im.convert("L"), dtype=np.uint8)
        if arr.max() <= 1:
            return arr.copy()
        return (arr > 127).astype(np.uint8)
    if im.mode not in ("L", "P", "1", "I", "I;16"):
        raise DataError(
            f"{path}: a multi-class mask must be a greyscale or palette image of class "
            f"indices, got mode {im.mode}"
        )
    return np.asarray(im, dtype=np.int64).astype(np.uint8 if num_classes <= 256 else np.int64)


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image file, read from its header only."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            return im.height, im.width
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{path}: cannot read image ({exc})") from None
