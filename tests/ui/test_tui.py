"""The terminal UI, driven with Textual's pilot, against a real directory server and real
peer sessions on 127.0.0.1 port 0."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from textual.app import App, ComposeResult
from textual.containers import VerticalScroll
from textual.pilot import Pilot
from textual.widgets import Input, ListView, OptionList, ProgressBar, Static

from tests.conftest import image_bytes
from tests.servers import World, next_message, world_at
from whatsap2p.app.contacts import Contact
from whatsap2p.app.events import DeliveryReport, FailedDelivery, PhotoReceived, TextReceived
from whatsap2p.app.history import State
from whatsap2p.app.session import Session
from whatsap2p.config import Limits
from whatsap2p.ui.tui import ChatApp
from whatsap2p.ui.tui import app as tui_app
from whatsap2p.ui.tui.dialogs import FormDialog, OutboxDialog, TrustDialog, complete_path
from whatsap2p.ui.tui.model import SENDING, Row, group_key, phone_key
from whatsap2p.ui.tui.widgets import ConversationItem, MessageBox, StatusLine

ALICE, BOB, CAROL, DAVE, ERIN = (f"+551199999000{i}" for i in range(1, 6))
T = "2026-11-27T10:00:00.000+00:00"


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with world_at(tmp_path) as world:
        yield world


async def until(app: ChatApp, check: Callable[[], object], timeout: float = 10) -> None:
    """Wait until `check()` holds, re-checking each time the screen changes."""
    async with asyncio.timeout(timeout):
        while not check():
            app.changed.clear()
            await app.changed.wait()


async def type_line(pilot: Pilot[None], line: str) -> None:
    box = pilot.app.query_one("#input", Input)
    box.focus()
    box.value = line
    await pilot.press("enter")


def messages(app: ChatApp) -> list[str]:
    return [box.plain() for box in app.query(MessageBox)]


def sidebar(app: ChatApp) -> list[str]:
    """The first line of each sidebar entry (a group's second names its members)."""
    return [item.plain.split("\n")[0] for item in app.query(ConversationItem)]


def sidebar_lines(app: ChatApp) -> list[str]:
    return [line for item in app.query(ConversationItem) for line in item.plain.split("\n")]


async def next_event(session: Session) -> object:
    return await next_message(session, 10)


async def test_add_a_contact_see_it_online_and_chat_both_ways(world: World) -> None:
    alice, bob = await world.user(ALICE), await world.user(BOB)
    app = ChatApp(alice)
    async with app.run_test(size=(80, 24)) as pilot:
        await app.ready.wait()
        status = str(app.query_one(StatusLine).content)
        assert ALICE in status
        assert alice.fingerprint[:4] in status
        assert "server connected" in status

        await type_line(pilot, "/add bob +55 11 99999-0002")
        await until(app, lambda: sidebar(app) == ["● bob"])  # online, and selected
        assert app.current is not None
        assert app.current.target == BOB

        await type_line(pilot, "hello bob")
        got = await next_event(bob)
        assert isinstance(got, TextReceived)
        assert got.text == "hello bob"
        await until(app, lambda: any("✓ bob delivered" in m for m in messages(app)))
        # the heading says how our messages reach bob
        await until(app, lambda: str(app.query_one("#title", Static).content).endswith("· direct"))

        hostile = "[bold red]x[/] [link=http://e.vil]y[/link]\x1b[31m\u202e"
        await bob.send_text(ALICE, hostile)
        await until(app, lambda: any("bob: [bold red]" in m for m in messages(app)))
        shown = next(m for m in messages(app) if "bold red" in m)
        assert "[bold red]x[/] [link=http://e.vil]y[/link]\\x1b[31m\\u202e" in shown


async def test_a_stranger_opens_a_conversation_with_an_unread_count(world: World) -> None:
    alice, carol = await world.user(ALICE), await world.user(CAROL)
    alice.book.add_contact("bob", BOB)  # offline
    app = ChatApp(alice)
    async with app.run_test(size=(80, 24)) as pilot:
        await app.ready.wait()
        await until(app, lambda: sidebar(app) == ["○ bob"])
        await carol.send_text(ALICE, "hi, it's carol")
        await until(app, lambda: sidebar(app) == ["○ bob", f"● {CAROL} (1)"])
        await pilot.press("ctrl+down", "ctrl+down")  # bob, then carol's number
        await until(app, lambda: sidebar(app) == ["○ bob", f"● {CAROL}"])
        assert any("hi, it's carol" in m for m in messages(app))
        await pilot.press("ctrl+up")
        await until(app, lambda: app.current is not None and app.current.target == BOB)


async def test_a_group_photo_shows_progress_per_recipient_and_previews(world: World) -> None:
    alice, bob, carol = await world.user(ALICE), await world.user(BOB), await world.user(CAROL)
    for name, phone in (("bob", BOB), ("carol", CAROL), ("dave", DAVE)):
        alice.book.add_contact(name, phone)
    big = world.root / "big.png"
    big.write_bytes(image_bytes(size=(120, 80)) + os.urandom(6 * Limits().photo_chunk))
    app = ChatApp(alice)
    async with app.run_test(size=(120, 40)) as pilot:
        await app.ready.wait()
        await type_line(pilot, "/group trip bob carol dave")
        await until(app, lambda: "# trip 2/3" in sidebar(app))
        bars: list[tuple[float | None, float | None]] = []  # what the bar showed

        def sent() -> bool:
            """Whether the photo is through; meanwhile, what its progress bar shows."""
            for box in app.query(MessageBox):
                for bar in box.query(ProgressBar):  # (only while it is being sent)
                    if box.row.photo == big:
                        bars.append((bar.progress, bar.total))
            row = app.current.rows[-1] if app.current and app.current.rows else None
            if row is None or row.photo != big:  # (before it: the news of the group made)
                return False
            return row.progress is None and SENDING not in row.states.values()

        watching = asyncio.create_task(until(app, sent))  # each time the screen changes
        await type_line(pilot, f"/photo trip {big}")  # (returns once the app is idle)
        await watching
        assert app.current is not None
        row = app.current.rows[-1]
        size = big.stat().st_size
        assert bars[-1] == (2 * size, 2 * size)  # bob's and carol's copies, every byte
        assert any(0 < done < 2 * size for done, _ in bars if done is not None)  # it moved
        assert row.states == {BOB: "delivered", CAROL: "delivered", DAVE: "offline"}
        await until(app, lambda: any(box.has_preview for box in app.query(MessageBox)))
        text = messages(app)[-1]
        assert "✓ bob delivered" in text
        assert "○ dave offline" in text
        for who in (bob, carol):
            told = await next_event(who)  # first, that alice made the group
            assert isinstance(told, TextReceived)
            assert told.change is not None
            assert told.change["op"] == "create"
            assert isinstance(await next_event(who), PhotoReceived)

        # and one coming in: shown with its preview and where it was saved
        photo = world.root / "back.png"
        photo.write_bytes(image_bytes())
        await bob.send_photo(ALICE, photo)
        await pilot.press("ctrl+up", "ctrl+up", "ctrl+up")  # trip -> dave -> carol -> bob
        await until(app, lambda: app.current is not None and app.current.target == BOB)
        await until(app, lambda: any("saved to" in m for m in messages(app)))
        await until(app, lambda: all(b.has_preview for b in app.query(MessageBox)))
        assert str(alice.config.data_dir / "photos" / "back.png") in messages(app)[-1]


async def test_a_changed_key_asks_and_blocks_until_accepted(world: World) -> None:
    alice, bob = await world.user(ALICE), await world.user(BOB)
    alice.book.add_contact("bob", BOB)
    assert (await alice.send_text(BOB, "hi")).delivered == [BOB]  # alice pins bob's key
    new_bob = await world.new_key(bob)
    app = ChatApp(alice)
    async with app.run_test(size=(80, 24)) as pilot:
        await app.ready.wait()
        await type_line(pilot, "/msg bob is it you?")
        await until(app, lambda: isinstance(app.screen, TrustDialog))
        hint = (
            "✗ bob failed: identity changed, nothing was sent "
            f"(check the new key, then /trust {BOB})"
        )
        await until(app, lambda: any(hint in m for m in messages(app)))
        await pilot.press("enter")  # out of habit: "Not now" has the focus, still blocked
        await until(app, lambda: "stays blocked" in " ".join(messages(app)))
        assert sidebar(app) == ["● bob ⚠"]
        await type_line(pilot, "/msg bob still you?")
        await until(app, lambda: sum("failed: identity changed" in m for m in messages(app)) == 2)
        assert new_bob.events.empty()

        # accepted on the dialog shown again by the next refusal... or with /trust
        await type_line(pilot, f"/trust {BOB}")
        await until(app, lambda: sidebar(app) == ["● bob"])
        await type_line(pilot, "welcome back")
        got = await next_event(new_bob)
        assert isinstance(got, TextReceived)
        assert got.text == "welcome back"


async def test_the_trust_dialog_accepts_the_new_key(world: World) -> None:
    alice, bob = await world.user(ALICE), await world.user(BOB)
    assert (await alice.send_text(BOB, "hi")).delivered == [BOB]
    old = bob.fingerprint
    new_bob = await world.new_key(bob)
    app = ChatApp(alice)
    async with app.run_test(size=(80, 24)) as pilot:
        await app.ready.wait()
        await type_line(pilot, f"/msg {BOB} hello?")
        await until(app, lambda: isinstance(app.screen, TrustDialog))
        shown = " ".join(str(s.content) for s in app.screen.query(Static))
        assert old[:4] in shown
        assert new_bob.fingerprint[:4] in shown
        await pilot.click("#trust")
        await until(app, lambda: "trusting" in " ".join(messages(app)))
        await type_line(pilot, "hello again")
        await until(app, lambda: any("✓ +5511999990002 delivered" in m for m in messages(app)))


async def test_key_bindings_for_contacts_groups_photos_and_quit(
    world: World, tmp_path: Path
) -> None:
    alice, _ = await world.user(ALICE), await world.user(BOB)
    photo = tmp_path / "pics" / "sunset.png"
    photo.parent.mkdir()
    photo.write_bytes(image_bytes())
    app = ChatApp(alice)
    async with app.run_test(size=(80, 24)) as pilot:
        await app.ready.wait()
        await pilot.press("ctrl+n")
        assert isinstance(app.screen, FormDialog)
        name, phone = app.screen.query(Input)
        name.value, phone.value = "bob", BOB
        await pilot.click("#ok")
        await until(app, lambda: sidebar(app) == ["● bob"])

        await pilot.press("ctrl+g")
        assert isinstance(app.screen, FormDialog)
        group, members = app.screen.query(Input)
        group.value, members.value = "pals", "bob, +5511999990003"
        await pilot.click("#ok")
        await until(app, lambda: "# pals 1/2" in sidebar(app))

        await pilot.press("ctrl+o")
        assert isinstance(app.screen, FormDialog)
        (path,) = app.screen.query(Input)
        path.value = str(photo)
        await pilot.click("#ok")
        await until(app, lambda: any("✓ bob delivered" in m for m in messages(app)))

        await pilot.press("ctrl+up")
        await until(app, lambda: app.current is not None and app.current.target == BOB)
        await pilot.press("ctrl+n", "escape")  # a dialog cancelled changes nothing
        assert sidebar(app) == ["● bob", "# pals 1/2"]

        await type_line(pilot, "/quit")
        await until(app, lambda: app.return_code is not None)
    assert app.return_code == 0


async def test_dialogs_carry_out_the_commands_with_the_values_typed_in_them(
    world: World,
) -> None:
    """What a form asks for reaches the command's handler as typed: quotes and spaces in
    a name need no quoting, and a refusal is a note as for a typed command."""
    alice, _ = await world.user(ALICE), await world.user(BOB)
    name = 'Ana "Bia" O\'Neil'
    app = ChatApp(alice)
    async with app.run_test(size=(80, 24)) as pilot:
        await app.ready.wait()

        async def fill(key: str, *values: str) -> None:
            await pilot.press(key)
            assert isinstance(app.screen, FormDialog)
            for box, value in zip(app.screen.query(Input), values, strict=True):
                box.value = value
            await pilot.click("#ok")

        await fill("ctrl+n", name, "+55 11 99999-0002")
        await until(app, lambda: sidebar(app) == [f"● {name}"])
        assert alice.book.contacts() == [Contact(name, BOB)]
        assert app.current is not None
        assert app.current.target == BOB

        await fill("ctrl+g", "the gang", f" {name} ,, +5511999990003 ")
        await until(app, lambda: "# the gang 1/2" in sidebar(app))
        (gang,) = alice.book.groups()
        assert (gang.name, gang.members) == ("the gang", (ALICE, BOB, CAROL))
        assert f"  {name}, {CAROL}" in sidebar_lines(app)  # its members, by name
        assert app.current is not None
        assert app.current.target == gang.id

        await fill("ctrl+n", "dan", "12")
        await until(app, lambda: "error: invalid phone number '12'" in messages(app))
        await fill("ctrl+g", name, "dan")
        await until(app, lambda: f"error: {name!r} is already a contact" in messages(app))
        assert len(alice.book.groups()) == 1


async def test_plain_mode_commands_work_as_typed(world: World) -> None:
    alice = await world.user(ALICE)
    app = ChatApp(alice)
    async with app.run_test(size=(80, 24)) as pilot:
        await app.ready.wait()
        await type_line(pilot, "/contacts")
        await until(app, lambda: "no contacts" in messages(app))
        await type_line(pilot, "/identity")
        await until(app, lambda: f"{ALICE} key {alice.fingerprint}" in messages(app))
        await type_line(pilot, "/frobnicate")
        await until(app, lambda: any("unknown command /frobnicate" in m for m in messages(app)))
        await type_line(pilot, "no conversation yet")
        await until(app, lambda: any("choose a conversation" in m for m in messages(app)))
        await type_line(pilot, "/msg nobody hi")
        await until(app, lambda: any(m.startswith("error:") for m in messages(app)))


async def test_a_failure_is_shown_by_its_code() -> None:
    """What a failed recipient shows is chosen by the failure's code, not its words."""
    row = Row("pending", ALICE, "2026-11-27T12:00:00+00:00", mine=True, text="hi all")
    row.states = dict.fromkeys([BOB, CAROL, DAVE, ERIN], SENDING)
    row.apply(
        DeliveryReport(
            "m1",
            failed=[
                FailedDelivery(BOB, "unconfirmed", "no acknowledgement (timed out)"),
                FailedDelivery(CAROL, "identity-changed", "words that may change"),
                FailedDelivery(DAVE, "unreachable", "connection refused"),
                FailedDelivery(ERIN, "rate-limited", "too many messages"),
            ],
        )
    )
    row.states[ALICE] = SENDING  # (and one delivered the other way round)
    row.apply(DeliveryReport("m1", delivered=[ALICE], routes={ALICE: "reverse"}))
    names = {BOB: "bob", CAROL: "carol", DAVE: "dave", ERIN: "erin", ALICE: "alice"}

    class Shown(App[None]):
        def compose(self) -> ComposeResult:
            yield MessageBox(row, names.__getitem__, group=True)

    async with Shown().run_test() as pilot:
        await pilot.pause()
        (box,) = pilot.app.query(MessageBox)
        states = box.plain().splitlines()[-1]
    assert states == (
        "? bob may have arrived: no acknowledgement (timed out)  "
        f"✗ carol failed: identity changed, nothing was sent (check the new key, then /trust "
        f"{CAROL})  ✗ dave failed: connection refused  "
        "✗ erin not now: too many messages (send it again later)  "
        "✓ alice delivered, it connected back"
    )


@pytest.mark.parametrize("size", [(80, 24), (120, 40), (200, 60)])
async def test_the_layout_fits_small_and_large_terminals(
    world: World, size: tuple[int, int]
) -> None:
    alice = await world.user(ALICE)
    alice.book.add_contact("a contact with a rather long name indeed", BOB)
    app = ChatApp(alice)
    async with app.run_test(size=size) as pilot:
        await app.ready.wait()
        await pilot.pause()
        width, height = size
        for selector in ("#status", "#sidebar", "#title", "#messages", "#input"):
            region = app.query_one(selector).region
            assert region.width > 0, selector
            assert region.height > 0, selector
            assert region.right <= width, selector
            assert region.bottom <= height, selector
        assert app.query_one("#sidebar", ListView).region.width >= 18
        assert app.query_one("#messages").region.width >= width // 2


def test_path_completion(tmp_path: Path) -> None:
    (tmp_path / "holiday").mkdir()
    (tmp_path / "holiday.png").write_bytes(b"x")
    (tmp_path / ".hidden.png").write_bytes(b"x")
    assert complete_path(str(tmp_path / "hol")) == str(tmp_path / "holiday") + os.sep
    assert complete_path(str(tmp_path / "holiday.")) == str(tmp_path / "holiday.png")
    assert complete_path(str(tmp_path / ".hid")) == str(tmp_path / ".hidden.png")
    assert complete_path(str(tmp_path / "nothing")) is None
    assert complete_path(str(tmp_path / "missing" / "x")) is None


async def test_terminals_with_a_graphics_protocol_get_real_pictures(world: World) -> None:
    from textual_image.widget import TGPImage

    from whatsap2p.ui.tui.graphics import terminal_graphics

    assert terminal_graphics() is None  # not a terminal here: half blocks
    alice, bob = await world.user(ALICE), await world.user(BOB)
    app = ChatApp(alice, graphics=TGPImage)  # as on kitty
    async with app.run_test(size=(80, 24)) as pilot:
        await app.ready.wait()
        photo = world.root / "p.png"
        photo.write_bytes(image_bytes())
        await bob.send_photo(ALICE, photo)
        await until(app, lambda: bool(app.conversations))
        await pilot.press("ctrl+down")
        await until(app, lambda: any(b.has_preview for b in app.query(MessageBox)))
        (picture,) = app.query(TGPImage)
        assert picture.has_class("graphic")
        assert isinstance(picture.parent, MessageBox)


async def test_line_breaks_show_as_line_breaks_and_controls_do_not_reach_the_screen(
    world: World,
) -> None:
    alice, bob = await world.user(ALICE), await world.user(BOB)
    app = ChatApp(alice)
    async with app.run_test(size=(100, 40)) as pilot:
        await app.ready.wait()
        await type_line(pilot, "/help")  # our own output: one line per command
        await until(app, lambda: any(m.startswith("commands:\n  /add") for m in messages(app)))
        assert not any("\\x0a" in m for m in messages(app))
        sent = "two lines\nof text \x1b[31mred\x1b[0m \u202eevil Z" + "\u0301" * 500
        assert (await bob.send_text(ALICE, sent)).delivered == [ALICE]
        await app.select(f"p:{BOB}")
        shown = "two lines\nof text \\x1b[31mred\\x1b[0m \\u202eevil Z"
        await until(app, lambda: any(shown in m for m in messages(app)))
        assert any("[+496 combining marks]" in m for m in messages(app))


def text_of(box: MessageBox) -> str:
    """The text of a message shown (`HH:MM WHO: TEXT` and its states below)."""
    return box.plain().splitlines()[0].partition(": ")[2]


def shown_texts(app: ChatApp) -> list[str]:
    """The texts of the messages up on the screen, top to bottom."""
    return [text_of(box) for box in app.query(MessageBox)]


def top_shown(app: ChatApp) -> str:
    """The text of the message at the top of the view (scrolled to `scroll_y`)."""
    view = app.query_one("#messages", VerticalScroll)
    shown = (box for box in app.query(MessageBox) if box.virtual_region.bottom > view.scroll_y)
    return text_of(next(shown))


async def test_scrolling_up_shows_older_messages_and_back_down_the_newer_ones(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pages of 20 read from the history, 10 put up at a time, at most 30 up at once
    monkeypatch.setattr(tui_app, "HISTORY_ROWS", 20)
    monkeypatch.setattr(tui_app, "SCROLL_ROWS", 10)
    monkeypatch.setattr(tui_app, "MOUNTED_ROWS", 30)
    alice, bob = await world.user(ALICE), await world.user(BOB)
    alice.book.add_contact("bob", BOB)
    history = alice.history
    assert history is not None
    for i in range(60):  # bob and alice take turns
        if i % 2:
            await history.store_received(f"m{i:03}", BOB, None, T, text=f"msg {i}")
            history.mark_shown(f"m{i:03}", BOB)
        else:
            outcome: dict[str, tuple[State, str | None]] = {BOB: ("delivered", None)}
            await history.store_sent(f"m{i:03}", outcome, None, T, text=f"msg {i}")
    await history.settled()
    msgs = [f"msg {i}" for i in range(60)]
    app = ChatApp(alice)
    async with app.run_test(size=(80, 24)) as pilot:
        await app.ready.wait()
        await pilot.press("ctrl+down")  # bob's conversation: its last messages
        await until(app, lambda: shown_texts(app) == msgs[50:])
        conv = app.current
        assert conv is not None
        assert len(conv.rows) == 20  # read from the history: one page, no more
        view = app.query_one("#messages", VerticalScroll)
        assert view.scroll_y == view.max_scroll_y > 0  # at the end

        view.scroll_home(animate=False)  # the person scrolls to the top
        await until(app, lambda: shown_texts(app) == msgs[40:])  # read already
        assert top_shown(app) == "msg 50"  # what the person saw stayed in place
        assert 0 < view.scroll_y < view.max_scroll_y
        view.scroll_home(animate=False)
        await until(app, lambda: shown_texts(app) == msgs[30:])  # the page before, read
        assert (top_shown(app), len(conv.rows)) == ("msg 40", 40)

        # PageUp (from the input line) pages up; at the top, the page before; messages
        # far below are taken off the screen, at most 30 are up
        while not conv.complete:
            await pilot.press("pageup")
            shown = shown_texts(app)
            assert len(shown) <= 30
            assert shown == msgs[msgs.index(shown[0]) :][: len(shown)]  # in order, each once
        assert (shown_texts(app), top_shown(app), view.scroll_y) == (msgs[:30], "msg 0", 0)
        assert len(conv.rows) == 60

        # a message arriving meanwhile waits below; scrolled back down, all are shown
        await bob.send_text(ALICE, "news")
        await until(app, lambda: conv.rows[-1].text == "news")
        assert "news" not in shown_texts(app)
        while shown_texts(app)[-1] != "news":
            last = shown_texts(app)[-1]

            def moved(last: str = last) -> bool:
                return shown_texts(app)[-1] != last

            view.scroll_end(animate=False)  # (End, as the person would press it)
            await until(app, moved)
            shown = shown_texts(app)
            assert len(shown) <= 30
            assert shown == [*msgs, "news"][[*msgs, "news"].index(shown[0]) :][: len(shown)]
        view.scroll_end(animate=False)  # at the end again: the view follows what comes
        await bob.send_text(ALICE, "more news")
        await until(app, lambda: shown_texts(app)[-2:] == ["news", "more news"])
        await pilot.pause()  # (laid out)
        assert view.scroll_y == view.max_scroll_y

        # scrolled back, what the person sends brings the last messages back up
        while "msg 30" not in shown_texts(app):
            await pilot.press("pageup")
        await type_line(pilot, "and mine")
        # (the page scrolled back to is taken off once the last one is up: wait for both)
        last_page = [*msgs, "news", "more news", "and mine"][-10:]
        await until(app, lambda: shown_texts(app) == last_page)


async def test_ctrl_r_sends_a_message_again_to_whoever_it_did_not_reach(world: World) -> None:
    alice = await world.user(ALICE)
    alice.book.add_contact("bob", BOB)
    app = ChatApp(alice)
    async with app.run_test(size=(80, 24)) as pilot:
        await app.ready.wait()
        await type_line(pilot, "/msg bob are you there?")
        await until(app, lambda: any("○ bob offline" in m for m in messages(app)))
        bob = await world.user(BOB)
        await pilot.press("ctrl+r")  # the newest message of the conversation not delivered
        await until(app, lambda: any("✓ bob delivered" in m for m in messages(app)))
        got = await next_event(bob)
        assert isinstance(got, TextReceived)
        assert app.current is not None
        assert (got.text, got.id) == ("are you there?", app.current.rows[-1].id)
        await pilot.press("ctrl+r")
        await until(app, lambda: any("nothing to retry" in m for m in messages(app)))
        await type_line(pilot, f"/retry {got.id}")  # by its id: nothing left to send either
        await until(app, lambda: sum("nothing to retry" in m for m in messages(app)) == 2)
        assert bob.events.empty()


async def test_what_is_typed_to_someone_offline_waits_and_is_delivered(world: World) -> None:
    alice = await world.user(ALICE)
    alice.book.add_contact("bob", BOB)
    alice.book.add_contact("carol", CAROL)
    app = ChatApp(alice)
    async with app.run_test(size=(100, 30)) as pilot:
        await app.ready.wait()
        await app.select(phone_key(BOB))
        await type_line(pilot, "see you at 8")  # bob is offline: kept for him
        await until(app, lambda: any("⏳ bob queued" in m for m in messages(app)))
        bob = await world.user(BOB)  # he comes online: the outbox hands it over
        got = await next_event(bob)
        assert isinstance(got, TextReceived)
        assert got.text == "see you at 8"
        await until(app, lambda: any("✓ bob delivered" in m for m in messages(app)))

        # one for carol (offline) waits; the outbox lists it, and Enter cancels it
        await app.select(phone_key(CAROL))
        await type_line(pilot, "call me")
        await until(app, lambda: any("⏳ carol queued" in m for m in messages(app)))
        await pilot.press("ctrl+t")
        await until(app, lambda: isinstance(app.screen, OutboxDialog))
        listed = str(app.screen.query_one("#waiting", OptionList).get_option_at_index(0).prompt)
        assert "carol: call me" in listed
        await pilot.press("enter")
        await until(app, lambda: any("⊘ carol cancelled" in m for m in messages(app)))
        assert alice.outbox() == []
        await pilot.press("ctrl+t")  # and now nothing waits
        await until(app, lambda: isinstance(app.screen, OutboxDialog))
        assert not app.screen.query(OptionList)
        await pilot.press("escape")


async def test_two_members_messages_under_one_id_are_both_shown(world: World) -> None:
    """Ids are the senders' choice (docs/jsonrpc.md, 'Ids two senders share'): a message
    arriving while the app runs is told apart by its id and its sender, as the
    conversation read from the history is."""
    alice, bob, carol = [await world.user(p) for p in (ALICE, BOB, CAROL)]
    pals = await bob.create_group("pals", [ALICE, CAROL])  # (alice and carol are told)
    shared = os.urandom(16).hex()
    app = ChatApp(alice)
    async with app.run_test(size=(100, 30)) as pilot:
        await app.ready.wait()
        await bob.send_text("pals", "bob's first", message_id=shared)
        await until(app, lambda: group_key(pals.id) in app.chats.conversations)
        await app.select(group_key(pals.id))
        await until(app, lambda: any("bob's first" in m for m in messages(app)))
        sent = await carol.send_text(pals.id, "carol's first", message_id=shared)
        assert ALICE in sent.delivered  # stored at alice's, notified to the app
        await until(app, lambda: any("carol's first" in m for m in messages(app)), 5)
        del pilot
