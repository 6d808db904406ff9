"""The directory server on a real socket: registration rules, timeouts, hostile clients."""

from __future__ import annotations

import asyncio
import struct
from dataclasses import replace
from pathlib import Path

import pytest

from tests.servers import (
    FAST,
    SERVER_KEY,
    WatchedDirectory,
    directory_client,
    running_server,
)
from whatsap2p.config import RateLimits, Timeouts
from whatsap2p.errors import NumberAlreadyOnline, NumberBound, RateLimited, ServerKeyMismatch
from whatsap2p.net.directory_client import DirectoryClient
from whatsap2p.protocol import events as ev
from whatsap2p.protocol.codec import encode_message
from whatsap2p.protocol.framing import PROTOCOL_VERSION
from whatsap2p.protocol.keys import StaticKey
from whatsap2p.server.directory import Bind, Found, MemoryDirectory, Refused, Spend

ALICE, BOB = "+5511999990001", "+5511999990002"


async def client(port: int) -> DirectoryClient:
    return await directory_client(port)


class RemoteLikeDirectory(MemoryDirectory):
    """A directory whose calls suspend, as one in another process (Redis) would (where
    MemoryDirectory answers by plain calls: hence the ignored overrides)."""

    async def register_limited(  # type: ignore[override]
        self, address: ev.PeerAddress, owner: int, spend: Spend, bind: Bind | None
    ) -> Refused:
        await asyncio.sleep(0)
        return super().register_limited(address, owner, spend, bind)

    async def lookup_limited(self, phones: list[str], spend: Spend) -> Found:  # type: ignore[override]
        await asyncio.sleep(0)
        return super().lookup_limited(phones, spend)


@pytest.mark.parametrize("directory", [MemoryDirectory, RemoteLikeDirectory])
async def test_register_lookup_and_unregister(directory: type[MemoryDirectory]) -> None:
    async with running_server(directory=directory()) as (_, port):
        bob_key = StaticKey.generate()
        alice, bob = await client(port), await directory_client(port, bob_key)
        assert alice.server_key == SERVER_KEY.public
        published = await alice.register(ALICE, 4001)
        assert published == ev.Registered(published.rid, ALICE, "127.0.0.1", 4001)
        await bob.register(BOB, 4002, host="192.0.2.7")
        found = await alice.lookup([BOB, "+5511999990009"])
        assert found == {BOB: ev.PeerAddress(BOB, "192.0.2.7", 4002, bob_key.public)}
        await bob.unregister()
        assert await alice.lookup([BOB]) == {}
        await alice.close()
        await bob.close()


class GatedDirectory(MemoryDirectory):
    """Lookups wait until the test opens the gate (the server awaits them meanwhile)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate, self.asked_once = asyncio.Event(), asyncio.Event()
        self.asked: list[list[str]] = []

    async def lookup_limited(self, phones: list[str], spend: Spend) -> Found:  # type: ignore[override]
        self.asked.append(sorted(phones))
        self.asked_once.set()
        await self.gate.wait()
        return super().lookup_limited(phones, spend)


async def test_lookups_asked_meanwhile_go_together_and_one_giving_up_leaves_the_rest() -> None:
    directory = GatedDirectory()
    async with running_server(directory=directory) as (_, port):
        alice, bob = await client(port), await client(port)
        directory.gate.set()
        await alice.register(ALICE, 4001)
        await bob.register(BOB, 4002)
        directory.gate.clear()
        first = asyncio.create_task(alice.lookup([BOB]))
        gives_up = asyncio.create_task(alice.lookup([ALICE]))
        waits = asyncio.create_task(alice.lookup([BOB, "+5511999990009"]))
        await directory.asked_once.wait()  # the first is out; the other two wait behind it
        gives_up.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gives_up
        directory.gate.set()
        assert list(await first) == [BOB]
        assert list(await waits) == [BOB]
        # One request for the first, one for the two behind it (the one that gave up
        # included: its number had been asked already).
        assert directory.asked == [[BOB], sorted([ALICE, BOB, "+5511999990009"])]
        await alice.close()
        await bob.close()


async def test_one_live_registration_per_number() -> None:
    async with running_server() as (server, port):
        key = StaticKey.generate()  # the same key twice: the binding allows it, liveness not
        first, second = await directory_client(port, key), await directory_client(port, key)
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
        alice.abort()  # like a killed process: no unregister
        await asyncio.wait_for(directory.went_offline[ALICE].wait(), 5)
        assert await bob.lookup([ALICE]) == {}
        assert await server.directory.count() == 1
        await bob.close()


async def test_silent_connection_is_dropped_when_heartbeats_stop() -> None:
    timeouts = Timeouts(server_idle=0.3, register_deadline=0.3)
    async with running_server(timeouts) as (server, port):
        silent = await directory_client(port, timeouts=replace(FAST, heartbeat_interval=3600))
        await silent.register(ALICE, 4001)
        assert await server.directory.count() == 1
        await asyncio.wait_for(silent.closed.wait(), 5)  # the server hung up
        assert await server.directory.count() == 0
        await silent.close()


async def test_heartbeats_keep_a_quiet_user_online() -> None:
    async with running_server(Timeouts(server_idle=0.5)) as (server, port):
        alive = await directory_client(port, timeouts=replace(FAST, heartbeat_interval=0.1))
        await alive.register(ALICE, 4001)
        await asyncio.sleep(1.5)  # the property is about time passing: 3x the idle timeout
        assert await server.directory.count() == 1
        assert not alive.closed.is_set()
        await alive.close()


async def test_a_connection_that_never_completes_the_handshake_is_dropped() -> None:
    async with running_server(Timeouts(handshake=0.2)) as (_, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()


async def test_a_connection_that_never_registers_is_dropped() -> None:
    async with running_server(Timeouts(register_deadline=0.2)) as (_, port):
        idle = await client(port)  # handshake done, then nothing
        await asyncio.wait_for(idle.closed.wait(), 5)
        await idle.close()


async def test_deadlines_share_one_timer_and_closed_connections_leave_it() -> None:
    # A registered user's deadline is 30 s away; a connection that comes later and never
    # registers has an earlier one (0.2 s) and is still dropped on time. Then a crowd of
    # connections is cut: the server's deadlines hold none of them any more.
    directory = WatchedDirectory()
    timeouts = Timeouts(handshake=30, server_idle=30, register_deadline=0.2)
    async with running_server(timeouts, directory=directory) as (server, port):
        alice = await directory_client(port, timeouts=replace(FAST, heartbeat_interval=3600))
        await alice.register(ALICE, 4001)
        late = await client(port)  # handshake done, then nothing
        await asyncio.wait_for(late.closed.wait(), 5)
        assert not alice.closed.is_set()
        await late.close()
        crowd = {f"+55119990{i:05d}": await client(port) for i in range(20)}
        for i, (phone, member) in enumerate(crowd.items()):
            await member.register(phone, 4100 + i)
        for member in crowd.values():
            member.abort()  # like killed processes: no unregister
        for phone in crowd:  # each taken offline once the server saw its connection lost
            await asyncio.wait_for(directory.went_offline[phone].wait(), 5)
        # alice's entry, and at most as many stale ones (dropped in bulk when they are
        # half the heap): none per connection that left
        assert len(server.deadlines) <= 2
        assert not alice.closed.is_set()
        for member in crowd.values():
            await member.close()
        await alice.close()


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
        # No secure channel, so nothing can be said: the server just hangs up.
        assert await asyncio.wait_for(reader.read(), 5) == b""
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


async def test_a_number_stays_bound_to_its_first_key(tmp_path: Path) -> None:
    db = tmp_path / "bindings.sqlite3"
    owner = StaticKey.generate()
    async with running_server(db=db) as (_, port):
        first = await directory_client(port, owner)
        await first.register(ALICE, 4001)
        await first.unregister()
        await first.close()
        impostor = await client(port)
        with pytest.raises(NumberBound, match="bound to another key"):
            await impostor.register(ALICE, 4002)
        await impostor.close()
    async with running_server(db=db) as (server, port):  # a restart keeps the binding
        impostor = await client(port)
        with pytest.raises(NumberBound):
            await impostor.register(ALICE, 4002)
        await impostor.close()
        again = await directory_client(port, owner)
        await again.register(ALICE, 4003)
        assert server.bindings is not None
        assert server.bindings.release(ALICE)
        await again.close()
        newcomer = await client(port)
        await newcomer.register(ALICE, 4004)  # released: a new key may take it
        await newcomer.close()


async def test_a_client_refuses_a_server_with_another_key() -> None:
    async with running_server() as (_, port):
        with pytest.raises(ServerKeyMismatch, match="not the expected"):
            await DirectoryClient.connect(
                "127.0.0.1", port, StaticKey.generate(), server_fingerprint="ab" * 32
            )
        ok = await DirectoryClient.connect(
            "127.0.0.1", port, StaticKey.generate(), server_fingerprint=SERVER_KEY.fingerprint
        )
        await ok.close()


async def lookups_until_limited(
    clients: list[DirectoryClient], most: int, same_number: bool = False
) -> int:
    """How many lookups (round robin over `clients`) pass before one is rate-limited:
    of a different number each time, as a scraper would, or of the same one."""
    for done in range(most):
        phone = BOB if same_number else f"+551198{done:07d}"
        try:
            await clients[done % len(clients)].lookup([phone])
        except RateLimited as exc:
            if "too many lookups" not in str(exc):
                raise
            return done
    raise AssertionError(f"{most} lookups and no rate limit")


async def test_lookup_floods_are_rate_limited_per_connection_and_per_ip() -> None:
    rates = RateLimits(lookup_rate=10, lookup_burst=20, ip_lookup_rate=50, ip_lookup_burst=100)
    async with running_server(rates=rates) as (_, port):
        flooder = await client(port)
        await flooder.register(ALICE, 4001)
        answered = await lookups_until_limited([flooder], 100)
        assert 15 <= answered <= 25  # the burst, plus what refilled meanwhile
        # Asking again for a number asked within the last second costs a tenth (a burst of
        # sends to one contact); not nothing.
        repeater = await client(port)
        await repeater.register(BOB, 4002)
        repeated = await lookups_until_limited([repeater], 1000, same_number=True)
        assert 150 <= repeated <= 400
        others = [await client(port) for _ in range(3)]
        for i, other in enumerate(others):
            await other.register(f"+55119999900{10 + i}", 4010 + i)
        spent = await lookups_until_limited(others, 200)  # the IP's bucket, across connections
        assert spent < 150
        for c in [flooder, repeater, *others]:
            await c.close()


async def test_unauthenticated_connections_per_ip_are_capped() -> None:
    async with running_server(rates=RateLimits(max_unauthenticated_per_ip=3)) as (_, port):
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # the fourth is refused
        writer.close()
        for _, w in held:
            w.close()
            await w.wait_closed()
        user = await client(port)  # once they are gone, others get in again
        await user.register(ALICE, 4001)
        await user.close()


async def test_unknown_and_known_but_offline_numbers_look_the_same() -> None:
    async with running_server() as (server, port):
        owner = await client(port)
        await owner.register(ALICE, 4001)
        await owner.unregister()
        await owner.close()
        assert server.bindings is not None
        assert server.bindings.key_of(ALICE) is not None  # known: bound, but offline
        asker = await client(port)
        await asker.register(BOB, 4002)
        raw: list[bytes] = []
        for phone in (ALICE, "+5511999990099"):  # known-offline, never seen
            rid = asker.next_rid()
            answer = await asker.request(ev.Lookup(rid, (phone,)))
            assert answer == ev.LookupResult(rid, ())
            raw.append(encode_message(ev.LookupResult(0, answer.peers)))
        assert raw[0] == raw[1]
        await asker.close()


async def test_watchers_are_told_when_a_number_comes_online() -> None:
    async with running_server() as (_, port):
        alice = await client(port)
        await alice.register(ALICE, 4001)
        came_online: asyncio.Queue[ev.PeerAddress] = asyncio.Queue()
        alice.on_online = came_online.put_nowait
        assert await alice.watch([BOB, "+5511999990009"]) == {}
        bob_key = StaticKey.generate()
        bob = await directory_client(port, bob_key)
        await bob.register(BOB, 4002)
        pushed = await asyncio.wait_for(came_online.get(), 5)
        assert pushed == ev.PeerAddress(BOB, "127.0.0.1", 4002, bob_key.public)
        await bob.close()
        # watching a number that is online answers with it at once
        again = await directory_client(port, bob_key)
        await again.register(BOB, 4003)
        assert (await asyncio.wait_for(came_online.get(), 5)).port == 4003
        assert list(await alice.watch([BOB])) == [BOB]
        await alice.watch([])  # no longer interested
        await again.close()
        third = await directory_client(port, bob_key)
        await third.register(BOB, 4004)
        await alice.lookup([BOB])  # a round trip after the registration: nothing was pushed
        assert came_online.empty()
        await third.close()
        await alice.close()


async def test_a_low_order_key_in_the_handshake_is_refused_and_others_go_on() -> None:
    async with running_server() as (_, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        # a handshake frame whose ephemeral key is all zeros
        writer.write(bytes([PROTOCOL_VERSION]) + b"\x00\x00\x00\x20" + bytes(32))
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        user = await client(port)
        await user.register(ALICE, 4001)
        await user.close()


async def test_metrics_for_the_operator() -> None:
    import urllib.request

    async with running_server() as (server, port):
        metrics_port = server.metrics.serve("127.0.0.1", 0)
        alice = await directory_client(port)
        await alice.register(ALICE, 4001)
        assert await alice.lookup([ALICE, BOB]) == {ALICE: (await alice.lookup([ALICE]))[ALICE]}
        thief = await directory_client(port)
        with pytest.raises(NumberBound):
            await thief.register(ALICE, 4002)
        await thief.close()

        def scrape() -> str:
            url = f"http://127.0.0.1:{metrics_port}/metrics"
            with urllib.request.urlopen(url, timeout=5) as answer:
                return str(answer.read().decode())

        text = await asyncio.to_thread(scrape)
        assert "whatsap2p_online_users 1.0" in text
        assert "whatsap2p_lookups_total 3.0" in text
        assert 'whatsap2p_requests_total{kind="lookup"} 2.0' in text
        assert 'whatsap2p_rejected_total{reason="number-bound"} 1.0' in text
        assert 'whatsap2p_request_seconds_count{kind="register"} 2.0' in text
        await alice.close()
