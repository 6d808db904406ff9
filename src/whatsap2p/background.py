"""Tasks started for what they do, not awaited by whoever starts them.

Each is kept until it ends (a task nobody holds may be collected mid-way), its failure
is logged (never an exception left unretrieved), and `close` cancels and awaits them
all. The outbox's retries, the confirmations of leaves, the reports of routes use it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Coroutine

__all__ = ["Background"]


class Background:
    def __init__(self, log: logging.Logger, level: int = logging.WARNING) -> None:
        """Failures go to `log` at `level`."""
        self._log = log
        self._level = level
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, work: Coroutine[object, object, None], what: str) -> asyncio.Task[None]:
        """Run `work` (`what` it does, for the log should it fail)."""
        task = asyncio.get_running_loop().create_task(work, name=what)
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._ended, what))
        return task

    def _ended(self, what: str, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (failure := task.exception()) is not None:
            self._log.log(self._level, "%s: %s", what, failure)

    async def close(self) -> None:
        """Cancel what still runs, and wait until it has stopped."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
