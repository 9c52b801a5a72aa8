"""What a client may send to ``/predict``, and a clear 4xx for everything else.

Checks happen before any pixel is decoded: the declared and actual byte count, the format
(PNG, JPEG, BMP, TIFF, WebP), and the pixel count from the image header, so a small file
that claims 30000x30000 pixels (a decompression bomb) is refused without allocating them.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

# Also the only parsers Pillow may try on an upload's untrusted bytes. A camera's
# multi-picture JPEG comes out of the JPEG parser as format MPO, and is read too.
FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP")
_READABLE = (*FORMATS, "MPO")
MIN_SIDE = 8  # pixels: anything smaller is no picture to segment


class ApiError(Exception):
    """A problem with the request, answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


@dataclass(frozen=True)
class Limits:
    max_bytes: int = 20 * 2**20
    max_pixels: int = 25_000_000


def check_content_length(header: str | None, limits: Limits) -> None:
    if header is None:
        return
    try:
        length = int(header)
    except ValueError:
        raise ApiError(400, f"invalid Content-Length {header!r}") from None
    if length > limits.max_bytes + 64 * 1024:  # room for a multipart envelope
        raise ApiError(413, _too_many_bytes(length, limits))


def check_size(data: bytes, limits: Limits) -> None:
    if not data:
        raise ApiError(400, "empty upload: no image was sent")
    if len(data) > limits.max_bytes:
        raise ApiError(413, _too_many_bytes(len(data), limits))


def _too_many_bytes(n: int, limits: Limits) -> str:
    return f"upload of {n / 2**20:.1f} MB is over the {limits.max_bytes / 2**20:g} MB limit"


def header_pixels(data: bytes, limits: Limits) -> tuple[int, str]:
    """The upload's pixel count and Pillow mode from its header alone (nothing is
    decoded), after the format and size checks of :func:`decode_image`."""
    image = _checked_header(data, limits)
    return image.size[0] * image.size[1], image.mode


def decode_image(data: bytes, limits: Limits) -> np.ndarray:
    """Upload bytes (already through :func:`check_size`) → HxWx3 uint8 RGB, or
    :class:`ApiError` naming the problem."""
    image = _checked_header(data, limits)
    try:
        image.load()
        rgb = _to_rgb(image)
    except Exception as exc:  # truncated or corrupt data: Pillow raises many kinds
        raise ApiError(400, f"cannot decode the {image.format} image: {exc}") from None
    return rgb


def decode_small(
    data: bytes, limits: Limits, size: tuple[int, int]
) -> tuple[tuple[int, int], np.ndarray]:
    """(the picture's own (height, width), the picture resized to the model's ``size``):
    what the model's thread takes, so nothing full-size waits in its queue."""
    from pixelseg.data.imageops import resize_image

    image = decode_image(data, limits)
    return image.shape[:2], resize_image(image, size)


def _checked_header(data: bytes, limits: Limits) -> Image.Image:
    """The upload opened lazily (header only), its format and size checked."""
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError as exc:
        raise ApiError(413, f"image refused as a decompression bomb: {exc}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        known = _sniff(data)
        if known:
            raise ApiError(415, f"unsupported image format {known}; send {_formats()}") from None
        raise ApiError(415, f"not an image in a format pixelseg reads ({_formats()})") from None
    if image.format not in _READABLE:
        raise ApiError(415, f"unsupported image format {image.format}; send {_formats()}")
    width, height = image.size
    if width * height > limits.max_pixels:
        raise ApiError(
            413,
            f"image is {width}x{height} ({width * height / 1e6:.1f} MP), over the "
            f"{limits.max_pixels / 1e6:g} MP limit",
        )
    if min(width, height) < MIN_SIDE:
        raise ApiError(422, f"image is {width}x{height}; it must be at least 8x8 pixels")
    return image


def _to_rgb(image: Image.Image) -> np.ndarray:
    """Any mode (greyscale, 16-bit, palette, alpha, CMYK) → HxWx3 uint8, turned upright by
    its EXIF orientation: exactly as files are read."""
    from pixelseg.data.io import to_rgb, upright

    return to_rgb(upright(image), "upload")


# Image formats that are not read, named from their first bytes for a clearer refusal
# (no parser runs on them).
_SIGNATURES = {b"GIF87a": "GIF", b"GIF89a": "GIF", b"8BPS": "PSD", b"%PDF": "PDF",
               b"\x00\x00\x01\x00": "ICO", b"\xff\x0a": "JPEG XL"}  # fmt: skip
_ISO_BRANDS = {b"heic": "HEIC", b"heix": "HEIC", b"mif1": "HEIF", b"avif": "AVIF"}


def _sniff(data: bytes) -> str | None:
    for signature, name in _SIGNATURES.items():
        if data.startswith(signature):
            return name
    if data[4:8] == b"ftyp":
        return _ISO_BRANDS.get(data[8:12])
    return None


def _formats() -> str:
    return ", ".join(FORMATS[:-1]) + " or " + FORMATS[-1]
