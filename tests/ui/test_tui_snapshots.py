"""Snapshots of the terminal UI's main screens at 80x24 and 120x40 (pytest-textual-snapshot).

The app runs against a real `whatsap2p server` process, with a fixed identity and a
fixed clock so that the pictures do not change from run to run; the messages shown come
through the same method the session's events go through. After an intended change of
the layout: `pytest tests/ui/test_tui_snapshots.py --snapshot-update`, and look at the
new pictures before committing them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import Input
from textual.worker import Worker, WorkerCancelled

from tests.servers import session_config
from whatsap2p.app.events import TextReceived
from whatsap2p.app.session import IDENTITY_FILE, Session
from whatsap2p.ui.tui import ChatApp
from whatsap2p.ui.tui.dialogs import TrustDialog
from whatsap2p.ui.tui.model import phone_key
from whatsap2p.ui.tui.widgets import MessageBox

WHATSAP2P = str(Path(sys.executable).parent / "whatsap2p")
ALICE, BOB, CAROL = "+5511999990001", "+5511999990002", "+5511999990003"
NOON = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)

SnapCompare = Callable[..., bool]


@pytest.fixture(scope="module")
def server_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    db = tmp_path_factory.mktemp("server") / "directory.sqlite3"
    proc = subprocess.Popen(
        [WHATSAP2P, "server", "--port", "0", "--db", str(db)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            if line.startswith("listening on"):
                yield int(line.rsplit(":", 1)[1])
                break
        else:
            raise RuntimeError("the server did not start")
    finally:
        proc.terminate()
        proc.wait()
        proc.stdout.close()


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Clock times are shown in local time: make it UTC for these pictures."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def make_app(port: int, folder: Path) -> ChatApp:
    """Alice, with a fixed key, two contacts (offline) and a group."""
    folder.mkdir(parents=True)
    private = hashlib.sha256(b"whatsap2p snapshot alice").digest()
    (folder / IDENTITY_FILE).write_text(
        f"whatsap2p-key 1\n{base64.b64encode(private).decode()}\n", encoding="ascii"
    )
    session = Session(session_config(port, ALICE, folder))
    session.book.add_contact("bob", BOB)
    session.book.add_contact("carol", CAROL)
    session.book.create_group("pals", ["bob", "carol"])
    return ChatApp(session, start_session=True, clock=lambda: NOON, presence_every=3600)


async def a_conversation(pilot: Pilot[None]) -> None:
    app = pilot.app
    assert isinstance(app, ChatApp)
    await app.ready.wait()
    await settled_presence(app)  # the server says they are offline; then they write
    stamp = NOON.replace(minute=2).isoformat()
    for i, (sender, text) in enumerate(
        [
            (BOB, "are we still on for tonight?"),
            (BOB, "[bold red]not bold[/] \x1b[31m and not red\u202e"),
            (CAROL, "hi alice!"),
        ]
    ):
        await app.receive(TextReceived(f"m{i}", sender, None, None, stamp, text))
    conv = await app.select(phone_key(BOB))
    await app.send_text(conv, "yes, see you at 8")
    await pilot.pause()


async def settled_presence(app: ChatApp) -> None:
    """Until the presence asked of the server at start has come back: a message received
    shows its sender online, and the server's older answer (nobody is really online
    here) must not land after it, or the picture depends on which came first."""

    async def finished(worker: Worker[None]) -> None:
        with contextlib.suppress(WorkerCancelled):  # replaced by a newer ask
            await worker.wait()

    while asking := [
        w for w in app.workers if w.group.startswith("presence") and not w.is_finished
    ]:
        await asyncio.gather(*map(finished, asking))


async def a_changed_key(pilot: Pilot[None]) -> None:
    app = pilot.app
    assert isinstance(app, ChatApp)
    await app.ready.wait()
    old = hashlib.sha256(b"old").hexdigest()
    new = hashlib.sha256(b"new").hexdigest()
    await app.push_screen(TrustDialog(BOB, "bob", old, new))
    await pilot.pause()


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_conversation(
    snap_compare: SnapCompare, server_port: int, tmp_path: Path, size: tuple[int, int]
) -> None:
    app = make_app(server_port, tmp_path / "alice")
    assert snap_compare(app, terminal_size=size, run_before=a_conversation)


def test_trust_dialog(snap_compare: SnapCompare, server_port: int, tmp_path: Path) -> None:
    app = make_app(server_port, tmp_path / "alice")
    assert snap_compare(app, terminal_size=(80, 24), run_before=a_changed_key)


def test_new_contact_form(snap_compare: SnapCompare, server_port: int, tmp_path: Path) -> None:
    app = make_app(server_port, tmp_path / "alice")

    async def ready(pilot: Pilot[None]) -> None:
        assert isinstance(pilot.app, ChatApp)
        await pilot.app.ready.wait()

    assert snap_compare(app, terminal_size=(80, 24), run_before=ready, press=["ctrl+n"])


def test_conversation_on_a_light_theme(
    snap_compare: SnapCompare, server_port: int, tmp_path: Path
) -> None:
    app = make_app(server_port, tmp_path / "alice")

    async def light(pilot: Pilot[None]) -> None:
        pilot.app.theme = "textual-light"
        await a_conversation(pilot)

    assert snap_compare(app, terminal_size=(80, 24), run_before=light)


async def typed_to_bob(pilot: Pilot[None]) -> None:
    """Alice types to bob, who is offline: her message waits (⏳)."""
    app = pilot.app
    assert isinstance(app, ChatApp)
    await app.ready.wait()
    await settled_presence(app)
    await app.select(phone_key(BOB))
    box = app.query_one("#input", Input)
    box.focus()
    box.value = "see you at 8"
    await pilot.press("enter")
    await shown(app, "⏳ bob queued")


async def shown(app: ChatApp, words: str) -> None:
    """Until a message shows `words` (each change of the screen looked at)."""
    async with asyncio.timeout(10):
        while not any(words in box.plain() for box in app.query(MessageBox)):
            app.changed.clear()
            await app.changed.wait()


def test_a_message_waiting_for_someone_offline(
    snap_compare: SnapCompare, server_port: int, tmp_path: Path
) -> None:
    app = make_app(server_port, tmp_path / "alice")
    assert snap_compare(app, terminal_size=(80, 24), run_before=typed_to_bob)


def test_a_waiting_message_delivered(
    snap_compare: SnapCompare, server_port: int, tmp_path: Path
) -> None:
    app = make_app(server_port, tmp_path / "alice")

    async def then_delivered(pilot: Pilot[None]) -> None:
        await typed_to_bob(pilot)
        assert isinstance(pilot.app, ChatApp)
        async with Session(session_config(server_port, BOB, tmp_path / "bob")) as bob:
            got = await asyncio.wait_for(bob.events.get(), 10)  # the outbox hands it over
            assert isinstance(got, TextReceived)
            await shown(pilot.app, "✓ bob delivered")
        await pilot.pause()

    assert snap_compare(app, terminal_size=(80, 24), run_before=then_delivered)
