"""Starting from a pretrained encoder: its weights, its input statistics, its learning rate.

A model with a pretrained encoder (``lite-unet``, the zoo's ``smp-*``; see
:mod:`pixelseg.models.pretrained`) trained with ``encoder_weights`` other than ``none``
starts from those weights, normalises its input as they were trained, and fine-tunes the
encoder more gently than the new decoder: the encoder's learning rate is ``lr x
encoder_lr_scale`` (0.1 by default when pretrained), and 0 for the first
``freeze_encoder_epochs`` epochs, while the randomly initialised decoder settles and its
large early gradients would otherwise wreck the pretrained features. The batch-norm
statistics of a "frozen" encoder still adapt to the new images (as fastai does), and a
resumed run rebuilds the same schedule from its settings.

``encoder_weights="auto"`` is what the model says it can start from without a download
(lite-unet: its ImageNet weights when installed); it is decided once, when a run starts.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from pixelseg.config import TrainConfig
from pixelseg.engine.schedule import Schedule
from pixelseg.errors import SettingsError
from pixelseg.models import create_model
from pixelseg.models.complexity import meta_first
from pixelseg.models.pretrained import has_pretrained_encoder
from pixelseg.models.registry import ModelError

PRETRAINED_ENCODER_LR_SCALE = 0.1


def _build(cfg: TrainConfig, in_channels: int | None = None) -> nn.Module:
    """The model ``cfg`` describes, on the meta device (no weights allocated)."""
    return meta_first(
        lambda: create_model(
            cfg.model, in_channels=in_channels or cfg.in_channels or 3,
            num_classes=cfg.num_classes or 1, **cfg.model_kwargs,
        )
    )  # fmt: skip


def resolve_encoder_weights(cfg: TrainConfig) -> TrainConfig:
    """``auto`` becomes what the model can start from here (``none`` without an encoder)."""
    if cfg.encoder_weights != "auto":
        return cfg
    model = _build(cfg)
    weights = model.default_encoder_weights() if has_pretrained_encoder(model) else "none"
    return replace(cfg, encoder_weights=weights)


def check_finetune_settings(cfg: TrainConfig, model: nn.Module, fetch: bool = True) -> str | None:
    """Refuse encoder settings on a model without a pretrained encoder, and freezing an
    encoder that is not pretrained; with ``fetch``, get the weights now (download, cache or
    file) so that a missing file fails before the data is loaded, and return where they
    came from."""
    asked = (
        cfg.encoder_weights not in ("none", "auto")
        or cfg.freeze_encoder_epochs > 0
        or cfg.encoder_lr_scale is not None
    )
    if asked and not has_pretrained_encoder(model):
        raise ModelError(
            f"--encoder-weights, --freeze-encoder-epochs and --encoder-lr-scale apply to the "
            f"smp-* models and lite-unet (models with a pretrained encoder); {cfg.model} has "
            "none"
        )
    if cfg.freeze_encoder_epochs > 0 and cfg.encoder_weights == "none":
        raise SettingsError(
            "--freeze-encoder-epochs keeps a pretrained encoder as loaded; with "
            "--encoder-weights none the encoder is random and must learn"
        )
    if fetch and cfg.encoder_weights not in ("none", "auto"):
        fresh = create_model(
            cfg.model, in_channels=cfg.in_channels or 3, num_classes=cfg.num_classes or 1,
            **cfg.model_kwargs,
        )  # fmt: skip
        return load_pretrained(fresh, cfg)
    return None


def load_pretrained(model: nn.Module, cfg: TrainConfig) -> str | None:
    """The encoder's pretrained weights, when the settings ask for them; returns where
    they came from (None: no pretrained weights)."""
    if cfg.encoder_weights in ("none", "auto") or not has_pretrained_encoder(model):
        return None
    return model.load_encoder_weights(cfg.encoder_weights)


def input_normalization(
    cfg: TrainConfig, in_channels: int
) -> tuple[list[float], list[float]] | None:
    """(mean, std) of the pretraining, or None: use the training images' statistics."""
    if cfg.encoder_weights in ("none", "auto"):
        return None
    model = _build(cfg, in_channels)
    if not has_pretrained_encoder(model):
        return None
    return model.encoder_normalization(cfg.encoder_weights)


def encoder_lr_scale(cfg: TrainConfig) -> float:
    if cfg.encoder_lr_scale is not None:
        return cfg.encoder_lr_scale
    pretrained = cfg.encoder_weights not in ("none", "auto")
    return PRETRAINED_ENCODER_LR_SCALE if pretrained else 1.0


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """The optimizer's groups: everything else first (its rate is the one reported), then
    the encoder of a model that has one at its own rate."""
    if not has_pretrained_encoder(model):
        return [{"params": list(model.parameters())}]
    encoder = {id(p) for p in model.encoder.parameters()}
    rest = [p for p in model.parameters() if id(p) not in encoder]
    return [
        {"params": rest},
        {"params": list(model.encoder.parameters()), "lr": cfg.lr * encoder_lr_scale(cfg)},
    ]


def group_schedules(
    schedule: Schedule, optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int
) -> list[Schedule]:
    """One LR multiplier per optimizer group: the encoder's is 0 while it is frozen."""
    schedules = [schedule]
    if len(optimizer.param_groups) > 1:
        schedules.append(replace(schedule, frozen=cfg.freeze_encoder_epochs * steps_per_epoch))
    return schedules
