"""Segmentation models, created by name: ``create_model("unet", in_channels=3, num_classes=1)``.

Every model maps an (N, in_channels, H, W) batch of any H x W to (N, num_classes, H, W)
logits (no sigmoid/softmax) and exposes ``model.stride``, the multiple that inputs are
padded to internally.
"""

from __future__ import annotations

# Imported for their side effect: registering their models by name.
from pixelseg.models import lesson, lite_unet, unet, zoo  # noqa: F401
from pixelseg.models.lesson import LessonSegNet, LessonUNet
from pixelseg.models.lite_unet import LiteUNet
from pixelseg.models.registry import (
    ModelError,
    count_parameters,
    create_model,
    list_models,
    model_description,
    prefers_channels_last,
    register_model,
)
from pixelseg.models.unet import UNet

__all__ = [
    "LessonSegNet",
    "LessonUNet",
    "LiteUNet",
    "ModelError",
    "UNet",
    "count_parameters",
    "create_model",
    "list_models",
    "model_description",
    "prefers_channels_last",
    "register_model",
]
