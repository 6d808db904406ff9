"""What a review of issue 24 found (queued sends that never fail, send ids, history
pages), each defect kept from coming back: a queued text to someone whose own server
link is down, one whose lookup was refused, a refused watch; an id reused for another
contact; a retried message's place in the history.

Texts on an in-memory network in virtual time; photos (written on threads) in real time.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from tests.conftest import image_bytes
from tests.memory import MemoryNetwork, run_in_virtual_time
from tests.servers import World, next_message, running_server, world_at
from whatsap2p.app.events import QueuedDelivered, SessionEvent
from whatsap2p.app.history import History, HistoryEntry, State
from whatsap2p.app.session import Session
from whatsap2p.config import RateLimits, Timeouts
from whatsap2p.errors import InvalidInput, RateLimited

ALICE, BOB, CAROL, DAVE = (f"+551199999000{i}" for i in range(1, 5))
T = "2026-11-27T10:00:00.000+00:00"
QUIET = 5 * Timeouts().outbox_retry_max


Scenario = Callable[[World], Coroutine[object, object, None]]


def in_memory(tmp_path: Path, scenario: Scenario, rates: RateLimits | None = None) -> None:
    """Run `scenario` in a world on an in-memory network, in virtual time; the server
    with `rates` if given."""

    async def main() -> None:
        net = MemoryNetwork()
        async with AsyncExitStack() as stack:
            server, port = await stack.enter_async_context(running_server(network=net, rates=rates))
            await scenario(World(stack, server, port, tmp_path, net))

    run_in_virtual_time(main)


async def next_event(session: Session, timeout: float = 600) -> SessionEvent:
    return await next_message(session, timeout)


def pages(
    history: History, limit: int, before: str | None, **conversation: str
) -> list[list[HistoryEntry]]:
    """Page back from `before` (None: the newest) until an empty page (at most 100)."""
    got = []
    for _ in range(100):
        page = history.entries(limit=limit, before=before, **conversation)
        if not page:
            break
        got.append(page)
        before = page[-1].id
    return got


async def spend_lookups(session: Session) -> None:
    """Look a number up until the server refuses (its bucket is empty)."""
    for n in range(10):
        try:
            await session.send_text(DAVE, f"hello {n}")
        except RateLimited:
            return
    raise AssertionError("the server never refused a lookup")


# --- a reused id -----------------------------------------------------------------------------


def test_a_used_id_is_refused_for_a_direct_send_to_another_contact(tmp_path: Path) -> None:
    """docs/jsonrpc.md: 'different content, or another target, is refused with -32602
    rather than two messages sharing an id'. Sender._earlier compares only the group
    (None == None for two different contacts), so the id goes to carol too."""

    async def scenario(world: World) -> None:
        alice, bob = await world.user(ALICE), await world.user(BOB)
        carol = await world.user(CAROL)
        message_id = os.urandom(16).hex()
        first = await alice.send_text(BOB, "for bob only", message_id=message_id)
        assert first.delivered == [BOB]
        with pytest.raises(InvalidInput, match="sent before"):
            await alice.send_text(CAROL, "for bob only", message_id=message_id)
        assert carol.events.empty()
        del bob

    in_memory(tmp_path, scenario)


# --- the history's order and pages with a retry ----------------------------------------------


async def test_paging_back_while_a_message_is_retried_repeats_nothing(tmp_path: Path) -> None:
    """A retry stores its recipient's row again (INSERT OR REPLACE): the row gets a new
    seq, the newest. A program paging back `before` that message's id (the last of the
    page it read) then gets the newest entries again: repeated entries, and the docs'
    'this order is total and never changes' does not hold."""
    history = History(tmp_path / "h.sqlite3", ALICE)
    for i in range(10):
        state: tuple[State, str | None] = (
            ("failed", "unreachable") if i == 4 else ("delivered", None)
        )
        await history.store_sent(f"m{i}", {BOB: state}, None, T, text=str(i))
    first = history.entries(BOB, limit=3)
    second = history.entries(BOB, limit=3, before=first[-1].id)
    assert [e.id for e in first + second] == ["m9", "m8", "m7", "m6", "m5", "m4"]
    # the person retries m4 (what Sender._record does with a retry that reached bob)
    await history.store_sent("m4", {BOB: ("delivered", None)}, None, T, text="4")
    rest = [e.id for page in pages(history, 3, second[-1].id, phone=BOB) for e in page]
    assert rest == ["m3", "m2", "m1", "m0"]
    history.close()


async def test_a_retried_message_keeps_its_place_in_the_history(tmp_path: Path) -> None:
    """A message's place is where it was first stored: a retry of m1 should not make it
    the newest of the conversation (nor skip it for a program already paging back)."""
    history = History(tmp_path / "h.sqlite3", ALICE)
    await history.store_sent("m0", {BOB: ("delivered", None)}, None, T, text="0")
    await history.store_sent("m1", {BOB: ("offline", None)}, None, T, text="1")
    await history.store_sent("m2", {BOB: ("delivered", None)}, None, T, text="2")
    await history.store_sent("m1", {BOB: ("delivered", None)}, None, T, text="1")
    assert [e.id for e in history.entries(BOB, limit=10)] == ["m2", "m1", "m0"]
    history.close()


def test_a_text_queued_when_the_lookup_is_refused_reaches_its_recipient_when_it_comes_online(
    tmp_path: Path,
) -> None:
    """With `queue`, a lookup the server refuses (rate-limited) queues the recipient;
    Outbox.kept then only looks it up again (Outbox._retry), and when it is found
    offline nothing asks the server to watch it: the push that it came online never
    comes, and the message waits until the sender's module registers again."""
    rates = RateLimits(lookup_rate=0.05, lookup_burst=2)  # a token every 20 s

    async def scenario(world: World) -> None:
        alice = await world.user(ALICE)
        await spend_lookups(alice)
        kept = await alice.send_text(BOB, "through the tunnel", queue=True)
        assert kept.queued == [BOB]  # refused at the server: kept
        await asyncio.sleep(QUIET)  # its retries looked it up at last: offline
        assert alice.events.empty()
        await world.user(BOB)  # bob comes online
        assert await next_event(alice) == QueuedDelivered(kept.id, BOB)

    in_memory(tmp_path, scenario, rates)


def test_a_watch_the_server_refuses_at_a_new_registration_is_asked_again(
    tmp_path: Path,
) -> None:
    """docs/jsonrpc.md: queued copies are 'tried as soon as the module is registered
    again (its watch of the outbox's recipients is renewed on every registration), and
    later again while the server refuses'. Outbox.watch logs a refused watch and gives
    up: until the next registration nobody is watched, and a recipient coming online
    is never told to the sender (here the source IP's lookup tokens ran out)."""
    rates = RateLimits(ip_lookup_rate=0.01, ip_lookup_burst=3)  # a token every 100 s

    async def scenario(world: World) -> None:
        alice = await world.user(ALICE)
        kept = await alice.send_text(BOB, "later", queue=True)  # a lookup and a watch
        assert kept.queued == [BOB]
        await spend_lookups(alice)  # the source IP's tokens
        net = world.network
        assert net is not None
        for connection in net.open_to(("127.0.0.1", world.port)):
            if connection.client[0] == world.host_of(ALICE):
                connection.cut()  # a new registration: its watch is refused
        await asyncio.sleep(QUIET)
        while not alice.events.empty():
            alice.events.get_nowait()  # (lost, restored)
        await world.user(BOB)
        assert await next_event(alice) == QueuedDelivered(kept.id, BOB)

    in_memory(tmp_path, scenario, rates)


def test_a_queued_text_to_someone_whose_server_link_is_lost_is_kept_not_failed(
    tmp_path: Path,
) -> None:
    """Issue 24: with `queue`, 'the recipient online but unreachable' keeps the message.
    Bob's link to the server goes dead; the server still lists him online (his old
    registration lives on until it expires) while his module reconnects. Alice's
    module reaches his, which cannot check her key at its server and refuses the
    connection ('closing'): code `refused`, which Sender treats as final. The send
    fails with "cannot check the sender's key: not connected to the server" -- it
    failed for want of a connection, and nothing will ever deliver it."""

    async def scenario(world: World) -> None:
        alice, bob = await world.user(ALICE), await world.user(BOB)
        net = world.network
        assert net is not None
        for connection in net.open_to(("127.0.0.1", world.port)):
            if connection.client[0] == world.host_of(BOB):
                connection.freeze()  # bob's path to the server dies
        await asyncio.sleep(20)
        report = await alice.send_text(BOB, "are you there?", queue=True)
        assert report.failed == []
        assert report.queued == [BOB]
        del bob

    in_memory(tmp_path, scenario)


def test_a_queued_copy_that_may_have_arrived_is_not_reported_plainly_cancelled(
    tmp_path: Path,
) -> None:
    """Bob's module stores a queued text, shows it, and dies before its acknowledgement
    leaves (the issue's own case). The copy stays queued; the person cancels it: the
    history says `cancelled` with code `unconfirmed` and that it may have arrived (a
    send whose acknowledgement was lost after the bytes left is never reported as
    plainly not delivered)."""

    async def scenario(world: World) -> None:
        alice, bob = await world.user(ALICE), await world.user(BOB)
        assert (await alice.send_text(BOB, "hello")).delivered == [BOB]
        await next_event(bob)
        net = world.network
        assert net is not None
        bob_at = bob.listen_address
        assert bob_at is not None
        (link,) = net.open_to(bob_at)
        link.hush()  # bob's acknowledgement will not come back...
        sending = asyncio.create_task(alice.send_text(BOB, "did you get it?", queue=True))
        got = await next_event(bob)  # ...though bob stored and showed the text
        net.take_down(bob_at)  # and bob's module dies (kill -9)
        for connection in net.open_to(("127.0.0.1", world.port)):
            if connection.client[0] == world.host_of(BOB):
                connection.cut()
        await bob.close()
        report = await sending
        assert report.queued == [BOB]
        assert getattr(got, "id", None) == report.id
        await asyncio.sleep(10)  # (tried again meanwhile: bob is offline)
        assert alice.cancel(report.id) == [BOB]
        (entry,) = [e for e in alice.conversation(BOB, 10) if e.id == report.id]
        assert (entry.state, entry.code) == ("cancelled", "unconfirmed")
        assert entry.error == "it may have arrived before it was cancelled"

    in_memory(tmp_path, scenario)


async def test_a_cancelled_queued_photo_retried_from_its_id_says_to_attach_it_again(
    tmp_path: Path,
) -> None:
    """/retry ID (and ctrl+r) sends a photo from the copy the outbox kept, which goes with
    the cancel: a clear word rather than a missing file; `send` with the photo and the id
    (the photo attached again) is the same message, shown once."""
    async with world_at(tmp_path, MemoryNetwork()) as world:
        alice = await world.user(ALICE)
        original = tmp_path / "p.png"
        original.write_bytes(image_bytes())
        report = await alice.send_photo(BOB, original, queue=True)
        assert report.queued == [BOB]
        assert alice.cancel(report.id) == [BOB]
        await world.user(BOB)
        with pytest.raises(InvalidInput, match="no longer kept here: attach it again"):
            await alice.resend(report.id)
        again = await alice.send_photo(BOB, original, message_id=report.id)
        assert (again.id, again.delivered) == (report.id, [BOB])
