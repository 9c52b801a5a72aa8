"""Starting from a pretrained encoder: its weights, its input statistics, its learning rate.

A zoo model (``smp-*``) trained with ``encoder_weights`` other than ``none`` starts from
those weights, normalises its input as they were trained, and fine-tunes the encoder
more gently than the new decoder: the encoder's learning rate is ``lr x
encoder_lr_scale`` (0.1 by default when pretrained), and 0 for the first
``freeze_encoder_epochs`` epochs, while the randomly initialised decoder settles and its
large early gradients would otherwise wreck the pretrained features. The batch-norm
statistics of a "frozen" encoder still adapt to the new images (as fastai does), and a
resumed run rebuilds the same schedule from its settings.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from pixelseg.config import TrainConfig
from pixelseg.engine.schedule import Schedule
from pixelseg.models import create_model
from pixelseg.models.registry import ModelError

PRETRAINED_ENCODER_LR_SCALE = 0.1


def is_zoo(model: nn.Module) -> bool:
    from pixelseg.models.zoo import ZooModel

    return isinstance(model, ZooModel)


def check_finetune_settings(cfg: TrainConfig, model: nn.Module, fetch: bool = True) -> None:
    """Refuse encoder settings on a model without a pretrained encoder, and freezing an
    encoder that is not pretrained; with ``fetch``, get the weights now (download, cache or
    file) so that a missing file fails before the data is loaded."""
    asked = (
        cfg.encoder_weights != "none"
        or cfg.freeze_encoder_epochs > 0
        or cfg.encoder_lr_scale is not None
    )
    if asked and not is_zoo(model):
        raise ModelError(
            f"--encoder-weights, --freeze-encoder-epochs and --encoder-lr-scale apply to the "
            f"smp-* models (pretrained encoders); {cfg.model} has none"
        )
    if cfg.freeze_encoder_epochs > 0 and cfg.encoder_weights == "none":
        raise ValueError(
            "--freeze-encoder-epochs keeps a pretrained encoder as loaded; with "
            "--encoder-weights none the encoder is random and must learn"
        )
    if fetch and cfg.encoder_weights != "none":
        fresh = create_model(
            cfg.model, in_channels=cfg.in_channels or 3, num_classes=cfg.num_classes or 1,
            **cfg.model_kwargs,
        )  # fmt: skip
        load_pretrained(fresh, cfg)


def load_pretrained(model: nn.Module, cfg: TrainConfig) -> None:
    """The encoder's pretrained weights, when the settings ask for them."""
    if cfg.encoder_weights != "none":
        from pixelseg.models.encoders import load_encoder_weights

        load_encoder_weights(model, cfg.encoder_weights)


def input_normalization(
    cfg: TrainConfig, in_channels: int
) -> tuple[list[float], list[float]] | None:
    """(mean, std) of the pretraining, or None: use the training images' statistics."""
    if cfg.encoder_weights == "none":
        return None
    from pixelseg.models.encoders import encoder_normalization
    from pixelseg.models.zoo import DEFAULT_ENCODER

    encoder = cfg.model_kwargs.get("encoder", DEFAULT_ENCODER)
    return encoder_normalization(encoder, cfg.encoder_weights, in_channels)


def encoder_lr_scale(cfg: TrainConfig) -> float:
    if cfg.encoder_lr_scale is not None:
        return cfg.encoder_lr_scale
    return PRETRAINED_ENCODER_LR_SCALE if cfg.encoder_weights != "none" else 1.0


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """The optimizer's groups: everything else first (its rate is the one reported), then
    a zoo model's encoder at its own rate."""
    if not is_zoo(model):
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
