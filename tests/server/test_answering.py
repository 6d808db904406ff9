"""How the server answers a connection's requests: in the order they came, whether the
directory answers at once or must be awaited, from any of its calls; a failing store, a
bug or a closed connection ends no more than it must."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable

import pytest

from tests.servers import SERVER_KEY, directory_client, running_server
from whatsap2p.config import Limits, RateLimits
from whatsap2p.errors import (
    NumberAlreadyOnline,
    NumberBound,
    RateLimited,
    ServerRefused,
    ServerUnreachable,
    StoreError,
)
from whatsap2p.net.directory_client import client_connection
from whatsap2p.net.handshake import complete_handshake
from whatsap2p.protocol import events as ev
from whatsap2p.protocol.keys import StaticKey
from whatsap2p.server.directory import Bind, Found, MemoryDirectory, Refused, Spend

ALICE, BOB, CAROL = "+5511999990001", "+5511999990002", "+5511999990003"
#: Looking this number up is a bug in the directories below.
BUGGY = "+5511999990666"


class RawClient:
    """A directory client that sends requests as it is told, all in one write, and reads
    the answers in the order they come (DirectoryClient matches them by request id)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.conn = client_connection(StaticKey.generate(), Limits(), SERVER_KEY.fingerprint)

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        client = cls(*await asyncio.open_connection("127.0.0.1", port))
        await complete_handshake(client.reader, client.writer, client.conn, 5)
        return client

    def send(self, *requests: Callable[[int], ev.DirectoryMessage]) -> list[int]:
        """Send the requests `requests` make of a request id; their ids."""
        made = [request(self.conn.next_rid()) for request in requests]
        self.writer.write(b"".join(self.conn.send(message) for message in made))
        return [message.rid for message in made]

    async def answers(self, count: int) -> list[ev.DirectoryMessage]:
        got: list[ev.DirectoryMessage] = []
        async with asyncio.timeout(5):
            while True:
                while (message := self.conn.next_event()) is not None:
                    got.append(message)
                if len(got) >= count:
                    return got
                data = await self.reader.read(65536)
                if not data:
                    raise ConnectionError(f"closed after {got}")
                self.conn.receive_data(data)

    async def register(self, phone: str) -> None:
        self.send(lambda rid: ev.Register(rid, phone, 4000))
        [answer] = await self.answers(1)
        assert type(answer) is ev.Registered

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def lookup(*phones: str) -> Callable[[int], ev.DirectoryMessage]:
    return lambda rid: ev.Lookup(rid, phones)


def watch(*phones: str) -> Callable[[int], ev.DirectoryMessage]:
    return lambda rid: ev.Watch(rid, phones)


def ping(rid: int) -> ev.DirectoryMessage:
    return ev.Ping(rid)


class SlowLookups(MemoryDirectory):
    """Lookups that suspend, the first ones longest, so that answers in order of
    completion would not be in the order of the requests. Nothing says it suspends
    (no class attribute or flag): the server learns it from what lookup_limited gives."""

    def __init__(self) -> None:
        super().__init__()
        self.delays = [0.05, 0.02]

    async def lookup_limited(self, phones: list[str], spend: Spend) -> Found:  # type: ignore[override]
        await asyncio.sleep(self.delays.pop(0) if self.delays else 0)
        return super().lookup_limited(phones, spend)


async def test_answers_keep_the_order_of_requests_when_lookups_must_be_awaited() -> None:
    async with running_server(directory=SlowLookups()) as (_, port):
        bob_key = StaticKey.generate()
        bob = await directory_client(port, bob_key)
        await bob.register(BOB, 4002)
        bob_at = ev.PeerAddress(BOB, "127.0.0.1", 4002, bob_key.public)
        alice = await RawClient.connect(port)
        await alice.register(ALICE)
        rids = alice.send(lookup(BOB), ping, lookup(CAROL), ping, watch(BOB, CAROL), ping)
        assert await alice.answers(6) == [
            ev.LookupResult(rids[0], (bob_at,)),
            ev.Pong(rids[1]),
            ev.LookupResult(rids[2], ()),
            ev.Pong(rids[3]),
            ev.Watching(rids[4], (bob_at,)),
            ev.Pong(rids[5]),
        ]
        await alice.close()
        await bob.close()


class SuspendsEverywhere(MemoryDirectory):
    """Every call a request makes suspends, the heartbeat's and unregister's too (calls
    once assumed never to suspend); records what it finished."""

    def __init__(self) -> None:
        super().__init__()
        self.done: list[str] = []

    async def renew(self, phone: str, owner: int, taken: Callable[[], None]) -> None:  # type: ignore[override]
        await asyncio.sleep(0.01)
        super().renew(phone, owner, taken)
        self.done.append(f"renew {phone}")

    async def register_limited(  # type: ignore[override]
        self, address: ev.PeerAddress, owner: int, spend: Spend, bind: Bind | None
    ) -> Refused:
        await asyncio.sleep(0.01)
        refused = super().register_limited(address, owner, spend, bind)
        self.done.append(f"register {address.phone}: {refused}")
        return refused

    async def unregister(self, phone: str, owner: int) -> bool:
        await asyncio.sleep(0.01)
        removed = await super().unregister(phone, owner)
        self.done.append(f"unregister {phone}: {removed}")
        return removed


async def test_every_directory_call_may_suspend() -> None:
    directory = SuspendsEverywhere()
    async with running_server(directory=directory) as (_, port):
        alice = await directory_client(port)
        await alice.register(ALICE, 4001)
        await alice.ping()  # answered once the renewal is done
        assert directory.done == [f"register {ALICE}: None", f"renew {ALICE}"]
        await alice.unregister()
        assert directory.done[-1] == f"unregister {ALICE}: True"
        assert await directory.count() == 0
        await alice.close()


@pytest.mark.parametrize("directory", [MemoryDirectory, SuspendsEverywhere])
async def test_refused_registrations_are_answered_alike(directory: type[MemoryDirectory]) -> None:
    rates = RateLimits(ip_register_rate=0.001, ip_register_burst=4)
    async with running_server(directory=directory(), rates=rates) as (_, port):
        key = StaticKey.generate()
        first = await directory_client(port, key)
        await first.register(ALICE, 4001)
        online = await directory_client(port, key)  # the same key: bound, but online
        with pytest.raises(NumberAlreadyOnline, match=re.escape(f"{ALICE} is already online")):
            await online.register(ALICE, 4002)
        thief = await directory_client(port)
        with pytest.raises(NumberBound, match=re.escape(f"{ALICE} is bound to another key")):
            await thief.register(ALICE, 4003)
        await thief.register(BOB, 4004)  # the fourth: the last token
        late = await directory_client(port)
        with pytest.raises(RateLimited, match="too many registrations"):
            await late.register(CAROL, 4005)
        for client in (first, online, thief, late):
            await client.close()


class FailingStore(MemoryDirectory):
    """A store that fails lookups while `down`, at once or once awaited."""

    def __init__(self, awaited: bool) -> None:
        super().__init__()
        self.awaited, self.down = awaited, False

    def lookup_limited(  # type: ignore[override]
        self, phones: list[str], spend: Spend
    ) -> Found | Awaitable[Found]:
        return self._later(phones, spend) if self.awaited else self._now(phones, spend)

    async def _later(self, phones: list[str], spend: Spend) -> Found:
        await asyncio.sleep(0)
        return self._now(phones, spend)

    def _now(self, phones: list[str], spend: Spend) -> Found:
        if BUGGY in phones:
            raise RuntimeError("a bug")
        if self.down:
            raise StoreError("directory store: down")
        return super().lookup_limited(phones, spend)


@pytest.mark.parametrize("awaited", [False, True], ids=["at-once", "awaited"])
async def test_a_failing_store_is_reported_and_the_connection_kept(awaited: bool) -> None:
    directory = FailingStore(awaited)
    async with running_server(directory=directory) as (_, port):
        alice = await directory_client(port)
        await alice.register(ALICE, 4001)
        directory.down = True
        with pytest.raises(ServerRefused, match="directory store unavailable"):
            await alice.lookup([ALICE])
        directory.down = False
        assert list(await alice.lookup([ALICE])) == [ALICE]  # the same connection
        await alice.close()


@pytest.mark.parametrize("awaited", [False, True], ids=["at-once", "awaited"])
async def test_a_bug_closes_only_its_connection(
    awaited: bool, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_server(directory=FailingStore(awaited)) as (_, port):
        alice, bob = await directory_client(port), await directory_client(port)
        await alice.register(ALICE, 4001)
        await bob.register(BOB, 4002)
        with caplog.at_level(logging.ERROR), pytest.raises(ServerUnreachable):
            await alice.lookup([BUGGY])
        assert "unexpected error on the connection" in caplog.text
        await asyncio.wait_for(alice.closed.wait(), 5)
        assert list(await bob.lookup([BOB])) == [BOB]
        await alice.close()
        await bob.close()


class HeldLookups(MemoryDirectory):
    """Lookups wait until `release` is set; says which were cancelled while waiting."""

    def __init__(self) -> None:
        super().__init__()
        self.asked, self.release = asyncio.Event(), asyncio.Event()
        self.cancelled = asyncio.Event()

    async def lookup_limited(self, phones: list[str], spend: Spend) -> Found:  # type: ignore[override]
        self.asked.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return super().lookup_limited(phones, spend)


async def test_a_closed_connection_stops_waiting_for_its_answers() -> None:
    directory = HeldLookups()
    async with running_server(directory=directory) as (_, port):
        alice = await RawClient.connect(port)
        await alice.register(ALICE)
        alice.send(lookup(ALICE), ping, lookup(ALICE))
        await asyncio.wait_for(directory.asked.wait(), 5)
        await alice.close()
        await asyncio.wait_for(directory.cancelled.wait(), 5)
        # the server goes on serving others, the same way
        directory.release.set()
        bob = await directory_client(port)
        await bob.register(BOB, 4002)
        assert list(await bob.lookup([BOB])) == [BOB]
        await bob.close()
