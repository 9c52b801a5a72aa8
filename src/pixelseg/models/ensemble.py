"""Several trained models as one: the mean of their probabilities.

Models trained apart (other seeds, other encoders) make partly different mistakes, and
averaging their probabilities cancels some of them: on CamVid, two runs of half the time
budget each, averaged, scored above one run of the whole budget (docs/benchmarks.md).

An :class:`Ensemble` is a plain model: its output is logits, the log of the members' mean
probability (softmax over classes; for a binary model the log-odds of the mean sigmoid).
Softmax, argmax and a threshold on those give exactly the mean probability's answers, so
evaluation, prediction, tiling, test-time augmentation, ONNX export and the server treat an
ensemble as any other model. ``pixelseg ensemble`` (:mod:`pixelseg.engine.ensemble`)
makes one from run folders.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["ENSEMBLE", "Ensemble"]

ENSEMBLE = "ensemble"  # the ``model`` of an ensemble's config.json
EPS = 1e-7  # probabilities are kept in [EPS, 1 - EPS]: the logits stay finite


class Ensemble(nn.Module):
    """The members' mean probability, as logits; (N, num_classes, H, W) for any H x W.

    Args:
        members: trained models with the same input channels and classes.
        mean, std: per member, the input normalisation it was trained with (on [0, 1]
            pixels). The ensemble takes its first member's; each other member gets its own
            back by a per-channel scale and shift, so that members trained from ImageNet
            weights and from scratch can be mixed.
    """

    def __init__(
        self,
        members: Sequence[nn.Module],
        mean: Sequence[Sequence[float]],
        std: Sequence[Sequence[float]],
    ) -> None:
        super().__init__()
        if len(members) < 2 or not len(members) == len(mean) == len(std):
            raise ValueError("an ensemble needs two or more members, each with its mean and std")
        self.members = nn.ModuleList(members)
        m = torch.tensor(mean, dtype=torch.float32)[..., None, None]  # (M, C, 1, 1)
        s = torch.tensor(std, dtype=torch.float32)[..., None, None]
        # x = (p - m0) / s0 is what the ensemble sees; member i wants (p - mi) / si
        self.register_buffer("scale", s[0] / s, persistent=False)
        self.register_buffer("shift", (m[0] - m) / s, persistent=False)
        self.stride = math.lcm(*(getattr(member, "stride", 1) for member in members))
        # a member that pads its input to a minimum size (smp's PAN) makes the whole do so
        self.min_size = max(getattr(member, "min_size", 0) for member in members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = None
        for i, member in enumerate(self.members):
            logits = member(x * self.scale[i] + self.shift[i]).float()
            p = torch.sigmoid(logits) if logits.shape[1] == 1 else logits.softmax(1)
            total = p if total is None else total + p
        p = (total / len(self.members)).clamp(EPS, 1 - EPS)
        if p.shape[1] == 1:
            return torch.log(p) - torch.log1p(-p)  # log-odds: sigmoid gives p back
        return torch.log(p)  # softmax of log p is p (the classes' p sum to 1)
