"""The relay on real sockets (127.0.0.1, port 0): pairs joined and their bytes forwarded
intact both ways; forged, expired, replayed and garbled prefaces refused while a pair
keeps working; floods held to their limits while a real pair is still served; a reader
that stops holds its sender back, not bytes in the relay.

Other source addresses are other loopback addresses (127.0.0.2, 127.0.1.7...): on
Linux, all of 127.0.0.0/8 is this machine, so a test can play many hosts."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

from tests.relay.client import (
    SECRET,
    RelayClient,
    connect,
    pair,
    random_bytes,
    token,
)
from whatsap2p.protocol.relay import MAGIC, Status, encode_preface
from whatsap2p.relay.limits import RelayLimits
from whatsap2p.relay.service import RelayConfig, RelayServer

MiB = 1024 * 1024


@contextlib.asynccontextmanager
async def running(limits: RelayLimits | None = None) -> AsyncIterator[tuple[RelayServer, int]]:
    relay = RelayServer(RelayConfig(SECRET, "127.0.0.1", 0, limits or RelayLimits()))
    _, port = await relay.start()
    try:
        yield relay, port
    finally:
        await relay.close()


async def settled(check: Callable[[], bool], within: float = 5.0) -> None:
    """Once the relay has caught up with what the clients saw (its own callbacks for a
    connection a client saw end run in the same loop, a turn or two later)."""
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "the relay did not get there"
        await asyncio.sleep(0)


async def exchange(one: RelayClient, other: RelayClient, size: int) -> None:
    """`size` random bytes each way at once, checked."""
    there, back = random_bytes(size), random_bytes(size)
    one.write(there)
    other.write(back)
    got_there, got_back = await asyncio.gather(other.read(size), one.read(size))
    assert hashlib.sha256(got_there).digest() == hashlib.sha256(there).digest()
    assert hashlib.sha256(got_back).digest() == hashlib.sha256(back).digest()


async def test_a_pair_exchanges_a_multi_megabyte_stream_both_ways_intact() -> None:
    async with running() as (relay, port):
        alice, bob = await pair(port)
        assert relay.pairing.sessions == 1
        # Written in pieces of every size, as a Noise stream is, both ways at once.
        there, back = random_bytes(24 * MiB), random_bytes(24 * MiB)
        for start, size in ((0, 1), (1, 65_541), (65_542, 3 * MiB), (3 * MiB + 65_542, None)):
            alice.write(there[start : start + size if size else None])
            bob.write(back[start : start + size if size else None])
        got_there, got_back = await asyncio.gather(bob.read(len(there)), alice.read(len(back)))
        assert got_there == there
        assert got_back == back
        assert relay.metrics.forwarded == 48 * MiB
        assert relay.metrics.joined == 1


async def test_a_half_close_is_passed_on_and_the_other_way_stays_open() -> None:
    async with running() as (relay, port):
        alice, bob = await pair(port)
        alice.write(b"the whole request")
        assert alice.transport is not None
        alice.transport.write_eof()
        assert await bob.ended() == b"the whole request"
        assert bob.eof
        assert not bob.lost
        bob.write(b"and its answer, after it")
        bob.close()
        assert await alice.ended() == b"and its answer, after it"
        alice.close()
        await settled(lambda: not relay.connections)
        assert relay.pairing.sessions == 0


async def test_a_half_that_is_reset_ends_its_pair() -> None:
    async with running() as (relay, port):
        alice, bob = await pair(port)
        await exchange(alice, bob, 1024)
        assert alice.transport is not None
        # A reset (SO_LINGER 0: the kernel sends RST when it closes), as a router that
        # lost the connection would send.
        sock = alice.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        alice.transport.abort()
        assert await bob.ended() == b""
        await settled(lambda: not relay.connections)
        assert relay.pairing.sessions == 0


async def test_forged_expired_replayed_and_garbled_are_refused_while_a_pair_works() -> None:
    async with running() as (relay, port):
        shared = token()
        alice, bob = await pair(port, shared)
        await exchange(alice, bob, 1 * MiB)

        async def answer(preface: bytes, source: str = "127.0.0.2") -> int | None:
            client = await connect(port, source=source)
            client.write(preface)
            status = await client.status()
            await client.ended()  # and then the relay closes
            return status

        genuine = bytearray(token())
        genuine[30] ^= 0x01  # one bit of its pair
        assert await answer(encode_preface(bytes(genuine))) == Status.FORGED
        assert await answer(encode_preface(token(secret=bytes(32)))) == Status.FORGED
        assert await answer(encode_preface(b"\x01" * 89)) == Status.FORGED
        assert await answer(encode_preface(token(now=time.time() - 3600))) == Status.EXPIRED
        assert await answer(encode_preface(shared)) == Status.REPLAYED  # a third presentation
        assert await answer(b"GET / HTTP/1.1\r\nHost: relay\r\n\r\n") is None  # closed, no word
        assert await answer(MAGIC + b"\xff\xff") is None  # a token length out of range
        assert await answer(encode_preface(token()) + b"early") is None  # sent before joined
        await exchange(alice, bob, 1 * MiB)  # the pair never noticed
        assert relay.metrics.refusals == {
            "forged": 3,
            "expired": 1,
            "replayed": 1,
            "busy": 0,
            "timeout": 0,
            "garbled": 3,
            "slow": 0,
            "evicted": 0,
        }
        assert relay.pairing.sessions == 1


async def test_a_flood_of_lone_halves_is_held_to_its_limit_and_a_real_pair_still_joins() -> None:
    """Lone halves with genuine tokens (a user asking the directory for many), from one
    source: some wait, the rest are refused busy, and a pair from elsewhere joins."""
    limits = replace(RelayLimits(), max_waiting_per_ip=8, max_waiting=100)
    async with running(limits) as (relay, port):
        flood = [await connect(port, source="127.0.0.2") for _ in range(30)]
        for client in flood:
            client.present(token())
        answers = await asyncio.gather(*(client.status() for client in flood[8:]))
        # 22 refusals: the 30 were all read, and 8 were waiting when each was refused.
        refused = [client for client in flood if client.received or client.eof]
        assert answers.count(Status.BUSY) == 22 == len(refused)
        assert relay.pairing.waiting == 8
        shared = token()
        alice, bob = await connect(port), await connect(port, source="127.0.0.3")
        alice.present(shared)
        bob.present(shared)
        assert (await alice.status(), await bob.status()) == (Status.JOINED, Status.JOINED)
        await exchange(alice, bob, 1 * MiB)
        assert relay.metrics.refusals["busy"] == 22


async def test_garbage_and_silent_connections_are_held_to_their_limits_and_a_pair_joins() -> None:
    # (Its preface deadline well after the test: the silent ones are held to the end.)
    limits = replace(RelayLimits(), max_prefacing_per_ip=4, max_prefacing=16, preface_timeout=60)
    async with running(limits) as (relay, port):
        # Garbage is closed at its first byte: one source sends 50 times its limit of
        # connections, one after the other, and is never refused busy.
        for _ in range(200):
            garbage = await connect(port, source="127.0.0.2")
            garbage.write(b"\x16\x03\x01\x02\x00" + random_bytes(2000))  # a TLS hello, say
            assert await garbage.status() is None
        # Silent connections from one source: 4 are kept (until their preface deadline).
        silent = [await connect(port, source="127.0.0.4") for _ in range(10)]
        answers = await asyncio.gather(*(client.status() for client in silent[4:]))
        assert answers == [Status.BUSY] * 6
        # Silent connections from many sources: at most 16 in all, the oldest make room.
        crowd = [await connect(port, source=f"127.0.1.{n}") for n in range(1, 41)]
        await settled(lambda: relay.pairing.prefacing == 16)
        alice, bob = await connect(port), await connect(port, source="127.0.0.3")
        shared = token()
        alice.present(shared)
        bob.present(shared)
        assert (await alice.status(), await bob.status()) == (Status.JOINED, Status.JOINED)
        await exchange(alice, bob, 1 * MiB)
        assert relay.pairing.prefacing == 14  # the pair took two places, then left them
        evicted = [client for client in silent[:4] + crowd if client.eof or client.lost]
        assert len(evicted) == relay.metrics.refusals["evicted"] >= 30
        assert relay.metrics.refusals["garbled"] == 200
        # What the relay holds: the connections left in their preface, and the pair.
        await settled(lambda: len(relay.connections) == 14 + 2)


async def test_pairs_over_the_session_limit_are_refused_busy_both_halves() -> None:
    async with running(replace(RelayLimits(), max_sessions=1)) as (_relay, port):
        alice, bob = await pair(port)
        carol, dave = await connect(port), await connect(port)
        other = token()
        carol.present(other)
        dave.present(other)
        assert (await carol.status(), await dave.status()) == (Status.BUSY, Status.BUSY)
        await exchange(alice, bob, 64 * 1024)


async def test_a_reader_that_stops_holds_its_sender_back_not_bytes_in_the_relay() -> None:
    limits = RelayLimits()
    async with running(limits) as (relay, port):
        alice, bob = await pair(port)
        assert bob.transport is not None
        bob.transport.pause_reading()  # Bob's module stops reading (frozen, or slow)
        sent = bytearray()
        chunk = 256 * 1024
        while not alice.paused.is_set():  # until the kernel's buffers on the way are full
            assert len(sent) < 256 * MiB, "the sender was never held back"
            piece = random_bytes(chunk)
            alice.write(piece)
            sent += piece
            await asyncio.sleep(0)  # (a turn of the loop: the relay reads, forwards)
        # Flow control through the relay: it stopped reading Alice; what it holds for Bob
        # is at most its write buffer's high-water mark and one read more.
        assert 0 < relay.buffered() <= limits.write_high + 256 * 1024
        bob.transport.resume_reading()
        assert await bob.read(len(sent)) == sent
