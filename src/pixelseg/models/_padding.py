"""Pad-to-stride and crop-back, shared by every native model.

An encoder that halves the resolution ``depth`` times only lines up with its decoder
when H and W are multiples of ``2**depth``; otherwise pooling floors the size and the
skip concatenations (or the final output size) no longer match. Rather than make users
resize their images, the models pad up to the next multiple, run, and crop the logits
back, so any H x W works and the output always has the input's size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pad_to_multiple(
    x: torch.Tensor, stride: int, min_size: int = 0
) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Zero-pad an (N, C, H, W) tensor so H and W are multiples of ``stride`` (and at least
    ``min_size``, for networks whose pooling needs a larger input).

    The padding is split between both sides (the extra pixel, if odd, goes right/bottom)
    so the image stays centred and border effects are shared by opposite edges.
    Zero padding rather than reflect: it works for any size (reflect needs pad < size,
    which fails on tiny inputs) and exports to ONNX as a plain ``Pad``.

    Returns the padded tensor and ``(left, right, top, bottom)`` for :func:`crop_padding`.
    """
    height, width = x.shape[-2:]
    pad_h = max(height, min_size) - height
    pad_w = max(width, min_size) - width
    pad_h += -(height + pad_h) % stride
    pad_w += -(width + pad_w) % stride
    padding = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
    # While exporting, always pad: a branch on this input's size would be frozen into the
    # graph, and an exported graph with dynamic sizes must pad whatever size comes.
    if pad_h == 0 and pad_w == 0 and not torch.onnx.is_in_onnx_export():
        return x, padding
    return F.pad(x, padding, mode="constant", value=0.0), padding


def crop_padding(x: torch.Tensor, padding: tuple[int, int, int, int]) -> torch.Tensor:
    """Undo :func:`pad_to_multiple` on a same-resolution output (e.g. logits)."""
    left, right, top, bottom = padding
    height, width = x.shape[-2:]
    return x[..., top : height - bottom, left : width - right]
