"""Several directory servers sharing one real redis-server (no mock): lookups, one live
registration per number, bindings, presence pushes, unregistering and expiry, and
requests to connect back passed on to the server the module asked is connected to."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import TypeVar

import msgpack
import pytest
import redis.asyncio as aioredis

from tests.redis_server import free_port
from tests.servers import FAST, RELAY_SECRET, directory_client, running_server
from whatsap2p.config import RateLimits, Timeouts
from whatsap2p.errors import (
    NumberAlreadyOnline,
    NumberBound,
    RateLimited,
    ServerRefused,
    StoreUnavailable,
)
from whatsap2p.net.directory_client import DirectoryClient
from whatsap2p.protocol import events as ev
from whatsap2p.protocol.keys import StaticKey
from whatsap2p.protocol.relay import pair_of, verify
from whatsap2p.server.redis_store import ANSWER_WITHIN, DEFAULT_TTL, RedisDirectory, least_ttl
from whatsap2p.server.service import DirectoryServer

T = TypeVar("T")
ALICE, BOB, CAROL = "+5511999990001", "+5511999990002", "+5511999990003"


class Servers:
    def __init__(self, stack: AsyncExitStack, url: str) -> None:
        self.stack, self.url = stack, url

    async def start(
        self,
        ttl: float = DEFAULT_TTL,
        rates: RateLimits | None = None,
        answer_within: float = ANSWER_WITHIN,
        relays: tuple[ev.RelayAddress, ...] = (),
    ) -> tuple[DirectoryServer, int]:
        directory = RedisDirectory(self.url, ttl=ttl, answer_within=answer_within)
        server = running_server(directory=directory, rates=rates, relays=relays)
        return await self.stack.enter_async_context(server)


@pytest.fixture
async def servers(redis_url: str) -> AsyncIterator[Servers]:
    async with AsyncExitStack() as stack:
        yield Servers(stack, redis_url)


async def test_a_user_registered_on_one_server_is_found_on_the_others(servers: Servers) -> None:
    (_, port_a), (_, port_b), (_, port_c) = [await servers.start() for _ in range(3)]
    alice_key = StaticKey.generate()
    alice = await directory_client(port_a, alice_key)
    await alice.register(ALICE, 4001)
    bob = await directory_client(port_b)
    await bob.register(BOB, 4002)
    asker = await directory_client(port_c)
    await asker.register(CAROL, 4003)
    found = await asker.lookup([ALICE, BOB, "+5511999990004"])
    assert sorted(found) == [ALICE, BOB]
    assert (found[ALICE].port, found[ALICE].key) == (4001, alice_key.public)
    for client in (alice, bob, asker):
        await client.close()


async def test_one_live_registration_per_number_and_one_key_per_number(
    servers: Servers,
) -> None:
    (_, port_a), (_, port_b) = await servers.start(), await servers.start()
    key = StaticKey.generate()
    first = await directory_client(port_a, key)
    await first.register(ALICE, 4001)
    thief = await directory_client(port_b)  # another key: the number is bound
    with pytest.raises(NumberBound):
        await thief.register(ALICE, 4009)
    await thief.close()

    # the rightful key again, from the other server (its module failed over): it takes
    # the number over, and the first server drops the old connection at its heartbeat
    second = await directory_client(port_b, key)
    await second.register(ALICE, 4002)
    asker = await directory_client(port_a)
    await asker.register(CAROL, 4003)
    assert (await asker.lookup([ALICE]))[ALICE].port == 4002
    await first.ping()  # answered; its renewal finds the number taken: dropped
    await asyncio.wait_for(first.closed.wait(), 5)
    assert (await asker.lookup([ALICE]))[ALICE].port == 4002  # the old one removed nothing
    for client in (first, second, asker):
        await client.close()


async def test_a_number_online_on_a_live_connection_is_refused_to_the_same_server(
    servers: Servers,
) -> None:
    _, port = await servers.start()
    key = StaticKey.generate()
    first = await directory_client(port, key)
    await first.register(ALICE, 4001)
    second = await directory_client(port, key)
    await second.register(ALICE, 4002)  # the same key: a reconnecting module wins
    other = await directory_client(port)
    with pytest.raises((NumberBound, NumberAlreadyOnline)):
        await other.register(ALICE, 4003)
    for client in (first, second, other):
        await client.close()


async def test_presence_is_pushed_across_servers(servers: Servers) -> None:
    (_, port_a), (_, port_b) = await servers.start(), await servers.start()
    carol = await directory_client(port_a)
    await carol.register(CAROL, 4003)
    pushed: asyncio.Queue[ev.PeerAddress] = asyncio.Queue()
    carol.on_online = pushed.put_nowait
    assert await carol.watch([BOB]) == {}
    bob = await directory_client(port_b)
    await bob.register(BOB, 4002)
    address = await asyncio.wait_for(pushed.get(), 5)
    assert (address.phone, address.port) == (BOB, 4002)
    assert pushed.empty()  # once, although every server heard it
    for client in (carol, bob):
        await client.close()


async def test_unregistering_and_disconnecting_are_seen_everywhere(servers: Servers) -> None:
    (_, port_a), (_, port_b) = await servers.start(), await servers.start()
    asker = await directory_client(port_a)
    await asker.register(CAROL, 4003)
    bob_key = StaticKey.generate()
    bob = await directory_client(port_b, bob_key)
    await bob.register(BOB, 4002)
    assert BOB in await asker.lookup([BOB])
    await bob.unregister()
    assert await asker.lookup([BOB]) == {}
    await bob.close()
    bob = await directory_client(port_b, bob_key)
    await bob.register(BOB, 4002)
    assert BOB in await asker.lookup([BOB])
    await bob.close()  # the connection ends: the server removes the registration
    async with asyncio.timeout(5):
        while await asker.lookup([BOB]):
            await asker.ping()  # one round trip later the removal has run
    await asker.close()


async def test_a_registration_nobody_renews_expires(servers: Servers, redis_url: str) -> None:
    server, port = await servers.start(ttl=0.5)
    bob = await directory_client(port)
    await bob.register(BOB, 4002)
    assert await server.directory.count() == 1
    events = aioredis.Redis.from_url(redis_url)
    expired = events.pubsub()
    await expired.subscribe("__keyevent@0__:expired")
    try:
        # no heartbeat comes within the TTL (its module hangs, or its server died)
        async with asyncio.timeout(10):
            async for message in expired.listen():
                if message["type"] == "message" and BOB.encode() in message["data"]:
                    break
        assert await server.directory.count() == 0
        await bob.ping()  # the module was only slow: its heartbeat puts it back
        assert isinstance(server.directory, RedisDirectory)
        await server.directory.flush()  # (renewals go out in batches)
        assert await server.directory.count() == 1
    finally:
        await expired.aclose()  # type: ignore[no-untyped-call]
        await events.aclose()
        await bob.close()


async def test_bindings_are_released_by_the_operator(servers: Servers, redis_url: str) -> None:
    _, port = await servers.start()
    owner = await directory_client(port)
    await owner.register(ALICE, 4001)
    await owner.close()
    operator = RedisDirectory(redis_url)
    try:
        assert await operator.key_of(ALICE) is not None
        assert await operator.release(ALICE)
        assert not await operator.release(ALICE)
    finally:
        await operator.close()
    newcomer = await directory_client(port)
    await newcomer.register(ALICE, 4009)  # a new key may take it now
    await newcomer.close()


async def alice_on_a_bob_on_b(stack: AsyncExitStack, url: str) -> tuple[int, DirectoryClient]:
    """Two servers on the directory at `url`, alice registered on the first and bob on
    the second (both closed with `stack`); returns the first's port and bob."""
    servers = Servers(stack, url)
    (_, port_a), (_, port_b) = await servers.start(), await servers.start()
    alice = await directory_client(port_a)
    stack.push_async_callback(alice.close)
    await alice.register(ALICE, 4001)
    bob = await directory_client(port_b)
    stack.push_async_callback(bob.close)
    await bob.register(BOB, 4002)
    return port_a, bob


async def test_servers_find_redis_through_sentinel(redis_url: str) -> None:
    from tests.redis_server import redis_sentinel

    with redis_sentinel(redis_url) as sentinel_url:
        async with AsyncExitStack() as stack:
            _, bob = await alice_on_a_bob_on_b(stack, sentinel_url)
            assert sorted(await bob.lookup([ALICE, BOB])) == [ALICE, BOB]


async def served(ask: Callable[[], Awaitable[T]]) -> T:
    """`ask()`'s answer, asked again while the store is `unavailable` (10 s at most)."""
    async with asyncio.timeout(10):
        while True:
            try:
                return await ask()
            except StoreUnavailable:
                await asyncio.sleep(0.1)


async def test_servers_follow_a_sentinel_failover() -> None:
    """The master dies; the sentinel promotes its replica; the servers, told only of the
    sentinel, find the new master: what was registered before (replicated) is still
    found, and new registrations are written to the new master."""
    import signal

    from tests.redis_server import redis_process, redis_sentinel

    with (
        redis_process() as (master_url, master),
        redis_process("--replicaof", "127.0.0.1", master_url.split(":")[2].split("/")[0]),
    ):
        admin = aioredis.Redis.from_url(master_url)

        async def replicated() -> None:
            """Until the replica has every write so far. WAIT waits for this connection's
            own writes (up to 1 s a time): one write here comes after all the others in
            the replication stream."""
            await admin.incr("test:writes")
            async with asyncio.timeout(30):
                while await admin.wait(1, 1000) < 1:
                    continue

        await replicated()
        with redis_sentinel(master_url) as sentinel_url:
            async with AsyncExitStack() as stack:
                port_a, bob = await alice_on_a_bob_on_b(stack, sentinel_url)
                await replicated()
                await admin.aclose()
                port = int(sentinel_url.split(":")[2].split("/")[0])
                sentinel = aioredis.Redis(port=port)
                switches = sentinel.pubsub()
                await switches.subscribe("+switch-master")
                try:
                    master.send_signal(signal.SIGKILL)
                    async with asyncio.timeout(30):
                        async for message in switches.listen():
                            if message["type"] == "message":
                                break  # the replica is the master now
                finally:
                    await switches.aclose()  # type: ignore[no-untyped-call]
                    await sentinel.aclose()
                # (`unavailable` for as long as the servers take to follow, in moments
                # after: a module asks again, as here)
                assert sorted(await served(lambda: bob.lookup([ALICE, BOB]))) == [ALICE, BOB]

                async def carol_registers() -> DirectoryClient:
                    carol = await directory_client(port_a)  # (a module's next try: anew)
                    stack.push_async_callback(carol.close)
                    await carol.register(CAROL, 4003)
                    return carol

                await served(carol_registers)
                assert CAROL in await served(lambda: bob.lookup([CAROL]))


def test_a_wrong_sentinel_url_is_a_clear_error() -> None:
    from whatsap2p.errors import StoreError

    for url in ("sentinel://nohost/x/0", "sentinel://127.0.0.1:1/", "sentinel://h:1/s/db"):
        with pytest.raises(StoreError, match="not a sentinel URL"):
            RedisDirectory(url)


async def test_a_redis_that_goes_away_is_reported_and_comes_back() -> None:
    from tests.redis_server import redis_server
    from whatsap2p.errors import ServerRefused

    with redis_server() as url:
        async with AsyncExitStack() as stack:
            _, port = await Servers(stack, url).start()
            alice = await directory_client(port)
            await alice.register(ALICE, 4001)
            admin = aioredis.Redis.from_url(url)
            assert ALICE in await alice.lookup([ALICE])
            await admin.client_kill_filter(_type="normal", skipme=True)
            await admin.config_set("requirepass", "locked")  # Redis says no to the servers
            with pytest.raises(ServerRefused, match="unavailable"):
                await alice.lookup([ALICE])
            await admin.auth("locked")
            await admin.config_set("requirepass", "")
            await admin.aclose()
            assert ALICE in await alice.lookup([ALICE])  # the same connection, served again
            await alice.close()


async def test_a_source_ip_has_one_budget_across_all_servers(servers: Servers) -> None:
    """Per-IP buckets live in Redis: moving to another server does not refill them."""
    rates = RateLimits(ip_lookup_rate=0.001, ip_lookup_burst=10, ip_register_rate=0.001)
    (_, port_a), (_, port_b) = await servers.start(rates=rates), await servers.start(rates=rates)
    alice = await directory_client(port_a)
    await alice.register(ALICE, 4001)
    numbers = [f"+55119999911{i:02d}" for i in range(8)]
    assert await alice.lookup(numbers) == {}  # 8 of the IP's 10 tokens
    bob = await directory_client(port_b)
    await bob.register(BOB, 4002)
    assert await bob.lookup(numbers[:2]) == {}  # new numbers for bob: the last 2 tokens
    with pytest.raises(RateLimited):
        await bob.lookup(["+5511999991199"])
    with pytest.raises(RateLimited):
        await alice.lookup(["+5511999991198"])
    for client in (alice, bob):
        await client.close()


async def dialled(port: int, phone: str) -> tuple[DirectoryClient, int, asyncio.Queue[ev.Dial]]:
    """`phone` registered through the server at `port`, from a port of its own: the
    client, that port, and the dials pushed to it."""
    local_port = free_port()
    client = await DirectoryClient.connect(
        "127.0.0.1", port, StaticKey.generate(), timeouts=FAST, local_port=local_port
    )
    await client.register(phone, 4000 + int(phone[-1]))
    dials: asyncio.Queue[ev.Dial] = asyncio.Queue()
    client.on_dial = dials.put_nowait
    return client, local_port, dials


async def test_a_request_to_connect_back_is_passed_on_to_the_callees_server(
    servers: Servers,
) -> None:
    rates = RateLimits(reverse_to_rate=0.001, reverse_to_burst=2)
    (server_a, port_a), (server_b, port_b), (_, port_c) = [
        await servers.start(rates=rates) for _ in range(3)
    ]
    bob, bob_port, dials = await dialled(port_b, BOB)
    alice_key = StaticKey.generate()
    alice = await directory_client(port_a, alice_key)
    await alice.register(ALICE, 4001, "127.0.0.9")  # (claims another address)
    token = bytes(range(16))
    reversing = await alice.reverse(BOB, token, 40000)
    # where bob's server sees his connection come from: the port he connected from
    assert (reversing.host, reversing.port) == ("127.0.0.1", bob_port)
    dial = await asyncio.wait_for(dials.get(), 5)
    # where alice's server sees her, never where she claims to be; her proven key
    assert dial.peer == ev.PeerAddress(ALICE, "127.0.0.1", 4001, alice_key.public)
    assert (dial.token, dial.punch) == (token, 40000)
    # counted by the server that pushed it
    assert (server_a.metrics.reversals, server_b.metrics.reversals) == (0, 1)

    # the number's own limit holds whichever server the asks come through: bob's
    # server takes them all
    carol = await directory_client(port_c)
    await carol.register(CAROL, 4003)
    await carol.reverse(BOB, token)
    with pytest.raises(RateLimited):
        await alice.reverse(BOB, token)
    with pytest.raises(RateLimited):
        await carol.reverse(BOB, token)
    assert dials.qsize() == 1  # (carol's)
    for client in (alice, bob, carol):
        await client.close()


async def test_a_relay_introduction_is_passed_on_to_the_callees_server(servers: Servers) -> None:
    relays = (ev.RelayAddress("203.0.113.20", 5560), ev.RelayAddress("203.0.113.21", 5560))
    (server_a, port_a), (server_b, port_b) = [await servers.start(relays=relays) for _ in range(2)]
    bob = await directory_client(port_b)
    await bob.register(BOB, 4002)
    pushed: asyncio.Queue[ev.Relayed] = asyncio.Queue()
    bob.on_relayed = pushed.put_nowait
    alice_key = StaticKey.generate()
    alice = await directory_client(port_a, alice_key)
    await alice.register(ALICE, 4001, "127.0.0.9")  # (claims another address)
    relaying = await alice.relay(BOB)
    relayed = await asyncio.wait_for(pushed.get(), 5)
    assert relayed.peer == ev.PeerAddress(ALICE, "127.0.0.1", 4001, alice_key.public)
    assert relayed.relays == relaying.relays == relays
    assert relayed.ticket == relaying.ticket
    # a ticket the relays take, for the two of them
    verified = verify(RELAY_SECRET, relaying.ticket, time.time())
    assert verified.pair == pair_of(RELAY_SECRET, BOB, ALICE)
    assert (server_a.metrics.relayed, server_b.metrics.relayed) == (0, 1)
    with pytest.raises(ServerRefused, match="not online"):
        await alice.relay("+5511999990009")
    for client in (alice, bob):
        await client.close()


async def test_a_request_for_a_module_no_server_holds_is_offline(
    servers: Servers, redis_url: str
) -> None:
    (_, port_a), (server_b, port_b) = await servers.start(), await servers.start(answer_within=0.2)
    alice = await directory_client(port_b)
    await alice.register(ALICE, 4001)
    with pytest.raises(ServerRefused, match="not online"):
        await alice.reverse(BOB, bytes(16))  # never registered
    bob, _, dials = await dialled(port_a, BOB)
    await bob.unregister()
    with pytest.raises(ServerRefused, match="not online"):
        await alice.reverse(BOB, bytes(16))  # gone

    # what a lost connection leaves for a moment, or a crashed server for a while: a
    # registration whose server has no such connection, or is gone, or hears but says
    # nothing (wedged: the asker gives up in time)
    admin = aioredis.Redis.from_url(redis_url)
    silent = admin.pubsub()
    await silent.subscribe("wa:dial:feedfacefeed")
    assert isinstance(server_b.directory, RedisDirectory)

    async def left_behind(owner: str) -> None:
        record = [owner, "127.0.0.1", 4004, bytes(32)]
        await admin.set(f"wa:online:{{{CAROL}}}", msgpack.packb(record, use_bin_type=False))

    try:
        for owner, why in (
            (f"{server_b.directory.server_id}:999", "not online at this server"),
            ("0123456789ab:1", "its server is gone"),
            ("feedfacefeed:1", "its server does not answer"),
        ):
            await left_behind(owner)
            started = time.monotonic()
            with pytest.raises(ServerRefused, match=why):
                await alice.reverse(CAROL, bytes(16))
            assert time.monotonic() - started < 0.2 + 1
    finally:
        await silent.aclose()  # type: ignore[no-untyped-call]
        await admin.aclose()
    assert dials.empty()
    for client in (alice, bob):
        await client.close()


async def test_malformed_messages_on_a_servers_dial_channel_are_ignored(
    servers: Servers, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    (_, port_a), (server_b, port_b) = await servers.start(), await servers.start()
    bob, _, dials = await dialled(port_b, BOB)
    alice = await directory_client(port_a)
    await alice.register(ALICE, 4001)
    assert isinstance(server_b.directory, RedisDirectory)
    reply_to = server_b.directory.server_id
    admin = aioredis.Redis.from_url(redis_url)
    with caplog.at_level(logging.WARNING):
        for junk in (
            b"junk",
            msgpack.packb(["what", 1]),
            # a request to connect back whose token is short, and one whose port is not
            # one: pushed, either would break bob's connection (his module checks them)
            msgpack.packb(
                ["ask", 1, reply_to, BOB, ALICE, "127.0.0.1", 4001, bytes(32), b"short", None]
            ),
            msgpack.packb(
                ["ask", 1, reply_to, BOB, ALICE, "127.0.0.1", 70000, bytes(32), bytes(16), None]
            ),
            msgpack.packb(["dialled", 1, "127.0.0.1", -1]),
        ):
            assert await admin.publish(server_b.directory.dial_channel, junk) == 1
        await admin.aclose()
        # heard after those (in order on one subscription): the server still serves
        token = bytes(range(16))
        await alice.reverse(BOB, token)
        assert (await asyncio.wait_for(dials.get(), 5)).token == token
    assert caplog.text.count("ignoring a malformed message") == 5
    await bob.ping()  # (anything else pushed would have come before this answer)
    assert dials.empty()
    assert not bob.closed.is_set()
    for client in (alice, bob):
        await client.close()


async def test_a_presence_ttl_too_short_for_a_frozen_server_is_said_at_start(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A frozen server's users must stay online until their modules have moved: the last
    renewal may be a heartbeat and a batch old (10.5 s), a module waits two heartbeats
    for its server, then may meet another frozen one (connect and handshake, 10 s)."""
    assert least_ttl(Timeouts()) == 30.5 <= DEFAULT_TTL
    with caplog.at_level(logging.WARNING, "whatsap2p.server.redis_store"):
        await RedisDirectory(redis_url).close()
        assert caplog.messages == []
        await RedisDirectory(redis_url, ttl=20).close()
    [said] = caplog.messages
    assert "freezes (or loses Redis) for 9.5 s or more show offline" in said
    assert "at least 30.5 s is advised" in said
