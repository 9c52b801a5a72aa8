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
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger(__name__)


class Overloaded(Exception):
    """The queue is full: the client should retry later."""


class ModelUnavailable(Exception):
    """The model's thread has stopped, or one batch has run too long: the service cannot
    answer, and says so at once instead of queueing requests that would never end."""


class Batcher:
    def __init__(
        self, run_batch: Callable[[Sequence[Any]], Sequence[Any]], batch_size: int = 4,
        max_queue: int = 16, max_wait: float = 0.005, stuck_after: float = 120.0,
        on_death: Callable[[BaseException], None] | None = None,
    ) -> None:  # fmt: skip
        if batch_size < 1 or max_queue < 1 or stuck_after <= 0:
            raise ValueError("batch_size and max_queue must be >= 1, stuck_after > 0")
        self.run_batch, self.batch_size, self.max_wait = run_batch, batch_size, max_wait
        self.stuck_after, self.on_death = stuck_after, on_death
        self.queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._stop = threading.Event()
        self._busy_since: float | None = None  # when the batch now running started
        self.death: BaseException | None = None
        self._thread = threading.Thread(target=self._guarded, name="pixelseg-batcher", daemon=True)
        self._thread.start()

    async def submit(self, item: Any) -> Any:
        """The result of ``run_batch`` for ``item``. :class:`Overloaded` if the queue is
        full; :class:`ModelUnavailable` if the model's thread is dead or stuck, or when no
        answer comes within ``stuck_after`` seconds."""
        problem = self.problem()
        if problem:
            raise ModelUnavailable(problem)
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        try:
            self.queue.put_nowait((item, future, loop))
        except queue.Full:
            raise Overloaded from None
        if self.death is not None:  # died between the check and the put: nobody will answer
            raise ModelUnavailable(self.problem() or "the model's thread stopped")
        try:  # (a wait longer than one stuck batch means the model will not answer)
            return await asyncio.wait_for(future, self.stuck_after)
        except asyncio.TimeoutError:  # (the builtin TimeoutError from Python 3.11 on)
            raise ModelUnavailable(f"no answer from the model in {self.stuck_after:g} s") from None

    def problem(self) -> str | None:
        """Why the model cannot answer now, or None when it can."""
        if self.death is not None or not self._thread.is_alive():
            return "the model's thread stopped" + (f" ({self.death!r})" if self.death else "")
        busy = self._busy_since
        if busy is not None and time.monotonic() - busy > self.stuck_after:
            return f"the model has been running one batch for over {self.stuck_after:g} s"
        return None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _guarded(self) -> None:
        """The worker loop; if it dies (a BaseException escapes the model), every waiting
        request fails at once instead of waiting forever, and ``on_death`` is told."""
        try:
            self._work()
        except BaseException as exc:
            log.critical("the model's thread died", exc_info=exc)
            self.death = exc
            self._fail_waiting(exc)
            if self.on_death is not None:
                self.on_death(exc)

    def _fail_waiting(self, exc: BaseException) -> None:
        error = _stopped(exc)
        while True:
            try:
                _, future, loop = self.queue.get_nowait()
            except queue.Empty:
                return
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, future, None, error)

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
            # a request that gave up waiting (timed out, client gone) is not worth a forward
            # pass: answers nobody waits for would only lengthen the line
            batch = [entry for entry in batch if not entry[1].done()]
            if not batch:
                continue
            self._busy_since = time.monotonic()
            try:
                results = self._run(batch)
            except BaseException as exc:  # this batch's requests fail with the thread
                results = [(None, _stopped(exc))] * len(batch)
                self._answer(batch, results)
                raise
            finally:
                self._busy_since = None
            self._answer(batch, results)

    @staticmethod
    def _answer(batch: list, results: list[tuple[Any, BaseException | None]]) -> None:
        for (_, future, loop), (result, error) in zip(batch, results, strict=True):
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


def _stopped(exc: BaseException) -> ModelUnavailable:
    return ModelUnavailable(f"the model's thread stopped ({exc!r})")


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():  # the client went away and the request was cancelled
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
