"""Where training's messages go: pixelseg's module loggers, shown above the progress bars.

Each module logs to its own ``logging.getLogger(__name__)`` (as timm does), so no function
needs a ``log`` argument and an application may route the ``pixelseg`` logger as it likes.
While a run with progress output trains, :func:`console` prints the INFO messages with
``tqdm.write``, so they never tear a progress bar, and keeps them from also reaching the
root logger's handlers twice.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

__all__ = ["console"]


class _TqdmHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        from tqdm.auto import tqdm

        try:
            tqdm.write(self.format(record))
        except Exception:  # noqa: BLE001 - logging's own rule: a message never crashes a run
            self.handleError(record)


@contextlib.contextmanager
def console(enabled: bool) -> Iterator[None]:
    """With ``enabled``, print pixelseg's INFO messages (one line each) while inside."""
    if not enabled:
        yield
        return
    logger = logging.getLogger("pixelseg")
    handler = _TqdmHandler(logging.INFO)
    handler.setFormatter(logging.Formatter("%(message)s"))
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
