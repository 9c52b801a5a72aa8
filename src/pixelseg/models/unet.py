"""pixelseg's default model: a conventional modern U-Net (Ronneberger et al., 2015).

Compared with the lesson's U-Net it uses two convs per stage, Conv -> BN -> ReLU
ordering (BN before the activation, conv without bias since BN's shift replaces it),
same-padding throughout, and configurable width and depth.
"""

from __future__ import annotations

import torch
from torch import nn

from pixelseg.models._padding import crop_padding, pad_to_multiple
from pixelseg.models.registry import ModelError, register_model

__all__ = ["UNet"]

_UPSAMPLE_MODES = ("bilinear", "transpose")


class DoubleConv(nn.Sequential):
    """(Conv3x3 -> BN -> ReLU) x 2, the building block of every U-Net stage."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class Up(nn.Module):
    """Double the resolution, halve the channels, concatenate the skip, DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int, upsample: str) -> None:
        super().__init__()
        if upsample == "bilinear":
            # A 1x1 conv commutes with bilinear interpolation (both are linear and the
            # interpolation weights sum to 1), so reducing channels *before* upsampling
            # computes the same thing on 4x fewer pixels.
            self.up = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1),
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            )
        else:
            self.up = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        self.conv = DoubleConv(2 * out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat((self.up(x), skip), dim=1))


class UNet(nn.Module):
    """U-Net returning (N, num_classes, H, W) logits for inputs of any H x W.

    Args:
        in_channels: channels of the input image.
        num_classes: output channels (1 for binary segmentation).
        base_channels: channels of the first stage; each deeper stage doubles them.
        depth: number of 2x downsamplings. Inputs are padded to a multiple of
            ``stride = 2**depth`` internally and the logits cropped back.
        dropout: ``Dropout2d`` probability at the bottleneck (0 disables it).
        upsample: ``"bilinear"`` (1x1 conv + bilinear, align_corners=False; cheap and
            free of checkerboard artefacts) or ``"transpose"`` (learned 2x2 ConvTranspose).
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 1,
        base_channels: int = 32,
        depth: int = 4,
        dropout: float = 0.0,
        upsample: str = "bilinear",
    ) -> None:
        super().__init__()
        _validate(in_channels, num_classes, base_channels, depth, dropout, upsample)
        self.stride = 2**depth

        channels = [base_channels * 2**i for i in range(depth + 1)]
        self.stem = DoubleConv(in_channels, channels[0])
        # down[i] takes stage i to stage i + 1; the last one is the bottleneck.
        self.down = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(kernel_size=2), DoubleConv(channels[i], channels[i + 1]))
            for i in range(depth)
        )
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        # up[i] goes from stage depth - i back to stage depth - i - 1.
        self.up = nn.ModuleList(
            Up(channels[i + 1], channels[i], upsample) for i in reversed(range(depth))
        )
        self.head = nn.Conv2d(channels[0], num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, padding = pad_to_multiple(x, self.stride)
        x = self.stem(x)
        skips = []
        for down in self.down:
            skips.append(x)
            x = down(x)
        x = self.dropout(x)
        for up, skip in zip(self.up, reversed(skips), strict=True):
            x = up(x, skip)
        return crop_padding(self.head(x), padding)


def _validate(
    in_channels: int,
    num_classes: int,
    base_channels: int,
    depth: int,
    dropout: float,
    upsample: str,
) -> None:
    for name, value in (
        ("in_channels", in_channels),
        ("num_classes", num_classes),
        ("base_channels", base_channels),
        ("depth", depth),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ModelError(f"UNet {name} must be an integer >= 1, got {value!r}.")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)):
        raise ModelError(f"UNet dropout must be a number in [0, 1), got {dropout!r}.")
    if not 0.0 <= dropout < 1.0:
        raise ModelError(f"UNet dropout must be in [0, 1), got {dropout!r}.")
    if upsample not in _UPSAMPLE_MODES:
        raise ModelError(
            f"UNet upsample must be one of {', '.join(_UPSAMPLE_MODES)}; got {upsample!r}."
        )


# channels_last in float32 on a CPU: 1.12-1.34x (benchmarks/precision.py, docs/benchmarks.md)
@register_model(
    "unet",
    description="Modern U-Net (double conv + BN, configurable width/depth)",
    prefers_channels_last=True,
)
def unet(
    in_channels: int = 3,
    num_classes: int = 1,
    base_channels: int = 32,
    depth: int = 4,
    dropout: float = 0.0,
    upsample: str = "bilinear",
) -> UNet:
    return UNet(
        in_channels=in_channels,
        num_classes=num_classes,
        base_channels=base_channels,
        depth=depth,
        dropout=dropout,
        upsample=upsample,
    )
