"""The load generator's simulated users against an in-process server: they register,
look up, count what is not found, and give up on a server that stops answering (as a
user module would) instead of waiting for it forever."""

from __future__ import annotations

import array
import asyncio
from collections import Counter
from dataclasses import replace

from tests.servers import FAST, SERVER_KEY, running_server
from whatsap2p.net.simulated import Heartbeats, SimulatedUser
from whatsap2p.protocol.keys import fingerprint
from whatsap2p.server.directory import MemoryDirectory
from whatsap2p.server.service import DirectoryServer
from whatsap2p.ui.loadgen import _Share, _Worker, phone_of

QUICK = replace(FAST, server_reply=0.5, heartbeat_interval=0.3)


def _worker(port: int) -> _Worker:
    share = _Share([("127.0.0.1", port)], 0, 3, fingerprint(SERVER_KEY.public), "t", QUICK)
    return _Worker(None, share)  # type: ignore[arg-type]  # no parent pipe: no orders


def _silence(server: DirectoryServer) -> None:
    """The server stops reading every connection: nothing it is sent gets an answer."""
    for client in server.connections:
        assert client._transport is not None
        client._transport.pause_reading()


async def _lost(user: SimulatedUser) -> asyncio.Future[None]:
    lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def said() -> None:
        if not lost.done():
            lost.set_result(None)

    user.on_lost = said
    return lost


async def test_simulated_users_register_and_look_up() -> None:
    directory = MemoryDirectory()
    async with running_server(directory=directory) as (_, port):
        worker = _worker(port)
        users = [await worker._connect(i, 1) for i in range(3)]
        online = await directory.lookup([phone_of(i) for i in range(3)])
        assert sorted(a.phone for a in online) == [phone_of(i) for i in range(3)]

        latencies: array.array[float] = array.array("d")
        errors: Counter[str] = Counter()
        asks = iter([phone_of(1), phone_of(2), phone_of(77), phone_of(0), phone_of(78)])
        await users[0].look_up(5, lambda: next(asks), latencies, errors)
        assert len(latencies) == 5
        assert all(t > 0 for t in latencies)
        assert errors == {"not-found": 2}  # 77 and 78 are not online
        for user in users:
            user.close()


async def test_lookups_to_a_server_that_stops_answering_fail_in_time() -> None:
    async with running_server() as (server, port):
        user = await _worker(port)._connect(0, 1)
        lost = await _lost(user)
        _silence(server)
        errors: Counter[str] = Counter()
        began = asyncio.get_running_loop().time()
        async with asyncio.timeout(5):
            await user.look_up(4, lambda: phone_of(0), array.array("d"), errors)
            await lost  # the connection is dropped (the worker then registers again)
        # the one out and the three not sent yet; after the answer deadline, not before
        assert errors == {"ServerUnreachable": 4}
        assert asyncio.get_running_loop().time() - began >= QUICK.server_reply


async def test_a_silent_server_loses_its_heartbeating_users() -> None:
    async with running_server() as (server, port):
        user = await _worker(port)._connect(0, 1)
        lost = await _lost(user)
        pinged: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        pings = 0
        answered = server.metrics.answered

        def count(kind: str, seconds: float) -> None:
            nonlocal pings
            answered(kind, seconds)
            pings += kind == "ping"
            if pings == 3 and not pinged.done():
                pinged.set_result(None)

        server.metrics.answered = count  # type: ignore[method-assign]
        async with asyncio.timeout(5):
            await pinged  # heartbeats answered: the user stays connected
        assert not lost.done()
        _silence(server)
        async with asyncio.timeout(5):
            await lost  # a ping unanswered for one interval drops the connection


async def test_lookups_on_a_connection_already_gone_fail_at_once() -> None:
    async with running_server() as (_, port):
        user = await _worker(port)._connect(0, 1)
        user.give_up(ConnectionResetError("gone"))
        errors: Counter[str] = Counter()
        async with asyncio.timeout(5):
            await user.look_up(3, lambda: phone_of(0), array.array("d"), errors)
        assert errors == {"ServerUnreachable": 3}


class _Beating:
    """Stands for a simulated user: counts its pings, gone after `lives` of them."""

    def __init__(self, lives: int, everyone: asyncio.Future[None], counts: list[int]) -> None:
        self.lives, self.everyone, self.counts = lives, everyone, counts
        self.pings = self.asked = 0
        self.times: list[float] = []

    def beat(self) -> bool:
        self.asked += 1
        if self.pings == self.lives:
            return False  # its connection is gone
        self.pings += 1
        self.times.append(asyncio.get_running_loop().time())
        self.counts.append(self.pings)
        if len(self.counts) >= 12 and not self.everyone.done():
            self.everyone.set_result(None)
        return True


async def test_users_of_one_process_ping_once_an_interval_on_one_timer() -> None:
    """Each user pings once an interval from when it came online, whichever users share
    the timer; a user whose connection is gone is never pinged again."""
    loop = asyncio.get_running_loop()
    interval = 0.05
    heartbeats = Heartbeats(interval)
    enough: asyncio.Future[None] = loop.create_future()
    counts: list[int] = []
    lasting = _Beating(1_000, enough, counts)
    dying = _Beating(1, enough, counts)  # pings once, then is lost
    late = _Beating(1_000, enough, counts)
    added = loop.time()
    heartbeats.add(lasting)
    heartbeats.add(dying)
    await asyncio.sleep(interval / 2)  # (the scenario: one registers half an interval later)
    late_added = loop.time()
    heartbeats.add(late)
    async with asyncio.timeout(5):
        await enough
    heartbeats.close()
    assert (dying.pings, dying.asked) == (1, 2)  # asked once more, said it was gone: never again
    for user, since in ((lasting, added), (late, late_added)):
        assert user.pings >= 4
        first, *rest = user.times
        assert first >= since + interval - Heartbeats.TICK  # not before its interval
        gaps = [b - a for a, b in zip(user.times, rest, strict=False)]
        assert all(gap >= interval - Heartbeats.TICK for gap in gaps), gaps
    # the late user keeps its own phase: it is not pinged with the first two
    assert late.times[0] - lasting.times[0] >= interval / 2 - Heartbeats.TICK
