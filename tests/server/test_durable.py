"""A directory operators can trust (issue 26): bindings survive what a failover loses,
a new binding waits for a replica, the store's loss and return are said once, and a
module started while the store is down waits it out. Real redis-server processes."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.redis_server import redis_process
from tests.servers import directory_client, running_server, session_config
from whatsap2p.app.session import Session
from whatsap2p.errors import NumberBound, StoreUnavailable
from whatsap2p.protocol.keys import StaticKey
from whatsap2p.server.redis_store import RedisDirectory
from whatsap2p.server.service import DirectoryServer

ALICE, BOB = "+5511999990001", "+5511999990002"


def bind_key(phone: str) -> str:
    return f"wa:bind:{{{phone}}}"


class Store:
    """A server on a real Redis, what it tells an operator (`events`), and the Redis."""

    def __init__(self, server: DirectoryServer, port: int, admin: aioredis.Redis) -> None:
        self.server, self.port, self.admin = server, port, admin
        directory = server.directory
        assert isinstance(directory, RedisDirectory)
        self.directory = directory
        self.events: list[str] = []
        self.told = asyncio.Event()
        directory.on_event = self._heard

    def _heard(self, event: str) -> None:
        self.server.store_event(event)  # (as `whatsap2p server` has it told)
        self.events.append(event)
        self.told.set()


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[Store]:
    async with AsyncExitStack() as stack:
        server, port = await stack.enter_async_context(
            running_server(directory=RedisDirectory(redis_url))
        )
        admin = aioredis.Redis.from_url(redis_url)
        stack.push_async_callback(admin.aclose)
        yield Store(server, port, admin)


async def test_a_lost_binding_is_put_back_by_its_holders_next_renewal(store: Store) -> None:
    key = StaticKey.generate()
    alice = await directory_client(store.port, key)
    await alice.register(ALICE, 4001)
    await store.admin.delete(bind_key(ALICE))  # what a failover to a lagging replica leaves
    await alice.ping()  # a heartbeat: its renewal is gathered ...
    await store.directory.flush()  # ... and sent
    assert await store.admin.get(bind_key(ALICE)) == key.public
    assert store.events == ["binding-restored"]
    thief = await directory_client(store.port)
    with pytest.raises(NumberBound):  # another key is refused, as before the loss
        await thief.register(ALICE, 4009)
    for client in (alice, thief):
        await client.close()


async def test_a_binding_to_another_key_ends_the_registration_loudly(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    alice = await directory_client(store.port)
    await alice.register(ALICE, 4001)
    await store.admin.set(bind_key(ALICE), StaticKey.generate().public)  # not alice's key
    with caplog.at_level(logging.ERROR, "whatsap2p.server.redis_store"):
        await alice.ping()
        await store.directory.flush()
        await asyncio.wait_for(alice.closed.wait(), 5)  # the registration ends
    assert store.events == ["binding-conflict"]
    assert "binds it to another key" in caplog.text
    asker = await directory_client(store.port)
    await asker.register(BOB, 4002)
    assert ALICE not in await asker.lookup([ALICE])  # and is not published any more
    await asker.close()
    await alice.close()


async def test_a_new_binding_waits_for_a_replica_and_is_not_acknowledged_without_one() -> None:
    with (
        redis_process() as (master_url, _),
        redis_process("--replicaof", "127.0.0.1", master_url.split(":")[2].split("/")[0]) as (
            replica_url,
            replica,
        ),
    ):
        admin = aioredis.Redis.from_url(master_url)
        copy = aioredis.Redis.from_url(replica_url)
        await admin.incr("test:writes")
        async with asyncio.timeout(30):  # (the replica has synced: it answers WAIT)
            while await admin.wait(1, 1000) < 1:
                continue
        async with running_server(directory=RedisDirectory(master_url)) as (server, port):
            directory = server.directory
            assert isinstance(directory, RedisDirectory)
            assert directory.replicas == 1
            events: list[str] = []
            directory.on_event = events.append
            alice = await directory_client(port)
            await alice.register(ALICE, 4001)  # acknowledged once the replica has it
            assert await copy.get(bind_key(ALICE)) is not None

            replica.send_signal(signal.SIGSTOP)  # replication stalls (as a partition would)
            try:
                bob_key = StaticKey.generate()
                bob = await directory_client(port, bob_key)
                with pytest.raises(StoreUnavailable):
                    await bob.register(BOB, 4002)
                assert events == ["binding-unreplicated"]
                assert BOB not in await alice.lookup([BOB])  # not published
                assert await admin.get(bind_key(BOB)) == bob_key.public  # (for its key)
                thief = await directory_client(port)
                with pytest.raises(NumberBound):  # (no other key gets in meanwhile)
                    await thief.register(BOB, 4009)
                await thief.close()
                await bob.close()
            finally:
                replica.send_signal(signal.SIGCONT)
            bob = await directory_client(port, bob_key)
            await bob.register(BOB, 4002)  # the module's next try, with the replica back
            assert await copy.get(bind_key(BOB)) == bob_key.public
            for client in (alice, bob):
                await client.close()
        await admin.aclose()
        await copy.aclose()


async def test_the_store_lost_and_back_is_said_once_each(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    alice = await directory_client(store.port)
    await alice.register(ALICE, 4001)
    with caplog.at_level(logging.WARNING, "whatsap2p.server"):
        await store.admin.client_kill_filter(_type="normal", skipme=True)
        await store.admin.config_set("requirepass", "locked")  # Redis says no to the server
        for _ in range(3):
            with pytest.raises(StoreUnavailable):
                await alice.lookup([ALICE])
        await store.admin.auth("locked")
        await store.admin.config_set("requirepass", "")
        assert ALICE in await alice.lookup([ALICE])
        assert ALICE in await alice.lookup([ALICE])
    assert store.events == ["store-lost", "store-back"]
    assert caplog.text.count("directory store lost") == 1
    assert caplog.text.count("directory store back") == 1
    # the refused requests said once (not one line each), in Redis's words, one prefix,
    # and how many more once the store is back
    assert caplog.text.count("answering a lookup: directory store: ") == 2
    assert "(the last of 2 more like it since the last said)" in caplog.text
    assert [store.server.metrics.store_events(e) for e in ("store-lost", "store-back")] == [1, 1]
    assert "directory store: directory store" not in caplog.text
    await alice.close()


async def test_a_module_started_while_the_store_is_down_waits_and_registers(
    store: Store, tmp_path: Path
) -> None:
    await store.admin.config_set("requirepass", "locked")
    await store.admin.client_kill_filter(_type="normal", skipme=True)
    config = session_config(store.port, ALICE, tmp_path / "alice")
    session = Session(config)
    starting = asyncio.create_task(session.start())
    try:
        await asyncio.wait_for(store.told.wait(), 10)  # its registration met the store down
        assert store.events == ["store-lost"]
        # refused "unavailable", again and again: it does not end (nothing to await but
        # the time its pauses take: 0.1 s doubling)
        done, _ = await asyncio.wait([starting], timeout=0.5)
        assert not done
        await store.admin.auth("locked")
        await store.admin.config_set("requirepass", "")
        await asyncio.wait_for(starting, 10)
        assert session.server_connected
    finally:
        await session.close()
        if not starting.done():
            starting.cancel()


async def test_a_connection_taken_over_elsewhere_is_not_said_offline(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A server whose user moved to another server (it was frozen, say) does not log
    that user offline when the old connection closes: the user is online, elsewhere."""
    key = StaticKey.generate()
    async with (
        running_server(directory=RedisDirectory(redis_url)) as (_, port_a),
        running_server(directory=RedisDirectory(redis_url)) as (_, port_b),
    ):
        old = await directory_client(port_a, key)
        await old.register(ALICE, 4001)
        new = await directory_client(port_b, key)
        await new.register(ALICE, 4002)  # taken over, at the other server
        said = asyncio.Event()
        heard = logging.getLogger("whatsap2p.server.service")
        handler = _Said(said, "an old connection closed")
        heard.addHandler(handler)
        try:
            with caplog.at_level(logging.INFO, "whatsap2p.server.service"):
                await old.close()  # (the socket closed, as a module that gave up on it)
                await asyncio.wait_for(said.wait(), 5)
        finally:
            heard.removeHandler(handler)
        assert f"{ALICE} offline" not in caplog.text
        assert "registered through another since" in caplog.text
        assert ALICE in await new.lookup([ALICE])
        await new.close()


class _Said(logging.Handler):
    """Sets `event` when a record with `words` is logged."""

    def __init__(self, event: asyncio.Event, words: str) -> None:
        super().__init__()
        self.event, self.words = event, words

    def emit(self, record: logging.LogRecord) -> None:
        if self.words in record.getMessage():
            self.event.set()


async def test_a_released_number_is_not_kept_or_taken_back_by_its_old_key(
    store: Store, redis_url: str
) -> None:
    """The operator releases a number whose module still runs (a stolen phone, say):
    the renewals, which put a lost binding back, do not put this one back; that module's
    registration ends, its key may not take the number again for a while, and the
    owner's new key binds it."""
    stolen = StaticKey.generate()
    thief = await directory_client(store.port, stolen)
    await thief.register(ALICE, 4001)
    operator = RedisDirectory(redis_url)
    try:
        assert await operator.release(ALICE)
        assert await operator.key_of(ALICE) is None
    finally:
        await operator.close()
    await thief.ping()
    await store.directory.flush()
    await asyncio.wait_for(thief.closed.wait(), 5)  # its registration ended
    assert store.events == ["binding-conflict"]
    again = await directory_client(store.port, stolen)
    with pytest.raises(NumberBound):
        await again.register(ALICE, 4002)  # the released key may not take it back
    owner = StaticKey.generate()
    rightful = await directory_client(store.port, owner)
    await rightful.register(ALICE, 4003)  # the owner's new key binds it
    assert await store.admin.get(bind_key(ALICE)) == owner.public
    for client in (thief, again, rightful):
        await client.close()


async def test_a_registration_taken_by_a_frozen_old_master_is_not_acknowledged() -> None:
    """The master freezes; the sentinel promotes its replica; the old master resumes and
    runs on as a master (until the sentinel demotes it, ~10 s) with the server's
    connections still open to it. A registration it takes would be lost with its
    demotion: none is acknowledged unless the master the sentinel names has its binding,
    and the server moves its connections there (said once, counted)."""
    from tests.redis_server import redis_sentinel

    with (
        redis_process() as (master_url, master),
        redis_process("--replicaof", "127.0.0.1", master_url.split(":")[2].split("/")[0]),
        redis_sentinel(master_url) as sentinel_url,
    ):
        admin = aioredis.Redis.from_url(master_url)
        await admin.incr("test:writes")
        async with asyncio.timeout(30):  # (the replica has synced: it answers WAIT)
            while await admin.wait(1, 1000) < 1:
                continue
        sentinel_port = int(sentinel_url.split(":")[2].split("/")[0])
        sentinel = aioredis.Redis(port=sentinel_port)
        switches = sentinel.pubsub()
        await switches.subscribe("+switch-master")
        async with running_server(directory=RedisDirectory(sentinel_url)) as (server, port):
            directory = server.directory
            assert isinstance(directory, RedisDirectory)
            events: list[str] = []
            directory.on_event = events.append
            alice = await directory_client(port)
            await alice.register(ALICE, 4001)
            master.send_signal(signal.SIGSTOP)
            try:
                async with asyncio.timeout(30):
                    async for message in switches.listen():
                        if message["type"] == "message":
                            break  # the replica is the master now
            finally:
                master.send_signal(signal.SIGCONT)  # a master again, for a while
            acknowledged = []
            for n in range(8):  # the old master takes them until the server leaves it
                phone = f"+55119888800{n:02}"
                key = StaticKey.generate()
                client = await directory_client(port, key)
                try:
                    await client.register(phone, 4100 + n)
                    acknowledged.append((phone, key.public))
                except StoreUnavailable:
                    pass  # refused: its module tries again (at the new master)
                finally:
                    await client.close()
            host, new_port = await sentinel.execute_command(  # type: ignore[no-untyped-call]
                "SENTINEL", "get-master-addr-by-name", "mymaster"
            )
            promoted = aioredis.Redis(host=host.decode(), port=int(new_port))
            assert acknowledged  # (once the server writes to the new master)
            for phone, public in acknowledged:  # every one acknowledged is where it lasts
                assert await promoted.get(bind_key(phone)) == public
            assert "master-changed" in events
            await alice.close()
            await promoted.aclose()
        await switches.aclose()  # type: ignore[no-untyped-call]
        await sentinel.aclose()
        await admin.aclose()
