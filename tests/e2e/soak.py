"""The soak: queued messages from A to B while B is killed twice and the server once (-9).

Used by `make soak` (bench/soak.py, 10,000 messages) and, shortened, by the test suite.
Every process is a real `whatsap2p` command on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tests.e2e.procs import ServerProcess, UserProcess
from whatsap2p.app.contacts import FILE_NAME as CONTACTS_FILE
from whatsap2p.app.contacts import AddressBook

ALICE, BOB = "+5511999990001", "+5511999990002"
#: The soak is a load test: the operator lets one host look up as fast as it likes.
LOAD_RATES = ("--lookup-rate", "1000000", "--lookup-burst", "1000000")
BATCH = 500


@dataclass
class SoakResult:
    messages: int
    queue_seconds: float
    deliver_seconds: float
    shown: int  # receive notifications B printed, over all its lives
    distinct_shown: int
    duplicates_shown: int
    missing_shown: int
    stored_at_b: int
    delivered_at_a: int
    delivered_notifications: int
    b_kills: int
    server_restarts: int


async def queue_messages(alice: UserProcess, count: int) -> list[str]:
    """Send `count` texts with queue=true, pipelined in batches; their ids in order."""
    ids: list[str] = []
    for start in range(0, count, BATCH):
        futures = []
        for n in range(start, min(count, start + BATCH)):
            request_id = f"q{n}"
            futures.append(alice.expect(request_id))
            request = {
                "jsonrpc": "2.0",
                "id": request_id,
                "method": "send",
                "params": {"to": BOB, "text": f"soak {n}", "queue": True},
            }
            alice.write(json.dumps(request))
        for answer in await asyncio.wait_for(asyncio.gather(*futures), 120):
            assert answer["result"]["queued"] == [BOB], answer
            ids.append(answer["result"]["id"])
    return ids


async def receive_until(bob: UserProcess, shown: list[str], target: int) -> None:
    while len(shown) < target:
        shown.append((await bob.notification("receive", timeout=120))["id"])


async def soak(root: Path, count: int) -> SoakResult:
    db = root / "server" / "bindings.sqlite3"
    server = await ServerProcess.start(db, *LOAD_RATES)
    alice = await UserProcess.start(server.address, ALICE, root / "alice")
    users = [alice]
    # Friends: B takes a burst from a contact (a stranger's would be held to its limits).
    (root / "bob").mkdir(parents=True, exist_ok=True)
    AddressBook.load(root / "bob" / CONTACTS_FILE).add_contact("alice", ALICE)
    shown: list[str] = []
    kills = restarts = 0
    try:
        started = time.perf_counter()
        ids = await queue_messages(alice, count)
        queued_at = time.perf_counter()

        delivered: list[dict[str, str]] = []

        async def collect_delivered() -> None:
            while len(delivered) < count:
                delivered.append(await alice.notification("delivered", timeout=300))

        collector = asyncio.create_task(collect_delivered())
        for cut in (count // 3, 2 * count // 3):
            bob = await UserProcess.start(server.address, BOB, root / "bob")
            users.append(bob)
            await receive_until(bob, shown, cut)
            if cut > count // 3:  # the second time, the server is killed (-9) too
                assert await server.stop(signal.SIGKILL) == -signal.SIGKILL
                server = await ServerProcess.start(db, *LOAD_RATES, port=server.port)
                restarts += 1
            bob.kill()  # kill -9 in the middle of the flow
            await bob.wait()
            kills += 1
        bob = await UserProcess.start(server.address, BOB, root / "bob")
        users.append(bob)
        await asyncio.wait_for(collector, 300)
        done_at = time.perf_counter()
        assert await alice.quit() == 0
        assert await bob.quit() == 0
        # What each life of B printed after we stopped listening (before its kill, or its
        # quit) was still read from its stdout: count it too.
        for life in users[1:]:
            while not life.notifications["receive"].empty():
                shown.append(life.notifications["receive"].get_nowait()["id"])
        counts = Counter(shown)
        return SoakResult(
            messages=count,
            queue_seconds=queued_at - started,
            deliver_seconds=done_at - queued_at,
            shown=len(shown),
            distinct_shown=len(counts),
            duplicates_shown=sum(n - 1 for n in counts.values()),
            missing_shown=len(set(ids) - set(counts)),
            stored_at_b=_count(
                root / "bob", "SELECT COUNT(*) FROM messages WHERE direction = 'in'"
            ),
            delivered_at_a=_count(
                root / "alice",
                "SELECT COUNT(*) FROM messages WHERE direction = 'out' AND state = 'delivered'",
            ),
            delivered_notifications=len({d["id"] for d in delivered}),
            b_kills=kills,
            server_restarts=restarts,
        )
    finally:
        for user in users:
            await user.close()
        await server.stop()


def _count(data_dir: Path, query: str) -> int:
    """Read a module's history directly, once the module has exited."""
    with contextlib.closing(sqlite3.connect(data_dir / "history.sqlite3")) as db:
        return int(db.execute(query).fetchone()[0])
