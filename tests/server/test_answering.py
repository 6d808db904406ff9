"""How the server answers a connection's requests: in the order they came, whether the
directory answers at once or must be awaited, from any of its calls; a failing store, a
bug or a closed connection ends no more than it must."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable

import pytest

from tests.memory import MemoryNetwork
from tests.servers import directory_client, running_server
from whatsap2p.config import RateLimits
from whatsap2p.errors import (
    NoRelay,
    NumberAlreadyOnline,
    NumberBound,
    RateLimited,
    ServerRefused,
    ServerUnreachable,
    StoreError,
)
from whatsap2p.lan import may_dial_back
from whatsap2p.net.directory_client import DirectoryClient
from whatsap2p.protocol import events as ev
from whatsap2p.protocol.keys import StaticKey
from whatsap2p.server.directory import Bind, Found, MemoryDirectory, Refused, Spend

ALICE, BOB, CAROL = "+5511999990001", "+5511999990002", "+5511999990003"
DAVE, ERIN = "+5511999990004", "+5511999990005"
#: Looking this number up is a bug in the directories below.
BUGGY = "+5511999990666"


class HeldLookups(MemoryDirectory):
    """Lookups wait until `release` is set (`asked` says one is waiting, `cancelled` that
    one was cancelled while waiting)."""

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


async def test_answers_keep_the_order_of_requests_when_a_lookup_must_be_awaited() -> None:
    directory = HeldLookups()
    async with running_server(directory=directory) as (_, port):
        bob_key = StaticKey.generate()
        bob = await directory_client(port, bob_key)
        await bob.register(BOB, 4002)
        bob_at = ev.PeerAddress(BOB, "127.0.0.1", 4002, bob_key.public)
        alice = await directory_client(port)
        await alice.register(ALICE, 4001)
        came: list[int] = []

        async def answered(index: int, request: Awaitable[object]) -> object:
            result = await request
            came.append(index)
            return result

        watched = asyncio.create_task(answered(0, alice.watch([BOB, CAROL])))
        await asyncio.wait_for(directory.asked.wait(), 5)  # held at the directory
        behind = [
            asyncio.create_task(answered(1, alice.ping())),
            asyncio.create_task(answered(2, alice.lookup([BOB]))),
            asyncio.create_task(answered(3, alice.ping())),
        ]
        done, _ = await asyncio.wait(behind, timeout=0.2)
        assert not done  # nothing is answered before the watch ahead of it
        directory.release.set()
        results = [await watched] + [await request for request in behind]
        assert came == [0, 1, 2, 3]
        assert results == [{BOB: bob_at}, None, {BOB: bob_at}, None]
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


async def test_a_closed_connection_stops_waiting_for_its_answers() -> None:
    directory = HeldLookups()
    async with running_server(directory=directory) as (_, port):
        alice = await directory_client(port)
        await alice.register(ALICE, 4001)
        asked = asyncio.create_task(alice.lookup([ALICE]))
        await asyncio.wait_for(directory.asked.wait(), 5)
        await alice.close()
        with pytest.raises(ServerUnreachable):
            await asked
        await asyncio.wait_for(directory.cancelled.wait(), 5)
        # the server goes on serving others, the same way
        directory.release.set()
        bob = await directory_client(port)
        await bob.register(BOB, 4002)
        assert list(await bob.lookup([BOB])) == [BOB]
        await bob.close()


@pytest.mark.parametrize("directory", [MemoryDirectory, SuspendsEverywhere])
async def test_an_unregistered_connection_is_closed_by_the_server(
    directory: type[MemoryDirectory],
) -> None:
    # (it used to stay open with no deadline at all, holding its slot for ever)
    async with running_server(directory=directory()) as (server, port):
        alice = await directory_client(port)
        await alice.register(ALICE, 4001)
        await alice.unregister()
        await asyncio.wait_for(alice.closed.wait(), 5)
        assert not server.connections


@pytest.mark.parametrize(
    "junk",
    ["0.0.0.0", "224.0.0.1", "169.254.169.254", "255.255.255.255", "::", "fe80::1",
     "example.com", "a\nb\x1b[2J"],
)  # fmt: skip
async def test_an_advertised_address_the_directory_cannot_vouch_for_is_refused(
    junk: str,
) -> None:
    async with running_server() as (server, port):
        alice = await directory_client(port)
        with pytest.raises(ServerRefused, match=r"advertised host must be an IP|connect to"):
            await alice.register(ALICE, 4001, junk)
        assert await server.directory.count() == 0  # nothing published
        assert (await alice.register(ALICE, 4001)).host == "127.0.0.1"  # it may try again
        await alice.close()


async def test_loopback_and_lan_addresses_go_only_to_where_they_mean_something() -> None:
    network = MemoryNetwork()
    async with running_server(network=network) as (_, port):

        async def register(host_seen: str, phone: str, advertised: str) -> str:
            key = StaticKey.generate()
            client = await DirectoryClient.connect(
                "127.0.0.1", port, key, network=network.at(host_seen)
            )
            try:
                return (await client.register(phone, 4001, advertised)).host
            finally:
                await client.close()

        assert await register("127.0.0.1", ALICE, "127.0.0.5") == "127.0.0.5"  # same machine
        assert await register("10.0.0.7", BOB, "192.168.1.5") == "192.168.1.5"  # same LAN
        assert await register("203.0.113.7", CAROL, "198.51.100.9") == "198.51.100.9"
        with pytest.raises(ServerRefused, match="loopback"):
            await register("203.0.113.8", "+5511999990004", "127.0.0.1")
        with pytest.raises(ServerRefused, match="private address"):
            await register("203.0.113.9", "+5511999990005", "10.0.0.5")


async def test_a_lan_address_goes_only_to_lookers_behind_the_same_router() -> None:
    network = MemoryNetwork()
    router, elsewhere = "203.0.113.101", "203.0.113.50"
    async with running_server(network=network) as (_, port):

        async def client(host_seen: str, key: StaticKey | None = None) -> DirectoryClient:
            return await DirectoryClient.connect(
                "127.0.0.1", port, key or StaticKey.generate(), network=network.at(host_seen)
            )

        bob_key = StaticKey.generate()
        bob = await client(router, bob_key)  # behind the router, at 10.1.0.2 on its LAN
        assert (await bob.register(BOB, 4002, local="10.1.0.2")).host == router
        neighbour, stranger = await client(router), await client(elsewhere)
        told: dict[DirectoryClient, asyncio.Queue[ev.PeerAddress]] = {}
        for watcher in (neighbour, stranger):
            told[watcher] = queue = asyncio.Queue[ev.PeerAddress]()
            watcher.on_online = queue.put_nowait
        await neighbour.register(ALICE, 4001)
        await stranger.register(CAROL, 4003)
        assert (await neighbour.lookup([BOB]))[BOB].local == "10.1.0.2"
        # others are told only that bob sits behind a router (they ask him to connect back)
        seen = (await stranger.lookup([BOB]))[BOB]
        assert (seen.local, seen.nat) == (None, True)
        assert (await stranger.lookup([BOB]))[BOB].host == router
        # the same for watches, and for what a watch is told when the number comes back
        assert (await neighbour.watch([BOB]))[BOB].local == "10.1.0.2"
        assert (await stranger.watch([BOB]))[BOB].local is None
        await bob.unregister()
        await bob.close()
        bob = await client(router, bob_key)
        await bob.register(BOB, 4002, local="10.1.0.2")
        assert (await asyncio.wait_for(told[neighbour].get(), 5)).local == "10.1.0.2"
        assert (await asyncio.wait_for(told[stranger].get(), 5)).local is None
        # a local address must be a LAN one; a module the server sees on a LAN keeps none
        with pytest.raises(ServerRefused, match="not a private LAN address"):
            await (await client("203.0.113.102")).register(DAVE, 4004, local="198.51.100.1")
        lan = await client("10.9.0.5")
        await lan.register(ERIN, 4005, local="10.9.0.5")
        seen = (await neighbour.lookup([ERIN]))[ERIN]
        assert (seen.local, seen.nat) == (None, False)
        # nor one that advertises another address than the one it is seen at (anyone
        # could otherwise claim the victim's router and hand them a LAN host to dial)
        mallory = await client("198.51.100.66")
        await mallory.register("+5511999990006", 80, router, local="192.168.1.1")
        assert (await neighbour.lookup(["+5511999990006"]))["+5511999990006"].local is None
        await mallory.close()
        for each in (bob, neighbour, stranger, lan):
            await each.close()


async def test_a_request_to_connect_back_carries_the_askers_own_address() -> None:
    network = MemoryNetwork()
    rates = RateLimits(reverse_burst=5, reverse_rate=0.001)
    async with running_server(network=network, rates=rates) as (server, port):

        async def client(host_seen: str, key: StaticKey) -> DirectoryClient:
            return await DirectoryClient.connect(
                "127.0.0.1", port, key, network=network.at(host_seen)
            )

        bob_key, alice_key = StaticKey.generate(), StaticKey.generate()
        bob = await client("203.0.113.101", bob_key)  # behind a router
        await bob.register(BOB, 4002)
        dials: asyncio.Queue[ev.Dial | ev.Relayed] = asyncio.Queue()
        bob.on_dial = dials.put_nowait
        alice = await client("198.51.100.7", alice_key)
        await alice.register(ALICE, 4001, "198.51.100.99")  # claims another address
        token = bytes(range(16))
        reversing = await alice.reverse(BOB, token, 40000)  # (and punching from 40000)
        assert reversing.host == "203.0.113.101"  # where bob is seen, to punch towards
        assert reversing.port is not None
        dial = await asyncio.wait_for(dials.get(), 5)
        assert isinstance(dial, ev.Dial)
        assert dial.punch == 40000  # (at the address alice is seen at)
        # where the server sees alice, never where she claims to be
        assert dial.peer == ev.PeerAddress(ALICE, "198.51.100.7", 4001, alice_key.public)
        assert dial.token == token
        assert server.metrics.reversals == 1
        with pytest.raises(ServerRefused, match="not online at this server"):
            await alice.reverse(CAROL, token)
        with pytest.raises(ServerRefused, match="not online at this server"):
            await alice.reverse(ALICE, token)  # (herself)
        for _ in range(2):
            await alice.reverse(BOB, token)
        with pytest.raises(RateLimited):  # five in a burst, then hardly any
            await alice.reverse(BOB, token)
        assert dials.qsize() == 2
        for each in (alice, bob):
            await each.close()


async def test_connections_reported_are_counted_by_route_and_rendezvous_by_outcome() -> None:
    network = MemoryNetwork()
    rates = RateLimits(report_burst=6, report_rate=0.001)
    async with running_server(network=network, rates=rates) as (server, port):

        async def client(host_seen: str) -> DirectoryClient:
            return await DirectoryClient.connect(
                "127.0.0.1", port, StaticKey.generate(), network=network.at(host_seen)
            )

        bob = await client("203.0.113.101")
        await bob.register(BOB, 4002)
        alice = await client("198.51.100.7")
        await alice.register(ALICE, 4001)
        asked, made_up = bytes(range(16)), bytes(16)
        await alice.reverse(BOB, asked, 40000)
        await alice.report("direct")
        await alice.report("lan")
        await alice.report("punched", made_up)  # (no such request: not a rendezvous)
        await alice.report("punched", asked)
        await alice.report("none", asked)  # (that one was reported already)
        metrics = server.metrics
        assert [metrics.connections(r) for r in ("direct", "lan", "punched", "none")] == [
            1,
            1,
            2,
            1,
        ]
        assert [metrics.rendezvous(r) for r in ("punched", "none", "direct")] == [1, 0, 0]
        await alice.report("reverse")
        with pytest.raises(RateLimited):
            await alice.report("reverse")
        assert metrics.connections("reverse") == 1
        with pytest.raises(ServerUnreachable):  # not a route: the server hangs up
            await alice.request(ev.Report(alice.next_rid(), "carrier-pigeon"))
        for each in (alice, bob):
            await each.close()


async def test_a_relay_introduction_gives_both_the_relays_and_one_ticket() -> None:
    network = MemoryNetwork()
    relays = (ev.RelayAddress("203.0.113.20", 5560),)

    async def client(port: int, host_seen: str) -> DirectoryClient:
        return await DirectoryClient.connect(
            "127.0.0.1", port, StaticKey.generate(), network=network.at(host_seen)
        )

    async with running_server(network=network) as (_, port):  # (no relay)
        alice = await client(port, "198.51.100.7")
        await alice.register(ALICE, 4001)
        with pytest.raises(NoRelay, match="no relay"):
            await alice.relay(BOB)
        await alice.close()
    rates = RateLimits(reverse_burst=2, reverse_rate=0.001)
    async with running_server(network=network, relays=relays, rates=rates) as (server, port):
        bob = await client(port, "203.0.113.101")
        await bob.register(BOB, 4002)
        pushed: list[ev.Relayed] = []
        bob.on_relayed = pushed.append
        alice = await client(port, "198.51.100.7")
        await alice.register(ALICE, 4001)
        relaying = await alice.relay(BOB)
        await bob.ping()  # (anything pushed comes before this answer)
        (relayed,) = pushed
        assert (relayed.peer.phone, relayed.peer.host) == (ALICE, "198.51.100.7")
        assert (
            (relayed.relays, relayed.ticket)
            == (relays, relaying.ticket)
            == (relays, relaying.ticket)
        )
        assert server.metrics.relayed == 1
        with pytest.raises(ServerRefused, match="not online"):
            await alice.relay(ALICE)  # (herself)
        with pytest.raises(RateLimited):  # the same buckets as requests to connect back
            await alice.relay(BOB)
        for each in (alice, bob):
            await each.close()


async def test_a_request_to_connect_back_never_points_a_module_at_its_own_machine() -> None:
    # From the server's own machine (or behind a local proxy) a client is seen at
    # loopback: asking a module elsewhere to connect there would point it at itself.
    network = MemoryNetwork()
    async with running_server(network=network) as (_, port):
        bob = await DirectoryClient.connect(
            "127.0.0.1", port, StaticKey.generate(), network=network.at("203.0.113.101")
        )
        await bob.register(BOB, 4002)
        dials: list[ev.Dial | ev.Relayed] = []
        bob.on_dial = dials.append
        for seen in ("127.0.0.1", "10.0.0.2"):
            mallory = await DirectoryClient.connect(
                "127.0.0.1", port, StaticKey.generate(), network=network.at(seen)
            )
            await mallory.register(ALICE if seen.startswith("127") else CAROL, 6379)
            with pytest.raises(ServerRefused, match="would mean this machine or network"):
                await mallory.reverse(BOB, bytes(16))
            await mallory.close()
        await bob.ping()  # (anything pushed would have come before this answer)
        assert dials == []
        await bob.close()


@pytest.mark.parametrize(
    ("target", "server", "allowed"),
    [
        ("203.0.113.7", "203.0.113.10", True),
        ("127.0.0.1", "127.0.0.1", True),  # all on the server's machine
        ("127.0.0.1", "203.0.113.10", False),  # our own machine, not the asker
        ("10.1.0.5", "10.1.0.1", True),  # the server on our LAN
        ("10.1.0.5", "203.0.113.10", False),  # our own LAN, not the asker
        ("0.0.0.0", "127.0.0.1", False),
        ("224.0.0.1", "203.0.113.10", False),
        ("169.254.169.254", "203.0.113.10", False),
        ("::ffff:127.0.0.1", "203.0.113.10", False),  # IPv4 written as IPv6 is IPv4
        ("::ffff:192.168.1.1", "203.0.113.10", False),
    ],
)
def test_a_module_connects_back_only_where_the_asker_can_be(
    target: str, server: str, allowed: bool
) -> None:
    assert may_dial_back(target, server) is allowed
