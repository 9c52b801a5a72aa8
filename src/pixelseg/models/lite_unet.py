"""``lite-unet``: a U-Net decoder on a light ImageNet encoder (EfficientNet-Lite0 by default).

Built as segmentation_models.pytorch builds its ``Unet``: the encoder returns feature maps
at strides 2 to 32 (:meth:`EfficientNetLite.features`); each decoder stage upsamples 2x,
concatenates the encoder's map of that resolution and applies two 3x3 conv-BN-ReLU; a last
stage upsamples to the input's resolution and a 3x3 conv gives the logits.

What makes it the default for photos is the encoder's ImageNet weights: it knows edges,
textures, faces and cars before it sees the first mask (see :mod:`pixelseg.models.weights`
for where they come from). The model describes its encoder for the training engine:
``encoder``, :meth:`load_encoder_weights` and :meth:`encoder_normalization`.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pixelseg.config import LITE_DEFAULT_ENCODER
from pixelseg.models._padding import crop_padding, pad_to_multiple
from pixelseg.models.efficientnet import ENCODERS, EfficientNetLite
from pixelseg.models.pretrained import freeze_module
from pixelseg.models.registry import ModelError, register_model
from pixelseg.models.weights import find_imagenet_weights, read_encoder_state, weights_hint

__all__ = ["LiteUNet"]

DEFAULT_ENCODER = LITE_DEFAULT_ENCODER
# decoder channels from the deepest stage (stride 16) to the full resolution (stride 1):
# narrower than smp's (256, 128, 64, 32, 16), since on a CPU the decoder's full-resolution
# convolutions cost more than the whole encoder
DECODER_CHANNELS = (128, 64, 48, 32, 16)
# lite-unet-fast's decoder: narrow, depthwise-separable, stopping at stride 4. At 256x256
# on ONNX Runtime (2-core CPU) 0.40x the default decoder's time: 7.9 against 20.0 ms
# (benchmarks/fast_models.py; docs/benchmarks.md for what each part buys and costs)
FAST_DECODER = {"decoder_channels": (64, 32, 24), "separable": True, "output_stride": 4}


def _conv_bn_relu(cin: int, cout: int, separable: bool = False) -> list[nn.Module]:
    if separable:  # depthwise 3x3, then pointwise 1x1 (MobileNet's block): ~8x fewer FLOPs
        return [
            nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False), nn.BatchNorm2d(cin),
            nn.ReLU(True), nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU(True),
        ]  # fmt: skip
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]


class DecoderStage(nn.Module):
    """Upsample 2x, concatenate the skip (if any), two conv-BN-ReLU."""

    def __init__(self, cin: int, skip: int, cout: int, separable: bool = False) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            *_conv_bn_relu(cin + skip, cout, separable), *_conv_bn_relu(cout, cout, separable)
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        if skip is not None:
            x = torch.cat((x, skip), dim=1)
        return self.conv(x)


class LiteUNet(nn.Module):
    """U-Net on an EfficientNet-Lite encoder; (N, num_classes, H, W) logits for any H x W.

    Args:
        in_channels: 3 for RGB, 1 for greyscale.
        num_classes: output channels (1 for binary segmentation).
        encoder: ``tf_efficientnet_lite0`` (Google's weights, in the ``weights`` extra),
            ``efficientnet_lite0`` (timm's), or the larger ``tf_efficientnet_lite1`` and
            ``tf_efficientnet_lite2`` (Google's, each in a package of its own).
        decoder_channels: channels of the decoder stages, deepest first (five with
            ``output_stride`` 1, one fewer for each halving of the output).
        separable: depthwise-separable decoder convolutions (a fast model's: see
            docs/models.md for what each option buys on a CPU).
        output_stride: 1 (logits from a full-resolution decoder), 2 or 4 (the decoder stops
            there and the logits are upsampled bilinearly: the full-resolution stages cost
            the most and add least for objects larger than a few pixels).
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 1,
        encoder: str = DEFAULT_ENCODER,
        decoder_channels: tuple[int, ...] | list[int] = DECODER_CHANNELS,
        separable: bool = False,
        output_stride: int = 1,
    ) -> None:
        super().__init__()
        if output_stride not in (1, 2, 4):
            raise ModelError(f"output_stride must be 1, 2 or 4, got {output_stride!r}")
        if encoder not in ENCODERS:
            raise ModelError(f"unknown encoder '{encoder}' for lite-unet; encoders: "
                             f"{', '.join(ENCODERS)}")  # fmt: skip
        decoder_channels = tuple(decoder_channels)
        stages = {1: 5, 2: 4, 4: 3}[output_stride]
        if output_stride != 1 and decoder_channels == DECODER_CHANNELS:
            decoder_channels = DECODER_CHANNELS[:stages]
        if len(decoder_channels) != stages or min(decoder_channels) < 1:
            raise ModelError(
                f"decoder_channels must be {stages} channel counts >= 1 with output_stride "
                f"{output_stride}, got {decoder_channels!r}"
            )
        self.output_stride = output_stride
        self.in_channels = in_channels
        self.encoder_name = encoder
        self.encoder = EfficientNetLite(encoder, in_channels)
        self.stride = self.encoder.stride
        skips = self.encoder.out_channels[-2::-1] + (0,)  # strides 16, 8, 4, 2, then none
        cin = self.encoder.out_channels[-1]
        decoder = []
        for skip, cout in zip(skips[:stages], decoder_channels, strict=True):
            decoder.append(DecoderStage(cin, skip, cout, separable))
            cin = cout
        self.decoder = nn.ModuleList(decoder)
        self.head = nn.Conv2d(cin, num_classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, padding = pad_to_multiple(x, self.stride)
        features = self.encoder.features(x)
        x = features[-1]
        skips = [*features[-2::-1], None][: len(self.decoder)]
        for stage, skip in zip(self.decoder, skips, strict=True):
            x = stage(x, skip)
        x = self.head(x)
        if self.output_stride > 1:
            x = F.interpolate(x, scale_factor=float(self.output_stride), mode="bilinear")
        return crop_padding(x, padding)

    @property
    def encoder_channels(self) -> tuple[int, ...]:
        return tuple(self.encoder.out_channels)

    def freeze_encoder(self, frozen: bool = True) -> None:
        freeze_module(self.encoder, frozen)

    def default_encoder_weights(self) -> str:
        return "imagenet" if find_imagenet_weights(self.encoder_name) else "none"

    def load_encoder_weights(self, weights: str) -> str:
        """Load ``imagenet`` (found locally) or a file into the encoder; returns the file.

        Raises ModelError when no weights are found or the file does not fit the encoder.
        """
        path = Path(weights) if weights != "imagenet" else find_imagenet_weights(self.encoder_name)
        if path is None:
            raise ModelError(f"no ImageNet weights for {self.encoder_name} on this machine: "
                             f"{weights_hint(self.encoder_name)}")  # fmt: skip
        if not path.is_file():
            raise ModelError(f"{path}: encoder weights file not found")
        state = read_encoder_state(path)
        first = state.get("conv_stem.weight")
        if first is not None and self.in_channels != first.shape[1]:
            if self.in_channels != 1:
                raise ModelError(f"{path}: weights for {first.shape[1]} input channels, the "
                                 f"model has {self.in_channels}")  # fmt: skip
            # greyscale: a grey pixel g is the colour (g, g, g), seen by the RGB filters as
            # their sum over colours (what smp does)
            state["conv_stem.weight"] = first.sum(dim=1, keepdim=True)
        try:
            result = self.encoder.load_state_dict(state, strict=False)
        except RuntimeError as error:  # shapes that differ: torch lists each one
            mismatches = [line.strip() for line in str(error).splitlines()[1:]]
            raise ModelError(
                f"{path}: does not fit {self.encoder_name}: {'; '.join(mismatches[:3])}"
            ) from None
        if result.missing_keys or result.unexpected_keys:
            raise ModelError(
                f"{path}: does not fit {self.encoder_name}: "
                + _keys("missing", result.missing_keys)
                + _keys("unexpected", result.unexpected_keys)
            )
        return str(path)

    def encoder_normalization(self, weights: str) -> tuple[list[float], list[float]] | None:
        """(mean, std) per input channel that pretrained weights expect; None without."""
        if weights == "none":
            return None
        spec = ENCODERS[self.encoder_name]
        if self.in_channels == 1:  # the filters were summed: one channel, average statistics
            return [sum(spec.mean) / 3], [sum(spec.std) / 3]
        return list(spec.mean), list(spec.std)


def _keys(what: str, keys: list[str]) -> str:
    if not keys:
        return ""
    more = f" and {len(keys) - 5} more" if len(keys) > 5 else ""
    return f"{what} {', '.join(keys[:5])}{more}; "


# channels_last in float32 on a CPU: 1.32x (192x256, batch 8; depthwise convs gain most)
@register_model(
    "lite-unet",
    prefers_channels_last=True,
    description="U-Net decoder on an EfficientNet-Lite0 encoder (ImageNet weights, pretrained "
    "by default when installed; --encoder tf_efficientnet_lite1/2 for larger ones)",
)
def lite_unet(
    in_channels: int = 3,
    num_classes: int = 1,
    encoder: str = DEFAULT_ENCODER,
    decoder_channels: tuple[int, ...] | list[int] = DECODER_CHANNELS,
    separable: bool = False,
    output_stride: int = 1,
) -> LiteUNet:
    return LiteUNet(in_channels, num_classes, encoder, decoder_channels, separable, output_stride)


@register_model(
    "lite-unet-fast",
    prefers_channels_last=True,
    description="lite-unet with a light decoder (depthwise-separable, to stride 4): for "
    "real time, about 0.4x lite-unet's time (train --latency picks it)",
)
def lite_unet_fast(
    in_channels: int = 3, num_classes: int = 1, encoder: str = DEFAULT_ENCODER
) -> LiteUNet:
    return LiteUNet(in_channels, num_classes, encoder, **FAST_DECODER)
