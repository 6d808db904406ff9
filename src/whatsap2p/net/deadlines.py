"""The deadlines of many connections under one loop timer.

Each connection's state machine says when it next needs `handle_timer` (`get_timer`);
its adapter keeps one entry here no later than that. A process holding thousands of
connections (the server, the load generator) then costs one loop timer and one small
tuple per connection, not a TimerHandle each, and a connection whose deadline moved
later keeps its entry: when it comes up, the adapter looks again and pushes the next.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import typing

__all__ = ["Deadlines", "Timed"]

log = logging.getLogger(__name__)


class Timed(typing.Protocol):
    """What the deadlines hold of a connection (its adapter)."""

    def entry_current(self, entry: int) -> bool:
        """Whether `entry` (what `Deadlines.push` returned) is the connection's live one."""

    def deadline_reached(self) -> None:
        """Its live entry came up: hand the time to its state machine."""

    def abort(self) -> None:
        """Drop the connection (its deadline handling failed: a bug)."""


class Deadlines:
    """A heap of (when, sequence, connection). Entries left behind (a connection closed,
    or took an earlier deadline) are skipped when they come up, and dropped all at once
    when they are half the heap. `slack` lets the timer fire that much after the first
    entry, taking every entry due by then in one wakeup of the loop (heartbeats of
    thousands of connections need not wake the loop one by one)."""

    def __init__(self, slack: float = 0.0) -> None:
        self._slack = slack
        self._heap: list[tuple[float, int, Timed]] = []
        self._sequence = 0
        #: The loop's timer, and when it is set for (uvloop hands back a plain Handle, with
        #: no when(), for a time already past: a busy loop arms those).
        self._timer: asyncio.Handle | None = None
        self._armed_at = 0.0
        self._stale = 0
        self._firing = False

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, when: float, connection: Timed) -> int:
        """An entry for `connection` at `when`; returns the entry's number, which the
        connection keeps as its live one (any older entry of it is then stale)."""
        self._sequence += 1
        heapq.heappush(self._heap, (when, self._sequence, connection))
        if not self._firing:  # (when firing, the timer is set for the earliest after)
            self._arm()
        return self._sequence

    def dropped(self) -> None:
        """An entry no longer counts (its connection closed, or took an earlier one)."""
        self._stale += 1
        if self._stale * 2 > len(self._heap):
            heap = self._heap  # in place: a firing loop may hold it
            heap[:] = [entry for entry in heap if entry[2].entry_current(entry[1])]
            heapq.heapify(heap)
            self._stale = 0

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._heap.clear()
        self._stale = 0

    def _arm(self) -> None:
        """The loop timer at the earliest entry (plus the slack)."""
        timer, heap = self._timer, self._heap
        if not heap:
            return
        when = heap[0][0] + self._slack
        if timer is not None:
            if self._armed_at <= when:
                return
            timer.cancel()
        self._armed_at = when
        self._timer = asyncio.get_running_loop().call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer = None
        heap = self._heap
        now = asyncio.get_running_loop().time()
        self._firing = True
        try:
            while heap and heap[0][0] <= now:
                _, entry, connection = heapq.heappop(heap)
                if not connection.entry_current(entry):
                    self._stale = max(0, self._stale - 1)
                    continue
                try:
                    connection.deadline_reached()
                except Exception:  # a bug, not bad input: that connection's, not the others'
                    log.exception("a connection's deadline failed")
                    connection.abort()
        finally:
            self._firing = False
        self._arm()
