"""A trained model in a run folder: ``model.safetensors`` with the ``config.json`` that
describes it (:class:`pixelseg.runconfig.RunConfig`).

The weights are safetensors (no pickle: safe to load from anyone) and written atomically
(:mod:`pixelseg.files`), so a crash never leaves half a file in place of a good one.
Training saves them; evaluation, the predictors and export load them from here.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from pixelseg.errors import PixelsegError
from pixelseg.files import write_bytes
from pixelseg.models.ensemble import ENSEMBLE, Ensemble
from pixelseg.models.registry import create_model
from pixelseg.runconfig import CONFIG_FILE, RunConfig

WEIGHTS_FILE = "model.safetensors"

__all__ = ["WEIGHTS_FILE", "build_model", "load_model", "save_weights"]


def save_weights(run_dir: str | Path, model: torch.nn.Module) -> Path:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return write_bytes(Path(run_dir) / WEIGHTS_FILE, safetensors_bytes(state))


def build_model(config: RunConfig) -> torch.nn.Module:
    """The (untrained) model a run's config describes; for an ensemble, its members'."""
    if config.model == ENSEMBLE:
        members = config.model_kwargs.get("members") or []
        keys = ("model", "model_kwargs", "mean", "std")
        for m in members:
            if not isinstance(m, dict) or any(k not in m for k in keys):
                raise ValueError(f"an ensemble member needs {', '.join(keys)}; got {m!r:.200}")
        return Ensemble(
            [build_model(config.replace(model=m["model"], model_kwargs=m["model_kwargs"]))
             for m in members],
            [m["mean"] for m in members], [m["std"] for m in members],
        )  # fmt: skip
    return create_model(
        config.model, in_channels=config.in_channels, num_classes=config.num_classes,
        **config.model_kwargs,
    )  # fmt: skip


def load_model(
    run_dir: str | Path, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, RunConfig]:
    """Rebuild a run's model from ``config.json`` and ``model.safetensors``, in eval mode.

    A damaged run folder (a truncated weights file, weights of another model, a config that
    describes no model) raises :class:`PixelsegError` naming the file."""
    config = RunConfig.read(run_dir)
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
            f"{weights}: these weights do not fit the {config.model} that {CONFIG_FILE} "
            f"describes ({first}: {detail[:300]})"
        ) from None
    return model.to(device).eval(), config
