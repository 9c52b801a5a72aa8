"""How much memory the service's full-size steps may hold at once.

A request's big arrays live in two steps: decoding the upload (the picture at full size)
and rendering the answer (logits upsampled to the picture's size, probabilities, the mask
and the overlay). Waiting for the model, a request keeps only its upload's bytes and the
picture resized to the model's input. Each full-size step first reserves what it will
need (an estimate from the pixel count and the number of classes) from one budget, and
waits while the budget is taken, so the process's peak stays near
``model + upload_memory + max_queue x max_bytes + budget`` whatever the clients send. One
step larger than the whole budget runs alone.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

# Bytes per pixel of each step. Decoding holds the RGB picture and one converted copy
# (3 + 3, rounded up). Rendering holds the float32 logits and float32 arrays of the same
# size (probabilities, the argmax's temporaries), plus the picture, the mask and a float32
# overlay: 32 + 12 per class, set from the peak measured with 16 clients sending 24 MP
# pictures to an 11-class run (docs/benchmarks.md: 4,457 and 4,594 MiB in two runs, about
# 175-180 bytes per pixel above the idle server, where this gives 164).
DECODE_BYTES_PER_PIXEL = 8
RENDER_BYTES_PER_PIXEL_PER_CLASS = 12
RENDER_BYTES_PER_PIXEL = 32


# 16-bit, 32-bit and float pictures are scaled to 8 bits through float64 copies
DEEP_MODES = ("I", "F", "I;16", "I;16B", "I;16L", "I;16N")
DEEP_DECODE_BYTES_PER_PIXEL = 32


def decode_cost(pixels: int, mode: str = "RGB") -> int:
    per_pixel = DEEP_DECODE_BYTES_PER_PIXEL if mode in DEEP_MODES else DECODE_BYTES_PER_PIXEL
    return pixels * per_pixel


def render_cost(pixels: int, num_classes: int) -> int:
    return pixels * (RENDER_BYTES_PER_PIXEL + RENDER_BYTES_PER_PIXEL_PER_CLASS * num_classes)


class MemoryBudget:
    """A weighted semaphore over bytes: ``async with budget.hold(n):`` waits until ``n``
    bytes (at most the whole budget) are free, first come first served."""

    def __init__(self, total: int) -> None:
        if total < 1:
            raise ValueError(f"a memory budget must be at least one byte, got {total}")
        self.total, self.used = total, 0
        self._changed = asyncio.Condition()
        self._queue: list[object] = []  # waiting holders in arrival order (no overtaking)

    @contextlib.asynccontextmanager
    async def hold(self, nbytes: int) -> AsyncIterator[None]:
        nbytes = min(max(int(nbytes), 1), self.total)
        me = object()
        async with self._changed:
            self._queue.append(me)
            try:
                await self._changed.wait_for(
                    lambda: self._queue[0] is me and self.used + nbytes <= self.total
                )
            finally:
                self._queue.remove(me)
                self._changed.notify_all()
            self.used += nbytes
        try:
            yield
        finally:
            async with self._changed:
                self.used -= nbytes
                self._changed.notify_all()
