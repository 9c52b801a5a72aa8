"""The run folder on disk: weights, config and resumable training state.

- ``model.safetensors``: the best weights (no pickle: safe to load from anyone).
- ``config.json``: everything needed to rebuild the model and its preprocessing.
- ``last.pt``: optimizer/scheduler/RNG state for ``--resume``; loaded with
  ``weights_only=True`` so it can hold tensors and plain containers only.

Every file is written atomically (:mod:`pixelseg.files`), so a crash or a full disk never
leaves a half-written checkpoint in place of a good one.
"""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from pixelseg.errors import PixelsegError
from pixelseg.files import write_bytes
from pixelseg.models import create_model

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "last.pt"
# what every reader of a run folder needs (engine/train.py's run_config writes them all)
REQUIRED_KEYS = ("model", "in_channels", "num_classes", "size", "mean", "std")
DAMAGED = "the run folder is damaged, or was not written by pixelseg train"


def save_weights(run_dir: str | Path, model: torch.nn.Module) -> Path:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    data = safetensors_bytes(state)
    return write_bytes(Path(run_dir) / WEIGHTS_FILE, data)


def read_config(run_dir: str | Path) -> dict:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise PixelsegError(f"{run_dir}: not a pixelseg run folder (no {CONFIG_FILE})")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PixelsegError(f"{path}: invalid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise PixelsegError(f"{path}: a JSON object was expected; {DAMAGED}")
    missing = [key for key in REQUIRED_KEYS if key not in config]
    if missing:
        raise PixelsegError(f"{path}: no {', '.join(missing)}; {DAMAGED}")
    return config


def build_model(config: dict) -> torch.nn.Module:
    """The (untrained) model a run's config describes."""
    return create_model(
        config["model"],
        in_channels=config["in_channels"],
        num_classes=config["num_classes"],
        **config.get("model_kwargs", {}),
    )


def load_model(
    run_dir: str | Path, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, dict]:
    """Rebuild a run's model from ``config.json`` and ``model.safetensors``, in eval mode.

    A damaged run folder (a truncated weights file, weights of another model, a config that
    describes no model) raises :class:`PixelsegError` naming the file."""
    config = read_config(run_dir)
    weights = Path(run_dir) / WEIGHTS_FILE
    if not weights.is_file():
        raise PixelsegError(f"{run_dir}: no {WEIGHTS_FILE} (did training finish an epoch?)")
    try:
        model = build_model(config)
    except (ValueError, TypeError) as exc:  # unknown model or options
        raise PixelsegError(f"{Path(run_dir) / CONFIG_FILE}: {exc}") from None
    try:
        state = load_file(str(weights), device="cpu")
    except SafetensorError as exc:
        raise PixelsegError(f"{weights}: unreadable, truncated or not weights ({exc})") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:  # missing, unexpected or misshapen tensors
        first = str(exc).strip().splitlines()[0].rstrip(":. ")
        detail = " ".join(line.strip() for line in str(exc).splitlines()[1:3])
        raise PixelsegError(
            f"{weights}: these weights do not fit the {config['model']} that {CONFIG_FILE} "
            f"describes ({first}: {detail[:300]})"
        ) from None
    return model.to(device).eval(), config


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
