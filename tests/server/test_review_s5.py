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
async def _started(url: str, heard: list[ev.PeerAddress] | None = None) -> AsyncIterator[
    RedisDirectory
]:
    directory = RedisDirectory(url)
    sink: list[ev.PeerAddress] = [] if heard is None else heard

    def push_dial(phone: str, dial: object) -> ev.Failure:
        return ev.Failure(0, "offline", "")

    await directory.start(sink.append, push_dial)  # type: ignore[arg-type]
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

