"""What one sender may make a module store (config.IncomingLimits): strangers less than
contacts, refused with a code the sender sees (`rate-limited`, `no-room`), and nothing
queued is lost to a limit: the outbox waits it out."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from pathlib import Path

import pytest

from tests.app.test_session import (
    CutOff,
    InMemory,
    SenderDies,
    die_mid_photo,
    offer_of,
    raw_link,
)
from tests.conftest import image_bytes
from tests.memory import MemoryNetwork, run_in_virtual_time
from tests.servers import World, next_message, world_at
from whatsap2p.app.events import PhotoReceived, QueuedDelivered, SessionEvent, TextReceived
from whatsap2p.app.session import Session
from whatsap2p.config import IncomingLimits, Limits, Timeouts
from whatsap2p.protocol import events as ev

ALICE, BOB, CAROL, DAVE = (f"+551199999000{i}" for i in range(1, 5))
LIMITS = IncomingLimits()
BURST = int(LIMITS.stranger_messages_burst)


async def next_event(session: Session) -> SessionEvent:
    return await next_message(session, 60)


def in_virtual_time(tmp_path: Path, scenario: Callable[[World], Awaitable[None]]) -> None:
    async def main() -> None:
        async with world_at(tmp_path, MemoryNetwork()) as world:
            await scenario(world)

    run_in_virtual_time(main)


def test_a_strangers_burst_is_throttled_and_a_contacts_is_not(tmp_path: Path) -> None:
    async def scenario(world: World) -> None:
        alice, bob, carol = [await world.user(phone) for phone in (ALICE, BOB, CAROL)]
        bob.book.add_contact("alice", ALICE)
        count = BURST + 20
        from_carol = await asyncio.gather(
            *(carol.send_text(BOB, f"from a stranger {i}") for i in range(count))
        )
        refused = [report.failed for report in from_carol if not report.delivered]
        assert len(refused) == count - BURST
        for (failed,) in refused:
            assert (failed.phone, failed.code) == (BOB, "rate-limited")
            assert failed.error == (
                "refused by the peer: too many messages: 30 at once, then 1 a second "
                "from a number not in the contacts"
            )
        from_alice = await asyncio.gather(
            *(alice.send_text(BOB, f"from a friend {i}") for i in range(5 * count))
        )
        assert all(report.delivered == [BOB] for report in from_alice)
        shown = [await next_event(bob) for _ in range(BURST + 5 * count)]
        assert all(isinstance(event, TextReceived) for event in shown)
        assert bob.events.empty()
        assert len(bob.conversation(CAROL, 1000)) == BURST  # what was refused is not stored

        await asyncio.sleep(3.5)  # (virtual) a stranger's allowance comes back, one a second
        again = await asyncio.gather(*(carol.send_text(BOB, f"later {i}") for i in range(5)))
        assert sum(1 for report in again if report.delivered) == 3

    in_virtual_time(tmp_path, scenario)


def test_a_strangers_queued_texts_wait_out_its_limit_and_all_arrive(tmp_path: Path) -> None:
    async def scenario(world: World) -> None:
        carol = await world.user(CAROL)
        count = BURST + 5
        queued = [await carol.send_text(BOB, f"queued {i}", queue=True) for i in range(count)]
        assert all(report.queued == [BOB] for report in queued)
        bob = await world.user(BOB)
        delivered = [await next_event(carol) for _ in range(count)]  # retried, 2 s, then 4 s
        assert delivered == [QueuedDelivered(report.id, BOB) for report in queued]
        got = [await next_event(bob) for _ in range(count)]
        assert [event.text for event in got if isinstance(event, TextReceived)] == [
            f"queued {i}" for i in range(count)
        ]

    in_virtual_time(tmp_path, scenario)


# --- room for photos (in real time: photos are written on threads) ------------------------


def photo_file(folder: Path, name: str, size: int) -> Path:
    path = folder / name
    path.write_bytes(image_bytes(size=(100, 100), marker=os.urandom(size)))
    return path


async def test_a_stranger_gets_a_smaller_share_for_photos_than_a_contact(tmp_path: Path) -> None:
    incoming = IncomingLimits(stranger_partial_bytes=200_000, contact_partial_bytes=2_000_000)
    async with world_at(tmp_path) as world:
        alice, carol = await world.user(ALICE), await world.user(CAROL)
        bob = await world.user(BOB, incoming=incoming)
        bob.book.add_contact("alice", ALICE)
        photo = photo_file(tmp_path, "big.png", 400_000)
        from_carol = await carol.send_photo(BOB, photo)
        (failed,) = from_carol.failed
        assert (failed.phone, failed.code) == (BOB, "no-room")
        assert failed.error == (
            f"refused by the peer: photos arriving from {CAROL} would take more than "
            "their 0.2 MiB share at once"
        )
        assert (await alice.send_photo(BOB, photo)).delivered == [BOB]
        got = await next_event(bob)
        assert isinstance(got, PhotoReceived)
        assert got.sender == ALICE
        await bob.settled()
        assert list((bob.config.data_dir / "partial").iterdir()) == []


async def test_a_senders_old_interrupted_photo_gives_way_to_its_new_one(tmp_path: Path) -> None:
    network = MemoryNetwork()  # (in real time)
    incoming = IncomingLimits(stranger_partial_bytes=500_000)
    async with world_at(tmp_path, network) as world:
        carol = await world.user(CAROL)
        bob = await world.user(BOB, incoming=incoming)
        data = image_bytes(size=(100, 100), marker=os.urandom(400_000))
        await die_mid_photo(network, carol, bob, offer_of(data, "p1", "old.png"), data, 300_000)
        (kept,) = (bob.config.data_dir / "partial").iterdir()
        assert kept.stat().st_size == 300_000  # 300 kB kept + 400 kB new > the 500 kB share

        report = await carol.send_photo(BOB, photo_file(tmp_path, "new.png", 400_000))
        assert report.delivered == [BOB]
        assert list((bob.config.data_dir / "partial").iterdir()) == []


async def test_a_strangers_photo_bytes_are_limited_and_a_cut_off_ones_given_back(
    tmp_path: Path,
) -> None:
    network = MemoryNetwork()  # (in real time)
    incoming = IncomingLimits(stranger_photo_burst=1_000_000, stranger_photo_rate=1.0)
    async with world_at(tmp_path, network) as world:
        carol = await world.user(CAROL)
        bob = await world.user(BOB, incoming=incoming)
        data = image_bytes(size=(100, 100), marker=os.urandom(400_000))
        # 400 kB offered, cut off after 100 kB: the 300 kB that never came are given back
        await die_mid_photo(network, carol, bob, offer_of(data, "p1", "cut.png"), data, 100_000)
        photos = [photo_file(tmp_path, f"p{i}.png", 400_000) for i in range(2)]
        for photo in photos:  # 100 kB + 2 x 400 kB: within the 1 MB
            assert (await carol.send_photo(BOB, photo)).delivered == [BOB]
        third = await carol.send_photo(BOB, photo_file(tmp_path, "p3.png", 400_000))
        (failed,) = third.failed
        assert failed.code == "rate-limited"
        assert failed.error == (
            "refused by the peer: too many photo bytes: try later (a number not in the contacts)"
        )


async def test_a_photo_offered_again_ends_its_earlier_transfer_and_resumes(tmp_path: Path) -> None:
    network = MemoryNetwork()  # (in real time)
    async with world_at(tmp_path, network) as world:
        carol, bob = await world.user(CAROL), await world.user(BOB)
        data = image_bytes(size=(100, 100), marker=os.urandom(400_000))
        offer = offer_of(data, "p1", "again.png")
        first = await raw_link(carol, bob)
        assert bob.listen_address is not None
        (connection,) = network.to(bob.listen_address)
        cut = CutOff(data, 100_000, connection.delivered)
        with pytest.raises(SenderDies):  # the sender gives up; the connection stays open
            await first.send_photo(offer, lambda offset: cut)
        async with await raw_link(carol, bob) as again:  # the same message again
            sent = await again.send_photo(offer, lambda offset: InMemory(data, offset))
        assert sent == len(data) - 100_000  # resumed from what the first one kept
        await connection.closed()  # which the receiver ended
        got = await next_event(bob)
        assert isinstance(got, PhotoReceived)
        assert got.photo.path.read_bytes() == data
        first.abort()


# --- what one sender may hold: turns, room, and what it left behind ---------------------


class Trickle:
    """A photo's first `first` bytes, then a byte every `every` seconds: a sender that
    holds its transfer open for as long as it likes, without ever stalling."""

    def __init__(self, data: bytes, every: float, first: int = 1000) -> None:
        self._data, self._every, self._first = data, every, first
        self.sha256: str | None = None

    async def __aiter__(self) -> AsyncGenerator[bytes]:
        yield self._data[: self._first]
        for at in range(self._first, len(self._data)):
            await asyncio.sleep(self._every)
            yield self._data[at : at + 1]


async def hold_a_turn(sender: Session, receiver: Session, name: str) -> asyncio.Task[int]:
    """`sender` offers a photo to `receiver` and trickles it: it holds a turn to be
    written; the task is the transfer (cancel it to let go)."""
    data = image_bytes(size=(100, 100), marker=os.urandom(100_000))
    link = await raw_link(sender, receiver)
    offer = offer_of(data, name, f"{name}.png")

    async def trickle() -> int:
        try:
            return await link.send_photo(offer, lambda offset: Trickle(data, 1.0))
        finally:
            link.abort()  # (let go: the sender is gone)

    return asyncio.create_task(trickle())


async def let_go(*holding: asyncio.Task[int]) -> None:
    for task in holding:
        task.cancel()
    await asyncio.gather(*holding, return_exceptions=True)


async def test_a_stranger_cannot_take_every_turn_to_be_written(tmp_path: Path) -> None:
    incoming = IncomingLimits(stranger_photos_at_once=2)
    async with world_at(tmp_path, MemoryNetwork()) as world:
        alice, carol = await world.user(ALICE), await world.user(CAROL)
        bob = await world.user(BOB, Limits(max_photos_writing=3), incoming=incoming)
        bob.book.add_contact("alice", ALICE)
        holding = [await hold_a_turn(carol, bob, f"hog{i}") for i in range(2)]
        third = await carol.send_photo(BOB, photo_file(tmp_path, "c.png", 1000))
        (failed,) = third.failed
        assert (failed.code, failed.error) == (
            "rate-limited",
            "refused by the peer: too many photos at once: at most 2 from one sender",
        )
        # a turn is left for a contact
        assert (await alice.send_photo(BOB, photo_file(tmp_path, "a.png", 1000))).delivered
        await let_go(*holding)


async def test_a_photo_without_a_turn_in_time_is_refused_for_now(tmp_path: Path) -> None:
    async with world_at(tmp_path, MemoryNetwork()) as world:
        alice, carol = await world.user(ALICE), await world.user(CAROL)
        bob = await world.user(BOB, Limits(max_photos_writing=1), turn_wait=0.5)
        holding = await hold_a_turn(carol, bob, "hog")
        photo = photo_file(tmp_path, "a.png", 1000)
        (failed,) = (await alice.send_photo(BOB, photo)).failed  # well before its 3 s wait
        assert (failed.code, failed.error) == (
            "no-room",
            "refused by the peer: the receiver is taking other photos: try again later",
        )
        await let_go(holding)
        assert (await alice.send_photo(BOB, photo)).delivered == [BOB]


async def test_an_offer_waiting_for_its_turn_ends_with_its_connection(tmp_path: Path) -> None:
    network = MemoryNetwork()
    async with world_at(tmp_path, network) as world:
        alice, carol = await world.user(ALICE), await world.user(CAROL)
        bob = await world.user(BOB, Limits(max_photos_writing=1))
        holding = await hold_a_turn(carol, bob, "hog")
        data = image_bytes(size=(100, 100), marker=os.urandom(1000))
        link = await raw_link(alice, bob)
        waiting = asyncio.create_task(
            link.send_photo(offer_of(data, "p1", "p.png"), lambda offset: InMemory(data, offset))
        )
        assert bob.listen_address is not None
        await network.to(bob.listen_address)[-1].delivered()  # the offer is in
        link.abort()  # alice gives up while it waits for its turn
        await asyncio.gather(waiting, return_exceptions=True)
        await asyncio.wait_for(bob.settled(), 5)  # it ended, though the turn never came
        await let_go(holding)


async def test_strangers_share_of_the_room_leaves_room_for_contacts(tmp_path: Path) -> None:
    incoming = IncomingLimits(strangers_partial_bytes=500_000, stranger_partial_bytes=450_000)
    async with world_at(tmp_path, MemoryNetwork()) as world:
        alice, carol = await world.user(ALICE), await world.user(CAROL)
        dave = await world.user(DAVE)
        bob = await world.user(BOB, incoming=incoming)
        bob.book.add_contact("alice", ALICE)
        data = image_bytes(size=(100, 100), marker=os.urandom(400_000))
        link = await raw_link(carol, bob)  # a stranger's 400 kB, offered and held open
        holding = asyncio.create_task(
            link.send_photo(offer_of(data, "s1", "s.png"), lambda offset: Trickle(data, 1.0))
        )
        photo = photo_file(tmp_path, "p.png", 200_000)
        (failed,) = (await dave.send_photo(BOB, photo)).failed  # another stranger: no room
        assert failed.code == "no-room"
        assert "numbers not in the contacts take all the room they may" in failed.error
        assert (await alice.send_photo(BOB, photo)).delivered == [BOB]  # a contact: room
        await let_go(holding)


async def test_leftovers_kept_past_their_time_are_dropped_while_running(tmp_path: Path) -> None:
    network = MemoryNetwork()
    incoming = IncomingLimits(partial_bytes=500_000)
    async with world_at(tmp_path, network) as world:
        alice, carol = await world.user(ALICE), await world.user(CAROL)
        bob = await world.user(BOB, incoming=incoming)
        data = image_bytes(size=(100, 100), marker=os.urandom(400_000))
        await die_mid_photo(network, carol, bob, offer_of(data, "p1", "cut.png"), data, 300_000)
        (kept,) = (bob.config.data_dir / "partial").iterdir()
        photo = photo_file(tmp_path, "a.png", 300_000)
        (failed,) = (await alice.send_photo(BOB, photo)).failed  # 300 + 300 kB > 500 kB
        assert failed.code == "no-room"
        day_ago = time.time() - Timeouts().partial_keep - 1
        os.utime(kept, (day_ago, day_ago))  # kept for as long as it may be
        assert (await alice.send_photo(BOB, photo)).delivered == [BOB]
        assert not kept.exists()


async def test_a_queued_photo_without_room_does_not_hold_back_the_texts_after_it(
    tmp_path: Path,
) -> None:
    async with world_at(tmp_path, MemoryNetwork()) as world:
        alice = await world.user(ALICE)
        photo = await alice.send_photo(BOB, photo_file(tmp_path, "a.png", 50_000), queue=True)
        text = await alice.send_text(BOB, "queued after the photo", queue=True)
        full = IncomingLimits(disk_reserve=1 << 50)  # bob's disk is (as good as) full
        bob = await world.user(BOB, incoming=full)
        got = await next_event(bob)
        assert isinstance(got, TextReceived)
        assert got.id == text.id
        assert await next_event(alice) == QueuedDelivered(text.id, BOB)
        assert [entry.id for entry in alice.outbox()] == [photo.id]  # waiting for room


async def test_a_retried_message_already_stored_is_acknowledged_past_the_limit(
    tmp_path: Path,
) -> None:
    async with world_at(tmp_path, MemoryNetwork()) as world:
        carol, bob = await world.user(CAROL), await world.user(BOB)
        first = await carol.send_text(BOB, "the first")
        for i in range(BURST):  # the rest of the burst, and one more, refused
            await carol.send_text(BOB, f"more {i}")
        async with await raw_link(carol, bob) as link:  # the first again (a retry)
            await link.send_text(ev.Text(first.id, "2026-12-04T10:00:00+00:00", "the first"))
        assert len(bob.conversation(CAROL, 1000)) == BURST
