"""A warning that may come thousands of times a second (every request refused while the
shared store fails over) said at most once every few seconds, with how many like it
were held back. Time is passed in."""

from __future__ import annotations

import logging

__all__ = ["Throttled"]


class Throttled:
    """Warnings to `log`, at most one every `every` seconds; the next one said counts
    those held back since the last."""

    def __init__(self, log: logging.Logger, every: float) -> None:
        self._log = log
        self._every = every
        self._next = float("-inf")
        self._held = 0
        self._last: tuple[str, tuple[object, ...]] = ("", ())

    def warning(self, now: float, message: str, *args: object) -> None:
        if now < self._next:
            self._held += 1
            self._last = (message, args)
            return
        if self._held:
            message += " (and %d more like it since the last said)"
            args = (*args, self._held)
        self._held = 0
        self._next = now + self._every
        self._log.warning(message, *args)

    def flush(self) -> None:
        """Say now how many were held back since the last said, if any (what they were
        about is over: nothing more will come to say it)."""
        if self._held:
            message, args = self._last
            self._log.warning(
                message + " (the last of %d more like it since the last said)", *args, self._held
            )
        self._held = 0
        self._next = float("-inf")
