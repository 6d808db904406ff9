"""Servers follow the master the sentinels name (a frozen sentinel, a frozen master):
real redis-server and redis-sentinel processes."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Callable
from functools import partial

import redis.asyncio as aioredis

from tests.redis_server import redis_process, sentinel_process
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


@contextlib.asynccontextmanager
async def _started(
    url: str, on_online: Callable[[ev.PeerAddress], None] = lambda address: None
) -> AsyncIterator[RedisDirectory]:
    directory = RedisDirectory(url)

    def push_dial(phone: str, dial: object) -> ev.Failure:
        return ev.Failure(0, "offline", "")

    await directory.start(on_online, push_dial)
    try:
        yield directory
    finally:
        await directory.close()


async def test_a_registration_does_not_hang_on_a_frozen_sentinel() -> None:
    """The master's replica is gone (its WAIT answers 0) and the sentinel is frozen
    (SIGSTOP: its port takes connections, it answers nothing). Asking the sentinels
    which master has the binding must not hold the registration (`sentinel_kwargs` once
    dropped the socket timeout: it waited as long as the sentinel was frozen); with no
    sentinel answering none can fail the master over either, so the registration is
    acknowledged as without Sentinel: the master has no replica left."""
    with (
        redis_process() as (master_url, _),
        redis_process("--replicaof", "127.0.0.1", str(_port(master_url))) as (_, replica),
        sentinel_process(master_url) as (sentinel_url, sentinel),
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
                async with asyncio.timeout(8):  # (WAIT 1 s, each sentinel asked 1 s)
                    assert (
                        await directory.register_limited(_address(BOB), 2, _spend(), None) is None
                    )
            finally:
                sentinel.send_signal(signal.SIGCONT)
        await admin.aclose()


async def test_after_a_frozen_masters_failover_presence_crosses_servers_at_once() -> None:
    """The master freezes, the sentinel promotes its replica, the old master resumes and
    runs on as a master (until demoted, ~10 s): a subscription left at it would hear
    nothing the new master publishes. Both servers move to the new master (said by
    `master-changed`), subscribed there: a registration through one is heard by the
    other at once."""
    with (
        redis_process() as (master_url, master),
        redis_process("--replicaof", "127.0.0.1", str(_port(master_url))),
        sentinel_process(master_url) as (sentinel_url, _),
    ):
        admin = aioredis.Redis.from_url(master_url)
        await _replicated(admin)
        await admin.aclose()
        bob_heard = asyncio.Event()

        def heard(address: ev.PeerAddress) -> None:
            if address.phone == BOB:
                bob_heard.set()

        async with _started(sentinel_url, heard) as here, _started(sentinel_url) as there:
            moved = [asyncio.Event(), asyncio.Event()]
            for directory, event in zip((here, there), moved, strict=True):
                directory.on_event = partial(_set_on, "master-changed", event)
            master.send_signal(signal.SIGSTOP)
            try:
                async with asyncio.timeout(30):
                    for event in moved:
                        await event.wait()  # the sentinel named the replica; both moved
            finally:
                master.send_signal(signal.SIGCONT)  # a master again, for a while
            await there.register_limited(_address(BOB, 4002), 2, _spend(), None)
            async with asyncio.timeout(3):
                await bob_heard.wait()


def _set_on(wanted: str, event: asyncio.Event, said: str) -> None:
    if said == wanted:
        event.set()
