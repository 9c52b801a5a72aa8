"""The optimizer: AdamW, in torch's fused kernel where the parameters' device has one.

``torch.optim.AdamW(params)`` updates the weights with a handful of multi-tensor
("foreach") operations, each a pass over every parameter and its two moments. The fused
kernel (CPU and CUDA from torch 2.4) does the whole update in one pass: the same
arithmetic, a fraction of the memory traffic. On a 24M-parameter U-Net-ResNet34 it halves
the optimizer step on a 2-core CPU (35 ms to 19 ms), ~5% of a training step at 128x128.
Older torch, or a device without the kernel, gets the foreach implementation.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

_KERNEL_OPTIONS = ("fused", "foreach")


def adamw(params: Iterable[Any], lr: float = 1e-3, weight_decay: float = 1e-2) -> torch.optim.AdamW:
    """AdamW over ``params`` (tensors or parameter groups), fused where torch can."""
    params = list(params)
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    except RuntimeError:  # "fused=True requires ... tensors of supported devices"
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """``optimizer.load_state_dict(state)``, keeping the kernel this optimizer was built
    with: torch restores the saved groups' ``fused``/``foreach`` flags too, which would
    ask for a fused kernel the device lacks (a run resumed elsewhere) or turn it off (a run
    saved before pixelseg fused its optimizer)."""
    kernels = [{k: group.get(k) for k in _KERNEL_OPTIONS} for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, kernel in zip(optimizer.param_groups, kernels, strict=True):
        group.update(kernel)
