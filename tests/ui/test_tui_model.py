"""What the terminal UI shows, apart from how (ui/tui/model.py's Chats), on sessions in
memory and in virtual time."""

from __future__ import annotations

from pathlib import Path

from tests.memory import MemoryNetwork, run_in_virtual_time
from tests.servers import world_at
from whatsap2p.app.events import DeliveryReport
from whatsap2p.app.history import State
from whatsap2p.ui.tui.model import Chats, group_key, phone_key

ALICE, BOB, CAROL, DAVE = (f"+551199999000{i}" for i in range(1, 5))
T = "2026-11-27T10:00:00.000+00:00"


def test_conversations_presence_and_names(tmp_path: Path) -> None:
    async def main() -> None:
        async with world_at(tmp_path, MemoryNetwork()) as world:
            alice = await world.user(ALICE)
            alice.book.add_contact("bob", BOB)
            made = alice.book.create_group("trip", [BOB, CAROL, ALICE])
            chats = Chats(alice, history_rows=10)
            assert chats.wanted_keys() == [phone_key(BOB), group_key(made.id)]
            trip = chats.conversation(chats.key_of("trip"))
            assert chats.recipients(trip) == [BOB, CAROL]  # never ourselves
            assert chats.presence(trip) == (None, 2, False)  # nobody heard of yet
            chats.learn(DeliveryReport("m1", delivered=[BOB], offline=[CAROL]))
            assert chats.presence(trip) == (1, 2, False)
            bob = chats.conversation(chats.key_of("bob"))
            assert (bob.title, chats.name_of(ALICE), chats.name_of(DAVE)) == ("bob", "me", DAVE)
            assert chats.watched_phones() == [BOB, CAROL]
            chats.load(trip)  # nothing stored yet: loaded, empty
            assert (trip.loaded, trip.rows) == (True, [])

    run_in_virtual_time(main)


def test_a_conversation_says_how_our_messages_reach_it(tmp_path: Path) -> None:
    async def main() -> None:
        async with world_at(tmp_path, MemoryNetwork()) as world:
            alice = await world.user(ALICE)
            alice.book.create_group("trip", [BOB, CAROL, DAVE])
            chats = Chats(alice, history_rows=10)
            trip = chats.conversation(chats.key_of("trip"))
            bob, carol = (chats.conversation(chats.key_of(p)) for p in (BOB, CAROL))
            assert chats.path(trip) is None  # nothing delivered yet
            chats.learn(
                DeliveryReport(
                    "m1", delivered=[BOB, CAROL], routes={BOB: "punched", CAROL: "direct"}
                )
            )
            assert (chats.path(bob), chats.path(carol)) == (
                "direct (through a punched hole)",
                "direct",
            )
            assert chats.path(trip) == "direct"
            chats.learn(DeliveryReport("m2", delivered=[DAVE], routes={DAVE: "relay"}))
            assert chats.path(trip) == "direct to 2, via relay to 1"
            chats.learn(
                DeliveryReport(
                    "m3", delivered=[BOB, CAROL], routes=dict.fromkeys([BOB, CAROL], "relay")
                )
            )
            assert (chats.path(trip), chats.path(bob)) == ("via relay", "via relay")
            chats.learn(DeliveryReport("m4", delivered=[BOB], routes={BOB: "reverse"}))
            assert chats.path(bob) == "direct (it connects back)"  # moved to a direct path

    run_in_virtual_time(main)


def test_a_conversation_reads_its_history_a_page_at_a_time(tmp_path: Path) -> None:
    async def main() -> None:
        async with world_at(tmp_path, MemoryNetwork()) as world:
            alice = await world.user(ALICE)
            made = alice.book.create_group("trip", [BOB, CAROL, DAVE])
            history = alice.history
            assert history is not None
            outcomes: dict[str, tuple[State, str | None]] = {
                BOB: ("delivered", None),
                CAROL: ("queued", None),
                DAVE: ("failed", "refused"),
            }
            for i in range(10):  # ours: an entry per member; and one from bob between
                await history.store_sent(
                    f"out{i}", outcomes, "trip", T, text=f"out {i}", group_id=made.id
                )
                await history.store_received(
                    f"in{i}", BOB, "trip", T, text=f"in {i}", group_id=made.id
                )
            chats = Chats(alice, history_rows=8)  # a page: 8 entries, messages whole
            trip = chats.conversation(chats.key_of("trip"))
            chats.load(trip)
            assert [row.text for row in trip.rows] == ["out 8", "in 8", "out 9", "in 9"]
            assert trip.rows[0].states == {BOB: "delivered", CAROL: "queued", DAVE: "failed"}
            assert trip.rows[0].errors == {DAVE: "refused"}
            texts = [row.text for row in trip.rows]
            while added := chats.load_older(trip):
                assert [row.text for row in trip.rows[added:]] == texts  # put before
                texts = [row.text for row in trip.rows]
            assert trip.complete
            assert texts == [f"{way} {i}" for i in range(10) for way in ("out", "in")]
            assert all(len(row.states) == 3 for row in trip.rows if row.mine)
            assert chats.load_older(trip) == 0

            # two senders may choose the same id: two messages
            other = alice.book.create_group("pals", [BOB, CAROL])
            for sender in (BOB, CAROL):
                name = "bob" if sender == BOB else "carol"
                await history.store_received(
                    "1", sender, "pals", T, text=f"{name}'s first", group_id=other.id
                )
            pals = chats.conversation(group_key(other.id))
            chats.load(pals)
            assert [(row.sender, row.text) for row in pals.rows] == [
                (BOB, "bob's first"),
                (CAROL, "carol's first"),
            ]

    run_in_virtual_time(main)
