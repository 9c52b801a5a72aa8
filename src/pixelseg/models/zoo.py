"""Architectures from segmentation-models-pytorch, registered as ``smp-<architecture>``.

pixelseg does not re-implement U-Net++, DeepLabV3+ or SegFormer: the ``zoo`` extra
(``pip install "pixelseg[zoo]"``) brings segmentation-models-pytorch (smp) and timm, and
this module puts their architectures in pixelseg's registry. Each takes an encoder by
name (``encoder="resnet34"``, any smp encoder or ``tu-<timm model>``) and smp's own
keyword arguments (``--model-arg decoder_attention_type=scse``).

The models are built with random weights; pretrained encoder weights are loaded
separately by :mod:`pixelseg.models.encoders` when a run starts, so a saved run reloads
from its own files without a network. Like the native models, a zoo model takes any
H x W: the input is padded to the encoder's stride and the logits cropped back.
"""

from __future__ import annotations

import inspect
from types import ModuleType
from typing import Any

import torch
from torch import nn

from pixelseg.config import ZOO_DEFAULT_ENCODER
from pixelseg.models._padding import crop_padding, pad_to_multiple
from pixelseg.models.pretrained import freeze_module
from pixelseg.models.registry import ModelError, register_model

__all__ = ["ARCHITECTURES", "DEFAULT_ENCODER", "INSTALL_HINT", "ZooModel", "import_smp"]

# pixelseg name (after "smp-") -> smp class name
ARCHITECTURES = {
    "unet": "Unet",
    "unetplusplus": "UnetPlusPlus",
    "fpn": "FPN",
    "pspnet": "PSPNet",
    "deeplabv3": "DeepLabV3",
    "deeplabv3plus": "DeepLabV3Plus",
    "linknet": "Linknet",
    "manet": "MAnet",
    "pan": "PAN",
    "upernet": "UPerNet",
    "segformer": "Segformer",
}
# smallest input side an architecture works with (PAN pools its stride-16 features 3 times)
MIN_SIZE = {"pan": 128}
DEFAULT_ENCODER = ZOO_DEFAULT_ENCODER
# smp needs torchvision, and on PyPI torchvision only imports beside the torch it was built
# for: naming both keeps pip from pairing the installed torch with a mismatched torchvision.
INSTALL_HINT = (
    'pip install torch==2.14.1 torchvision==0.29.1 "pixelseg[zoo]" '
    "(segmentation-models-pytorch and timm)"
)


def import_smp() -> ModuleType:
    """segmentation_models_pytorch, or a ModelError that says how to install it."""
    try:
        import segmentation_models_pytorch as smp
    except ImportError as error:
        raise ModelError(
            f"the smp-* models need the zoo extra, which is not installed ({error}). "
            f"Install it with: {INSTALL_HINT}"
        ) from None
    return smp


def check_encoder(name: str) -> None:
    """Raise a ModelError naming the valid choices when ``name`` is no encoder smp knows."""
    smp = import_smp()
    if name.startswith("tu-"):
        import timm

        if not timm.is_model(name[3:]):
            raise ModelError(
                f"unknown timm encoder '{name}': '{name[3:]}' is not a timm model "
                "(see timm.list_models(), e.g. tu-resnet18, tu-convnext_tiny)"
            )
        return
    known = smp.encoders.get_encoder_names()
    if name not in known:
        raise ModelError(
            f"unknown encoder '{name}'. Encoders: {', '.join(known)}; "
            "or any timm model as tu-<name> (e.g. tu-convnext_tiny)"
        )


class ZooModel(nn.Module):
    """An smp model that, like the native ones, takes any H x W and returns its logits.

    ``stride`` is what smp needs input sides to be multiples of (its encoder's output
    stride); ``encoder`` is smp's encoder module, for pretrained weights and per-part
    learning rates.
    """

    def __init__(self, net: nn.Module, architecture: str, encoder_name: str) -> None:
        super().__init__()
        self.net = net
        self.architecture = architecture
        self.encoder_name = encoder_name
        divisible = getattr(net, "requires_divisible_input_shape", True)
        self.stride = int(net.encoder.output_stride) if divisible else 1
        self.min_size = MIN_SIZE.get(architecture, 0)
        first_conv = next(m for m in net.modules() if isinstance(m, nn.Conv2d))
        self.in_channels = int(first_conv.in_channels)
        for param in _unused_parameters(net, self.in_channels, max(self.min_size, 64)):
            param.requires_grad_(False)

    @property
    def encoder(self) -> nn.Module:
        return self.net.encoder

    @property
    def encoder_channels(self) -> tuple[int, ...]:
        return tuple(self.net.encoder.out_channels)

    def freeze_encoder(self, frozen: bool = True) -> None:
        freeze_module(self.encoder, frozen)

    def default_encoder_weights(self) -> str:
        # smp fetches its weights from the hub: never without being asked
        return "none"

    def load_encoder_weights(self, weights: str) -> str:
        from pixelseg.models.encoders import load_encoder_weights

        load_encoder_weights(self, weights)
        return weights

    def encoder_normalization(self, weights: str) -> tuple[list[float], list[float]] | None:
        from pixelseg.models.encoders import encoder_normalization

        return encoder_normalization(self.encoder_name, weights, self.in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, padding = pad_to_multiple(x, self.stride, self.min_size)
        return crop_padding(self.net(x), padding)


def _unused_parameters(net: nn.Module, in_channels: int, side: int) -> list[nn.Parameter]:
    """Parameters no output depends on: smp keeps an encoder's deeper stages even when the
    architecture uses fewer (PSPNet stops at stride 8). Left trainable, they would get no
    gradient, which DistributedDataParallel refuses; they are found by one small backward
    pass (in eval mode, so no batch-norm statistic moves)."""
    was_training = net.training
    net.eval()
    try:
        # the model may be built inside torch.no_grad() or torch.inference_mode()
        with torch.inference_mode(False), torch.enable_grad():
            net(torch.zeros(1, in_channels, side, side)).sum().backward()
        return [p for p in net.parameters() if p.requires_grad and p.grad is None]
    finally:
        net.zero_grad(set_to_none=True)
        net.train(was_training)


def _check_options(architecture: str, cls: type, encoder: str, options: dict[str, Any]) -> None:
    """smp passes unknown keyword arguments on to the encoder, where all but timm's ignore
    them: a misspelt option would silently do nothing, so refuse it here."""
    params = inspect.signature(cls.__init__).parameters
    own = {"self", "encoder_name", "encoder_weights", "in_channels", "classes", "aux_params"}
    accepted = sorted(
        name for name, p in params.items() if name not in own and p.kind is not p.VAR_KEYWORD
    )
    unknown = sorted(set(options) - set(accepted))
    if unknown and not encoder.startswith("tu-"):  # timm encoders take options of their own
        raise ModelError(
            f"smp-{architecture} with encoder {encoder}: unknown option(s) {', '.join(unknown)}; "
            f"options: {', '.join(accepted)}"
        )


def _builder(architecture: str) -> Any:
    class_name = ARCHITECTURES[architecture]

    def build(
        in_channels: int = 3, num_classes: int = 1, encoder: str = DEFAULT_ENCODER, **options: Any
    ) -> ZooModel:
        smp = import_smp()
        if "encoder_weights" in options or "encoder_name" in options:
            raise ModelError(
                "choose the encoder with --encoder NAME and its weights with "
                "--encoder-weights imagenet|none|PATH, not with --model-arg"
            )
        if "aux_params" in options:  # a second output pixelseg's losses do not take
            raise ModelError("aux_params (smp's classification head) is not supported")
        check_encoder(encoder)
        _check_options(architecture, getattr(smp, class_name), encoder, options)
        try:
            net = getattr(smp, class_name)(
                encoder_name=encoder, encoder_weights=None, in_channels=in_channels,
                classes=num_classes, **options,
            )  # fmt: skip
        except (KeyError, ValueError, TypeError, AssertionError, RuntimeError) as error:
            # e.g. an option this architecture does not take, or an encoder it cannot use
            message = error.args[0] if error.args else repr(error)
            raise ModelError(f"smp-{architecture} with encoder {encoder}: {message}") from None
        return ZooModel(net, architecture, encoder)

    build.__name__ = f"smp_{architecture}"
    return build


for _name, _class in ARCHITECTURES.items():
    register_model(
        f"smp-{_name}",
        description=f"{_class} from segmentation-models-pytorch; --encoder (default "
        f"{DEFAULT_ENCODER}), needs the zoo extra",
    )(_builder(_name))
