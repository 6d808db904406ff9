"""Groups with ids (app/groups.py, docs/protocol.md §6.12): every member writes to the
same conversation, a name never decides which group a message is in, membership
changes travel as messages, and a message claiming a group it may not is refused."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

import msgspec
import pytest

from tests.app.test_session import raw_link
from tests.servers import World, in_memory, next_message
from whatsap2p.app import groups as rules
from whatsap2p.app.events import GroupChanged, SessionEvent, TextReceived
from whatsap2p.app.groups import Group
from whatsap2p.app.history import History, State
from whatsap2p.app.session import Session
from whatsap2p.config import Limits
from whatsap2p.errors import (
    AmbiguousTarget,
    DeliveryRejected,
    InvalidInput,
    MessageRefused,
    NotMember,
    PeerNotMember,
)
from whatsap2p.protocol import events as ev

ALICE, BOB, CAROL, DAVE, MALLORY = (f"+551199999000{i}" for i in range(1, 6))
T = "2026-12-05T10:00:00.000+00:00"


async def event(session: Session) -> SessionEvent:
    return await asyncio.wait_for(session.events.get(), 60)


async def told(session: Session) -> GroupChanged:
    """The next event: what `session` learned of a group."""
    got = await event(session)
    assert isinstance(got, GroupChanged), got
    return got


async def text(session: Session) -> TextReceived:
    """The next message `session` shows (as a UI would: marked shown)."""
    got = await next_message(session, 60)
    assert isinstance(got, TextReceived), got
    session.shown(got)
    return got


async def learned(session: Session, group: Group) -> TextReceived:
    """`session` is told of `group` (GroupChanged), then shows the news as a message."""
    changed = await told(session)
    assert changed.group.id == group.id
    news = await text(session)
    assert news.group_id == group.id
    return news


async def trip_of_three(world: World) -> tuple[Session, Session, Session, Group]:
    alice, bob, carol = [await world.user(p) for p in (ALICE, BOB, CAROL)]
    trip = await alice.create_group("trip", [BOB, CAROL])
    for member in (bob, carol):
        news = await learned(member, trip)
        assert news.change == {"op": "create", "phones": [BOB, CAROL]}
        assert member.book.group(trip.id) == trip  # the same group: id, creator, members
    return alice, bob, carol, trip


def test_every_member_writes_and_the_others_show_it_in_the_same_group(tmp_path: Path) -> None:
    async def scenario(world: World) -> None:
        alice, bob, carol, trip = await trip_of_three(world)
        for writer, target in ((alice, "trip"), (bob, "trip"), (carol, trip.id)):
            report = await writer.send_text(target, f"from {writer.phone}")
            others = [s for s in (alice, bob, carol) if s is not writer]
            assert sorted(report.delivered) == sorted(s.phone for s in others)
            for other in others:
                got = await text(other)
                assert (got.sender, got.group, got.group_id) == (writer.phone, "trip", trip.id)
        for session in (alice, bob, carol):
            shown = {e.text or "" for e in session.conversation(trip.id, 100) if e.change is None}
            assert sorted(shown) == sorted(f"from {p}" for p in (ALICE, BOB, CAROL))

    in_memory(tmp_path, scenario)


def test_a_group_with_the_same_name_is_another_conversation(tmp_path: Path) -> None:
    async def scenario(world: World) -> None:
        alice, bob, carol, trip = await trip_of_three(world)
        own = await carol.create_group("trip", [ALICE])
        await learned(alice, own)
        assert own.id != trip.id
        await carol.send_text(own.id, "private: only alice should see this")
        got = await text(alice)
        assert (got.group_id, got.group) == (own.id, "trip")
        with pytest.raises(AmbiguousTarget, match=f"{trip.id}.*{own.id}"):
            await alice.send_text("trip", "which one?")
        reply = await alice.send_text(own.id, "only you see this")
        assert reply.delivered == [CAROL]
        assert (await text(carol)).group_id == own.id
        assert bob.events.empty()  # nothing of carol's group ever reaches bob
        in_trip = [e.text for e in alice.conversation(trip.id, 100)]
        assert "private: only alice should see this" not in in_trip

    in_memory(tmp_path, scenario)


def test_a_member_removed_while_offline_gets_nothing_more_and_cannot_post(
    tmp_path: Path,
) -> None:
    async def scenario(world: World) -> None:
        alice, bob, carol, trip = await trip_of_three(world)
        await bob.close()
        after = await alice.remove_from_group("trip", BOB)
        assert after.members == (ALICE, CAROL)
        assert (await told(carol)).group.members == (ALICE, CAROL)
        assert (await text(carol)).change == {"op": "remove", "phones": [BOB]}
        report = await alice.send_text("trip", "bob is out", queue=True)
        assert (report.delivered, report.queued) == ([CAROL], [])
        assert (await text(carol)).text == "bob is out"

        bob = await world.user(BOB)  # back: the news of his removal waits for him
        gone = await told(bob)
        assert (gone.group.id, gone.by, BOB in gone.group.members) == (trip.id, ALICE, False)
        assert (await text(bob)).change == {"op": "remove", "phones": [BOB]}
        with pytest.raises(InvalidInput, match="no longer a member of group 'trip'"):
            await bob.send_text("trip", "let me back in")
        # a module that does not know it was removed (or lies) is refused by the others
        forged = ev.Text("f" * 32, T, "still here", "trip", trip.info())
        async with await raw_link(bob, carol) as link:
            with pytest.raises(PeerNotMember):
                await link.send_text(forged)
        await alice.send_text("trip", "still only carol")
        assert (await text(carol)).text == "still only carol"
        await asyncio.sleep(5)
        assert bob.events.empty()
        assert [e.text for e in carol.conversation(trip.id, 100)].count("still here") == 0

    in_memory(tmp_path, scenario)


def test_a_member_added_sees_the_group_from_then_on(tmp_path: Path) -> None:
    async def scenario(world: World) -> None:
        alice, bob, carol, trip = await trip_of_three(world)
        await alice.send_text("trip", "before dave")
        for member in (bob, carol):
            await text(member)
        dave = await world.user(DAVE)
        grown = await alice.add_to_group("trip", DAVE)
        news = await learned(dave, grown)
        assert news.change == {"op": "add", "phones": [DAVE]}
        assert dave.book.group(trip.id).members == (ALICE, BOB, CAROL, DAVE)
        for member in (bob, carol):
            assert (await told(member)).group.members == (ALICE, BOB, CAROL, DAVE)
            await text(member)
        report = await dave.send_text("trip", "hi, I am in")
        assert sorted(report.delivered) == [ALICE, BOB, CAROL]
        for member in (alice, bob, carol):
            assert (await text(member)).group_id == trip.id
        answer = await carol.send_text("trip", "welcome dave")
        assert sorted(answer.delivered) == [ALICE, BOB, DAVE]
        assert (await text(dave)).text == "welcome dave"
        assert [e.text for e in dave.conversation(trip.id, 100)].count("before dave") == 0

    in_memory(tmp_path, scenario)


def test_a_leave_is_told_and_confirmed_and_a_group_outlives_its_creator(
    tmp_path: Path,
) -> None:
    async def scenario(world: World) -> None:
        alice, bob, carol, trip = await trip_of_three(world)
        await carol.leave_group("trip")
        assert (await told(carol)).group.members == (ALICE, BOB)
        # alice hears carol's leave, and confirms it to all (a new epoch); bob hears both,
        # in either order, and ends where alice is
        news = [await event(s) for s in (alice, alice, bob, bob, bob, bob)]
        assert [e.change for e in news[:2] if isinstance(e, TextReceived)] == [
            {"op": "leave", "phones": []}
        ]
        changes = sorted(str(e.change) for e in news[2:] if isinstance(e, TextReceived))
        assert changes == [
            str({"op": "leave", "phones": []}),
            str({"op": "left", "phones": [CAROL]}),
        ]
        for member in (alice, bob):
            group = member.book.group(trip.id)
            assert (group.members, group.epoch) == ((ALICE, BOB), 2)
        assert (await alice.send_text("trip", "just us")).delivered == [BOB]
        await text(bob)

        await alice.leave_group("trip")  # the creator leaves: the group keeps its members
        await told(alice)
        kept = await told(bob)
        assert (kept.group.creator, kept.group.members, kept.by) == (ALICE, (BOB,), ALICE)
        with pytest.raises(InvalidInput, match="no members besides you"):
            await bob.send_text("trip", "anyone?")
        with pytest.raises(InvalidInput, match="only the group's creator"):
            await bob.add_to_group("trip", CAROL)  # and nobody adds or removes any more
        await asyncio.sleep(5)
        assert carol.events.empty()  # who left is not brought back by what it missed

    in_memory(tmp_path, scenario)


def test_forged_and_malformed_group_messages_are_refused(tmp_path: Path) -> None:
    """Protocol level: what a hostile or broken module may send in a group's name."""

    async def scenario(world: World) -> None:
        _alice, bob, carol, trip = await trip_of_three(world)
        mallory = await world.user(MALLORY)

        def forged(**changes: object) -> ev.GroupInfo:
            return msgspec.structs.replace(trip.info(), **changes)

        async def refused(sender: Session, message: ev.Text) -> Exception:
            async with await raw_link(sender, bob) as link:
                with pytest.raises((PeerNotMember, DeliveryRejected)) as caught:
                    await link.send_text(message)
            return caught.value

        # a non-member claims the group, listing itself (it knows the id)
        claimed = forged(members=(ALICE, BOB, CAROL, MALLORY))
        inside = await refused(mallory, ev.Text("1" * 32, T, "hi from inside", "trip", claimed))
        assert isinstance(inside, PeerNotMember)
        assert "not a member of the group as I know it" in str(inside)
        # ... or as its creator, with a newer list: the id is not mallory's to claim
        takeover = forged(creator=MALLORY, members=(MALLORY, BOB), epoch=trip.epoch + 5)
        taken = await refused(mallory, ev.Text("2" * 32, T, "mine now", "trip", takeover))
        assert isinstance(taken, DeliveryRejected)
        assert "the group id is not its creator's" in str(taken)
        # a member who is not the creator adds someone
        change = ev.GroupChange("add", (MALLORY,))
        adding = forged(members=(*trip.members, MALLORY), epoch=trip.epoch + 1, change=change)
        not_creator = await refused(carol, ev.Text("3" * 32, T, "added mallory", "trip", adding))
        assert isinstance(not_creator, DeliveryRejected)
        assert "only the group's creator adds or removes members" in str(not_creator)
        # a member list longer than a group may be, and other malformed groups
        crowd = tuple(f"+1555{i:07}" for i in range(300))
        own = rules.created("mine", MALLORY, [BOB])
        for info, why in [
            (own.info(), "the group id is not its creator's"),  # (the salt is not its)
            (forged(members=(MALLORY, *crowd)), "1 to 256 members"),
            (forged(id="not-hex"), "invalid group id"),
            (forged(creator="alice"), "creator that is not an E.164"),
            (forged(members=(MALLORY, BOB, BOB)), "listed twice"),
            (forged(members=(MALLORY, "bob")), "not an E.164"),
            (forged(epoch=-1), "group version"),
            (forged(salt=b"short"), "salt is 16 bytes"),
        ]:
            if why.startswith("the group id"):
                info = msgspec.structs.replace(info, salt=trip.salt)
            bad = await refused(mallory, ev.Text("4" * 32, T, "x", "g", info))
            assert isinstance(bad, DeliveryRejected)
            assert why in str(bad)
        # a group id that is another group's: the creator a message names decides nothing
        collision = forged(creator=CAROL, members=(CAROL, BOB), epoch=1)
        squatted = await refused(carol, ev.Text("5" * 32, T, "my trip", "trip", collision))
        assert isinstance(squatted, DeliveryRejected)
        # none of it shows anywhere, and the group is as alice made it
        assert bob.events.empty()
        assert bob.book.group(trip.id) == trip
        assert len(bob.book.groups()) == 1
        assert bob.conversation(MALLORY, 10) == []
        # and bob still takes what the members send
        await carol.send_text("trip", "all fine")
        assert (await text(bob)).text == "all fine"

    in_memory(tmp_path, scenario)


def test_a_copy_queued_for_a_member_removed_since_is_not_delivered(tmp_path: Path) -> None:
    async def scenario(world: World) -> None:
        alice, bob, _carol, _trip = await trip_of_three(world)
        await bob.close()
        queued = await alice.send_text("trip", "bob may not see this", queue=True)
        assert queued.queued == [BOB]
        await alice.remove_from_group("trip", BOB)
        bob = await world.user(BOB)
        assert (await told(bob)).group.members == (ALICE, CAROL)  # only the news of it
        await text(bob)
        (row,) = [e for e in alice.history.sent(queued.id) if e.recipient == BOB]  # type: ignore[union-attr]
        assert (row.state, row.code) == ("failed", "not-member")
        assert alice.outbox() == []
        await asyncio.sleep(5)
        assert bob.events.empty()

    in_memory(tmp_path, scenario)


def test_a_new_member_heard_of_first_from_another_member_gets_it_later(tmp_path: Path) -> None:
    """carol writes to dave before alice's news that added him reached him: refused
    `not-member` for now, kept in carol's outbox, and delivered once dave knows."""

    async def scenario(world: World) -> None:
        alice, _bob, carol, trip = await trip_of_three(world)
        change = ev.GroupChange("add", (DAVE,))
        grown = dataclasses.replace(trip, members=(*trip.members, DAVE), epoch=trip.epoch + 1)
        dave = await world.user(DAVE)
        early = ev.Text("6" * 32, T, "hi dave", "trip", grown.info())
        async with await raw_link(carol, dave) as link:
            with pytest.raises(PeerNotMember, match="not a group I have been added to"):
                await link.send_text(early)
        news = ev.Text("7" * 32, T, "added dave", "trip", grown.info(change))
        async with await raw_link(alice, dave) as link:
            await link.send_text(news)
        assert (await told(dave)).group.members == grown.members
        async with await raw_link(carol, dave) as link:
            await link.send_text(early)  # (what carol's outbox does when it tries again)
        assert [(await text(dave)).text for _ in range(2)] == ["added dave", "hi dave"]

    in_memory(tmp_path, scenario)


async def from_before_ids(folder: Path) -> None:
    """A data dir as a version before group ids left it: alice's group `trip` (bob and
    carol) in a version 1 contacts.json, and history rows naming it (and one from dave,
    who named a group of his `trip` too)."""
    folder.mkdir(parents=True)
    (folder / "contacts.json").write_text(
        json.dumps({"version": 1, "contacts": {}, "groups": {"trip": [BOB, CAROL]}})
    )
    history = History(folder / "history.sqlite3", ALICE)  # rows as they were: no ids
    both: dict[str, tuple[State, str | None]] = dict.fromkeys((BOB, CAROL), ("delivered", None))
    await history.store_sent("a" * 32, both, "trip", T, text="ours")
    await history.store_received("b" * 32, BOB, "trip", T, text="bob's")
    await history.store_received("c" * 32, DAVE, "trip", T, text="dave's, named trip")
    history.close()


def test_groups_of_a_file_from_before_ids_keep_their_history(tmp_path: Path) -> None:
    async def scenario(world: World) -> None:
        await from_before_ids(world.root / ALICE)
        alice = await world.user(ALICE)
        (trip,) = alice.book.groups()
        assert (trip.name, trip.creator, trip.members) == ("trip", ALICE, (ALICE, BOB, CAROL))
        assert {e.text for e in alice.conversation("trip", 10)} == {"ours", "bob's"}
        assert [e.text for e in alice.conversation(DAVE, 10)] == ["dave's, named trip"]
        bob = await world.user(BOB)  # hears of the group with alice's next message
        assert (await alice.send_text("trip", "with an id now")).delivered == [BOB]
        assert (await told(bob)).group == trip
        assert (await text(bob)).group_id == trip.id

    in_memory(tmp_path, scenario)


def test_strangers_cannot_fill_the_groups_or_pass_for_contacts(tmp_path: Path) -> None:
    async def scenario(world: World) -> None:
        bob = await world.user(BOB, limits=Limits(max_groups=40))  # (2 from one creator)
        alice, mallory = await world.user(ALICE), await world.user(MALLORY)
        bob.book.add_contact("alice", ALICE)
        for i in range(3):
            await mallory.create_group(f"spam {i}", [BOB, CAROL])
        assert [g.name for g in bob.book.groups()] == ["spam 0", "spam 1"]
        (last,) = [g for g in mallory.book.groups() if g.name == "spam 2"]
        (refused,) = [e for e in mallory.conversation(last.id, 10) if e.recipient == BOB]
        assert (refused.state, refused.code) == ("failed", "rejected")
        assert "groups made by one number" in (refused.error or "")
        assert not bob.book.knows(MALLORY)  # a stranger's group vouches for nobody
        assert not bob.book.knows(CAROL)
        await alice.create_group("friends", [BOB, CAROL])  # a contact's group does
        await until_known(bob, CAROL)
        assert bob.book.knows(CAROL)

    in_memory(tmp_path, scenario)


async def until_known(session: Session, phone: str) -> None:
    while not session.book.knows(phone):
        await event(session)


# --- the rules alone --------------------------------------------------------------------


def test_a_stale_list_of_the_creator_does_not_bring_back_who_left() -> None:
    trip = rules.created("trip", ALICE, [BOB, CAROL])
    at_carol = rules.judge(None, CAROL, ALICE, "trip", trip.info())
    at_carol = rules.leave(at_carol, CAROL)
    assert (at_carol.members, at_carol.quit) == ((ALICE, BOB), True)
    # the creator, not yet told, adds dave with carol still listed: she stays out
    grown = rules.add(trip, [DAVE], ALICE, 256)
    change = ev.GroupChange("add", (DAVE,))
    at_carol = rules.judge(at_carol, CAROL, ALICE, "trip", grown.info(change))
    assert at_carol.members == (ALICE, BOB, DAVE)
    # the creator adds carol again, by name: she is back
    again = rules.add(rules.remove(grown, [CAROL], ALICE), [CAROL], ALICE, 256)
    change = ev.GroupChange("add", (CAROL,))
    at_carol = rules.judge(at_carol, CAROL, ALICE, "trip", again.info(change))
    assert (at_carol.members, at_carol.quit) == ((ALICE, BOB, DAVE, CAROL), False)


def test_only_the_creator_changes_members_and_ids_are_not_names() -> None:
    trip = rules.created("trip", ALICE, [BOB, CAROL])
    with pytest.raises(InvalidInput, match="only the group's creator"):
        rules.add(trip, [DAVE], BOB, 256)
    with pytest.raises(InvalidInput, match="at most 3 members"):
        rules.add(trip, [DAVE], ALICE, 3)
    other = rules.created("trip", CAROL, [ALICE])
    assert other.id != trip.id
    assert len(trip.id) == 32
    at_alice = rules.judge(None, ALICE, CAROL, "trip", other.info())
    assert at_alice.creator == CAROL
    with pytest.raises(NotMember):  # a member's message for a group not yet heard of
        rules.judge(None, DAVE, BOB, "trip", trip.info())
    with pytest.raises(NotMember):  # a group that does not list us
        rules.judge(None, DAVE, ALICE, "trip", trip.info())
    private = rules.created("list", ALICE, [BOB], private=True)
    with pytest.raises(MessageRefused):  # a private list's id is never on the wire
        rules.judge(private, ALICE, ALICE, "list", private.info())
    assert rules.group_id(ALICE, trip.salt) == trip.id  # the id is its creator's
