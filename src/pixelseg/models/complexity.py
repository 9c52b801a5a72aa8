"""How big a model is: parameters and forward GFLOPs, counted without running it for real.

The FLOPs come from torch's own counter (``torch.utils.flop_counter``: a multiply-add is
2 FLOPs), on the ``meta`` device where possible, so listing dozens of models allocates no
weights and computes nothing; a model whose forward needs real values (e.g. a ``.item()``
inside, as in SegFormer's encoder) is counted on the CPU instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["forward_gflops", "measure", "meta_first"]

T = TypeVar("T")


def meta_first(fn: Callable[[], T]) -> T:
    """``fn()`` on the meta device, where building a model allocates no weights and a
    forward pass computes nothing; again on the CPU when it needs real tensors (SegFormer's
    mit encoders call ``.item()`` while being built)."""
    try:
        with torch.device("meta"):
            return fn()
    except (RuntimeError, NotImplementedError, ValueError):
        return fn()


def forward_gflops(model: nn.Module, size: int = 256, in_channels: int = 3) -> float:
    """GFLOPs of one forward pass of one ``in_channels x size x size`` image (model as is)."""
    device = next(model.parameters()).device
    counter = FlopCounterMode(display=False)
    was_training = model.training
    model.eval()
    try:
        with counter, torch.no_grad():
            model(torch.zeros(1, in_channels, size, size, device=device))
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 1e9


def measure(
    build: Callable[[], nn.Module], size: int = 256, in_channels: int = 3
) -> tuple[int, float]:
    """(parameters, GFLOPs at size x size) of the model ``build()`` makes."""

    def count() -> tuple[int, float]:
        model = build()
        return _parameters(model), forward_gflops(model, size, in_channels)

    return meta_first(count)


def _parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
