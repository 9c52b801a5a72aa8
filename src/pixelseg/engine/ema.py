"""An exponential moving average of the weights, validated and saved instead of the raw ones.

With 15-30 validation images the best epoch is partly chance: the raw weights wander from
step to step, and the score picks whichever epoch happened to land well. The average over
the last few hundred steps wanders less. As in timm's ``ModelEmaV3``, the decay starts low
and rises towards ``decay`` ((1 + n) / (10 + n) after n updates), so the first epochs'
average is not anchored to the random (or ImageNet) starting point. Batch-norm statistics
are averaged like the weights; integer buffers (batch counters) are copied.
"""

from __future__ import annotations

import copy

import torch

from pixelseg.errors import SettingsError


class WeightAverage:
    """``model`` here is the averaged copy; :meth:`update` after each optimizer step."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise SettingsError(f"an average's decay must be between 0 and 1, got {decay}")
        self.decay = decay
        self.updates = 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Move the average towards ``model``'s weights (same architecture, not wrapped)."""
        weight = 1.0 - self.current_decay()
        self.updates += 1
        averaged, current = [], []
        for mine, theirs in zip(
            self.model.state_dict().values(), model.state_dict().values(), strict=True
        ):
            if mine.is_floating_point():
                averaged.append(mine)
                current.append(theirs.detach())
            else:
                mine.copy_(theirs)
        torch._foreach_lerp_(averaged, current, weight)

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = state["updates"]
