"""Lines from standard input, whatever it is (terminal, pipe or regular file).

asyncio cannot watch a regular file, so one daemon thread reads and hands each line to
the loop; the thread never blocks the program's exit.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import sys
import threading
from typing import BinaryIO

__all__ = ["LineReader"]

_EOF = object()


class LineReader:
    """`await readline()` -> the next line without its newline, or None at end of input.

    A line longer than `max_line` bytes is returned as `LineReader.TOO_LONG`.
    """

    TOO_LONG = "\x00too long\x00"

    def __init__(self, max_line: int = 1024 * 1024, stream: BinaryIO | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[object] = asyncio.Queue(maxsize=64)
        self._stream = stream or sys.stdin.buffer
        self._max_line = max_line
        threading.Thread(target=self._pump, name="stdin", daemon=True).start()

    def _pump(self) -> None:
        try:
            while True:
                line = self._stream.readline(self._max_line + 1)
                if not line:
                    break
                if len(line) > self._max_line and not line.endswith(b"\n"):
                    while (rest := self._stream.readline(self._max_line)) and not rest.endswith(
                        b"\n"
                    ):
                        pass
                    self._put(self.TOO_LONG)
                    if not rest:
                        break
                    continue
                self._put(line.rstrip(b"\r\n").decode("utf-8", "replace"))
        except (OSError, ValueError):
            pass
        self._put(_EOF)

    def _put(self, item: object) -> None:
        # Blocks the reader thread while the loop is behind, so input is not read unboundedly.
        # If the loop is gone the program is exiting, and the line no longer matters.
        with contextlib.suppress(RuntimeError, concurrent.futures.CancelledError):
            asyncio.run_coroutine_threadsafe(self._queue.put(item), self._loop).result()

    async def readline(self) -> str | None:
        item = await self._queue.get()
        if item is _EOF:
            self._queue.put_nowait(_EOF)  # stays at end of input for later calls
            return None
        assert isinstance(item, str)
        return item
