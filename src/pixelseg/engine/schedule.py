"""The learning-rate schedule: warm-up, then cosine decay (and its continuation)."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class Schedule:
    """LR multiplier per optimizer step: linear warm-up, then cosine decay to 1% at ``total``.

    ``frozen``: the multiplier is 0 for the first ``frozen`` steps (an encoder kept as
    pretrained while the new decoder settles; see ``freeze_encoder_epochs``).

    ``begin``/``start`` let a resumed run that was given more epochs continue smoothly:
    a new cosine from the rate it had reached (``start``, at step ``begin``) rather than a
    jump back up. Saved with the training state so a resume rebuilds the same curve.
    """

    total: int
    warmup: int = 0
    begin: int = 0
    start: float = 1.0
    frozen: int = 0

    def __call__(self, step: int) -> float:
        if step < self.frozen:
            return 0.0
        step = max(0, step - self.begin)
        if step < self.warmup:
            return self.start * (step + 1) / self.warmup
        progress = (step - self.warmup) / max(1, self.total - self.begin - self.warmup)
        return 0.01 + (self.start - 0.01) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
