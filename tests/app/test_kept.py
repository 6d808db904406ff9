"""What a person sends with `queue` is kept: a server that cannot be reached, a link that
drops, an acknowledgement that never comes — the message waits in the outbox and is
delivered once, its `delivered` said once. A send may name its message's id (a retry,
shown once); a queued message can be cancelled.

Texts on an in-memory network in virtual time; photos (written on threads) in real time.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import image_bytes
from tests.memory import MemoryNetwork
from tests.servers import World, in_memory, network, next_message, world_at
from whatsap2p.app.events import (
    DeliveryReport,
    PhotoReceived,
    QueuedDelivered,
    ServerConnectionChanged,
    SessionEvent,
    TextReceived,
)
from whatsap2p.app.session import Session
from whatsap2p.config import Timeouts
from whatsap2p.errors import InvalidInput, ServerUnreachable

ALICE, BOB, CAROL = (f"+551199999000{i}" for i in range(1, 4))
#: Longer than every pause of the outbox's retries: what has not come by then never will.
QUIET = 5 * Timeouts().outbox_retry_max


def server_of(world: World) -> tuple[str, int]:
    return ("127.0.0.1", world.port)


def listening(session: Session) -> tuple[str, int]:
    assert session.listen_address is not None
    return session.listen_address


async def next_event(session: Session) -> SessionEvent:
    return await next_message(session, 600)


async def events_until(
    session: Session, done: Callable[[list[SessionEvent]], object]
) -> list[SessionEvent]:
    """The events `session` publishes, read until `done` says they are enough; each
    message that arrived is marked shown, as a UI does once it showed it."""
    seen: list[SessionEvent] = []
    while not done(seen):
        event = await next_event(session)
        if isinstance(event, TextReceived | PhotoReceived):
            session.shown(event)
        seen.append(event)
    return seen


def received(events: list[SessionEvent]) -> list[str]:
    return [e.id for e in events if isinstance(e, TextReceived | PhotoReceived)]


def delivered(events: list[SessionEvent]) -> list[str]:
    return [e.id for e in events if isinstance(e, QueuedDelivered)]


async def quiet(*sessions: Session) -> None:
    """Once every retry would have come and gone, nothing more was published (a wait is
    how an absence is seen; in virtual time it costs nothing)."""
    await asyncio.sleep(QUIET)
    for session in sessions:
        assert session.events.empty(), session.events.get_nowait()


def states(session: Session, phone: str) -> dict[str, str]:
    return {e.id: e.state for e in session.conversation(phone, 1000) if e.sender == session.phone}


# --- the server out of reach ------------------------------------------------------------------


def test_a_text_queued_while_the_server_is_down_arrives_once_it_is_back(tmp_path: Path) -> None:
    async def scenario(world: World) -> None:
        alice = await world.user(ALICE)
        net = network(world)
        net.take_down(server_of(world))  # killed with -9: refuses connections meanwhile
        assert await next_event(alice) == ServerConnectionChanged("lost")
        with pytest.raises(ServerUnreachable, match="not connected to the server"):
            await alice.send_text(BOB, "now or never")  # without queue: said at once
        text = await alice.send_text(BOB, "through the tunnel", queue=True)
        assert (text.queued, text.offline, text.failed, text.delivered) == ([BOB], [], [], [])
        assert [entry.id for entry in alice.outbox()] == [text.id]
        net.bring_up(server_of(world))
        assert await next_event(alice) == ServerConnectionChanged("restored")
        bob = await world.user(BOB)  # online after the server is back: its push
        assert await next_event(alice) == QueuedDelivered(text.id, BOB)
        assert received(await events_until(bob, received)) == [text.id]
        await quiet(alice, bob)
        assert alice.outbox() == []
        assert states(alice, BOB) == {text.id: "delivered"}

    in_memory(tmp_path, scenario)


def test_queued_while_both_lost_the_server_is_delivered_when_it_comes_back(
    tmp_path: Path,
) -> None:
    """The recipient stays online at its end; the sender's watch, renewed on its new
    registration, finds it (whichever of the two registers first)."""

    async def scenario(world: World) -> None:
        alice, bob = await world.user(ALICE), await world.user(BOB)
        first = await alice.send_text(BOB, "before")
        assert first.delivered == [BOB]
        net = network(world)
        net.take_down(server_of(world))
        assert await next_event(alice) == ServerConnectionChanged("lost")
        kept = [await alice.send_text(BOB, f"in the tunnel {n}", queue=True) for n in range(3)]
        assert [report.queued for report in kept] == [[BOB]] * 3
        net.bring_up(server_of(world))
        events = await events_until(alice, lambda seen: len(delivered(seen)) == 3)
        assert delivered(events) == [report.id for report in kept]  # in order, once each
        shown = await events_until(bob, lambda seen: len(received(seen)) == 4)
        assert received(shown) == [first.id, *(report.id for report in kept)]
        await quiet(alice, bob)
        assert alice.outbox() == []

    in_memory(tmp_path, scenario)


def test_a_burst_of_queued_texts_through_a_server_restart_and_a_receiver_restart(
    tmp_path: Path,
) -> None:
    """Texts pipelined in waves while the receiver's module stops (texts on their way)
    and starts again, and the server goes down (lookups on their way) and comes back:
    each one queued or delivered, none failed; each shown once, each queued one said
    delivered once."""
    waves, size = 10, 30

    async def scenario(world: World) -> None:
        alice, bob = await world.user(ALICE), await world.user(BOB)
        bob.book.add_contact("alice", ALICE)  # a friend: its burst is not held back
        net = network(world)
        shown: list[SessionEvent] = []
        sends: list[asyncio.Task[DeliveryReport]] = []
        for wave in range(waves):
            if wave == 2:  # the receiver's acknowledgements of this wave are lost...
                for link in net.open_to(listening(bob)):
                    link.hush()
            texts = (alice.send_text(BOB, f"text {wave}.{n}", queue=True) for n in range(size))
            sends += [asyncio.create_task(text) for text in texts]
            if wave == 2:  # ...and it is killed once some of them arrived
                shown = await events_until(bob, lambda seen: len(received(seen)) > 2 * size + 10)
                net.take_down(listening(bob))
                for connection in net.open_to(server_of(world)):
                    if connection.client[0] == world.host_of(BOB):
                        connection.cut()
                await bob.close()
            elif wave == 4:  # the server goes down under this wave's lookups
                net.take_down(server_of(world))
            elif wave == 6:
                net.bring_up(server_of(world))
            elif wave == 8:
                bob = await world.user(BOB)
            await asyncio.wait(sends[-size:])
        reports = [send.result() for send in sends]
        assert [r.failed for r in reports if r.failed or r.offline] == []
        assert all(len(r.delivered) + len(r.queued) == 1 for r in reports)
        queued = {r.id for r in reports if r.queued}
        assert len(queued) >= 4 * size  # (the waves while bob or the server was away)
        said = await events_until(alice, lambda seen: set(delivered(seen)) >= queued)
        assert Counter(delivered(said)) == Counter(queued)  # once each
        ids = {r.id for r in reports}
        shown += await events_until(bob, lambda seen: set(received(shown + seen)) >= ids)
        await quiet(alice, bob)
        # (a module stopped between showing a text and marking it shown repeats it once)
        repeats = Counter(received(shown)) - Counter(ids)
        assert sum(repeats.values()) <= 1
        assert alice.outbox() == []
        assert set(states(alice, BOB).values()) == {"delivered"}

    in_memory(tmp_path, scenario)


# --- the acknowledgement lost ---------------------------------------------------------------


async def answers_lost(world: World) -> tuple[Session, Session]:
    """alice and bob, who have talked: from now on bob's answers on the texts' kept
    connection are lost on the way."""
    alice, bob = await world.user(ALICE), await world.user(BOB)
    assert (await alice.send_text(BOB, "hello")).delivered == [BOB]
    assert isinstance(await next_event(bob), TextReceived)
    (link,) = network(world).open_to(listening(bob))
    link.hush()
    return alice, bob


def test_a_queued_text_whose_acknowledgement_was_lost_is_sent_again_and_shown_once(
    tmp_path: Path,
) -> None:
    async def scenario(world: World) -> None:
        alice, bob = await answers_lost(world)
        report = await alice.send_text(BOB, "did you get it?", queue=True)
        assert (report.queued, report.failed) == ([BOB], [])  # it may have arrived: kept
        got = await next_event(bob)  # it had
        assert isinstance(got, TextReceived)
        assert got.id == report.id
        # tried again under its id, on a new connection: stored already, so acknowledged
        # without being shown again
        assert await next_event(alice) == QueuedDelivered(report.id, BOB)
        await quiet(alice, bob)
        assert states(alice, BOB)[report.id] == "delivered"

    in_memory(tmp_path, scenario)


def test_without_queue_a_lost_acknowledgement_says_it_may_have_arrived_and_a_retry_is_shown_once(
    tmp_path: Path,
) -> None:
    async def scenario(world: World) -> None:
        alice, bob = await answers_lost(world)
        report = await alice.send_text(BOB, "did you get it?")
        (failed,) = report.failed
        assert (failed.phone, failed.code) == (BOB, "unconfirmed")
        assert "may have arrived" in failed.error
        got = await next_event(bob)
        assert isinstance(got, TextReceived)
        again = await alice.send_text(BOB, "did you get it?", message_id=report.id)
        assert (again.id, again.delivered, again.failed) == (report.id, [BOB], [])
        await quiet(alice, bob)  # shown once
        assert states(alice, BOB)[report.id] == "delivered"

    in_memory(tmp_path, scenario)


# --- a send under a given id ---------------------------------------------------------------


def test_a_send_under_a_given_id_is_a_retry_of_that_message(tmp_path: Path) -> None:
    async def scenario(world: World) -> None:
        alice, bob = await world.user(ALICE), await world.user(BOB)
        alice.book.create_group("pals", [BOB, CAROL])
        message_id = os.urandom(16).hex()
        first = await alice.send_text("pals", "hi all", message_id=message_id)
        assert (first.id, first.delivered, first.offline) == (message_id, [BOB], [CAROL])
        carol = await world.user(CAROL)
        again = await alice.send_text("pals", "hi all", message_id=message_id)
        # bob, who has it, is not sent it again: counted delivered; carol gets it now
        assert (again.id, again.delivered, again.offline) == (message_id, [BOB, CAROL], [])
        assert again.routes == {CAROL: "direct"}
        stamps = set()
        for session in (bob, carol):
            got = await next_event(session)
            assert isinstance(got, TextReceived)
            assert (got.id, got.group) == (message_id, "pals")
            stamps.add(got.timestamp)
        # one message: the retry keeps its timestamp too
        assert len(stamps) == 1
        assert {e.timestamp for e in alice.conversation("pals", 10)} == stamps
        with pytest.raises(InvalidInput, match="sent before with other content"):
            await alice.send_text("pals", "something else", message_id=message_id)
        with pytest.raises(InvalidInput, match="sent before to group 'pals'"):
            await alice.send_text(BOB, "hi all", message_id=message_id)
        for bad in ("ABCDEF" * 6, "12345", "g" * 32, " " + "a" * 31):
            with pytest.raises(InvalidInput, match="32 lowercase hexadecimal digits"):
                await alice.send_text(BOB, "x", message_id=bad)
        await quiet(alice, bob, carol)

    in_memory(tmp_path, scenario)


def test_a_retry_leaves_a_copy_waiting_in_the_outbox_to_it(tmp_path: Path) -> None:
    async def scenario(world: World) -> None:
        alice = await world.user(ALICE)
        message_id = os.urandom(16).hex()
        queued = await alice.send_text(BOB, "later", queue=True, message_id=message_id)
        assert queued.queued == [BOB]
        again = await alice.send_text(BOB, "later", message_id=message_id)
        assert (again.queued, again.offline) == ([BOB], [])  # still waiting, not doubled
        assert [entry.id for entry in alice.outbox()] == [message_id]
        bob = await world.user(BOB)
        assert await next_event(alice) == QueuedDelivered(message_id, BOB)
        assert received(await events_until(bob, received)) == [message_id]
        await quiet(alice, bob)

    in_memory(tmp_path, scenario)


def test_resend_sends_a_failed_message_again_under_its_id(tmp_path: Path) -> None:
    async def scenario(world: World) -> None:
        alice = await world.user(ALICE)
        alice.book.add_contact("bob", BOB)
        net = network(world)
        net.take_down(server_of(world))
        assert await next_event(alice) == ServerConnectionChanged("lost")
        with pytest.raises(ServerUnreachable):
            await alice.send_text("bob", "are you there?")  # nothing was stored
        net.bring_up(server_of(world))
        assert await next_event(alice) == ServerConnectionChanged("restored")
        offline = await alice.send_text("bob", "are you there?")
        assert offline.offline == [BOB]
        bob = await world.user(BOB)
        again = await alice.resend(offline.id)
        assert (again.id, again.delivered) == (offline.id, [BOB])
        assert received(await events_until(bob, received)) == [offline.id]
        with pytest.raises(InvalidInput, match=r"no message 0{32} was sent from here"):
            await alice.resend("0" * 32)

    in_memory(tmp_path, scenario)


# --- cancelling ----------------------------------------------------------------------------


def test_a_cancelled_message_is_never_delivered(tmp_path: Path) -> None:
    async def scenario(world: World) -> None:
        alice, carol = await world.user(ALICE), await world.user(CAROL)
        alice.book.create_group("pals", [BOB, CAROL])
        report = await alice.send_text("pals", "never mind", queue=True)
        assert received(await events_until(carol, received)) == [report.id]
        assert (report.delivered, report.queued) == ([CAROL], [BOB])
        kept = await alice.send_text(BOB, "this one stays", queue=True)
        assert alice.cancel(report.id) == [BOB]
        assert [entry.id for entry in alice.outbox()] == [kept.id]
        group = {e.recipient: e.state for e in alice.conversation("pals", 10)}
        assert group == {BOB: "cancelled", CAROL: "delivered"}
        with pytest.raises(
            InvalidInput, match=r"no queued message [0-9a-f]{32} waits in the outbox"
        ):
            alice.cancel(report.id)
        with pytest.raises(InvalidInput, match="no queued message"):
            alice.cancel(os.urandom(16).hex())
        with pytest.raises(InvalidInput, match="32 lowercase hexadecimal digits"):
            alice.cancel("nope")
        bob = await world.user(BOB)
        assert await next_event(alice) == QueuedDelivered(kept.id, BOB)
        assert received(await events_until(bob, received)) == [kept.id]
        await quiet(alice, bob)
        assert alice.outbox() == []

    in_memory(tmp_path, scenario)


# --- photos, in real time --------------------------------------------------------------------


async def test_a_photo_queued_while_the_server_is_down_arrives_verified(tmp_path: Path) -> None:
    net = MemoryNetwork()
    async with world_at(tmp_path, net) as world:
        alice = await world.user(ALICE)
        original = tmp_path / "tunnel.png"
        original.write_bytes(image_bytes(size=(120, 90)))
        net.take_down(server_of(world))
        assert await next_event(alice) == ServerConnectionChanged("lost")
        report = await alice.send_photo(BOB, original, queue=True)
        assert (report.queued, report.failed) == ([BOB], [])
        original.unlink()  # the copy kept in outbox/ is what travels
        net.bring_up(server_of(world))
        assert await next_event(alice) == ServerConnectionChanged("restored")
        bob = await world.user(BOB)
        assert await next_event(alice) == QueuedDelivered(report.id, BOB)
        got = await next_event(bob)
        assert isinstance(got, PhotoReceived)
        assert got.id == report.id
        assert got.photo.path.read_bytes() == image_bytes(size=(120, 90))
        assert list((alice.config.data_dir / "outbox").iterdir()) == []


async def test_a_cancelled_photos_copy_goes_once_nobody_waits_for_it(tmp_path: Path) -> None:
    async with world_at(tmp_path, MemoryNetwork()) as world:
        alice = await world.user(ALICE)
        alice.book.create_group("pals", [BOB, CAROL])
        original = tmp_path / "p.png"
        original.write_bytes(image_bytes())
        report = await alice.send_photo("pals", original, queue=True)
        assert report.queued == [BOB, CAROL]
        outbox = alice.config.data_dir / "outbox"
        assert len(list(outbox.iterdir())) == 1
        assert sorted(alice.cancel(report.id)) == [BOB, CAROL]
        assert list(outbox.iterdir()) == []
        history = alice.conversation("pals", 10)
        assert {e.recipient: e.state for e in history} == {BOB: "cancelled", CAROL: "cancelled"}
