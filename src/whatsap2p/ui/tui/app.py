"""The interactive terminal UI (Textual): contacts and groups on the left, the selected
conversation on the right, an input line at the bottom.

It drives the same `Session` as the plain and JSON-RPC modes and never touches a socket:
sends run as workers (the screen stays live while a 50 MB photo goes out), the
session's events arrive through one worker that reads `Session.events`. The input line
takes every command of the table in `commands`, with what each did shown as a note in
the plain mode's words; `/msg`, `/queue` and `/photo` send through the conversation they
send to (selected, made if new), and plain text (and a photo attached) goes to the
selected conversation, kept for recipients who are offline or out of reach (⏳ until
it is delivered, as `/queue`); ctrl+t shows what waits, to cancel; ctrl+r (or `/retry
ID`) sends a message that did not reach everyone again, under its id (its recipients
show it once). The dialogs (new contact, new group, photo, a changed key, the outbox)
call the same commands' handlers with the values typed in them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import secrets
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widget import Widget
from textual.widgets import Footer, Input, ListView, Static

from whatsap2p.app.contacts import Contact, Group
from whatsap2p.app.events import (
    DeliveryReport,
    GroupChanged,
    IdentityChanged,
    PhotoReceived,
    PresenceChanged,
    QueuedDelivered,
    ServerConnectionChanged,
    TextReceived,
)
from whatsap2p.app.session import Session
from whatsap2p.errors import DirectoryError, WhatsAp2pError
from whatsap2p.ui import commands
from whatsap2p.ui.commands import (
    AddContact,
    Call,
    ChangeGroup,
    ContactRemoved,
    CreateGroup,
    KeyTrusted,
    Leaving,
    Result,
    Retry,
    SendPhoto,
    SendText,
    TrustKey,
)
from whatsap2p.ui.lines import RETRY_HELPS, format_error, format_result
from whatsap2p.ui.tui.dialogs import Field, FormDialog, OutboxDialog, TrustDialog
from whatsap2p.ui.tui.model import (
    RETRIED,
    SENDING,
    Chats,
    Conversation,
    Row,
    group_key,
    phone_key,
)
from whatsap2p.ui.tui.render import halfblocks, literal
from whatsap2p.ui.tui.widgets import ChatInput, ConversationItem, MessageBox, StatusLine

__all__ = ["ChatApp"]

log = logging.getLogger(__name__)

#: How often presence is looked up again (going offline is not pushed by the server).
PRESENCE_EVERY = 5.0
#: Messages of a conversation read from the history when it is first shown, and again
#: each time the person scrolls up past the ones read.
HISTORY_ROWS = 100
#: Messages put on the screen at a time: the last ones of a conversation shown, and
#: more each time the person scrolls to the top (or back down to the bottom) of them.
#: Each costs the screen a few ms to put up, and makes every later change of its layout
#: slower: so at most MOUNTED_ROWS are up, those furthest from what the person reads
#: taken off (and put back when they scroll to them again). Measured at 80x24: 30 more
#: with 150 up, ~0.2 s, however far back; 100 more with 1,000 up (all kept), ~1.5 s.
SCROLL_ROWS = 30
MOUNTED_ROWS = 150
#: Size of a photo preview, in cells.
PREVIEW_COLUMNS, PREVIEW_ROWS = 28, 7

WELCOME = (
    "Welcome. Pick a conversation on the left (↑/↓ or ctrl+↑/↓), or type "
    "/msg NAME TEXT, /add NAME PHONE, /group NAME MEMBER..., /help for all commands."
)


class ChatApp(App[None]):
    TITLE = "WhatsAp2p"
    CSS = """
    StatusLine { height: 1; background: $primary-background; color: $text; }
    #main { height: 1fr; }
    #sidebar { width: 30%; min-width: 18; max-width: 36; border-right: vkey $secondary; }
    #chat { width: 1fr; }
    #title { height: 1; padding: 0 1; background: $boost; text-style: bold; }
    #messages { height: 1fr; padding: 0 1; }
    MessageBox { height: auto; margin-bottom: 1; }
    MessageBox.note { color: $text-muted; margin-bottom: 0; }
    MessageBox.mine { border-left: outer $primary; padding-left: 1; }
    MessageBox.theirs { border-left: outer $accent; padding-left: 1; }
    MessageBox .preview { height: auto; width: auto; }
    MessageBox .graphic { height: 7; width: auto; }
    MessageBox .progress { height: 1; }
    MessageBox .states { height: auto; }
    #input { height: 3; }
    FormDialog, TrustDialog { align: center middle; }
    .dialog { width: 76; max-width: 100%; height: auto; padding: 1 2;
              border: thick $primary; background: $surface; }
    .dialog.trust { border: thick $warning; }
    .dialog Input { margin-bottom: 1; }
    .buttons { height: auto; align-horizontal: right; }
    .buttons Button { margin-left: 2; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+n", "new_contact", "Contact"),
        Binding("ctrl+g", "new_group", "Group"),
        Binding("ctrl+l", "edit_group", "Members"),
        Binding("ctrl+o", "attach", "Photo"),
        # (not in the footer: a failure that a retry may mend says so where it shows)
        Binding("ctrl+r", "retry", "Retry", show=False),
        Binding("ctrl+t", "outbox", "Outbox"),
        # (one entry in the footer for both: ^↑ and ^↓ move through the conversations)
        Binding("ctrl+down,alt+down", "next_chat", "Chats", key_display="^↑↓"),
        Binding("ctrl+up,alt+up", "previous_chat", "Prev", show=False),
        Binding("ctrl+q", "quit", "Quit", priority=True),
        Binding("pageup", "page_up", "Older", show=False),
    ]

    def __init__(
        self,
        session: Session,
        *,
        start_session: bool = False,
        clock: Callable[[], dt.datetime] | None = None,
        presence_every: float = PRESENCE_EVERY,
        graphics: Callable[[Path], Widget] | None = None,
    ) -> None:
        """`session` is started already, unless `start_session` (the app then starts it
        when mounted and closes it when it ends). `clock` stamps what we send as shown.
        `graphics`: a widget class showing a picture file with the terminal's graphics
        protocol (`graphics.terminal_graphics`); without it, previews are half blocks."""
        super().__init__()
        self.session = session
        self._start_session = start_session
        self._clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self._presence_every = presence_every
        #: The conversations, their members' presence, names: the model of the screen.
        self.chats = Chats(session, HISTORY_ROWS)
        self.current: Conversation | None = None
        self._notes: list[Row] = []  # shown while no conversation is selected
        self._previews: dict[Path, Text] = {}
        self._graphics = graphics
        self._scrolling = False  # messages being put up at one end, taken off the other
        self.ready = asyncio.Event()
        #: Set whenever what the screen shows changed (tests and scripts wait on it).
        self.changed = asyncio.Event()

    # --- layout -------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield StatusLine(id="status")
        with Horizontal(id="main"):
            yield ListView(id="sidebar")
            with Vertical(id="chat"):
                yield Static(id="title", markup=False)
                yield VerticalScroll(id="messages")
        yield ChatInput(id="input", placeholder="message, or /help")
        yield Footer()

    async def on_mount(self) -> None:
        if self._start_session:
            await self.session.start()
        self._show_status()
        self._notes.append(Row("welcome", "", "", note=True, text=WELCOME))
        await self.sync_sidebar()
        await self._show_conversation(None)
        self.watch(
            self.query_one("#messages", VerticalScroll), "scroll_y", self._scrolled, init=False
        )
        self.query_one("#input", Input).focus()
        self._pump_events()
        self._watch_presence()
        self.set_interval(self._presence_every, self._refresh_presence)
        self.ready.set()

    async def on_unmount(self) -> None:
        if self._start_session:
            await self.session.close()

    def _show_status(self) -> None:
        session = self.session
        status = self.query_one(StatusLine)
        status.show(session.phone, session.fingerprint, session.server_connected)

    # --- conversations ------------------------------------------------------------------

    @property
    def conversations(self) -> dict[str, Conversation]:
        return self.chats.conversations

    def name_of(self, phone: str) -> str:
        return self.chats.name_of(phone)

    async def sync_sidebar(self) -> None:
        """The sidebar lists the contacts, the groups and the numbers that wrote to us."""
        sidebar = self.query_one("#sidebar", ListView)
        keys = self.chats.wanted_keys()
        for key in keys:
            conv = self.chats.conversation(key)
            if conv.group:
                self.chats.describe(conv)
            else:
                conv.title = self.name_of(conv.target)
        items = list(sidebar.query(ConversationItem))
        if [item.conversation.key for item in items] != keys:
            await sidebar.clear()
            items = [ConversationItem(self.chats.conversations[key]) for key in keys]
            await sidebar.extend(items)
            if self.current is not None and self.current.key in keys:
                sidebar.index = keys.index(self.current.key)
        for item in items:
            self._show_item(item)

    def _show_item(self, item: ConversationItem) -> None:
        item.show(*self.chats.presence(item.conversation))

    def _refresh_items(self) -> None:
        for item in self.query(ConversationItem):
            self._show_item(item)
        self.changed.set()

    @on(ListView.Highlighted, "#sidebar")
    async def _picked(self, event: ListView.Highlighted) -> None:
        item = event.item
        if isinstance(item, ConversationItem) and item.conversation is not self.current:
            await self._show_conversation(item.conversation)

    async def select(self, key: str) -> Conversation:
        """Show conversation `key` (made if new) and highlight it in the sidebar."""
        conv = self.chats.conversation(key)
        await self.sync_sidebar()
        sidebar = self.query_one("#sidebar", ListView)
        keys = [item.conversation.key for item in sidebar.query(ConversationItem)]
        if key in keys:
            sidebar.index = keys.index(key)
        if conv is not self.current:
            await self._show_conversation(conv)
        return conv

    async def _show_conversation(self, conv: Conversation | None) -> None:
        self.current = conv
        title = self.query_one("#title", Static)
        messages = self.query_one("#messages", VerticalScroll)
        await messages.remove_children()
        if conv is None:
            title.update(Text("no conversation selected", style="dim"))
            rows = self._notes
        else:
            if not conv.loaded:
                self.chats.load(conv)
            conv.unread = 0
            title.update(self._heading(conv))
            rows = conv.rows
            self._refresh_items()
        boxes = [self._box(row, conv) for row in rows[-SCROLL_ROWS:]]
        await messages.mount_all(boxes)
        messages.anchor()  # follows new messages until the person scrolls up
        self.call_after_refresh(self._at_an_end)  # (fewer messages than the screen holds)
        self.changed.set()

    def _heading(self, conv: Conversation) -> Text:
        """The conversation's title line: its name (and number), a group's members,
        and the path our messages take to them."""
        heading = Text()
        heading.append("# " if conv.group else "")
        heading.append_text(literal(conv.title))
        if not conv.group and conv.title != conv.target:
            heading.append(f"  {conv.target}", style="dim")
        if conv.group:
            heading.append("  ")
            heading.append_text(literal(conv.detail, style="dim"))
            if not conv.member:
                heading.append("  (you are no longer a member)", style="yellow")
        path = self.chats.path(conv)
        if path is not None:
            heading.append(f"  · {path}", style="yellow" if "relay" in path else "green")
        return heading

    def _box(self, row: Row, conv: Conversation | None) -> MessageBox:
        box = MessageBox(row, self.name_of, conv is not None and conv.group)
        if row.photo is not None and self._graphics is not None:
            box.set_graphic(self._graphics(row.photo))
        elif row.photo is not None:
            preview = self._previews.get(row.photo)
            if preview is not None:
                box.set_preview(preview)
            else:
                self._render_preview(row.photo)
        return box

    async def _add_row(self, conv: Conversation | None, row: Row) -> None:
        """Append `row` to `conv` (None: the notes), and to the screen if it is shown (if
        the person scrolled back so far that the last ones were taken off, it is put up
        when they scroll down to it; or at once, with the last ones, if it is what they
        sent or a command's answer)."""
        rows = conv.rows if conv is not None else self._notes
        shown = conv is self.current
        to_the_end = shown and self._shows_end(rows)
        rows.append(row)
        if to_the_end:
            await self.query_one("#messages", VerticalScroll).mount(self._box(row, conv))
        elif shown and (row.mine or row.note):
            await self._show_conversation(conv)
        self.changed.set()

    def _refresh_row(self, row: Row) -> None:
        for box in self.query(MessageBox):
            if box.row is row:
                box.refresh_row()
        self.changed.set()

    @work(group="previews")
    async def _render_preview(self, path: Path) -> None:
        try:
            preview = await asyncio.to_thread(halfblocks, path, PREVIEW_COLUMNS, PREVIEW_ROWS)
        except Exception as exc:  # Pillow raises many kinds for a bad file: no preview
            preview = Text(f"(no preview: {exc})", style="dim italic")
        self._previews[path] = preview
        for box in self.query(MessageBox):
            if box.row.photo == path:
                box.set_preview(preview)
        self.changed.set()

    # --- the messages up on the screen, as the person scrolls ---------------------------

    def _scrolled(self, scroll_y: float) -> None:
        messages = self.query_one("#messages", VerticalScroll)
        if scroll_y <= 0 or scroll_y >= messages.max_scroll_y:
            self.call_after_refresh(self._at_an_end)  # (laid out: not a view being replaced)

    def action_page_up(self) -> None:
        """A page up in the messages (from the input line too); at the top, older ones."""
        messages = self.query_one("#messages", VerticalScroll)
        if messages.scroll_y > 0:
            messages.scroll_page_up(animate=False)
        else:
            self._at_an_end()

    def _shown_boxes(self) -> list[MessageBox]:
        return list(self.query_one("#messages", VerticalScroll).query_children(MessageBox))

    def _shows_end(self, rows: list[Row]) -> bool:
        """Whether the last of `rows` is up (when they are the ones shown)."""
        boxes = self._shown_boxes()
        return not rows or not boxes or boxes[-1].row is rows[-1]

    def _at_an_end(self) -> None:
        """If the person sees the top of the messages up, put up the ones before; if
        the bottom, and later ones were taken off, those."""
        messages = self.query_one("#messages", VerticalScroll)
        conv = self.current
        if conv is None or self._scrolling:
            return
        if messages.scroll_y <= 0:
            self._scrolling = True
            self.run_worker(self._show_older(conv), group="scrolling")
        elif messages.scroll_y >= messages.max_scroll_y and not self._shows_end(conv.rows):
            self._scrolling = True
            self.run_worker(self._show_newer(conv), group="scrolling")

    async def _show_older(self, conv: Conversation) -> None:
        """Put up the messages before the first one up: rows read already, else the
        page before them in the history."""
        try:
            boxes = self._shown_boxes()
            if not self._shows(conv, boxes):
                return  # (another conversation, or the notes, went up meanwhile)
            start = conv.rows.index(boxes[0].row) if boxes else len(conv.rows)
            if start == 0:
                start = self.chats.load_older(conv)
            if start == 0 or conv is not self.current:
                return  # nothing older
            older = conv.rows[max(0, start - SCROLL_ROWS) : start]
            off = boxes[max(0, MOUNTED_ROWS - len(older)) :]  # the last ones, if too many
            await self._put_up(conv, older, boxes[0] if boxes else None, off, before=True)
        finally:
            self._scrolling = False
            self.changed.set()
        self.call_after_refresh(self._at_an_end)  # the screen may show the top still

    def _shows(self, conv: Conversation, boxes: list[MessageBox]) -> bool:
        """Whether `boxes` (those up) are `conv`'s messages, and it is the one open."""
        return conv is self.current and all(box.row in conv.rows for box in boxes[:1] + boxes[-1:])

    async def _show_newer(self, conv: Conversation) -> None:
        """Put up the messages after the last one up (taken off, scrolled back to)."""
        try:
            boxes = self._shown_boxes()
            if not boxes or not self._shows(conv, boxes):
                return  # (another conversation, or the notes, went up meanwhile)
            end = conv.rows.index(boxes[-1].row) + 1
            newer = conv.rows[end : end + SCROLL_ROWS]
            off = boxes[: max(0, len(boxes) + len(newer) - MOUNTED_ROWS)]  # the first ones
            await self._put_up(conv, newer, boxes[-1], off, before=False)
        finally:
            self._scrolling = False
            self.changed.set()

    async def _put_up(
        self,
        conv: Conversation,
        rows: list[Row],
        edge: MessageBox | None,
        off: list[MessageBox],
        before: bool,
    ) -> None:
        """Mount `rows` before the boxes up (or after them), whose first (last) is `edge`,
        and take the boxes `off` off, without moving what the person sees; unless all
        of them fit the screen, which then follows the end as it did."""
        messages = self.query_one("#messages", VerticalScroll)
        fits = messages.max_scroll_y <= 0
        offset = messages.scroll_y - (edge.virtual_region.y if edge is not None else 0)
        if not fits:
            messages.release_anchor()  # (at the bottom it would follow the new ones down)
        boxes = [self._box(row, conv) for row in rows]
        await messages.mount_all(boxes, before=0 if before else None)
        if conv is not self.current:  # another conversation was shown meanwhile
            await messages.remove_children([box for box in boxes if box.parent is messages])
            return
        if off:
            await messages.remove_children(off)
        # The view follows new messages once scrolled to the end, if the last one is up:
        # else the end of what is up (where it would stay, and nothing said it got there).
        if self._shows_end(conv.rows) != messages.is_anchored:
            messages.anchor(not messages.is_anchored)
        if edge is not None and not fits:
            await self._laid_out()
            y = edge.virtual_region.y + offset
            messages.scroll_to(y=y, animate=False, immediate=True)

    async def _laid_out(self) -> None:
        """Returns once the screen was refreshed (what was mounted has its size)."""
        refreshed = asyncio.Event()
        self.call_after_refresh(refreshed.set)
        await refreshed.wait()

    def note(self, text: str) -> None:
        """A line for the user (a command's output, an error), in the current view."""
        row = Row(uuid.uuid4().hex, "", "", note=True, text=text)
        self.run_worker(self._add_row(self.current, row), group="notes")

    # --- input --------------------------------------------------------------------------

    @on(ChatInput.Line)
    def _submitted(self, event: ChatInput.Line) -> None:
        if event.line.strip():
            self.run_worker(self.handle_line(event.line), group="commands")

    async def handle_line(self, line: str) -> None:
        """One line typed into the input: a command, or text for the conversation."""
        line = line.strip()
        with self._errors_as_notes():
            if line.startswith("/"):
                await self.run_command(commands.parse(line))
            elif self.current is None:
                self.note("choose a conversation on the left first, or use /msg TARGET TEXT")
            else:  # (kept for whoever it cannot reach now, as every messenger does)
                await self.send_text(self.current, line, queue=True)

    async def run_command(self, call: Call[Any]) -> None:
        """Carry out a command read from the input line. A send goes through the
        conversation it sends to, where the message shows its progress and states."""
        request = call.request
        if isinstance(request, SendText):
            conv = await self.select(self.chats.key_of(request.target))
            await self.send_text(conv, request.text, queue=request.queue)
        elif isinstance(request, SendPhoto):
            conv = await self.select(self.chats.key_of(request.target))
            await self.send_photo(conv, request.path)
        elif isinstance(request, Retry) and (shown := self._row_of(request.id)) is not None:
            await self.retry(*shown)
        else:
            await self._show_result(await call.run(self.session))

    @work(group="commands")
    async def _carry_out(self, command: Callable[[], Awaitable[Result]]) -> None:
        """A command's handler called with the values of a dialog, then shown as a typed
        command's would be."""
        with self._errors_as_notes():
            await self._show_result(await command())

    async def _show_result(self, result: Result) -> None:
        """What a command did, as a note in the plain mode's words; the sidebar follows
        the address book and the keys, and a contact or group just made is opened."""
        if isinstance(result, Leaving):
            self.exit()
            return
        self.note(format_result(result))
        if isinstance(result, Contact | Group | ContactRemoved | KeyTrusted):
            await self.sync_sidebar()
            self._watch_presence()
        if isinstance(result, Contact):
            await self.select(phone_key(result.phone))
        elif isinstance(result, Group):
            await self.select(group_key(result.id))

    @contextlib.contextmanager
    def _errors_as_notes(self) -> Iterator[None]:
        """A command that cannot be carried out says why (or its usage) in a note."""
        try:
            yield
        except (WhatsAp2pError, ValueError) as exc:  # ValueError: a line that is no command
            self.note(format_error(exc))

    # --- sending ------------------------------------------------------------------------

    def _new_row(self, conv: Conversation, **content: object) -> Row:
        phones = self.chats.recipients(conv)
        row = Row(
            secrets.token_hex(16),  # the message's id from the start: a retry reuses it
            self.session.phone,
            self._clock().isoformat(),
            mine=True,
            **content,  # type: ignore[arg-type]
        )
        row.states = dict.fromkeys(phones, SENDING)
        return row

    async def send_text(self, conv: Conversation, text: str, queue: bool = False) -> None:
        row = self._new_row(conv, text=text)
        await self._add_row(conv, row)
        await self._send(conv, row, queue)

    async def send_photo(self, conv: Conversation, path_text: str, queue: bool = False) -> None:
        path = _photo_path(path_text)
        row = self._new_row(conv, photo=path, photo_name=path.name)
        row.progress = (0, 1)  # (shown with its bar from the start)
        await self._add_row(conv, row)
        await self._send(conv, row, queue)

    async def retry(self, conv: Conversation, row: Row) -> None:
        """Send `row`'s message again, under its id, to the recipients it did not reach
        (they show it once, whatever came of the first try), kept for those it cannot
        reach now, as what is typed is. A recipient the send no longer goes to (who
        left the group since) is shown as before."""
        if not row.retryable:
            self.note("that message reached everyone it was sent to: nothing to retry")
            return
        before = dict(row.states)
        for phone, state in row.states.items():
            if state in RETRIED:
                row.states[phone] = SENDING
        self._refresh_row(row)
        try:
            await self._send(conv, row, queue=True)
        finally:
            for phone, state in row.states.items():
                if state == SENDING:
                    row.states[phone] = before[phone]
            self._refresh_row(row)

    async def _send(self, conv: Conversation, row: Row, queue: bool = False) -> None:
        """Send the message `row` shows (under its id), and show how it went."""
        session = self.session
        if row.photo is not None:
            row.progress = (0, 1)
            self._refresh_row(row)

            def progress(done: int, total: int) -> None:
                row.progress = (done, total)
                self._refresh_row(row)

            photo = SendPhoto(conv.target, str(row.photo), id=row.id, queue=queue)
            sending = commands.send_photo(session, photo, progress=progress)
        else:
            sending = commands.send_text(
                session, SendText(conv.target, row.text or "", queue, row.id)
            )
        try:
            report = await sending
        except WhatsAp2pError as exc:
            row.fail(str(exc))
            raise
        else:
            row.apply(report)
            self._learn_presence(report)
            if any(failed.code in RETRY_HELPS for failed in report.failed):
                self.note("ctrl+r sends it again to those it did not reach (same message)")
        finally:
            row.progress = None
            self._refresh_row(row)

    def _row_of(self, message_id: str) -> tuple[Conversation, Row] | None:
        """The conversation showing our message `message_id`, and its row."""
        for conv in self.conversations.values():
            row = conv.find(message_id)
            if row is not None and row.mine:
                return conv, row
        return None

    def action_retry(self) -> None:
        conv = self.current
        row = None if conv is None else conv.last_retryable()
        if conv is None or row is None:
            self.note("every message here reached everyone it was sent to: nothing to retry")
            return
        self._retry_worker(conv, row)

    def action_outbox(self) -> None:
        """What waits for recipients who are offline or out of reach; one chosen there
        is cancelled for them."""

        def chosen(message_id: str | None) -> None:
            if message_id is not None:
                self._cancel_worker(message_id)

        self.push_screen(OutboxDialog(self.chats.waiting()), chosen)

    @work(group="commands")
    async def _cancel_worker(self, message_id: str) -> None:
        with self._errors_as_notes():
            cancelled = self.session.cancel(message_id)
            names = ", ".join(self.name_of(phone) for phone in cancelled)
            self.note(f"cancelled: it will not be sent to {names}")
            shown = self._row_of(message_id)
            if shown is not None:
                row = shown[1]
                row.states.update(dict.fromkeys(cancelled, "cancelled"))
                self._refresh_row(row)

    @work(group="commands")
    async def _retry_worker(self, conv: Conversation, row: Row) -> None:
        with self._errors_as_notes():
            await self.retry(conv, row)

    # --- what the session tells ---------------------------------------------------------

    @work(group="events")
    async def _pump_events(self) -> None:
        session = self.session
        while True:
            event = await session.events.get()
            if isinstance(event, TextReceived | PhotoReceived):
                await self.receive(event)
                session.shown(event)
            elif isinstance(event, IdentityChanged):
                self._identity_changed(event)
            elif isinstance(event, ServerConnectionChanged):
                self._show_status()
                self.changed.set()
                if event.state == "restored":
                    self._watch_presence()
            elif isinstance(event, QueuedDelivered):
                row = self.chats.find(event.id)
                if row is not None:
                    row.states[event.phone] = "delivered"
                    self._refresh_row(row)
            elif isinstance(event, PresenceChanged):
                self.chats.online[event.phone] = event.online
                self._refresh_items()
            elif isinstance(event, GroupChanged):
                await self._group_changed(event)

    async def _group_changed(self, event: GroupChanged) -> None:
        """A group we were added to appears; one whose members changed says so."""
        conv = self.chats.conversation(group_key(event.group.id))
        self.chats.describe(conv)
        await self.sync_sidebar()
        self._watch_presence()
        if conv is self.current:
            self.query_one("#title", Static).update(self._heading(conv))
        self.changed.set()

    async def receive(self, event: TextReceived | PhotoReceived) -> None:
        """Show a message that arrived (in its conversation, made if new)."""
        key = group_key(event.group_id) if event.group_id is not None else phone_key(event.sender)
        new = key not in self.chats.conversations
        conv = self.chats.conversation(key)
        if conv.find(event.id, event.sender) is None:
            row = Row(event.id, event.sender, event.timestamp)
            if isinstance(event, TextReceived):
                row.text, row.change = event.text, event.change
            else:
                row.photo, row.photo_name = event.photo.path, event.photo.filename
            await self._add_row(conv, row)
        if conv is not self.current:
            conv.unread += 1
        self.chats.online[event.sender] = True
        if new:
            await self.sync_sidebar()
            self._watch_presence()
        else:
            self._refresh_items()

    def _identity_changed(self, event: IdentityChanged) -> None:
        self.chats.conversation(phone_key(event.phone))  # the sidebar shows it, with its ⚠
        self.run_worker(self.sync_sidebar(), group="sidebar")
        old = self.session.trust.fingerprint_of(event.phone)
        name = self.session.book.name_of(event.phone)
        dialog = TrustDialog(event.phone, name, old, event.fingerprint)

        def decided(trust: bool | None) -> None:
            if trust:
                request = TrustKey(event.phone)
                self._carry_out(functools.partial(commands.trust_key, self.session, request))
            else:
                self.note(
                    f"{event.phone} stays blocked until you accept its new key "
                    f"(/trust {event.phone})"
                )

        self.push_screen(dialog, decided)

    # --- presence -----------------------------------------------------------------------

    def _learn_presence(self, report: DeliveryReport) -> None:
        """A send has just asked the server: the freshest presence there is."""
        self.chats.learn(report)
        self._refresh_items()
        if self.current is not None:
            self.query_one("#title", Static).update(self._heading(self.current))

    @work(group="presence", exclusive=True)
    async def _watch_presence(self) -> None:
        try:
            self.chats.online.update(await self.session.watch_presence(self.chats.watched_phones()))
        except DirectoryError as exc:
            log.info("presence: %s", exc)
        self._refresh_items()

    @work(group="presence-refresh", exclusive=True)
    async def _refresh_presence(self) -> None:
        self._show_status()
        phones = self.chats.watched_phones()
        if not phones or not self.session.server_connected:
            return
        try:
            self.chats.online.update(await self.session.presence(phones))
        except DirectoryError as exc:
            log.info("presence: %s", exc)
        self._refresh_items()

    # --- key bindings -------------------------------------------------------------------

    def action_new_contact(self) -> None:
        def added(values: list[str] | None) -> None:
            if values and all(values):
                name, phone = values
                request = AddContact(name, phone)
                self._carry_out(functools.partial(commands.add_contact, self.session, request))

        fields = [Field("Name", "e.g. Maria"), Field("Phone number", "e.g. +55 11 99999-0001")]
        self.push_screen(FormDialog("New contact", fields), added)

    def action_new_group(self) -> None:
        def made(values: list[str] | None) -> None:
            if not values or not all(values):
                return
            name, listed = values
            members = tuple(m.strip() for m in listed.split(",") if m.strip())
            if members:
                request = CreateGroup(name, members)
                self._carry_out(functools.partial(commands.create_group, self.session, request))

        fields = [
            Field("Group name", "e.g. family"),
            Field("Members (contact names or numbers, separated by commas)", "maria, +55..."),
        ]
        self.push_screen(FormDialog("New group", fields), made)

    def action_edit_group(self) -> None:
        """Add members to the group shown, or remove some (only its creator may)."""
        conv = self.current
        if conv is None or not conv.group:
            self.note("choose a group first, then change its members (ctrl+l)")
            return

        def changed(values: list[str] | None) -> None:
            if not values:
                return
            requests = [
                ChangeGroup(conv.target, members, add)
                for listed, add in zip(values, (True, False), strict=True)
                if (members := tuple(m.strip() for m in listed.split(",") if m.strip()))
            ]
            if requests:
                self._change_members(requests)

        fields = [
            Field("Add (contact names or numbers, separated by commas)", "maria, +55..."),
            Field("Remove (contact names or numbers, separated by commas)", ""),
        ]
        self.push_screen(FormDialog(f"Members of {conv.title}", fields), changed)

    @work(group="commands")
    async def _change_members(self, requests: list[ChangeGroup]) -> None:
        for request in requests:  # (one after the other: each raises the group's version)
            with self._errors_as_notes():
                await self._show_result(await commands.change_group(self.session, request))

    def action_attach(self) -> None:
        conv = self.current
        if conv is None:
            self.note("choose a conversation first, then attach a photo")
            return

        def chosen(values: list[str] | None) -> None:
            if values and values[0]:
                self._send_attached(conv, values[0])

        field = Field("Photo to send (→ completes the path)", "~/Pictures/", paths=True)
        self.push_screen(FormDialog(f"Send a photo to {conv.title}", [field]), chosen)

    @work(group="commands")
    async def _send_attached(self, conv: Conversation, path: str) -> None:
        with self._errors_as_notes():
            await self.send_photo(conv, path, queue=True)

    def _move(self, step: int) -> None:
        sidebar = self.query_one("#sidebar", ListView)
        count = len(sidebar.children)
        if count:
            sidebar.index = ((sidebar.index if sidebar.index is not None else -1) + step) % count

    def action_next_chat(self) -> None:
        self._move(1)

    def action_previous_chat(self) -> None:
        self._move(-1)


def _photo_path(text: str) -> Path:
    """The file a photo command names, absolute: the row shows it, its preview reads it."""
    return Path(text).expanduser().absolute()
