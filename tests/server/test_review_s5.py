"""Review of the Sentinel master-following change (review-s5): real redis-server and
redis-sentinel processes."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from subprocess import Popen

import redis.asyncio as aioredis

from tests.redis_server import REDIS_SERVER, _running, free_port, redis_process
from whatsap2p.errors import StoreError
from whatsap2p.protocol import events as ev
from whatsap2p.protocol.keys import StaticKey
from whatsap2p.server.directory import Spend
from whatsap2p.server.redis_store import RedisDirectory

ALICE, BOB = "+5511999990001", "+5511999990002"


def _port(url: str) -> int:
    return int(url.split(":")[2].split("/")[0])


def _spend() -> Spend:
    return Spend("register", "127.0.0.1", 1000.0, 1000.0, 1.0, time.time())


def _address(phone: str, port: int = 4001) -> ev.PeerAddress:
    return ev.PeerAddress(phone, "127.0.0.1", port, StaticKey.generate().public)


async def _replicated(admin: aioredis.Redis) -> None:
    await admin.incr("test:writes")
    async with asyncio.timeout(30):
        while await admin.wait(1, 1000) < 1:
            continue


@contextlib.contextmanager
def _sentinel(master_url: str, service: str = "mymaster") -> Iterator[tuple[str, Popen[bytes]]]:
    """`tests.redis_server.redis_sentinel`, yielding its process too (to freeze it)."""
    assert REDIS_SERVER is not None
    port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        conf = f"{folder}/sentinel.conf"
        with open(conf, "w") as out:
            out.write(
                f"port {port}\nbind 127.0.0.1\ndir {folder}\n"
                f"sentinel monitor {service} 127.0.0.1 {_port(master_url)} 1\n"
                f"sentinel down-after-milliseconds {service} 1000\n"
                f"sentinel failover-timeout {service} 10000\n"
            )
        with _running([REDIS_SERVER, conf, "--sentinel"], port, "redis-sentinel") as proc:
            yield f"sentinel://127.0.0.1:{port}/{service}/0", proc


@contextlib.asynccontextmanager
async def _started(
    url: str, heard: list[ev.PeerAddress] | None = None
) -> AsyncIterator[RedisDirectory]:
    directory = RedisDirectory(url)
    sink: list[ev.PeerAddress] = [] if heard is None else heard

    def push_dial(phone: str, dial: object) -> ev.Failure:
        return ev.Failure(0, "offline", "")

    await directory.start(sink.append, push_dial)
    try:
        yield directory
    finally:
        await directory.close()


async def test_a_registration_does_not_hang_on_a_frozen_sentinel() -> None:
    """The master's replica is gone (its WAIT answers 0) and the sentinel is frozen
    (SIGSTOP: its port takes connections, it answers nothing). Before the change such a
    registration was answered in about a second (ROLE at the master). Now the check asks
    the sentinels with no socket timeout (`sentinel_kwargs` drops `socket_timeout`): the
    registration waits for as long as the sentinel is frozen."""
    with (
        redis_process() as (master_url, _),
        redis_process("--replicaof", "127.0.0.1", str(_port(master_url))) as (_, replica),
        _sentinel(master_url) as (sentinel_url, sentinel),
    ):
        admin = aioredis.Redis.from_url(master_url)
        await _replicated(admin)
        async with _started(sentinel_url) as directory:
            assert directory.replicas == 1
            await directory.register_limited(_address(ALICE), 1, _spend(), None)
            replica.kill()
            replica.wait()
            sentinel.send_signal(signal.SIGSTOP)
            try:
                started = time.monotonic()
                with contextlib.suppress(StoreError):  # refused or acknowledged: answered
                    async with asyncio.timeout(8):
                        await directory.register_limited(_address(BOB), 2, _spend(), None)
                assert time.monotonic() - started < 8, "the registration hung on the sentinel"
            finally:
                sentinel.send_signal(signal.SIGCONT)
        await admin.aclose()


async def _swap(directory: RedisDirectory) -> aioredis.Redis:
    """Make the store believe the sentinels named another master than the one it last
    saw (as after a failover): it moves to a new client. Returns the old client."""
    old: aioredis.Redis = directory._redis
    directory._master_seen = ("127.0.0.1", 1)
    await directory._leave_old_master(await directory._named_master())
    assert directory._redis is not old
    return old


def _connections(client: aioredis.Redis) -> list[object]:
    pool = client.connection_pool
    return [c for c in [*pool._available_connections, *pool._in_use_connections] if c.is_connected]


async def test_close_closes_a_client_left_for_another_master_at_once() -> None:
    """The store moved to a new client; the old one waits `RETIRE_AFTER` to be closed.
    `close()` cancels that wait but does not await it: it returns with the old client's
    connections still open (and its task still pending)."""
    with redis_process() as (master_url, _), _sentinel(master_url) as (sentinel_url, _):
        directory = RedisDirectory(sentinel_url)
        await directory.start(lambda address: None, lambda phone, dial: ev.Failure(0, "", ""))
        await directory.lookup([ALICE])
        old = await _swap(directory)
        await directory.lookup([ALICE])
        assert _connections(old)  # (the old client's connections stay for a while)
        await directory.close()
        pending = [
            t for t in asyncio.all_tasks() if t.get_name() == "retire-redis-client" and not t.done()
        ]
        assert not pending, "close() returned before the old client was closed"
        assert not _connections(old)


async def test_a_presence_published_just_after_a_master_change_is_heard() -> None:
    """After a move to a new client the subscription is dropped and made again at the
    new one, but only after the listener's 1 s pause: a registration another server
    pushes meanwhile is never heard here (a user watching that number is not told it
    came online)."""
    with redis_process() as (master_url, _), _sentinel(master_url) as (sentinel_url, _):
        heard: list[ev.PeerAddress] = []
        async with _started(sentinel_url, heard) as here, _started(sentinel_url) as there:
            await there.register_limited(_address(ALICE), 1, _spend(), None)
            await asyncio.sleep(0.5)
            assert [address.phone for address in heard] == [ALICE]
            await _swap(here)
            await asyncio.sleep(0.1)
            await there.register_limited(_address(BOB, 4002), 2, _spend(), None)
            await asyncio.sleep(2.5)
            assert BOB in [address.phone for address in heard], "BOB's presence was lost"
