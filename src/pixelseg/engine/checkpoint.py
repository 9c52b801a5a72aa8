"""The resumable training state of a run folder: ``last.pt``.

``last.pt`` holds the optimizer, scheduler and RNG state for ``--resume``; it is loaded with
``weights_only=True`` so it can hold tensors and plain containers only, and written
atomically (:mod:`pixelseg.files`), so a crash or a full disk never leaves a half-written
checkpoint in place of a good one. The best weights and the config that describes them are
:mod:`pixelseg.models.saved` and :mod:`pixelseg.runconfig`.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import torch

from pixelseg.errors import PixelsegError
from pixelseg.files import write_bytes
from pixelseg.runconfig import DAMAGED

STATE_FILE = "last.pt"


def save_state(run_dir: str | Path, state: dict) -> Path:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    return write_bytes(Path(run_dir) / STATE_FILE, data)


def load_state(run_dir: str | Path) -> dict | None:
    path = Path(run_dir) / STATE_FILE
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0][:200]
        raise PixelsegError(f"{path}: unreadable, truncated or damaged ({reason})") from None
    if not isinstance(state, dict) or "config" not in state or "model" not in state:
        raise PixelsegError(f"{path}: not a pixelseg training state; {DAMAGED}")
    return state
