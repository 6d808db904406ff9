"""What a review of the relay found (it attacked the change with tests that failed on it),
each defect kept from coming back. On 127.0.0.1, or on tests/memory.py's network in
virtual time."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast

import pytest

from tests.app.test_links import ALICE, BOB, next_event, unreachable
from tests.memory import MemoryNetwork, run_in_virtual_time
from tests.relay.client import SECRET, RelayClient, connect, token
from tests.servers import FAST, RELAY_SECRET
from whatsap2p.app.events import TextReceived
from whatsap2p.config import Limits, Timeouts
from whatsap2p.net.listener import Inbound, PeerListener
from whatsap2p.net.network import Listening, Network, TcpNetwork
from whatsap2p.net.relays import meet
from whatsap2p.protocol import events as ev
from whatsap2p.protocol.keys import StaticKey
from whatsap2p.protocol.relay import Status, encode_preface, mint, verify
from whatsap2p.relay.limits import RelayLimits
from whatsap2p.relay.pairing import Joined, Pairing, Refused, Waiting
from whatsap2p.relay.service import RelayConfig, RelayServer
from whatsap2p.server.service import ServerConfig
from whatsap2p.ui.cli import build_parser, main

# --- 1. a meeting given up closes its connection to the relay --------------------------------


@contextlib.asynccontextmanager
async def silent_relay() -> AsyncIterator[tuple[int, asyncio.Queue[asyncio.StreamReader]]]:
    """A relay that takes connections and never answers: its port, and what each
    connection's module sends (a reader per connection)."""
    arrived: asyncio.Queue[asyncio.StreamReader] = asyncio.Queue()
    writers: list[asyncio.StreamWriter] = []

    def took(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        arrived.put_nowait(reader)

    server = await asyncio.start_server(took, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], arrived
    finally:
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


async def closed_by_the_module(reader: asyncio.StreamReader, ticket: bytes) -> None:
    """The module said its ticket on that connection and then let it go (EOF)."""
    assert await reader.readexactly(len(encode_preface(ticket))) == encode_preface(ticket)
    async with asyncio.timeout(2.0):
        assert await reader.read() == b""


async def test_a_meeting_cancelled_while_waiting_closes_its_relay_connection() -> None:
    """A module that gives up on a meeting (the pool or the listener closing, a send
    cancelled) closes its connection to the relay, rather than leave a half waiting
    there that the peer may join in vain."""
    async with silent_relay() as (port, arrived):
        ticket = token()
        meeting = asyncio.create_task(
            meet(
                TcpNetwork(), (ev.RelayAddress("127.0.0.1", port),), ticket, Timeouts(), "127.0.0.1"
            )
        )
        reader = await arrived.get()
        await asyncio.sleep(0.1)  # (no event says it waits for the relay's answer now)
        meeting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await meeting
        await closed_by_the_module(reader, ticket)


async def test_a_listener_closed_while_meeting_at_a_relay_closes_that_connection() -> None:
    """The same through PeerListener.close(), which cancels its meetings."""
    async with silent_relay() as (port, arrived):
        listener = PeerListener(cast(Inbound, None), StaticKey.generate(), Limits(), Timeouts())
        peer = ev.PeerAddress(ALICE, "127.0.0.1", 1, StaticKey.generate().public)
        ticket = token()
        listener.meet(peer, (ev.RelayAddress("127.0.0.1", port),), ticket, "127.0.0.1")
        reader = await arrived.get()
        await asyncio.sleep(0.1)  # (no event says it waits for the relay's answer now)
        await listener.close()
        await closed_by_the_module(reader, ticket)


# --- 2. a relay named by its DNS name is resolved by the server -----------------------------


async def test_a_relay_named_by_name_is_either_refused_by_the_server_or_used() -> None:
    """`whatsap2p server --relay relay.example.org:5560`: a module connects only to a
    relay whose host is an IP literal (may_dial_back parses it as one), so the server
    resolves a name when it starts, and names the relay by its address."""
    args = build_parser().parse_args(["server", "--relay", "localhost:5560"])
    assert [relay.host for relay in args.relay] in (["127.0.0.1"], ["::1"])
    relay = RelayServer(RelayConfig(SECRET, "127.0.0.1", 0))
    _, port = await relay.start()
    try:
        ticket = token()
        peer = await connect(port)
        peer.present(ticket)
        transport, _ = await meet(
            TcpNetwork(), (ev.RelayAddress("127.0.0.1", port),), ticket, Timeouts(), "127.0.0.1"
        )
        transport.abort()
    finally:
        await relay.close()


# --- 3. a server refuses more than 8 relays (or port 0) at start ----------------------------


def test_a_server_naming_nine_relays_or_port_0_says_so_at_start(tmp_path: Path) -> None:
    """A module's DirectoryClientConnection takes 1 to 8 relays of port 1..65535 and calls
    anything else a protocol error (its server connection would be closed, for the asker
    and for the recipient, on every attempt): the server refuses such relays at start,
    with a one-line error, rather than break its users' connections."""
    nine = [a for n in range(9) for a in ("--relay", f"203.0.113.{n + 1}:3478")]
    db = str(tmp_path / "bindings.sqlite3")
    assert main(["server", "--port", "0", "--db", db, *nine]) == 1
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["server", "--relay", "203.0.113.1:0"])
    assert exited.value.code == 2
    with pytest.raises(ValueError, match="at most 8 relays"):
        ServerConfig(
            StaticKey.generate(), relays=tuple(ev.RelayAddress("203.0.113.1", 1) for _ in nine)
        )


# --- 4. relayed connections are counted per peer, not as the relay's one IP -----------------


def test_relayed_peers_are_not_limited_as_one_ip() -> None:
    """PeerListener._serve limits connections per source IP (64): through a relay, every
    peer's connection comes from the relay's IP, so 64 relayed connections, from any
    number of different peers (one stranger asking `relay` again and again, or two
    contacts sending 32 photos each), shut every other peer out of that relay."""

    async def main() -> None:
        net = MemoryNetwork()
        relay_at = ev.RelayAddress("203.0.113.50", 3478)
        relay = RelayServer(RelayConfig(RELAY_SECRET, relay_at.host, relay_at.port))
        await relay.start(net.at(relay_at.host))
        bob = PeerListener(
            cast(Inbound, None), StaticKey.generate(), Limits(), FAST, net.at("198.51.100.2")
        )  # (nobody here gets past the handshake: never asked)
        peers: list[RelayClient] = []
        try:
            count = Limits().max_peer_connections_per_ip + 1
            for n in range(count):
                phone = f"+5511970{n:06d}"
                ticket = mint(RELAY_SECRET, phone, BOB, time.time())
                peer = ev.PeerAddress(phone, f"192.0.2.{n + 1}", 1, StaticKey.generate().public)
                bob.meet(peer, (relay_at,), ticket, "198.51.100.1")
                client = await net.at(f"192.0.2.{n + 1}").connect(
                    relay_at.host, relay_at.port, RelayClient, 5.0
                )
                client.present(ticket)
                assert await client.status() == Status.JOINED
                peers.append(client)
            await asyncio.sleep(1.0)  # (well within the 5 s handshake deadline)
            shut_out = [n for n, client in enumerate(peers) if client.lost or client.eof]
            assert not shut_out, (
                f"{len(shut_out)} of {count} different peers met at the relay were closed at "
                "once: all count as the relay's one IP"
            )
        finally:
            await bob.close()
            await relay.close()

    run_in_virtual_time(main)


# --- 5. the relay's per-pair cap holds what the two modules of a pair open ------------------


def test_a_pair_sending_photos_both_ways_fits_the_relays_pair_limit() -> None:
    """`max_sessions_per_pair` (40) counts the sessions of a pair of numbers in both
    directions (`pair` is the same whichever number comes first), but each module opens
    up to `max_links_per_peer` + 1 (33) to the other: two people sending each other an
    album at once through a relay need 66 sessions, and the relay refuses `busy` from
    the 41st."""
    limits, module = RelayLimits(), Limits()
    pairing: Pairing[str] = Pairing(limits)
    per_way = module.max_links_per_peer + 1
    refused = 0
    for n in range(2 * per_way):
        shared = verify(SECRET, token(), time.time())
        for half in (f"a{n}", f"b{n}"):
            assert pairing.connected(half, f"10.0.{n % 2}.1") is not None
        assert isinstance(pairing.presented(f"a{n}", shared, time.time()), Waiting)
        outcome = pairing.presented(f"b{n}", shared, time.time())
        if isinstance(outcome, Refused):
            refused += 1
        else:
            assert isinstance(outcome, Joined)
    assert refused == 0, f"{refused} of {2 * per_way} links of one pair refused busy"


# --- 6. two relays, one of which only one side can reach: they meet at the other ------------


class _Firewalled(asyncio.Protocol):
    """A relay's connection as seen through a firewall in front of it that resets
    connections from `blocked` hosts (one side's network cannot reach that relay)."""

    def __init__(self, inner: asyncio.Protocol, blocked: set[str]) -> None:
        self._inner, self._blocked = inner, blocked

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        if peer and peer[0] in self._blocked:
            cast(asyncio.Transport, transport).abort()
            return
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class _FirewalledNetwork:
    """A host of tests/memory.py's network whose listening ports reset `blocked` hosts."""

    def __init__(self, at: Network, blocked: set[str]) -> None:
        self._at, self._blocked = at, blocked

    async def connect(self, *args: Any, **kwargs: Any) -> Any:
        return await self._at.connect(*args, **kwargs)

    async def listen(
        self, host: str, port: int, factory: Callable[[], Any], reuse_port: bool = False
    ) -> Listening:
        blocked = self._blocked
        return await self._at.listen(
            host, port, lambda: _Firewalled(factory(), blocked), reuse_port
        )


def test_a_relay_one_side_cannot_reach_does_not_keep_the_pair_from_the_next(
    tmp_path: Path,
) -> None:
    """Both modules take "the first relay that joins us", in the server's order, each
    waiting at a relay until the whole meeting time (6 s) is spent. When the first relay
    takes one side (it waits there) but not the other (refused, reset, `busy` for its
    source, unreachable from its network), the other goes on to the second and waits
    there: they never meet, although the second would join them both. Every attempt
    ends the same way."""
    from tests.servers import world_at

    async def main() -> None:
        net = MemoryNetwork()
        named = (ev.RelayAddress("203.0.113.50", 3478), ev.RelayAddress("203.0.113.51", 3478))
        running: list[RelayServer] = []
        try:
            async with world_at(tmp_path, net, named) as world:
                blocked = {world.host_of(BOB)}
                for n, where in enumerate(named):
                    relay = RelayServer(RelayConfig(RELAY_SECRET, where.host, where.port))
                    at = net.at(where.host)
                    await relay.start(_FirewalledNetwork(at, blocked) if n == 0 else at)
                    running.append(relay)
                alice, bob = await unreachable(world, ALICE, BOB)
                report = await alice.send_text(BOB, "through the relay both reach")
                assert report.routes == {BOB: "relay"}, report
                assert isinstance(await next_event(bob), TextReceived)
        finally:
            for relay in running:
                await relay.close()

    run_in_virtual_time(main)


# --- 7. docs/protocol.md §5.8 agrees with §6.11 and the code --------------------------------


def test_protocol_md_5_8_does_not_say_relay_is_refused_for_a_number_on_another_server() -> None:
    """§5.8's `offline` row says a `relay` is refused "offline" when "the number is not
    connected to this server"; §6.11 and the server pass it on (through Redis) to the
    server the number is connected to, exactly as a `reverse` (checked: RedisDirectory
    pushes `relayed` across servers)."""
    doc = (Path(__file__).parents[2] / "docs" / "protocol.md").read_text()
    row = next(line for line in doc.splitlines() if line.startswith("| `offline` |"))
    assert "not connected to this server" not in row, row


# --- 8. `whatsap2p relay` takes byte rates under 1 MiB/s ------------------------------------


def test_the_relays_byte_rates_take_fractions_of_a_mib() -> None:
    """The options in MiB are parsed as whole numbers: RelayLimits' `session_rate: float =
    16 * MiB` is an int at run time, and cli.py picks `_count` for an int default. An
    operator on a thin uplink ("lower both", docs/deployment.md) cannot give 0.5 MiB/s."""
    try:
        args = build_parser().parse_args(["relay", "--session-rate", "0.5", "--ip-rate", "1.5"])
    except SystemExit:
        pytest.fail("whatsap2p relay --session-rate 0.5 is refused: not a whole number")
    assert (args.relay_session_rate, args.relay_ip_rate) == (0.5, 1.5)


# --- 9. a waiting half whose module left frees its slot at once -----------------------------


async def test_a_waiting_half_whose_module_left_frees_its_slot_at_once() -> None:
    """A waiting half is not read (pause_reading), so the relay does not see its module
    leave: a module gives up after `Timeouts.relay_meet` (6 s) and aborts, yet its half
    keeps its place in `max_waiting` / `max_waiting_per_ip` until `wait_timeout` (15 s).
    Since any user may make a module meet it at a relay (`relay` naming its number, a
    few a second), strangers keep a victim's source at its waiting cap, where the
    victim's own first halves are refused `busy`. (Reading a waiting half costs nothing:
    any byte from it is a protocol error, and its end is then seen at once.)"""
    limits = RelayLimits(max_waiting_per_ip=2)
    relay = RelayServer(RelayConfig(SECRET, "127.0.0.1", 0, limits))
    _, port = await relay.start()
    try:
        for _ in range(2):  # two meetings abandoned, as `meet` abandons them
            gone = await connect(port)
            gone.present(token())
            deadline = time.monotonic() + 2
            while relay.pairing.waiting < 1:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            assert gone.transport is not None
            gone.transport.abort()
        await asyncio.sleep(0.5)
        # the victim's next meeting, first at the relay
        mine = await connect(port)
        mine.present(token())
        try:
            async with asyncio.timeout(0.5):
                status = await mine.status()
        except TimeoutError:
            status = None  # (waiting: as it should)
        assert status != Status.BUSY, "refused busy: two modules that left still wait there"
    finally:
        await relay.close()
