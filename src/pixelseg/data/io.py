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
from PIL import Image, ImageOps, UnidentifiedImageError

from pixelseg.errors import DataError

_ORIENTATION = 0x0112  # the EXIF tag
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def is_image_file(path: Path) -> bool:
    return (
        path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")
    )


def _open(path: Path) -> Image.Image:
    """Open and fully decode ``path`` (a truncated file only fails on decode, not on open).

    The EXIF orientation is applied, as every image viewer does, so a phone photo and its
    mask line up the way the user sees them.
    """
    try:
        with Image.open(path) as im:
            im.load()
            return upright(im)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except Image.DecompressionBombError as exc:
        raise DataError(
            f"{path}: image too large to decode safely ({exc}); raise PIL.Image.MAX_IMAGE_PIXELS "
            "if you trust it"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path}: cannot read image ({exc})") from None


def upright(im: Image.Image) -> Image.Image:
    """A decoded image turned as its EXIF orientation says (a copy either way): files and
    the service's uploads go through here, so a phone photo gets one mask whichever way it
    comes in. A multi-picture JPEG (MPO) gives its first picture."""
    if im.getexif().get(_ORIENTATION, 1) != 1:
        return ImageOps.exif_transpose(im)
    return im.copy()


def to_uint8(arr: np.ndarray, sixteen_bit: bool = False) -> np.ndarray:
    """Scale a deep or float array to uint8, the same way for files, PIL images and arrays.

    16-bit data is scaled from the full 16-bit range whatever this image's maximum, so every
    image of a data set gets the same brightness mapping; other integers above 255 likewise;
    floats in [0, 1] are multiplied by 255; anything else is taken as 8-bit values.
    """
    if arr.dtype == np.uint8:
        return arr
    values = arr.astype(np.float64)
    peak = values.max() if values.size else 0.0
    if sixteen_bit or arr.dtype == np.uint16 or peak > 255:
        full = 65535.0
    elif np.issubdtype(arr.dtype, np.floating) and peak <= 1.0:
        full = 1.0
    else:
        full = 255.0
    return np.clip(values / full * 255.0, 0, 255).round().astype(np.uint8)


def to_rgb(im: Image.Image, name: str = "image") -> np.ndarray:
    """A decoded PIL image as HxWx3 uint8 RGB (``name`` is used in warnings).

    Greyscale is repeated to three channels, an alpha channel is dropped (with a warning),
    16-bit, 32-bit and float images are scaled by :func:`to_uint8`.
    """
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        grey = to_uint8(np.asarray(im), sixteen_bit=im.mode.startswith("I;16"))
        im = Image.fromarray(grey, mode="L")
    elif im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        warnings.warn(f"{name}: alpha channel dropped", stacklevel=3)
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as an HxWx3 uint8 RGB array (see :func:`to_rgb`)."""
    path = Path(path)
    return to_rgb(_open(path), str(path))


def read_mask(
    path: str | Path, num_classes: int = 1, colors: list[list[int]] | None = None,
    ignore_index: int | None = None,
) -> np.ndarray:  # fmt: skip
    """Read a mask as an HxW uint8 array of class indices.

    Binary (``num_classes == 1``): any encoding becomes {0, 1}:

    - files holding only 0 and 1 (grey or palette indices) are taken as they are;
    - a mask with exactly two levels (0/255, 0/100, black/red, 1-bit) is foreground where
      it is above the lower level;
    - anything else (e.g. an antialiased or JPEG-compressed mask) is foreground where its
      brightest channel is above 127;
    - several small values and nothing above 127 (class indices such as CamVid's 0..11)
      raise a :class:`DataError`, since thresholding would silently empty the mask.
    - with ``ignore_index`` (e.g. 255, PASCAL VOC's void borders), pixels of that value
      stay ``ignore_index`` (void: in no loss and no metric) and the others are read by the
      rules above. Without it, a mask of 0, 1 and 255 is an error: 255 may be void or
      foreground, and reading it as foreground would keep only the void ring.

    Multi-class: the file holds class indices 0..255 (greyscale or palette PNG), or, with
    ``colors`` (one RGB triple per class, from a class table), each class in its colour.
    """
    path = Path(path)
    im = _open(path)
    if num_classes == 1:
        return _binary_mask(im, path, ignore_index)
    if colors is not None and im.mode in ("RGB", "RGBA"):
        return _colour_mask(np.asarray(im.convert("RGB")), colors, path)
    if im.mode not in ("L", "P", "1", "I", "I;16", "I;16B", "I;16L"):
        raise DataError(
            f"{path}: a multi-class mask must be a greyscale or palette image of class "
            f"indices (or colours listed in a class table), got mode {im.mode}"
        )
    arr = np.asarray(im, dtype=np.int64)
    if arr.min() < 0 or arr.max() > 255:
        raise DataError(f"{path}: class values must lie in 0..255, found {arr.min()}..{arr.max()}")
    return arr.astype(np.uint8)


def _colour_mask(rgb: np.ndarray, colors: list[list[int]], path: Path) -> np.ndarray:
    """Map each pixel's colour to its class index through the class table."""
    codes = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    table = {(r << 16) | (g << 8) | b: index for index, (r, g, b) in enumerate(colors)}
    found, inverse = np.unique(codes, return_inverse=True)
    unknown = [int(c) for c in found if int(c) not in table]
    if unknown:
        shown = ", ".join(f"({c >> 16}, {(c >> 8) & 255}, {c & 255})" for c in unknown[:5])
        raise DataError(f"{path}: colours not in the class table: {shown}")
    lookup = np.array([table[int(c)] for c in found], dtype=np.uint8)
    return lookup[inverse].reshape(codes.shape)


def _binary_mask(im: Image.Image, path: Path, ignore_index: int | None = None) -> np.ndarray:
    indices = np.asarray(im) if im.mode == "P" else None
    if indices is not None and (indices.max() <= 1 or ignore_index is not None):
        arr = indices  # palette indices (PASCAL VOC's masks: 0, 1, ..., 255 void)
    elif im.mode in ("RGB", "RGBA", "P"):
        # a colour-coded mask (e.g. pure red on black) is foreground wherever any channel
        # is bright; converting to grey first would turn pure red into 76.
        arr = np.asarray(im.convert("RGB"), dtype=np.uint8).max(axis=2)
    else:
        arr = np.asarray(im.convert("L"), dtype=np.uint8)
    if ignore_index is None:
        return _binarise(arr, path)
    void = arr == ignore_index
    if void.all():  # nothing to learn from or score on
        raise DataError(f"{path}: every pixel is void ({ignore_index}, the ignore index)")
    mask = np.zeros(arr.shape, np.uint8)
    mask[~void] = _binarise(arr[~void], path)
    mask[void] = ignore_index
    return mask


def _binarise(arr: np.ndarray, path: Path) -> np.ndarray:
    """Grey levels (any shape) → {0, 1} by the rules of :func:`read_mask`."""
    levels = np.unique(arr)
    if levels[-1] <= 1:
        return arr.astype(np.uint8)
    if set(levels.tolist()) in ({0, 1, 255}, {1, 255}):
        raise DataError(
            f"{path}: mask values 0, 1 and 255: is 255 void (as PASCAL VOC marks uncertain "
            "borders) or foreground? If void, give --ignore-index 255; if foreground, save "
            "the mask with one foreground value"
        )
    if len(levels) == 2:
        return (arr > levels[0]).astype(np.uint8)
    if levels[-1] <= 127:
        # several small values and nothing bright: class indices (e.g. CamVid's 0..11), which
        # thresholding would turn into an empty mask without a word
        shown = ", ".join(map(str, levels[:12])) + (", ..." if len(levels) > 12 else "")
        raise DataError(
            f"{path}: mask values {shown} look like class indices, not a binary mask; "
            "set the number of classes (--num-classes)"
        )
    return (arr > 127).astype(np.uint8)
