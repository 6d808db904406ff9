"""Lines from standard input, whatever it is (terminal, pipe or regular file).

asyncio cannot watch a regular file, so one daemon thread reads and hands the lines of
each chunk it reads to the loop at once (one hand-over per chunk, not per line). It
reads the raw descriptor with os.read: a thread blocked inside
`sys.stdin.buffer` holds that object's lock, and the interpreter aborts at exit.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import os
import sys
import threading

__all__ = ["LineReader"]

_EOF = object()
_READ_SIZE = 64 * 1024


class LineReader:
    """`await readline()` -> the next line without its newline, or None at end of input.

    A line longer than `max_line` bytes is returned as `LineReader.TOO_LONG` (and the
    rest of it is skipped), so a runaway writer cannot make us buffer without bound.
    """

    TOO_LONG = "\x00too long\x00"

    def __init__(self, max_line: int = 1024 * 1024, fd: int | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[object] = asyncio.Queue(maxsize=64)
        self._ready: collections.deque[str] = collections.deque()
        self._fd = sys.stdin.fileno() if fd is None else fd
        self._max_line = max_line
        threading.Thread(target=self._pump, name="stdin", daemon=True).start()

    def _pump(self) -> None:
        pending = bytearray()
        skipping = False  # inside a line that was already reported too long
        while True:
            try:
                chunk = os.read(self._fd, _READ_SIZE)
            except OSError:
                chunk = b""
            if not chunk:
                break
            pending += chunk
            lines: list[str] = []
            start = 0
            while (end := pending.find(b"\n", start)) >= 0:
                line = bytes(pending[start:end])
                start = end + 1
                if skipping:
                    skipping = False
                elif len(line) > self._max_line:
                    lines.append(self.TOO_LONG)
                else:
                    lines.append(line.rstrip(b"\r").decode("utf-8", "replace"))
            del pending[:start]
            if len(pending) > self._max_line:
                if not skipping:
                    lines.append(self.TOO_LONG)
                skipping = True
                pending.clear()
            if lines:
                self._put(lines)
        if pending and not skipping:
            self._put([pending.rstrip(b"\r").decode("utf-8", "replace")])
        self._put(_EOF)

    def _put(self, item: object) -> None:
        # Blocks this thread while the loop is behind, so input is not read unboundedly.
        # If the loop is gone the program is exiting, and the line no longer matters.
        with contextlib.suppress(RuntimeError, concurrent.futures.CancelledError):
            asyncio.run_coroutine_threadsafe(self._queue.put(item), self._loop).result()

    async def readline(self) -> str | None:
        if not self._ready:
            item = await self._queue.get()
            if item is _EOF:
                self._queue.put_nowait(_EOF)  # stays at end of input for later calls
                return None
            assert isinstance(item, list)
            self._ready.extend(item)
        return self._ready.popleft()
