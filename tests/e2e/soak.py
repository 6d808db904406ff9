"""The soak: A sends B texts with `"queue": true`, pipelined in waves, while B is killed
(-9) and restarted and the server is killed (-9) and restarted, all during the flow.

Every send must be answered `queued` or `delivered` (none failed for want of a
connection); B must show every text, once, but for those a killed life of B printed and
had not yet marked shown, which its next life shows again, with their ids (the at least
once of docs/jsonrpc.md: a client keeps the ids it has seen); A must say each queued one
`delivered` exactly once, its outbox must end empty and its history agree with what B
showed. Used by `make soak` (bench/soak.py, 10,000 messages) and by the test suite
(tests/e2e/test_soak.py, 2,000). Every process is a real `whatsap2p` command on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.e2e.procs import ServerProcess, UserProcess
from whatsap2p.app.contacts import FILE_NAME as CONTACTS_FILE
from whatsap2p.app.contacts import AddressBook

ALICE, BOB = "+5511999990001", "+5511999990002"
#: Texts written at once (each wave's answers are awaited before the next is written).
WAVE = 100
#: The most history entries one request returns.
HISTORY_PAGE = 1000
#: Long enough for anything that is on its way; a stuck soak fails instead of hanging.
PATIENCE = 120.0


@dataclass
class SoakResult:
    messages: int
    send_seconds: float  # the first text written to the last send answered
    deliver_seconds: float  # the last send answered to the last text shown and said delivered
    delivered_at_once: int  # sends answered `delivered`
    queued: int  # sends answered `queued`
    failed: list[Any]  # sends answered otherwise (failed, offline, an error): none expected
    delivered_notifications: int  # queued texts A said `delivered`
    repeated_notifications: int  # said `delivered` more than once: none expected
    unexpected_notifications: int  # said `delivered` though not queued: none expected
    shown: int  # receive notifications B printed, over all its lives
    distinct_shown: int
    missing_shown: int
    #: Shown again by B's next life after a killed life printed them (same id).
    shown_again: int
    #: Any other repeat (shown twice by one life, or thrice): none expected.
    shown_twice: int
    outbox_left: int
    history_read: int  # A's messages to B in its history, read a page at a time (JSON-RPC)
    history_disagreeing: int  # of those: not `delivered`, or not shown by B
    stored_at_b: int  # read from the files once the modules ended
    delivered_at_a: int
    b_kills: int
    server_restarts: int

    @property
    def ok(self) -> bool:
        return (
            not self.failed
            and self.delivered_at_once + self.queued == self.messages
            and self.delivered_notifications == self.queued
            and self.repeated_notifications == self.unexpected_notifications == 0
            and self.missing_shown == self.shown_twice == 0
            and self.outbox_left == 0
            and self.history_disagreeing == 0
            and self.history_read == self.messages
            and self.stored_at_b == self.delivered_at_a == self.messages
        )


@dataclass
class Ids:
    """Message ids a module printed in notifications of one method, as they come (over
    all its lives)."""

    method: str
    ids: list[str] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def follow(self, life: UserProcess) -> None:
        while True:
            self.add((await life.notifications[self.method].get())["id"])

    def add(self, message_id: str) -> None:
        self.ids.append(message_id)
        self.changed.set()

    def drain(self, life: UserProcess) -> None:
        """What `life` printed that was not followed yet (it has ended)."""
        while not life.notifications[self.method].empty():
            self.add(life.notifications[self.method].get_nowait()["id"])

    async def until(self, enough: Callable[[list[str]], bool]) -> None:
        async with asyncio.timeout(PATIENCE):
            while not enough(self.ids):
                self.changed.clear()
                await self.changed.wait()


class Receiver:
    """B, one life after another."""

    def __init__(self, server: str, root: Path, shown: Ids) -> None:
        self.server, self.root, self.shown = server, root, shown
        self.life: UserProcess | None = None
        self._following: asyncio.Task[None] | None = None
        self.lives: list[UserProcess] = []
        #: What the lives killed printed (their next life may show it again).
        self.printed_by_killed: set[str] = set()
        self._began = 0  # where the current life's ids begin in `shown`

    async def start(self) -> None:
        self.life = await UserProcess.start(self.server, BOB, self.root / "bob")
        self.lives.append(self.life)
        self._began = len(self.shown.ids)
        self._following = asyncio.create_task(self.shown.follow(self.life))

    async def kill(self) -> None:
        """kill -9; what it printed before is counted too."""
        assert self.life is not None
        self.life.kill()
        await self._ended()
        self.printed_by_killed.update(self.shown.ids[self._began :])

    async def quit(self) -> None:
        assert self.life is not None
        assert await self.life.quit() == 0
        await self._ended()

    async def _ended(self) -> None:
        life, following = self.life, self._following
        assert life is not None
        assert following is not None
        await life.wait()  # (its every line read)
        following.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await following
        self.shown.drain(life)
        self.life = None


def more_than(count: int) -> Callable[[list[str]], bool]:
    return lambda ids: len(set(ids)) > count


def send_request(n: int) -> dict[str, Any]:
    params = {"to": BOB, "text": f"soak {n}", "queue": True}
    return {"jsonrpc": "2.0", "id": f"s{n}", "method": "send", "params": params}


async def soak(root: Path, count: int) -> SoakResult:
    db = root / "server" / "bindings.sqlite3"
    # Friends: B takes a burst from a contact (a stranger's would be held to its limits).
    (root / "bob").mkdir(parents=True, exist_ok=True)
    AddressBook.load(root / "bob" / CONTACTS_FILE).add_contact("alice", ALICE)
    waves = -(-count // WAVE)
    # When, in waves: B is killed in the middle of one, and back some waves later; the
    # server is killed with one's lookups on their way, and back some waves later.
    kill_b, start_b = waves // 5, 2 * waves // 5
    kill_server, start_server = 3 * waves // 5, 7 * waves // 10
    shown, said = Ids("receive"), Ids("delivered")
    answers: list[dict[str, Any]] = []
    server = await ServerProcess.start(db)
    bob = Receiver(server.address, root, shown)
    started_users: list[UserProcess] = []  # (stopped at the end, whatever happens)
    collecting: asyncio.Task[None] | None = None
    try:
        alice = await UserProcess.start(server.address, ALICE, root / "alice")
        started_users.append(alice)
        await bob.start()
        collecting = asyncio.create_task(said.follow(alice))
        started = time.perf_counter()
        for wave in range(waves):
            numbers = range(wave * WAVE, min(count, (wave + 1) * WAVE))
            futures = [alice.expect(f"s{n}") for n in numbers]
            alice.write("\n".join(json.dumps(send_request(n)) for n in numbers))
            if wave == kill_b:  # some of this wave shown, the rest on their way
                await shown.until(more_than(numbers.start))
                await bob.kill()
            elif wave == start_b:
                await bob.start()
            elif wave == kill_server:  # this wave's lookups on their way
                assert await server.stop(signal.SIGKILL) == -signal.SIGKILL
            elif wave == start_server:
                server = await ServerProcess.start(db, port=server.port)
            answers += await asyncio.wait_for(asyncio.gather(*futures), PATIENCE)
        answered_at = time.perf_counter()

        failed = [answer for answer in answers if not _queued_or_delivered(answer)]
        results = [answer["result"] for answer in answers if answer not in failed]
        queued = {result["id"] for result in results if result["queued"]}
        at_once = {result["id"] for result in results if result["delivered"]}
        wanted = queued | at_once
        await shown.until(lambda ids: set(ids) >= wanted)
        await said.until(lambda ids: set(ids) >= queued)
        done_at = time.perf_counter()
        outbox = await alice.call("outbox")
        history = await _whole_history(alice, BOB)
        seen = set(shown.ids)
        disagreeing = [e for e in history if e["state"] != "delivered" or e["id"] not in seen]
        assert await alice.quit() == 0
        await bob.quit()
        collecting.cancel()
        said.drain(alice)
        said_count = Counter(said.ids)
        counts = Counter(shown.ids)
        return SoakResult(
            messages=count,
            send_seconds=answered_at - started,
            deliver_seconds=done_at - answered_at,
            delivered_at_once=len(at_once),
            queued=len(queued),
            failed=failed,
            delivered_notifications=len(set(said.ids) & queued),
            repeated_notifications=sum(n - 1 for n in said_count.values()),
            unexpected_notifications=len(set(said.ids) - queued),
            shown=len(shown.ids),
            distinct_shown=len(counts),
            missing_shown=count - len(set(counts) & wanted),
            shown_again=sum(n == 2 and i in bob.printed_by_killed for i, n in counts.items()),
            shown_twice=sum(
                n - 1
                for i, n in counts.items()
                if n > 2 or (n == 2 and i not in bob.printed_by_killed)
            ),
            outbox_left=len(outbox),
            history_read=len({entry["id"] for entry in history}),
            history_disagreeing=len(disagreeing),
            stored_at_b=_count(
                root / "bob", "SELECT COUNT(*) FROM messages WHERE direction = 'in'"
            ),
            delivered_at_a=_count(
                root / "alice",
                "SELECT COUNT(*) FROM messages WHERE direction = 'out' AND state = 'delivered'",
            ),
            b_kills=1,
            server_restarts=1,
        )
    finally:
        if collecting is not None:
            collecting.cancel()
        for user in [*started_users, *bob.lives]:
            await user.close()
        await server.stop(signal.SIGKILL)


def _queued_or_delivered(answer: dict[str, Any]) -> bool:
    """A send answered with one recipient, queued or delivered (nothing else)."""
    result = answer.get("result")
    if result is None:
        return False
    lists = (result["delivered"], result["queued"], result["failed"], result["offline"])
    return [len(got) for got in lists] in ([1, 0, 0, 0], [0, 1, 0, 0])


async def _whole_history(user: UserProcess, phone: str) -> list[dict[str, Any]]:
    """`user`'s whole history with `phone`, read a page at a time (`before` the oldest
    entry of the page before, until a page comes back empty), each entry once."""
    entries: list[dict[str, Any]] = []
    before: dict[str, str] = {}
    while page := await user.call("history", limit=HISTORY_PAGE, **{"with": phone}, **before):
        entries += page
        before = {"before": page[-1]["id"]}
    keys = [(e["id"], e["from"], e.get("to")) for e in entries]
    assert len(keys) == len(set(keys)), "an entry read twice"
    return entries


def _count(data_dir: Path, query: str) -> int:
    """Read a module's history directly, once the module has exited."""
    with contextlib.closing(sqlite3.connect(data_dir / "history.sqlite3")) as db:
        return int(db.execute(query).fetchone()[0])
