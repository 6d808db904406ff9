"""The relay's deadlines and byte rates, on an in-memory network in virtual time: each
with the exact timing its limit promises, in no time."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import replace

import pytest

from tests.memory import MemoryNetwork, run_in_virtual_time
from tests.relay.client import SECRET, RelayClient, connect_on, token
from whatsap2p.protocol.relay import MAGIC, Status
from whatsap2p.relay.limits import RelayLimits
from whatsap2p.relay.service import RelayConfig, RelayServer

MiB = 1024 * 1024
#: The wall clock when the virtual one starts (tokens are minted and read against it).
WALL = 1_800_000_000.0

Scenario = Callable[[RelayServer, MemoryNetwork, tuple[str, int]], Coroutine[object, object, None]]


def now() -> float:
    return asyncio.get_running_loop().time()


def in_virtual_time(scenario: Scenario, limits: RelayLimits | None = None) -> None:
    async def main() -> None:
        network = MemoryNetwork()
        relay = RelayServer(
            RelayConfig(SECRET, "127.0.0.1", 0, limits or RelayLimits()),
            clock=lambda: WALL + now(),
        )
        address = await relay.start(network)
        try:
            await scenario(relay, network, address)
        finally:
            await relay.close()

    run_in_virtual_time(main)


async def joined(
    network: MemoryNetwork, address: tuple[str, int], shared: bytes
) -> tuple[RelayClient, RelayClient]:
    alice = await network.at("10.0.0.1").connect(*address, RelayClient, timeout=5)
    bob = await network.at("10.0.0.2").connect(*address, RelayClient, timeout=5)
    alice.present(shared)
    bob.present(shared)
    assert await alice.status() == Status.JOINED
    assert await bob.status() == Status.JOINED
    return alice, bob


def test_a_connection_without_its_whole_preface_in_5_s_is_closed() -> None:
    async def scenario(relay: RelayServer, network: MemoryNetwork, at: tuple[str, int]) -> None:
        silent = await connect_on(network, at)
        partial = await connect_on(network, at)
        partial.write(MAGIC + b"\x00\x59" + b"x" * 40)  # half a token: still in its preface
        assert await silent.status() is None
        assert await partial.status() is None
        assert now() == pytest.approx(5.0)
        assert relay.metrics.refusals["slow"] == 2

    in_virtual_time(scenario)


def test_a_lone_half_is_refused_timeout_after_15_s_and_its_token_is_spent() -> None:
    async def scenario(relay: RelayServer, network: MemoryNetwork, at: tuple[str, int]) -> None:
        shared = token(now=WALL)
        lone = await connect_on(network, at)
        lone.present(shared)
        assert await lone.status() == Status.TIMEOUT
        assert now() == pytest.approx(15.0)
        await lone.ended()
        late = await connect_on(network, at)
        late.present(shared)
        assert await late.status() == Status.REPLAYED
        assert relay.pairing.waiting == 0

    in_virtual_time(scenario)


def test_a_half_joined_at_14_s_is_not_timed_out() -> None:
    async def scenario(relay: RelayServer, network: MemoryNetwork, at: tuple[str, int]) -> None:
        shared = token(now=WALL)
        first = await connect_on(network, at)
        first.present(shared)
        await asyncio.sleep(14)
        second = await connect_on(network, at)
        second.present(shared)
        assert await first.status() == await second.status() == Status.JOINED
        await asyncio.sleep(10)  # past the first one's wait deadline: it is joined
        first.write(b"still here")
        assert await second.read(10) == b"still here"

    in_virtual_time(scenario)


def test_a_pair_moving_no_byte_for_60_s_is_closed_and_one_that_moves_is_not() -> None:
    async def scenario(relay: RelayServer, network: MemoryNetwork, at: tuple[str, int]) -> None:
        quiet = await joined(network, at, token(now=WALL))
        quiet_closed = asyncio.ensure_future(quiet[0].ended())
        sender, receiver = await joined(network, at, token(now=WALL))
        for _ in range(5):  # a byte every 50 s, one way, then the other
            await asyncio.sleep(50)
            sender.write(b"x")
            assert await receiver.read(1) == b"x"
            sender, receiver = receiver, sender
        assert quiet_closed.done()
        assert quiet[0].lost
        assert quiet[1].lost
        assert not sender.lost
        assert not receiver.lost
        assert relay.metrics.idle_closed == 1
        assert relay.pairing.sessions == 1

    in_virtual_time(scenario)


def test_the_idle_close_comes_60_s_after_the_last_byte_exactly() -> None:
    async def scenario(relay: RelayServer, network: MemoryNetwork, at: tuple[str, int]) -> None:
        alice, bob = await joined(network, at, token(now=WALL))
        await asyncio.sleep(45)
        bob.write(b"late")
        assert await alice.read(4) == b"late"
        last = now()
        await alice.ended()
        assert now() == pytest.approx(last + 60.0)
        await bob.ended()

    in_virtual_time(scenario)


def test_a_pair_over_its_byte_rate_is_slowed_to_it_without_being_buffered() -> None:
    limits = replace(RelayLimits(), session_rate=1 * MiB, session_burst=1 * MiB)

    async def scenario(relay: RelayServer, network: MemoryNetwork, at: tuple[str, int]) -> None:
        alice, bob = await joined(network, at, token(now=WALL))
        started = now()
        payload = bytes(range(256)) * (5 * MiB // 256)
        alice.write(payload)
        await asyncio.sleep(2)
        # Meanwhile, what is not forwarded yet waits on the sender's side: the relay
        # does not read it (and holds no more than a read's worth for Bob).
        assert alice.transport is not None
        assert alice.transport.get_write_buffer_size() >= 2 * MiB
        assert relay.buffered() <= 256 * 1024
        assert await bob.read(len(payload)) == payload
        # The burst at once, the other 4 MiB at 1 MiB/s (the last read's debt is not
        # waited for: it was already forwarded).
        assert 3.5 <= now() - started <= 4.0
        assert relay.metrics.throttled > 0

    in_virtual_time(scenario, limits)


def test_one_sources_pairs_share_its_byte_rate() -> None:
    limits = replace(RelayLimits(), ip_rate=1 * MiB, ip_burst=1 * MiB)

    async def scenario(relay: RelayServer, network: MemoryNetwork, at: tuple[str, int]) -> None:
        first = await joined(network, at, token(now=WALL))
        second = await joined(network, at, token(now=WALL))
        started = now()
        payload = bytes(3 * MiB)
        first[0].write(payload)  # both from 10.0.0.1
        second[0].write(payload)
        await asyncio.gather(first[1].read(len(payload)), second[1].read(len(payload)))
        assert 4.5 <= now() - started <= 5.0  # 6 MiB: the burst, then 5 at 1 MiB/s
        # Another source is not slowed by that one's rate.
        started = now()
        second[1].write(payload)  # from 10.0.0.2
        assert await second[0].read(len(payload)) == payload
        assert now() - started <= 2.0

    in_virtual_time(scenario, limits)


def test_a_token_expired_by_the_time_its_second_half_comes_is_refused() -> None:
    async def scenario(relay: RelayServer, network: MemoryNetwork, at: tuple[str, int]) -> None:
        shared = token(now=WALL, ttl=5)  # taken until 5 s + 30 s of clock skew
        first = await connect_on(network, at)
        first.present(shared)
        await asyncio.sleep(36)
        assert await first.status() == Status.TIMEOUT  # (it waited 15 s)
        second = await connect_on(network, at)
        second.present(shared)
        assert await second.status() == Status.EXPIRED

    in_virtual_time(scenario)
