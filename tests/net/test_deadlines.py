"""The deadlines of many connections on one loop timer (net/deadlines.py)."""

from __future__ import annotations

import asyncio

from whatsap2p.net.deadlines import Deadlines


class Wakeups:
    """Counts the loop's wakeups that brought deadlines up: a callback scheduled by the
    first one of a wakeup runs only after every other one of that wakeup."""

    def __init__(self) -> None:
        self.count = 0
        self._open = False

    def came(self) -> None:
        if not self._open:
            self.count += 1
            self._open = True
            asyncio.get_running_loop().call_soon(self._close)

    def _close(self) -> None:
        self._open = False


class Due:
    """Stands for a connection: keeps its live entry, and says when it came up."""

    def __init__(self, deadlines: Deadlines, when: float, wakeups: Wakeups | None = None) -> None:
        self.deadlines = deadlines
        self.fired: list[float] = []
        self.came = asyncio.Event()
        self.wakeups = wakeups or Wakeups()
        self.entry = deadlines.push(when, self)

    def entry_current(self, entry: int) -> bool:
        return entry == self.entry

    def deadline_reached(self) -> None:
        self.entry = 0
        self.fired.append(asyncio.get_running_loop().time())
        self.wakeups.came()
        self.came.set()

    def abort(self) -> None:
        raise AssertionError("a deadline failed")


async def test_deadlines_armed_for_a_time_already_past_take_more_entries() -> None:
    # A busy loop can arm the timer for a deadline already past; uvloop then hands back a
    # plain Handle (no when()), and the next connection's entry must still be taken: it
    # failed there, in connection_made, and that connection was never answered.
    loop = asyncio.get_running_loop()
    deadlines = Deadlines()
    overdue = Due(deadlines, loop.time() - 1)
    soon = Due(deadlines, loop.time() + 0.05)
    async with asyncio.timeout(5):
        await overdue.came.wait()
        await soon.came.wait()
    assert len(deadlines) == 0
    deadlines.close()


async def test_a_replaced_entry_is_never_taken_for_the_live_one() -> None:
    # Two entries of one connection may fall on the same time (uvloop's clock counts
    # milliseconds): only the one pushed last is its live one.
    loop = asyncio.get_running_loop()
    deadlines = Deadlines()
    when = loop.time() + 0.02
    due = Due(deadlines, when)
    due.entry = deadlines.push(when, due)  # the same time again: the first is stale now
    deadlines.dropped()
    async with asyncio.timeout(5):
        await due.came.wait()
    await asyncio.sleep(0.05)  # (past the time: a second firing would have come by now)
    assert len(due.fired) == 1
    deadlines.close()


async def test_entries_due_within_the_slack_come_up_in_one_wakeup() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(slack=0.05)
    wakeups = Wakeups()
    start = loop.time()
    first = Due(deadlines, start + 0.01, wakeups)
    others = [Due(deadlines, start + 0.01 + i * 0.01, wakeups) for i in range(1, 4)]
    async with asyncio.timeout(5):
        for due in (first, *others):
            await due.came.wait()
    # (not by their clock readings: uvloop's clock may tick a millisecond within a wakeup)
    assert wakeups.count == 1
    assert first.fired[0] >= start + 0.01  # never before its time
    deadlines.close()


async def test_stale_entries_are_dropped_in_bulk() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines()
    far = loop.time() + 3600
    live = [Due(deadlines, far) for _ in range(10)]
    for due in live[:8]:  # eight connections close
        due.entry = 0
        deadlines.dropped()
    # dropped once they are more than half the heap: never more stale entries than live
    assert 2 < len(deadlines) <= 4
    deadlines.close()
    assert len(deadlines) == 0
