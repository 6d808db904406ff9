"""Groups in the terminal UI: a group one is added to appears with its members' names,
a reply in it reaches every member, and its creator changes its members from the UI."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from textual.widgets import Input

from tests.servers import World, next_message, world_at
from tests.ui.test_tui import ALICE, BOB, CAROL, DAVE, messages, sidebar_lines, type_line, until
from whatsap2p.app.events import GroupChanged, TextReceived
from whatsap2p.app.session import Session
from whatsap2p.ui.tui import ChatApp
from whatsap2p.ui.tui.dialogs import FormDialog
from whatsap2p.ui.tui.model import group_key


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with world_at(tmp_path) as world:
        yield world


async def text(session: Session) -> TextReceived:
    got = await next_message(session)
    assert isinstance(got, TextReceived), got
    session.shown(got)
    return got


async def group_news(session: Session) -> GroupChanged:
    while True:  # (the news is shown as a message too: passed over here)
        got = await asyncio.wait_for(session.events.get(), 10)
        if isinstance(got, GroupChanged):
            return got


async def test_a_group_one_is_added_to_appears_and_a_reply_in_it_reaches_everyone(
    world: World,
) -> None:
    alice, bob, carol = [await world.user(p) for p in (ALICE, BOB, CAROL)]
    bob.book.add_contact("alice", ALICE)
    app = ChatApp(bob)
    async with app.run_test(size=(100, 30)) as pilot:
        await app.ready.wait()
        trip = await alice.create_group("trip", [BOB, CAROL])
        await until(app, lambda: "# trip 2/2 (1)" in sidebar_lines(app))  # (1): the news
        assert f"  alice, {CAROL}" in sidebar_lines(app)  # its members, by bob's names
        await app.select(group_key(trip.id))
        await until(app, lambda: any("made the group, with me, " in m for m in messages(app)))
        await type_line(pilot, "see you all at the station")
        for member in (alice, carol):
            if member is carol:
                await text(carol)  # (carol's own news of the group first)
            got = await text(member)
            assert (got.text, got.sender, got.group_id) == (
                "see you all at the station",
                BOB,
                trip.id,
            )
        await until(app, lambda: "✓ alice delivered" in messages(app)[-1])


async def test_its_creator_adds_and_removes_members_from_the_ui(world: World) -> None:
    alice, carol, dave = [await world.user(p) for p in (ALICE, CAROL, DAVE)]
    alice.book.add_contact("dave", DAVE)
    app = ChatApp(alice)
    async with app.run_test(size=(100, 30)) as pilot:
        await app.ready.wait()
        await type_line(pilot, f"/group trip {CAROL} {BOB}")
        await until(app, lambda: "# trip 1/2" in sidebar_lines(app))
        (trip,) = alice.book.groups()
        await group_news(carol)

        await pilot.press("ctrl+l")
        assert isinstance(app.screen, FormDialog)
        added, removed = app.screen.query(Input)
        added.value, removed.value = "dave", BOB
        await pilot.click("#ok")
        await until(app, lambda: f"  {CAROL}, dave" in sidebar_lines(app))
        assert alice.book.group(trip.id).members == (ALICE, CAROL, DAVE)
        joined = await group_news(dave)
        assert (joined.group.id, joined.group.members) == (trip.id, (ALICE, CAROL, BOB, DAVE))
        assert (await group_news(dave)).group.members == (ALICE, CAROL, DAVE)
        assert (await group_news(carol)).group.members == (ALICE, CAROL, BOB, DAVE)
        assert (await group_news(carol)).group.members == (ALICE, CAROL, DAVE)
        await type_line(pilot, "welcome, dave")
        await until(app, lambda: "✓ dave delivered" in messages(app)[-1])
        assert BOB not in messages(app)[-1]  # (sent to carol and dave only)
