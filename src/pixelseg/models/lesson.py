"""The two models of the "Segmentation" lesson, layer for layer.

Source: Microsoft AI-For-Beginners, lesson "Segmentation"
(``SemanticSegmentationPytorch.ipynb``). Attribute names mirror the notebook
(``enc_conv0``, ``act0``, ``bn0``, ``pool0``, ..., ``bottleneck_conv``, ``upsample0``,
``dec_conv0``, ``dec_act0``, ``dec_bn0``, ...) so a learner can put the two side by side;
with 3 input channels and 1 class the parameter counts match the notebook exactly
(SegNet 780,865, U-Net 974,417).

Deliberate differences, all of which keep the learned function the same or fix a bug:

* No final ``nn.Sigmoid()``. The notebook applies a sigmoid and then trains with
  ``BCEWithLogitsLoss``, which applies another one (a double sigmoid: outputs squeezed
  into (0.5, 0.73), weak gradients). These models return raw logits, as every pixelseg
  loss expects.
* Inputs of any size: padded to a multiple of 16 and the logits cropped back (the
  notebook only works when H and W are multiples of 16).
* Both models accept ``in_channels`` and ``num_classes`` (the notebook fixes 3 and 1).

As in the notebook, each encoder stage is Conv -> ReLU -> BatchNorm (BN *after* the
activation, unusual but faithful) and the bottleneck is a bare conv without activation.
"""

from __future__ import annotations

import torch
from torch import nn

from pixelseg.models._padding import crop_padding, pad_to_multiple
from pixelseg.models.registry import register_model

__all__ = ["LessonSegNet", "LessonUNet"]


class _LessonEncoder(nn.Module):
    """Encoder and bottleneck shared by both lesson models (identical in the notebook)."""

    # Four 2x poolings, so H and W must be multiples of 16 inside the network.
    stride: int = 16

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.enc_conv0 = nn.Conv2d(in_channels, 16, kernel_size=3, padding=1)
        self.act0 = nn.ReLU()
        self.bn0 = nn.BatchNorm2d(16)
        self.pool0 = nn.MaxPool2d(kernel_size=2)

        self.enc_conv1 = nn.Conv2d(16, 32, kernel_size=3, padding=1)
        self.act1 = nn.ReLU()
        self.bn1 = nn.BatchNorm2d(32)
        self.pool1 = nn.MaxPool2d(kernel_size=2)

        self.enc_conv2 = nn.Conv2d(32, 64, kernel_size=3, padding=1)
        self.act2 = nn.ReLU()
        self.bn2 = nn.BatchNorm2d(64)
        self.pool2 = nn.MaxPool2d(kernel_size=2)

        self.enc_conv3 = nn.Conv2d(64, 128, kernel_size=3, padding=1)
        self.act3 = nn.ReLU()
        self.bn3 = nn.BatchNorm2d(128)
        self.pool3 = nn.MaxPool2d(kernel_size=2)

        # No activation or BN after the bottleneck conv: that is how the lesson has it.
        self.bottleneck_conv = nn.Conv2d(128, 256, kernel_size=3, padding=1)

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Return the bottleneck output and each stage's features *before* pooling.

        The notebook's U-Net forward runs every encoder conv twice, once for the pooled
        path and once more for the skip tensor. Computing each once and keeping the
        pre-pool tensor gives the same outputs at half the encoder cost. (In training
        mode the notebook's version also updates each BatchNorm's running statistics
        twice per batch, so its eval-mode statistics drift slightly faster than ours.)
        """
        s0 = self.bn0(self.act0(self.enc_conv0(x)))
        s1 = self.bn1(self.act1(self.enc_conv1(self.pool0(s0))))
        s2 = self.bn2(self.act2(self.enc_conv2(self.pool1(s1))))
        s3 = self.bn3(self.act3(self.enc_conv3(self.pool2(s2))))
        b = self.bottleneck_conv(self.pool3(s3))
        return b, [s0, s1, s2, s3]


class LessonSegNet(_LessonEncoder):
    """The lesson's SegNet-style encoder-decoder (no skip connections).

    Returns raw logits of shape (N, num_classes, H, W) -- the lesson's final
    ``nn.Sigmoid()`` is left out because the loss (``BCEWithLogitsLoss``) applies the
    sigmoid itself; keeping both would be a double sigmoid.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 1) -> None:
        super().__init__(in_channels)
        # UpsamplingBilinear2d is bilinear with align_corners=True, as in the lesson.
        self.upsample0 = nn.UpsamplingBilinear2d(scale_factor=2)
        self.dec_conv0 = nn.Conv2d(256, 128, kernel_size=3, padding=1)
        self.dec_act0 = nn.ReLU()
        self.dec_bn0 = nn.BatchNorm2d(128)

        self.upsample1 = nn.UpsamplingBilinear2d(scale_factor=2)
        self.dec_conv1 = nn.Conv2d(128, 64, kernel_size=3, padding=1)
        self.dec_act1 = nn.ReLU()
        self.dec_bn1 = nn.BatchNorm2d(64)

        self.upsample2 = nn.UpsamplingBilinear2d(scale_factor=2)
        self.dec_conv2 = nn.Conv2d(64, 32, kernel_size=3, padding=1)
        self.dec_act2 = nn.ReLU()
        self.dec_bn2 = nn.BatchNorm2d(32)

        self.upsample3 = nn.UpsamplingBilinear2d(scale_factor=2)
        self.dec_conv3 = nn.Conv2d(32, num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, padding = pad_to_multiple(x, self.stride)
        b, _ = self._encode(x)
        d0 = self.dec_bn0(self.dec_act0(self.dec_conv0(self.upsample0(b))))
        d1 = self.dec_bn1(self.dec_act1(self.dec_conv1(self.upsample1(d0))))
        d2 = self.dec_bn2(self.dec_act2(self.dec_conv2(self.upsample2(d1))))
        logits = self.dec_conv3(self.upsample3(d2))
        return crop_padding(logits, padding)


class LessonUNet(_LessonEncoder):
    """The lesson's U-Net: the SegNet above plus skip connections.

    After each upsample the decoder concatenates (upsampled, skip), where the skip is
    the matching encoder stage's output before pooling; hence decoder input channels
    384 = 256 + 128, 192 = 128 + 64, 96 = 64 + 32 and 48 = 32 + 16.

    Returns raw logits of shape (N, num_classes, H, W) -- no final sigmoid, unlike the
    lesson, whose sigmoid followed by ``BCEWithLogitsLoss`` is a double sigmoid.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 1) -> None:
        super().__init__(in_channels)
        self.upsample0 = nn.UpsamplingBilinear2d(scale_factor=2)
        self.dec_conv0 = nn.Conv2d(256 + 128, 128, kernel_size=3, padding=1)
        self.dec_act0 = nn.ReLU()
        self.dec_bn0 = nn.BatchNorm2d(128)

        self.upsample1 = nn.UpsamplingBilinear2d(scale_factor=2)
        self.dec_conv1 = nn.Conv2d(128 + 64, 64, kernel_size=3, padding=1)
        self.dec_act1 = nn.ReLU()
        self.dec_bn1 = nn.BatchNorm2d(64)

        self.upsample2 = nn.UpsamplingBilinear2d(scale_factor=2)
        self.dec_conv2 = nn.Conv2d(64 + 32, 32, kernel_size=3, padding=1)
        self.dec_act2 = nn.ReLU()
        self.dec_bn2 = nn.BatchNorm2d(32)

        self.upsample3 = nn.UpsamplingBilinear2d(scale_factor=2)
        self.dec_conv3 = nn.Conv2d(32 + 16, num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, padding = pad_to_multiple(x, self.stride)
        b, (s0, s1, s2, s3) = self._encode(x)
        d0 = self.dec_bn0(self.dec_act0(self.dec_conv0(torch.cat((self.upsample0(b), s3), 1))))
        d1 = self.dec_bn1(self.dec_act1(self.dec_conv1(torch.cat((self.upsample1(d0), s2), 1))))
        d2 = self.dec_bn2(self.dec_act2(self.dec_conv2(torch.cat((self.upsample2(d1), s1), 1))))
        logits = self.dec_conv3(torch.cat((self.upsample3(d2), s0), 1))
        return crop_padding(logits, padding)


@register_model(
    "lesson-segnet",
    description="SegNet-style encoder-decoder from the AI-For-Beginners segmentation lesson",
    prefers_channels_last=True,  # float32 on a CPU: 1.61x at 128x128
)
def lesson_segnet(in_channels: int = 3, num_classes: int = 1) -> LessonSegNet:
    return LessonSegNet(in_channels=in_channels, num_classes=num_classes)


@register_model(
    "lesson-unet",
    description="U-Net from the AI-For-Beginners segmentation lesson (skip connections)",
    prefers_channels_last=True,  # float32 on a CPU: 1.24-1.36x
)
def lesson_unet(in_channels: int = 3, num_classes: int = 1) -> LessonUNet:
    return LessonUNet(in_channels=in_channels, num_classes=num_classes)
