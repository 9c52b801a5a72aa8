"""Stopping cleanly on SIGINT (Ctrl-C) and SIGTERM (``kill``, a scheduler's pre-emption).

The handler only records the signal; the training loop checks it after every step, saves
a checkpoint where it is and raises :class:`TrainingInterrupted`, so a stopped run resumes
from that step. A second Ctrl-C stops at once (the checkpoint of the last epoch or
``--save-every`` step remains).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

from pixelseg.errors import PixelsegError

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(PixelsegError):
    """Training stopped on a signal after saving a checkpoint."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


class StopSignals:
    """A context manager that turns SIGINT/SIGTERM into a flag (``requested``)."""

    def __init__(self) -> None:
        self.requested: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        # Python delivers signals to the main thread only; elsewhere leave them alone.
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # asked twice: stop now
        self.requested = signum

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            # None: a handler installed from C; the default is the closest Python can restore
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()
