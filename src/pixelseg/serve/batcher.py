"""One model, many requests: a worker thread runs waiting images as one batch.

Requests put their image on a bounded queue and await a future; the worker takes what is
waiting (up to ``batch_size``, waiting at most ``max_wait`` seconds for company after the
first), runs the model once, and hands each request its result. The event loop never runs
the model, so ``/health`` and uploads stay responsive while it works, and a full queue
answers 503 at once instead of holding ever more images in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any


class Overloaded(Exception):
    """The queue is full: the client should retry later."""


class Batcher:
    def __init__(
        self, run_batch: Callable[[Sequence[Any]], Sequence[Any]], batch_size: int = 4,
        max_queue: int = 16, max_wait: float = 0.005,
    ) -> None:  # fmt: skip
        if batch_size < 1 or max_queue < 1:
            raise ValueError("batch_size and max_queue must be >= 1")
        self.run_batch, self.batch_size, self.max_wait = run_batch, batch_size, max_wait
        self.queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="pixelseg-batcher", daemon=True)
        self._thread.start()

    async def submit(self, item: Any) -> Any:
        """The result of ``run_batch`` for ``item``; :class:`Overloaded` if the queue is full."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        try:
            self.queue.put_nowait((item, future, loop))
        except queue.Full:
            raise Overloaded from None
        return await future

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                batch = [self.queue.get(timeout=0.1)]
            except queue.Empty:
                continue
            deadline = time.monotonic() + self.max_wait
            while len(batch) < self.batch_size:
                try:
                    batch.append(self.queue.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            for (_, future, loop), (result, error) in zip(batch, self._run(batch), strict=True):
                with contextlib.suppress(RuntimeError):  # that request's loop has closed
                    loop.call_soon_threadsafe(_settle, future, result, error)

    def _run(self, batch: list) -> list[tuple[Any, BaseException | None]]:
        """Each item's (result, error): a failing batch is retried one item at a time, so
        one bad image fails alone."""
        try:
            return [(r, None) for r in self.run_batch([item for item, _, _ in batch])]
        except Exception as exc:
            if len(batch) == 1:
                return [(None, exc)]
        return [self._run([entry])[0] for entry in batch]

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():  # the client went away and the request was cancelled
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
