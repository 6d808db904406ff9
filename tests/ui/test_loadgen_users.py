"""The load generator's simulated users against an in-process server: they register,
look up, count what is not found, and give up on a server that stops answering (as a
user module would) instead of waiting for it forever."""

from __future__ import annotations

import array
import asyncio
from collections import Counter
from dataclasses import replace

from tests.servers import FAST, SERVER_KEY, running_server
from whatsap2p.net.simulated import SimulatedUser
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
