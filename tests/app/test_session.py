"""The Session against a real directory server on 127.0.0.1 port 0."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from tests.conftest import image_bytes
from tests.memory import MemoryNetwork
from tests.servers import FAST, World, next_message, session_config, world_at
from whatsap2p.app.events import (
    IdentityChanged,
    PhotoReceived,
    PresenceChanged,
    QueuedDelivered,
    SessionEvent,
    TextReceived,
)
from whatsap2p.app.session import IDENTITY_FILE, Session
from whatsap2p.config import Limits
from whatsap2p.errors import (
    DeliveryRejected,
    InvalidInput,
    NumberAlreadyOnline,
    NumberBound,
    PeerRefused,
    PhotoRejected,
    StoreError,
    UnknownTarget,
)
from whatsap2p.net.deadlines import Deadlines
from whatsap2p.net.link import PeerLink
from whatsap2p.net.network import Network, TcpNetwork
from whatsap2p.protocol import events as ev

ALICE, BOB, CAROL, DAVE = (f"+551199999000{i}" for i in range(1, 5))


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with world_at(tmp_path) as world:
        yield world


async def next_event(session: Session) -> SessionEvent:
    return await next_message(session, 10)


async def test_text_both_ways_with_contact_names(world: World) -> None:
    alice, bob = await world.user(ALICE), await world.user(BOB)
    bob.book.add_contact("alice", ALICE)
    report = await alice.send_text(BOB, "hello bob")
    assert (report.delivered, report.offline, report.failed) == ([BOB], [], [])
    got = await next_event(bob)
    assert isinstance(got, TextReceived)
    assert (got.id, got.sender, got.name, got.group, got.text) == (
        report.id,
        ALICE,
        "alice",
        None,
        "hello bob",
    )
    back = await bob.send_text("alice", "hi alice")
    assert back.delivered == [ALICE]
    got = await next_event(alice)
    assert isinstance(got, TextReceived)
    assert (got.sender, got.name) == (BOB, None)


async def test_photo_to_a_group_with_an_offline_member(world: World, photo: Path) -> None:
    alice, bob, carol = await world.user(ALICE), await world.user(BOB), await world.user(CAROL)
    alice.book.create_group("trip", [BOB, CAROL, DAVE, ALICE])
    report = await alice.send_photo("trip", photo)
    assert sorted(report.delivered) == [BOB, CAROL]
    assert report.offline == [DAVE]  # and alice is never among her own recipients
    for member in (bob, carol):
        got = await next_event(member)
        assert isinstance(got, PhotoReceived)
        assert got.group == "trip"
        assert got.photo.path.read_bytes() == photo.read_bytes()
        assert got.photo.path.parent == member.config.data_dir / "photos"
        assert (got.photo.filename, got.photo.mime) == ("holiday.png", "image/png")


async def test_a_peer_that_refuses_says_why(world: World, tmp_path: Path) -> None:
    alice = await world.user(ALICE)
    await world.user(BOB, Limits(max_photo_bytes=100))
    big = tmp_path / "big.png"
    big.write_bytes(image_bytes(size=(300, 300)))
    report = await alice.send_photo(BOB, big)
    assert report.delivered == []
    assert [(f.phone, f.code) for f in report.failed] == [(BOB, "rejected")]
    assert "refused by the peer: photo size" in report.failed[0].error


async def test_bad_sends_are_refused_before_anything_goes_out(world: World, tmp_path: Path) -> None:
    alice = await world.user(ALICE)
    with pytest.raises(UnknownTarget):
        await alice.send_text("nobody", "x")
    with pytest.raises(InvalidInput, match="yourself"):
        await alice.send_text(ALICE, "x")
    with pytest.raises(PhotoRejected, match="does not exist"):
        await alice.send_photo(BOB, tmp_path / "nope.png")
    with pytest.raises(InvalidInput, match="longer than"):
        await alice.send_text(BOB, "x" * 70_000)


async def test_status_and_one_registration_per_number(world: World) -> None:
    alice = await world.user(ALICE)
    await world.user(BOB)
    alice.book.create_group("g", [BOB, CAROL])
    assert await alice.status("g") == {BOB: True, CAROL: False}
    twin = world.root / "bob-twin"  # the same key in another data dir
    twin.mkdir()
    shutil.copy(world.root / BOB / IDENTITY_FILE, twin / IDENTITY_FILE)
    with pytest.raises(NumberAlreadyOnline):
        await world.user(BOB, data_dir="bob-twin")
    with pytest.raises(NumberBound, match="bound to another key"):
        await world.user(BOB, data_dir="stranger")  # a new key


def offer_of(data: bytes, message_id: str, filename: str) -> ev.PhotoOffer:
    """A correct offer for the PNG bytes `data`."""
    key = hashlib.sha256(data[:1000]).hexdigest()
    stamp = "2026-11-27T10:00:00+00:00"
    return ev.PhotoOffer(message_id, stamp, filename, len(data), key, "image/png")


class InMemory:
    """A photo's bytes from memory, from `offset` on, claiming `sha256` for the whole."""

    def __init__(self, data: bytes, offset: int = 0, sha256: str | None = None) -> None:
        self._rest = data[offset:]
        self.sha256: str | None = sha256 or hashlib.sha256(data).hexdigest()

    async def __aiter__(self) -> AsyncGenerator[bytes]:
        yield self._rest


async def raw_link(sender: Session, receiver: Session) -> PeerLink:
    """A bare peer link from `sender` to `receiver`, to send what a Session would not."""
    assert receiver.listen_address is not None
    assert receiver.identity is not None
    assert sender.identity is not None
    address = ev.PeerAddress(receiver.phone, *receiver.listen_address, receiver.identity.public)
    network: Network = sender.config.network
    return await PeerLink.open(
        network, address, sender.phone, sender.identity, Limits(), FAST, Deadlines()
    )


class SenderDies(Exception):
    """The sending module dies in the middle of a photo."""


class CutOff:
    """A photo's first `size` bytes; then, once they reached the peer, the sender dies."""

    def __init__(self, data: bytes, size: int, reached: Callable[[], Awaitable[None]]) -> None:
        self._data, self._size, self._reached = data, size, reached
        self.sha256: str | None = None

    async def __aiter__(self) -> AsyncGenerator[bytes]:
        yield self._data[: self._size]
        await self._reached()
        raise SenderDies


async def die_mid_photo(
    network: MemoryNetwork, sender: Session, receiver: Session, offer: ev.PhotoOffer, data: bytes,
    size: int,
) -> None:  # fmt: skip
    """`sender` sends the photo's first `size` bytes on a link of its own, and once they
    reached `receiver`, dies (its connection cut); returns once the receiver has dealt
    with it."""
    link = await raw_link(sender, receiver)
    assert receiver.listen_address is not None
    connection = network.to(receiver.listen_address)[-1]
    with pytest.raises(SenderDies):
        await link.send_photo(offer, lambda offset: CutOff(data, size, connection.delivered))
    connection.cut()
    await connection.closed()
    await receiver.settled()


async def test_a_photo_cut_off_mid_way_shows_nothing_and_then_resumes(tmp_path: Path) -> None:
    network = MemoryNetwork()  # (in real time: photos are written on threads)
    async with world_at(tmp_path, network) as world:
        alice, bob = await world.user(ALICE), await world.user(BOB)
        data = image_bytes(size=(500, 500), marker=os.urandom(300_000))
        offer = offer_of(data, "p1", "x.png")
        await die_mid_photo(network, alice, bob, offer, data, 100_000)  # half-way
        assert list((bob.config.data_dir / "photos").iterdir()) == []  # nothing stored...
        assert bob.events.empty()  # ...nothing shown
        (partial,) = (bob.config.data_dir / "partial").iterdir()  # kept, hidden, for a resume
        assert partial.stat().st_size == 100_000

        async with await raw_link(alice, bob) as again:
            sent = await again.send_photo(offer, lambda offset: InMemory(data, offset))
            assert sent == len(data) - 100_000
        got = await next_event(bob)
        assert isinstance(got, PhotoReceived)
        assert got.photo.path.read_bytes() == data
        assert list((bob.config.data_dir / "partial").iterdir()) == []


async def test_a_damaged_photo_is_reported_failed_and_not_kept(world: World) -> None:
    alice, bob = await world.user(ALICE), await world.user(BOB)
    link = await raw_link(alice, bob)
    data = image_bytes()
    offer = ev.PhotoOffer(
        "p1", "2026-11-27T10:00:00+00:00", "x.png", len(data), "0" * 64, "image/png"
    )
    damaged = InMemory(data, sha256="0" * 64)  # not what arrives
    with pytest.raises(DeliveryRejected, match="SHA-256 does not match"):
        await link.send_photo(offer, lambda offset: damaged)
    await link.close()
    assert list((bob.config.data_dir / "photos").iterdir()) == []
    assert list((bob.config.data_dir / "partial").iterdir()) == []  # bad bytes go too


async def test_a_data_dir_is_used_by_one_module_at_a_time(world: World) -> None:
    await world.user(ALICE)
    config = session_config(world.port, BOB, world.root / ALICE)
    with pytest.raises(StoreError, match="in use by another whatsap2p module"):
        await Session(config).start()
    assert (world.root / ALICE / "photos").is_dir()


async def test_a_changed_key_is_caught_both_ways_until_trusted(world: World) -> None:
    alice, bob = await world.user(ALICE), await world.user(BOB)
    assert (await alice.send_text(BOB, "hi")).delivered == [BOB]  # both pin each other
    await next_event(bob)
    assert alice.trust.pinned(BOB) == bob.identity.public  # type: ignore[union-attr]
    assert bob.trust.pinned(ALICE) == alice.identity.public  # type: ignore[union-attr]
    # bob's number moves to a new key (his server binding was released)
    new_bob = await world.new_key(bob)
    assert new_bob.identity is not None
    assert new_bob.identity.public != bob.identity.public  # type: ignore[union-attr]

    report = await alice.send_text(BOB, "is it you?")
    assert report.delivered == []
    assert [(f.phone, f.code) for f in report.failed] == [(BOB, "identity-changed")]
    assert await next_event(alice) == IdentityChanged(BOB, new_bob.fingerprint)
    assert new_bob.events.empty()  # nothing was sent

    back = await new_bob.send_text(ALICE, "it's me, new phone")  # new_bob pins alice fine,
    assert back.failed[0].code == "refused"  # but alice refuses the unknown key
    assert "identity changed" in back.failed[0].error
    assert alice.events.empty()  # the change was already announced once

    assert await alice.trust_key(BOB) == (BOB, new_bob.fingerprint)
    assert (await alice.send_text(BOB, "welcome back")).delivered == [BOB]
    assert (await new_bob.send_text(ALICE, "thanks")).delivered == [ALICE]


async def test_a_sender_claiming_another_number_is_refused(world: World) -> None:
    alice, bob = await world.user(ALICE), await world.user(BOB)
    mallory = await world.user(CAROL)
    assert mallory.identity is not None
    assert bob.listen_address is not None
    assert bob.identity is not None
    address = ev.PeerAddress(BOB, "127.0.0.1", bob.listen_address[1], bob.identity.public)
    # mallory proves her own key but claims to be alice
    link = await PeerLink.open(
        TcpNetwork(), address, ALICE, mallory.identity, Limits(), FAST, Deadlines()
    )
    with pytest.raises(PeerRefused, match=r"not the one bound to \+5511999990001"):
        await link.send_text(ev.Text("m1", "2026-11-27T10:00:00+00:00", "it's alice, honest"))
    await link.close()
    assert bob.events.empty()
    assert alice.phone == ALICE


async def test_the_identity_is_private_stable_and_never_replaced(world: World) -> None:
    alice = await world.user(ALICE)
    key_file = world.root / ALICE / IDENTITY_FILE
    assert key_file.stat().st_mode & 0o777 == 0o600
    first = alice.fingerprint
    await alice.close()
    again = Session(session_config(world.port, ALICE, world.root / ALICE))
    await again.start()
    assert again.fingerprint == first  # the same identity across restarts
    await again.close()
    key_file.write_text("whatsap2p-key 1\nnot base64!\n")
    broken = Session(session_config(world.port, ALICE, world.root / ALICE))
    with pytest.raises(StoreError, match=r"corrupt.*was not changed"):
        await broken.start()
    assert key_file.read_text() == "whatsap2p-key 1\nnot base64!\n"


async def test_a_retried_delivery_is_acknowledged_but_shown_once(world: World) -> None:
    alice, bob = await world.user(ALICE), await world.user(BOB)
    text = ev.Text("retry-1", "2026-11-27T10:00:00.000+00:00", "only once please")
    for _ in range(2):  # the sender did not see the first ack and sends again
        link = await raw_link(alice, bob)
        await link.send_text(text)
        await link.close()
    data = image_bytes()
    offer = offer_of(data, "retry-2", "same.png")
    sent = []
    for _ in range(2):
        link = await raw_link(alice, bob)
        sent.append(await link.send_photo(offer, lambda offset: InMemory(data, offset)))
        await link.close()
    assert sent == [len(data), 0]  # the second offer was acknowledged without its bytes
    shown = [await next_event(bob), await next_event(bob)]
    assert [e.id for e in shown] == ["retry-1", "retry-2"]  # type: ignore[union-attr]
    assert bob.events.empty()
    assert [p.name for p in (bob.config.data_dir / "photos").iterdir()] == ["same.png"]
    assert bob.history is not None
    assert [e.id for e in bob.history.entries(ALICE)] == ["retry-2", "retry-1"]


async def test_history_records_both_directions_with_states(world: World, photo: Path) -> None:
    alice, bob = await world.user(ALICE), await world.user(BOB)
    await alice.send_text(BOB, "first")
    await next_event(bob)
    await bob.send_text(ALICE, "reply")
    await next_event(alice)
    alice.book.create_group("g", [BOB, DAVE])
    await alice.send_photo("g", photo)
    await next_event(bob)
    direct = alice.conversation(BOB, 10)
    assert [(e.sender, e.text, e.state) for e in direct] == [
        (BOB, "reply", "received"),
        (ALICE, "first", "delivered"),
    ]
    group = {e.recipient: e.state for e in alice.conversation("g", 10)}
    assert group == {BOB: "delivered", DAVE: "offline"}


async def test_queued_messages_wait_for_the_recipient_then_arrive_once(
    world: World, tmp_path: Path
) -> None:
    alice = await world.user(ALICE)
    original = tmp_path / "queued.png"
    original.write_bytes(image_bytes(size=(80, 60)))
    text = await alice.send_text(BOB, "when you are back", queue=True)
    assert (text.queued, text.offline, text.delivered) == ([BOB], [], [])
    photo = await alice.send_photo(BOB, original, queue=True)
    assert photo.queued == [BOB]
    original.unlink()  # the sender's copy in outbox/ is what will travel
    assert [e.id for e in alice.outbox()] == [text.id, photo.id]
    not_queued = await alice.send_text(CAROL, "no queue")
    assert (not_queued.offline, not_queued.queued) == ([CAROL], [])

    bob = await world.user(BOB)  # comes online: the server pushes it to alice
    delivered = {await next_event(alice), await next_event(alice)}
    assert delivered == {QueuedDelivered(text.id, BOB), QueuedDelivered(photo.id, BOB)}
    got = [await next_event(bob), await next_event(bob)]
    assert [e.id for e in got] == [text.id, photo.id]  # type: ignore[union-attr]
    assert alice.outbox() == []
    assert list((alice.config.data_dir / "outbox").iterdir()) == []
    assert {e.id: e.state for e in alice.conversation(BOB, 10)} == {
        text.id: "delivered",
        photo.id: "delivered",
    }


async def test_the_outbox_survives_a_restart_of_the_sender(world: World) -> None:
    alice = await world.user(ALICE)
    queued = await alice.send_text(BOB, "sent before a restart", queue=True)
    await alice.close()
    alice = await world.user(ALICE)
    assert [e.id for e in alice.outbox()] == [queued.id]
    bob = await world.user(BOB)
    assert await next_event(alice) == QueuedDelivered(queued.id, BOB)
    assert (await next_event(bob)).text == "sent before a restart"  # type: ignore[union-attr]


async def test_the_outbox_has_a_limit(world: World) -> None:
    alice = await world.user(ALICE, Limits(max_outbox=2))
    await alice.send_text(BOB, "1", queue=True)
    await alice.send_text(CAROL, "2", queue=True)
    with pytest.raises(InvalidInput, match="outbox is full"):
        await alice.send_text(DAVE, "3", queue=True)


async def test_a_message_stored_but_never_shown_is_shown_at_the_next_start(
    world: World,
) -> None:
    alice, bob = await world.user(ALICE), await world.user(BOB)
    first = await alice.send_text(BOB, "seen")
    second = await alice.send_text(BOB, "stored, then the module died")
    shown = await next_event(bob)
    bob.shown(shown)  # type: ignore[arg-type]
    await next_event(bob)  # published, but the UI never got to show it
    await bob.close()
    bob = await world.user(BOB)
    again = await next_event(bob)
    assert (again.id, again.text) == (second.id, "stored, then the module died")  # type: ignore[union-attr]
    assert bob.events.empty()
    assert first.id == shown.id  # type: ignore[union-attr]


async def test_a_peer_holds_a_bounded_number_of_incoming_connections(world: World) -> None:
    alice = await world.user(ALICE)
    bob = await world.user(BOB, Limits(max_peer_connections_per_ip=3))
    assert bob.listen_address is not None
    held = [await asyncio.open_connection("127.0.0.1", bob.listen_address[1]) for _ in range(3)]
    reader, writer = await asyncio.open_connection("127.0.0.1", bob.listen_address[1])
    assert await asyncio.wait_for(reader.read(), 5) == b""  # the fourth is refused at once
    writer.close()
    for _, w in held:
        w.close()
        await w.wait_closed()
    await bob.settled()  # the three were handled to their end
    assert (await alice.send_text(BOB, "room again")).delivered == [BOB]


async def test_photo_progress_follows_every_recipient_to_the_end(world: World) -> None:
    alice, bob, carol = await world.user(ALICE), await world.user(BOB), await world.user(CAROL)
    alice.book.create_group("pals", [BOB, CAROL])
    big = world.root / "big.png"
    big.write_bytes(image_bytes() + os.urandom(3 * Limits().photo_chunk))  # several chunks
    seen: list[tuple[int, int]] = []
    report = await alice.send_photo("pals", big, progress=lambda *p: seen.append(p))
    assert sorted(report.delivered) == [BOB, CAROL]
    size = big.stat().st_size
    assert seen[-1] == (2 * size, 2 * size)  # both recipients, every byte
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)  # never backwards
    assert len(seen) > 4  # chunk by chunk, not only at the end
    for who in (bob, carol):
        got = await next_event(who)
        assert isinstance(got, PhotoReceived)


async def test_presence_is_pushed_when_a_watched_number_comes_online(world: World) -> None:
    alice, _ = await world.user(ALICE), await world.user(BOB)
    assert await alice.watch_presence([BOB, CAROL]) == {BOB: True, CAROL: False}
    await world.user(CAROL)
    got = await next_event(alice)
    assert got == PresenceChanged(CAROL, True)
    assert await alice.presence([BOB, CAROL, DAVE]) == {BOB: True, CAROL: True, DAVE: False}


async def test_a_save_cut_short_leaves_nothing_behind_at_the_next_start(world: World) -> None:
    alice = await world.user(ALICE)
    alice.book.add_contact("bob", BOB)
    await alice.close()
    folder = world.root / ALICE
    for name in (".contacts.json.k2j3h4.tmp", ".trust.json.x9y8.tmp"):  # kill -9 mid-save
        (folder / name).write_text("{half a fi")
    alice = await world.user(ALICE)
    assert sorted(p.name for p in folder.glob(".*.tmp")) == []
    assert [c.name for c in alice.book.contacts()] == ["bob"]
