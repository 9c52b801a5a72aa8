"""Several processes, one job: PyTorch's own distributed engine, launched by ``torchrun``.

``torchrun --nproc-per-node N -m pixelseg train ...`` starts N copies of the command and
tells each its place through the environment (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``);
``pixelseg train --nproc N`` runs exactly that. Each process then joins the process group
(NCCL between GPUs, gloo on CPUs), trains its own share of every epoch's batches inside
``DistributedDataParallel`` (which averages the gradients), and takes part in evaluation,
whose per-image results are gathered so the metrics are those of one process, exactly.
Only rank 0 writes files and prints. Without torchrun's variables everything here is a
no-op for a world of one process.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from pixelseg.errors import PixelsegError, SettingsError

if TYPE_CHECKING:
    import torch

T = TypeVar("T")
GROUP_TIMEOUT_MINUTES = 30  # how long a collective may wait for a slow process

# torch is imported inside the functions that use it: the CLI asks ``world_from_env()``
# before every command, and commands that need no torch should not pay for importing it.


@dataclass(frozen=True)
class World:
    """This process's place among the job's processes."""

    rank: int = 0
    local_rank: int = 0  # the process's index on its own machine (picks its GPU)
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank (any picklable object)."""
        if not self.distributed:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        boxes: list[Any] = [None] * self.size
        dist.all_gather_object(boxes, obj)
        return boxes

    def gather_to_main(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` in rank order on rank 0 (None elsewhere): for large things
        only rank 0 needs, such as predictions to draw."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        boxes: list[Any] | None = [None] * self.size if self.is_main else None
        dist.gather_object(obj, boxes, dst=0)
        return boxes

    def broadcast_buffers(self, module: torch.nn.Module) -> None:
        """Give every process rank 0's buffers (batch-norm running statistics, which each
        process updates from its own batches) before evaluating."""
        if not self.distributed:
            return
        import torch.distributed as dist

        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)

    def any(self, flag: bool) -> bool:
        """True on every rank if it is true on any (e.g. a stop signal seen by one)."""
        if not self.distributed:
            return flag
        import torch
        import torch.distributed as dist

        t = torch.tensor([int(flag)], device=_collective_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def share(self, count: int) -> tuple[int, int]:
        """This process's consecutive share ``[lo, hi)`` of ``count`` items."""
        return count * self.rank // self.size, count * (self.rank + 1) // self.size

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()


def world_from_env() -> World:
    """The world torchrun describes in the environment (one process without it)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    if "RANK" not in os.environ:
        raise PixelsegError(
            f"WORLD_SIZE={size} is set but RANK is not: start several processes with torchrun "
            "(pixelseg train --nproc N), or unset WORLD_SIZE"
        )
    return World(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), size)


def _collective_device() -> torch.device:
    """Where tensors for a collective must live: NCCL works on GPU tensors only."""
    import torch
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def start(device: str = "auto") -> tuple[World, torch.device, bool]:
    """Join the process group when launched by torchrun; returns (world, this process's
    device, whether this call started the group and so should :func:`stop` it).

    On GPUs each process takes the GPU of its local rank and talks over NCCL; on CPUs they
    talk over gloo.
    """
    import torch
    import torch.distributed as dist

    from pixelseg.engine.device import resolve_device

    world = world_from_env()
    if not world.distributed:
        return world, resolve_device(device), False
    wants_cuda = device == "auto" or device.startswith("cuda")
    if wants_cuda and torch.cuda.is_available():
        dev = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(dev)
        backend = "nccl"
    elif device.startswith("cuda"):
        raise SettingsError(f"device {device} was asked for but CUDA is not available")
    else:
        dev, backend = torch.device("cpu"), "gloo"
    if dist.is_initialized():
        return world, dev, False
    # 30 minutes, not NCCL's 10: the other processes wait while rank 0 calibrates alone
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=GROUP_TIMEOUT_MINUTES))
    return world, dev, True


def exit_process(code: int) -> NoReturn:
    """End a torchrun worker process at once, after flushing its output.

    A process that used DistributedDataParallel over gloo keeps the group's threads
    alive after ``destroy_process_group`` (DDP's reducer still holds the group), and
    letting the interpreter tear them down at exit aborts the process now and then
    ("terminate called without an active exception", SIGABRT: torchrun then reports the
    whole job failed although it finished). Every file is written and closed by now, so
    the worker skips that teardown.
    """
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # closed or broken: nothing to save
            stream.flush()
    os._exit(code)


def stop(started: bool) -> None:
    """Leave the process group if :func:`start` joined it."""
    if not started:  # (and torch stays unimported where nothing needed it)
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
