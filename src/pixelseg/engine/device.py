"""Choosing the device and seeding every random generator pixelseg uses."""

from __future__ import annotations

import random

import numpy as np
import torch

from pixelseg.errors import SettingsError


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else the CPU; an unavailable CUDA is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SettingsError(f"device {device!r} requested but CUDA is not available")
    try:
        return torch.device(device)
    except RuntimeError:
        raise SettingsError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
