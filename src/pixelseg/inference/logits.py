"""From a model's logits to probabilities and masks, at any size.

The one place that says how pixelseg reads its models' outputs: one channel is a binary
model's logit (sigmoid, then a threshold), several are classes (softmax, then argmax).
Training's evaluation and every predictor use these, so a score and a mask agree.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pixelseg.errors import SettingsError


def logits_to_mask(logits: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """(C, H, W) logits → (H, W) uint8 class indices (C == 1: sigmoid > threshold)."""
    if logits.shape[0] == 1:
        if not 0 <= threshold <= 1:
            raise SettingsError(f"threshold must be a probability between 0 and 1, got {threshold}")
        return (torch.sigmoid(logits[0]) > threshold).to(torch.uint8)
    return logits.argmax(0).to(torch.uint8)


def logits_to_proba(logits: torch.Tensor) -> torch.Tensor:
    """(C, H, W) or (N, C, H, W) logits → probabilities: sigmoid for one channel, softmax
    over classes."""
    return torch.sigmoid(logits) if logits.shape[-3] == 1 else logits.softmax(-3)


def proba_to_logits(proba: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`logits_to_proba`, for averaged probabilities ((C, H, W) or
    (N, C, H, W)): the log-odds of one channel, the log of several (softmax gives them
    back). Clamped to [1e-6, 1 - 1e-6], so the logits stay finite."""
    proba = proba.clamp(1e-6, 1 - 1e-6)
    return torch.logit(proba) if proba.shape[-3] == 1 else proba.log()


def resize_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(C, h, w) → (C, H, W), bilinear (resizing logits, not hard masks, keeps borders smooth)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)[0]
