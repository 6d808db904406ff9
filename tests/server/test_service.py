"""The directory server on a real socket: registration rules, timeouts, hostile clients."""

from __future__ import annotations

import asyncio
import struct

import pytest

from tests.servers import FAST, WatchedDirectory, running_server
from whatsap2p.config import Limits, Timeouts
from whatsap2p.errors import NumberAlreadyOnline
from whatsap2p.net.directory_client import DirectoryClient
from whatsap2p.protocol import events as ev

ALICE, BOB = "+5511999990001", "+5511999990002"


async def client(port: int) -> DirectoryClient:
    return await DirectoryClient.connect("127.0.0.1", port, Limits(), FAST)


async def test_register_lookup_and_unregister() -> None:
    async with running_server() as (_, port):
        alice, bob = await client(port), await client(port)
        published = await alice.register(ALICE, 4001)
        assert published == ev.Registered(published.rid, ALICE, "127.0.0.1", 4001)
        await bob.register(BOB, 4002, host="192.0.2.7")
        found = await alice.lookup([BOB, "+5511999990009"])
        assert found == {BOB: ev.PeerAddress(BOB, "192.0.2.7", 4002)}
        await bob.unregister()
        assert await alice.lookup([BOB]) == {}
        await alice.close()
        await bob.close()


async def test_one_live_registration_per_number() -> None:
    async with running_server() as (server, port):
        first, second = await client(port), await client(port)
        await first.register(ALICE, 4001)
        with pytest.raises(NumberAlreadyOnline):
            await second.register(ALICE, 4002)
        # the refused one may still register another number on its connection
        await second.register(BOB, 4002)
        assert await server.directory.count() == 2
        await first.close()
        await second.close()


async def test_closing_the_connection_takes_the_user_offline() -> None:
    directory = WatchedDirectory()
    async with running_server(directory=directory) as (server, port):
        alice, bob = await client(port), await client(port)
        await alice.register(ALICE, 4001)
        await bob.register(BOB, 4002)
        alice._writer.transport.abort()  # like a killed process: no unregister
        await asyncio.wait_for(directory.went_offline[ALICE].wait(), 5)
        assert await bob.lookup([ALICE]) == {}
        assert await server.directory.count() == 1
        await bob.close()


async def test_silent_connection_is_dropped_when_heartbeats_stop() -> None:
    timeouts = Timeouts(server_idle=0.3, register_deadline=0.3)
    async with running_server(timeouts) as (server, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        silent = DirectoryClient(reader, writer, Limits(), Timeouts(heartbeat_interval=3600))
        await silent.register(ALICE, 4001)
        assert await server.directory.count() == 1
        await asyncio.wait_for(silent.closed.wait(), 5)  # the server hung up
        assert await server.directory.count() == 0
        await silent.close()


async def test_heartbeats_keep_a_quiet_user_online() -> None:
    async with running_server(Timeouts(server_idle=0.5)) as (server, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        alive = DirectoryClient(reader, writer, Limits(), Timeouts(heartbeat_interval=0.1))
        await alive.register(ALICE, 4001)
        await asyncio.sleep(1.5)  # the property is about time passing: 3x the idle timeout
        assert await server.directory.count() == 1
        assert not alive.closed.is_set()
        await alive.close()


async def test_a_connection_that_never_registers_is_dropped() -> None:
    async with running_server(Timeouts(register_deadline=0.2)) as (_, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        struct.pack(">BI", 1, 2**31) + b"x" * 100,
        struct.pack(">BI", 1, 3) + b"\xc1\xc1\xc1",
        bytes(range(256)) * 40,
    ],
)
async def test_garbage_is_refused_while_others_keep_working(garbage: bytes) -> None:
    async with running_server() as (_, port):
        alice = await client(port)
        await alice.register(ALICE, 4001)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(garbage)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5)  # then the server closes
        assert b"protocol-error" in answer
        writer.close()
        bob = await client(port)
        await bob.register(BOB, 4002)
        assert list(await bob.lookup([ALICE])) == [ALICE]
        await alice.close()
        await bob.close()


async def test_a_stalled_client_does_not_stall_the_others() -> None:
    async with running_server() as (_, port):
        # half a frame, then nothing: its task waits, nobody else does
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(struct.pack(">BI", 1, 100) + b"\x80")
        await writer.drain()
        users = [await client(port) for _ in range(20)]
        for i, user in enumerate(users):
            await user.register(f"+55119999900{i:02d}", 4000 + i)
        found = await users[0].lookup([f"+55119999900{i:02d}" for i in range(20)])
        assert len(found) == 20
        for user in users:
            await user.close()
        writer.close()
