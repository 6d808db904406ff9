"""What a review of issue 24 found in the terminal UI, kept from coming back: a retry
is kept for whoever it cannot reach, and leaves no recipient "sending". Real sessions
on 127.0.0.1 port 0."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.servers import World, world_at
from tests.ui.test_tui import messages, type_line, until
from whatsap2p.ui.tui import ChatApp
from whatsap2p.ui.tui.dialogs import OutboxDialog
from whatsap2p.ui.tui.model import phone_key

ALICE, BOB, CAROL = (f"+551199999000{i}" for i in range(1, 4))


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with world_at(tmp_path) as world:
        yield world


async def test_ctrl_r_of_a_message_to_someone_offline_keeps_it_waiting(world: World) -> None:
    """What a person types is kept for recipients offline or out of reach (⏳). A retry
    (ctrl+r, /retry ID) goes through Session.resend without `queue`: a message cancelled
    and then retried while its recipient is still offline is not kept but ends
    'offline' (and, with the server out of reach, 'failed'): it never arrives."""
    alice = await world.user(ALICE)
    alice.book.add_contact("bob", BOB)
    app = ChatApp(alice)
    async with app.run_test(size=(100, 30)) as pilot:
        await app.ready.wait()
        await app.select(phone_key(BOB))
        await type_line(pilot, "see you at 8")
        await until(app, lambda: any("⏳ bob queued" in m for m in messages(app)))
        await pilot.press("ctrl+t")
        await until(app, lambda: isinstance(app.screen, OutboxDialog))
        await pilot.press("enter")  # cancelled: the person changes their mind...
        await until(app, lambda: any("⊘ bob cancelled" in m for m in messages(app)))
        await pilot.press("ctrl+r")  # ...and back: send it after all
        await until(app, lambda: not any("⊘ bob cancelled" in m for m in messages(app)))
        await pilot.pause()
        assert any("⏳ bob queued" in m for m in messages(app)), messages(app)
        assert [entry.text for entry in alice.outbox()] == ["see you at 8"]


async def test_ctrl_r_after_a_member_left_the_group_leaves_no_row_sending(world: World) -> None:
    """ChatApp.retry marks every recipient the message did not reach as sending, then
    applies the report of Session.resend, which covers the group's members now: one
    removed since stays '… sending' for ever."""
    alice = await world.user(ALICE)
    alice.book.add_contact("bob", BOB)
    alice.book.add_contact("carol", CAROL)
    alice.book.create_group("pals", [BOB, CAROL])
    app = ChatApp(alice)
    async with app.run_test(size=(100, 30)) as pilot:
        await app.ready.wait()
        await type_line(pilot, "/msg pals dinner at 8?")  # both offline: not kept
        await until(app, lambda: any("○ carol offline" in m for m in messages(app)))
        alice.book.remove_from_group("pals", CAROL)
        await pilot.press("ctrl+r")  # (kept for bob now: he is offline)
        await until(app, lambda: any("⏳ bob queued" in m for m in messages(app)))
        await pilot.pause()
        assert app.current is not None
        row = app.current.rows[-1]
        assert "sending" not in row.states.values(), row.states
