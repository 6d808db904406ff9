"""Sessions on an in-memory network, in virtual time: how texts travel on the links the
pool keeps, what a frozen, silent or vanished peer costs, reconnection to the server and
the outbox's retries — each with the exact timings its deadlines promise, in no time."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import typing
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from tests.conftest import image_bytes
from tests.memory import MemoryNetwork, run_in_virtual_time
from tests.servers import FAST, RELAY_SECRET, World, in_memory, network, next_message, world_at
from whatsap2p.app.events import (
    FailedDelivery,
    PhotoReceived,
    QueuedDelivered,
    ServerConnectionChanged,
    SessionEvent,
    TextReceived,
)
from whatsap2p.app.session import IDENTITY_FILE, Session
from whatsap2p.config import Limits, Timeouts
from whatsap2p.keyfile import load_or_create_key
from whatsap2p.net.deadlines import Deadlines
from whatsap2p.net.link import PeerLink
from whatsap2p.net.listener import Inbound, PeerListener
from whatsap2p.protocol import events as ev
from whatsap2p.protocol.keys import StaticKey
from whatsap2p.protocol.noise import NoiseChannel
from whatsap2p.protocol.peer import PeerReceiver
from whatsap2p.relay.service import RelayConfig, RelayServer

ALICE, BOB, CAROL, DAVE = (f"+551199999000{i}" for i in range(1, 5))


def now() -> float:
    return asyncio.get_running_loop().time()


async def next_event(session: Session) -> SessionEvent:
    return await next_message(session, 60)


def address(session: Session) -> tuple[str, int]:
    assert session.listen_address is not None
    return session.listen_address


class Silent(asyncio.Protocol):
    """A module frozen from the start: it accepts connections and never says a thing."""


class Mute(asyncio.Protocol):
    """A peer module that completes the handshake and takes texts, but answers none
    while `answering` is false."""

    def __init__(self, key: StaticKey, taken: list[str], answering: list[bool]) -> None:
        self._key, self._taken, self._answering = key, taken, answering

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        channel = NoiseChannel(self._key, initiator=False, max_body=Limits().max_peer_frame)
        self._conn = PeerReceiver(now(), Limits(), Timeouts(), channel)

    def data_received(self, data: bytes) -> None:
        self._conn.receive_data(data, now())
        self._transport.write(self._conn.data_to_send())
        while (event := self._conn.next_event()) is not None:
            if isinstance(event, ev.Text):
                self._taken.append(event.body)
                if self._answering[0]:
                    self._transport.write(self._conn.send(ev.Ack(event.id)))


async def pretend(
    world: World,
    phone: str,
    protocol: Callable[[], asyncio.Protocol],
    key: StaticKey | None = None,
) -> tuple[str, int]:
    """`phone` is registered (with `key`, or a key of its own) at an address of its host
    where `protocol` answers (or does not); that address."""
    net = world.network_of(phone)
    assert net is not None
    listening = await net.listen("0.0.0.0", 0, protocol)
    holder = await world.client(phone, key)
    await holder.register(phone, listening.address[1])
    return listening.address


# --- texts on kept links ------------------------------------------------------------------


def test_a_burst_to_one_peer_shares_one_connection(tmp_path: Path) -> None:
    async def scenario(world: World) -> None:
        alice, bob = await world.user(ALICE), await world.user(BOB)
        bob.book.add_contact("alice", ALICE)  # (a stranger's burst is cut short)
        for i in range(5):
            assert (await alice.send_text(BOB, f"one by one {i}")).delivered == [BOB]
        assert network(world).accepted(address(bob)) == 1  # one handshake, five texts
        reports = await asyncio.gather(*(alice.send_text(BOB, f"at once {i}") for i in range(80)))
        assert all(report.delivered == [BOB] for report in reports)
        assert network(world).accepted(address(bob)) == 1  # the 80 went on it together
        texts = [await next_event(bob) for _ in range(85)]
        assert len({t.id for t in texts if isinstance(t, TextReceived)}) == 85

    in_memory(tmp_path, scenario)


def test_texts_refused_among_many_at_once_fail_alone(tmp_path: Path) -> None:
    async def scenario(world: World) -> None:
        alice = await world.user(ALICE)
        bob = await world.user(BOB, Limits(max_text_bytes=10))  # alice may send longer ones
        texts = ["short" if i % 3 else f"much too long {i}" for i in range(30)]
        reports = await asyncio.gather(*(alice.send_text(BOB, text) for text in texts))
        for text, report in zip(texts, reports, strict=True):
            if text == "short":
                assert (report.delivered, report.failed) == ([BOB], [])
            else:
                (failed,) = report.failed
                assert (failed.phone, failed.code) == (BOB, "rejected")
                assert failed.error == "refused by the peer: text longer than 10 bytes"
        assert network(world).accepted(address(bob)) == 1  # a refusal leaves the connection
        got = [await next_event(bob) for _ in range(20)]
        delivered = {report.id for report in reports if report.delivered}
        assert {t.id for t in got if isinstance(t, TextReceived)} == delivered

    in_memory(tmp_path, scenario)


def test_a_peer_that_takes_texts_but_never_answers_is_given_up_on_time(tmp_path: Path) -> None:
    async def scenario(world: World) -> None:
        alice = await world.user(ALICE, peer_ack=1.0, peer_idle=60)  # kept 10 s, acked in 1
        key = StaticKey.generate()
        taken: list[str] = []
        answering = [False]
        mute = await pretend(world, BOB, lambda: Mute(key, taken, answering), key)
        started = now()
        reports = await asyncio.gather(*(alice.send_text(BOB, f"lost? {i}") for i in range(3)))
        assert now() - started == pytest.approx(1.0)  # the ack timeout, to the millisecond
        for report in reports:
            (failed,) = report.failed
            assert failed.code == "unconfirmed"  # it went out: it may have arrived
        assert len(taken) == 3  # bob had them: he did not answer
        answering[0] = True
        assert (await alice.send_text(BOB, "and now?")).delivered == [BOB]
        assert network(world).accepted(mute) == 2  # the stuck one was dropped

    in_memory(tmp_path, scenario)


def test_a_quiet_connection_is_closed_by_its_sender_after_the_keep_time(tmp_path: Path) -> None:
    async def scenario(world: World) -> None:
        alice = await world.user(ALICE, link_keep=2.0)
        bob = await world.user(BOB)  # bob would wait peer_idle (5 s)
        assert (await alice.send_text(BOB, "first")).delivered == [BOB]
        sent = now()
        (connection,) = network(world).to(address(bob))
        await connection.closed()
        assert now() - sent == pytest.approx(2.0)  # alice closed it, not bob
        assert (await alice.send_text(BOB, "second")).delivered == [BOB]
        assert network(world).accepted(address(bob)) == 2
        got = [await next_event(bob) for _ in range(2)]
        assert [t.text for t in got if isinstance(t, TextReceived)] == ["first", "second"]

    in_memory(tmp_path, scenario)


def test_a_kept_connection_that_the_peer_closed_is_replaced(tmp_path: Path) -> None:
    async def scenario(world: World) -> None:
        alice = await world.user(ALICE, peer_idle=60)  # alice would keep it 10 s
        bob = await world.user(BOB, peer_idle=0.5)  # bob closes a quiet one after 0.5 s
        assert (await alice.send_text(BOB, "first")).delivered == [BOB]
        (connection,) = network(world).to(address(bob))
        await connection.closed()
        assert (await alice.send_text(BOB, "second")).delivered == [BOB]
        assert network(world).accepted(address(bob)) == 2

    in_memory(tmp_path, scenario)


def test_a_link_reset_under_a_text_is_replaced_once(tmp_path: Path) -> None:
    async def scenario(world: World) -> None:
        alice, bob = await world.user(ALICE), await world.user(BOB)
        assert (await alice.send_text(BOB, "first")).delivered == [BOB]
        (connection,) = network(world).to(address(bob))
        connection.freeze()  # the path dies silently...
        sending = asyncio.ensure_future(alice.send_text(BOB, "through the reset"))
        await asyncio.sleep(0)  # (one turn of the loop: the send is under way)
        connection.cut()  # ...then resets
        assert (await sending).delivered == [BOB]  # sent again, on a new connection
        got = [await next_event(bob) for _ in range(2)]
        assert [t.text for t in got if isinstance(t, TextReceived)] == [
            "first",
            "through the reset",
        ]

    in_memory(tmp_path, scenario)


# --- peers that cannot be reached -----------------------------------------------------------


def test_a_frozen_peer_fails_on_its_deadline_and_holds_nobody_up(tmp_path: Path) -> None:
    async def scenario(world: World) -> None:
        alice, bob = await world.user(ALICE), await world.user(BOB)
        await pretend(world, CAROL, Silent)  # registered, accepts, never answers
        alice.book.create_group("pals", [BOB, CAROL])
        started = now()
        report = await alice.send_text("pals", "anyone?")
        # its handshake's deadline, then the wait for it to connect back instead
        assert now() - started == pytest.approx(FAST.handshake + FAST.connect)
        assert report.delivered == [BOB]
        assert [(f.phone, f.code) for f in report.failed] == [(CAROL, "timeout")]
        assert isinstance(await next_event(bob), TextReceived)

    in_memory(tmp_path, scenario)


def test_a_peer_that_cannot_be_dialled_is_reached_the_other_way_round(tmp_path: Path) -> None:
    async def scenario(world: World) -> None:
        alice, bob = await world.user(ALICE), await world.user(BOB)
        # bob's module is there, but no connection gets in (a router keeps them out)
        network(world).stop_listening(address(bob))
        started = now()
        report = await alice.send_text(BOB, "hello?")
        assert (report.delivered, report.routes) == ([BOB], {BOB: "reverse"})
        assert now() == started  # refused at once: bob was asked at once
        got = await next_event(bob)
        assert isinstance(got, TextReceived)
        assert got.sender == ALICE
        again = await alice.send_text(BOB, "and again")  # on the link bob opened
        assert again.routes == {BOB: "reverse"}
        metrics = world.server.metrics
        assert metrics.reversals == 1
        await alice.status(BOB)  # (its answer comes after that of alice's report)
        assert (metrics.connections("reverse"), metrics.rendezvous("reverse")) == (1, 1)

    in_memory(tmp_path, scenario)


def test_something_else_answering_at_a_peers_address_does_not_keep_it_unreached(
    tmp_path: Path,
) -> None:
    async def scenario(world: World) -> None:
        alice, bob = await world.user(ALICE), await world.user(BOB)
        net = network(world)
        net.stop_listening(address(bob))  # its router's own service takes the port, say
        host, port = address(bob)
        await net.at(host).listen(host, port, Silent)
        started = now()
        report = await alice.send_text(BOB, "hello?")
        assert (report.delivered, report.routes) == ([BOB], {BOB: "reverse"})
        assert now() - started == pytest.approx(FAST.handshake)  # then asked at once

    in_memory(tmp_path, scenario)


def test_a_peer_out_of_reach_both_ways_is_reported_on_time(tmp_path: Path) -> None:
    async def scenario(world: World) -> None:
        alice = await world.user(ALICE)
        key = load_or_create_key(world.root / BOB / IDENTITY_FILE)
        holder = await world.client(BOB, key)  # registered; takes no connection, dials none
        await holder.register(BOB, 4444)
        started = now()
        report = await alice.send_text(BOB, "hello?")
        assert now() - started == pytest.approx(FAST.connect)  # waited for it to dial back
        assert report.failed == [
            FailedDelivery(
                BOB,
                "unreachable",
                "cannot connect: Connection refused; asked to connect back: it did not "
                "connect back either",
            )
        ]
        await alice.status(BOB)  # (after alice's report of it)
        metrics = world.server.metrics
        assert (metrics.connections("none"), metrics.rendezvous("none")) == (1, 1)
        await holder.close()

    in_memory(tmp_path, scenario)


@asynccontextmanager
async def relay_world(
    root: Path, relays: int = 1
) -> AsyncIterator[tuple[World, list[RelayServer]]]:
    """A world on an in-memory network whose server names `relays` relays (each on a
    host of its own, running), in which no module takes a connection (as behind
    symmetric routers: every direct way fails)."""
    net = MemoryNetwork()
    named = tuple(ev.RelayAddress(f"203.0.113.{50 + n}", 3478) for n in range(relays))
    running = []
    try:
        for where in named:
            relay = RelayServer(RelayConfig(RELAY_SECRET, where.host, where.port))
            await relay.start(net.at(where.host))
            running.append(relay)
        async with world_at(root, net, named) as world:
            yield world, running
    finally:
        for relay in running:
            await relay.close()


async def unreachable(world: World, *phones: str) -> list[Session]:
    """Sessions for `phones` that take no connection (neither their own peers' nor
    any connected back or punched)."""
    sessions = [await world.user(phone) for phone in phones]
    for session in sessions:
        network(world).stop_listening(address(session))
    return sessions


def test_peers_no_direct_way_connects_meet_at_a_relay(tmp_path: Path) -> None:
    async def main() -> None:
        async with relay_world(tmp_path) as (world, _):
            alice, bob = await unreachable(world, ALICE, BOB)
            started = now()
            report = await alice.send_text(BOB, "through the relay")
            assert (report.delivered, report.routes) == ([BOB], {BOB: "relay"})
            assert now() - started < 15  # every direct way tried first, then the relay
            got = await next_event(bob)
            assert isinstance(got, TextReceived)
            assert (got.sender, got.text) == (ALICE, "through the relay")
            # and back
            assert (await bob.send_text(ALICE, "and back")).routes == {ALICE: "relay"}
            assert isinstance(await next_event(alice), TextReceived)
            # once the text link is gone, the next goes to the relay at once
            await asyncio.sleep(FAST.peer_idle * 2)
            started = now()
            assert (await alice.send_text(BOB, "again")).routes == {BOB: "relay"}
            assert now() - started < FAST.connect  # (no direct way waited for)
            for each, other in ((alice, BOB), (bob, ALICE)):
                await each.status(other)  # (after its reports)
            metrics = world.server.metrics  # three links: alice's two, bob's one
            assert (metrics.relayed, metrics.connections("relay")) == (3, 3)
            # bob moves where he can be reached (a new address): the conversation moves
            # to a direct path at once
            await bob.close()
            bob = await world.user(BOB)
            assert (await alice.send_text(BOB, "direct now")).routes == {BOB: "direct"}

    run_in_virtual_time(main)


def test_a_relay_that_is_gone_gives_way_to_the_next(tmp_path: Path) -> None:
    async def main() -> None:
        async with relay_world(tmp_path, relays=2) as (world, relays):
            alice, bob = await unreachable(world, ALICE, BOB)
            await relays[0].close()  # gone: refused at once
            report = await alice.send_text(BOB, "via the second")
            assert report.routes == {BOB: "relay"}
            assert isinstance(await next_event(bob), TextReceived)

    run_in_virtual_time(main)


async def test_a_photo_goes_through_a_relay_whole(tmp_path: Path) -> None:
    # (in real time: photos are written on threads)
    async with relay_world(tmp_path) as (world, _):
        alice, bob = await unreachable(world, ALICE, BOB)
        photo = tmp_path / "holiday.png"
        photo.write_bytes(image_bytes(marker=os.urandom(300_000)))
        sent = await alice.send_photo(BOB, photo)
        assert sent.routes == {BOB: "relay"}, sent
        got = await next_event(bob)
        assert isinstance(got, PhotoReceived)
        assert got.photo.path.read_bytes() == photo.read_bytes()


# --- the server connection ------------------------------------------------------------------


def test_a_dropped_server_connection_is_restored_by_itself(tmp_path: Path) -> None:
    async def scenario(world: World) -> None:
        alice, bob = await world.user(ALICE), await world.user(BOB)
        server = ("127.0.0.1", world.port)
        (mine,) = [c for c in network(world).open_to(server) if c.client[0] == world.host_of(ALICE)]
        mine.cut()  # the connection dies under us
        lost = now()
        assert await next_event(alice) == ServerConnectionChanged("lost")
        assert await next_event(alice) == ServerConnectionChanged("restored")
        assert 0.05 <= now() - lost <= 0.1  # the first pause, jittered down by up to half
        assert alice.server_connected
        assert (await bob.send_text(ALICE, "found you again")).delivered == [ALICE]
        got = await next_event(alice)
        assert isinstance(got, TextReceived)

    in_memory(tmp_path, scenario)


def test_a_frozen_server_is_noticed_by_the_heartbeat_within_two_intervals(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(world: World) -> None:
        alice = await world.user(ALICE, heartbeat_interval=10)
        server = ("127.0.0.1", world.port)
        (mine,) = network(world).open_to(server)
        frozen = now()
        mine.freeze()  # the server (or the path) stops answering; nothing is closed
        with caplog.at_level(logging.WARNING, "whatsap2p.app.registration"):
            assert await next_event(alice) == ServerConnectionChanged("lost")
        assert 10 < now() - frozen <= 20  # a ping, then an interval without its pong
        # the log says which server, and why: not "closed" (nothing was)
        where = f"127.0.0.1:{world.port}"
        assert f"the server does not answer heartbeats ({where}); reconnecting" in caplog.text

    in_memory(tmp_path, scenario)


# --- the outbox ---------------------------------------------------------------------------


def test_queued_texts_to_an_unreachable_recipient_are_retried_less_and_less(
    tmp_path: Path,
) -> None:
    async def scenario(world: World) -> None:
        alice = await world.user(ALICE)
        queued = await alice.send_text(BOB, "when you are back", queue=True)
        assert queued.queued == [BOB]
        bob_key = load_or_create_key(world.root / BOB / IDENTITY_FILE)
        holder = await world.client(BOB, bob_key)
        await holder.register(BOB, 4444)  # online, at an address where nobody listens
        tries = await network(world).attempted((world.host_of(BOB), 4444), 4)
        pauses = [round(b - a, 3) for a, b in itertools.pairwise(tries)]
        first, back = FAST.outbox_retry_first, FAST.connect  # (each waits for a dial back)
        assert pauses == [first + back, 2 * first + back, 4 * first + back]
        await holder.unregister()  # bob's real module comes online: delivered at once
        await holder.close()
        bob = await world.user(BOB)
        assert await next_event(alice) == QueuedDelivered(queued.id, BOB)
        got = await next_event(bob)
        assert isinstance(got, TextReceived)

    in_memory(tmp_path, scenario)


# --- candidates ---------------------------------------------------------------------------


def test_a_peer_behind_the_same_router_is_tried_at_its_lan_address_first(tmp_path: Path) -> None:
    async def scenario(world: World) -> None:
        alice, bob = await world.user(ALICE), await world.user(BOB)
        host, port = address(bob)
        assert bob.identity is not None
        assert alice.identity is not None
        bob_key, alice_key = bob.identity.public, alice.identity
        net = network(world)

        async def link_to(local: str, published: str, prefer: str | None = None) -> PeerLink:
            bob_at = ev.PeerAddress(BOB, published, port, bob_key, local)
            return await PeerLink.open(
                net.at(world.host_of(ALICE)), bob_at, ALICE, alice_key, Limits(), FAST,
                Deadlines(), prefer,
            )  # fmt: skip

        # its LAN address answers: the published one (where nobody listens) is not tried
        async with await link_to(host, "203.0.113.101") as link:
            assert link.host == host
        assert not [to for _, _, to, _ in net.attempts if to == ("203.0.113.101", port)]
        # nobody at the LAN address (refused, or silent for lan_connect): then the published
        start = now()
        async with await link_to("10.9.9.9", host) as link:
            assert link.host == host
        assert now() - start < FAST.lan_connect + 0.01
        # another module at the LAN address (another LAN behind the same carrier NAT)
        # is not taken for it: it cannot prove the number's key
        carol_host = world.host_of(CAROL)
        other = PeerListener(
            typing.cast(Inbound, None), StaticKey.generate(), Limits(), FAST, net.at(carol_host)
        )  # (it never gets as far as its inbound)
        await other.start(carol_host, port)
        async with await link_to(carol_host, host) as link:
            assert link.host == host
        await other.close()
        # the path that worked last time first
        tried = len(net.attempts)
        async with await link_to("10.9.9.9", host, prefer=host) as link:
            assert link.host == host
        assert [to for _, _, to, _ in net.attempts[tried:]] == [(host, port)]

    in_memory(tmp_path, scenario)


def test_a_queued_message_to_an_online_peer_out_of_reach_waits_in_the_outbox(
    tmp_path: Path,
) -> None:
    async def scenario(world: World) -> None:
        alice = await world.user(ALICE)
        key = load_or_create_key(world.root / BOB / IDENTITY_FILE)
        holder = await world.client(BOB, key)  # online; takes no connection, dials none
        await holder.register(BOB, 4444)
        report = await alice.send_text(BOB, "whenever you can", queue=True)
        assert (report.queued, report.failed) == ([BOB], [])  # kept, not failed
        assert [entry.id for entry in alice.outbox()] == [report.id]
        await network(world).attempted((world.host_of(BOB), 4444), 2)  # and tried again
        await holder.unregister()
        await holder.close()
        bob = await world.user(BOB)  # reachable now
        assert await next_event(alice) == QueuedDelivered(report.id, BOB)
        got = await next_event(bob)
        assert isinstance(got, TextReceived)
        assert alice.outbox() == []

    in_memory(tmp_path, scenario)


def test_queued_recipients_keep_the_groups_order(tmp_path: Path) -> None:
    async def scenario(world: World) -> None:
        alice = await world.user(ALICE)
        key = load_or_create_key(world.root / BOB / IDENTITY_FILE)
        holder = await world.client(BOB, key)  # bob online, out of reach; carol offline
        await holder.register(BOB, 4444)
        alice.book.create_group("pals", [BOB, CAROL])
        report = await alice.send_text("pals", "whenever", queue=True)
        assert (report.queued, report.failed) == ([BOB, CAROL], [])
        await holder.close()

    in_memory(tmp_path, scenario)
