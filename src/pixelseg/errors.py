"""Exceptions that pixelseg raises for bad user input."""

from __future__ import annotations


class PixelsegError(Exception):
    """Base class of pixelseg's user-facing errors (the CLI prints them without a traceback)."""


class DataError(PixelsegError, ValueError):
    """A data set is unusable. ``problems`` lists every bad file with what is wrong with it."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        self.problems = list(problems or [])
        if self.problems:
            message = message + "\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(message)


class SettingsError(PixelsegError, ValueError):
    """An option or setting is out of range, unknown, or conflicts with another one."""
