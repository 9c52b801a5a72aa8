"""The order of training samples: a function of (seed, epoch) alone, shardable, resumable.

``torch.utils.data.DistributedSampler`` shuffles with ``seed + epoch`` so every process
agrees on one permutation and takes its own share of it; this sampler does the same, and
adds what exact resumption and short data sets need:

- ``num_samples`` may exceed the data set (whole permutations are chained), so an epoch can
  hold a fixed number of steps however few images there are;
- ``set_epoch(epoch, start)`` can begin part-way through the epoch, so a run resumed from a
  mid-epoch checkpoint sees exactly the batches it had not seen yet, with no state to save
  but the epoch and the step.

Each process gets ``ceil(num_samples / world_size)`` indices (as DistributedSampler, the
permutation is padded by wrapping so all shares are equal and collectives stay in step).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

_EPOCH_STRIDE = 1_000_003  # a prime: (seed, epoch) pairs never share a generator seed


class EpochSampler(Sampler[int]):
    """Shuffled indices of one epoch for process ``rank`` of ``world_size``."""

    def __init__(
        self, size: int, num_samples: int | None = None, seed: int = 0, rank: int = 0,
        world_size: int = 1,
    ) -> None:  # fmt: skip
        if size < 1:
            raise ValueError(f"a sampler needs at least one sample, got {size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside a world of {world_size}")
        self.size = size
        self.num_samples = num_samples or size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.per_rank = math.ceil(self.num_samples / world_size)
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Draw epoch ``epoch``'s order; skip this process's first ``start`` indices."""
        if not 0 <= start <= self.per_rank:
            raise ValueError(f"start must be in [0, {self.per_rank}], got {start}")
        self.epoch, self.start = epoch, start

    def order(self) -> torch.Tensor:
        """This process's indices for the whole epoch (``start`` not applied)."""
        generator = torch.Generator().manual_seed(self.seed * _EPOCH_STRIDE + self.epoch)
        total = self.per_rank * self.world_size
        chunks = [
            torch.randperm(self.size, generator=generator)
            for _ in range(math.ceil(total / self.size))
        ]
        return torch.cat(chunks)[:total][self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.order()[self.start :].tolist())

    def __len__(self) -> int:
        return self.per_rank - self.start
