"""The terminal UI's widgets: the sidebar's entries and the messages of a conversation.

Every string from a peer reaches the screen as a `Text` made by `render.literal`, so
markup in it is shown as typed and never interpreted.
"""

from __future__ import annotations

from collections.abc import Callable

from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.widget import Widget
from textual.widgets import Input, Label, ListItem, ProgressBar, Static

from whatsap2p.ui.lines import ROUTE_WORDS
from whatsap2p.ui.tui.model import SENDING, Conversation, Row
from whatsap2p.ui.tui.render import clock_of, literal, message

__all__ = ["ChatInput", "ConversationItem", "MessageBox", "StatusLine"]

_STATE_MARKS = {
    "delivered": ("✓", "green"),
    "queued": ("⏳", "yellow"),
    "offline": ("○", "bright_black"),
    "cancelled": ("⊘", "bright_black"),
    SENDING: ("…", "bright_black"),
    "received": ("✓", "green"),
}


def _failure(phone: str, code: str | None, error: str) -> tuple[str, str, str, str]:
    """How a recipient a send failed for is shown (mark, colour, state, why), chosen by
    the failure's code: its words are for people and may change, the code may not."""
    if code == "unconfirmed":  # it went out, but no acknowledgement came back
        return "?", "yellow", "may have arrived", error
    if code == "identity-changed":  # the trust dialog shows both keys
        why = f"identity changed, nothing was sent (check the new key, then /trust {phone})"
        return "✗", "red", "failed", why
    if code in ("rate-limited", "no-room"):  # refused for now, not for good
        return "✗", "yellow", "not now", f"{error} (send it again later)"
    return "✗", "red", "failed", error


class ChatInput(Input):
    """The input line. Enter takes the line here, in order with the keys around it:
    as a binding it would reach the app after keys typed just behind it (a fast typist,
    or a script) and two lines would run together."""

    class Line(Message):
        def __init__(self, line: str) -> None:
            super().__init__()
            self.line = line

    async def _on_key(self, event: events.Key) -> None:
        if event.key == "enter":
            event.stop()
            event.prevent_default()
            line, self.value = self.value, ""
            self.post_message(self.Line(line))
            return
        await super()._on_key(event)


class StatusLine(Static):
    """Who I am (number, key fingerprint) and the server connection."""

    def show(self, phone: str, fingerprint: str, connected: bool) -> None:
        short = " ".join(fingerprint[i : i + 4] for i in range(0, 16, 4))
        line = Text()
        line.append(" WhatsAp2p ", style="bold")
        line.append(f" {phone} ")
        line.append(f" key {short}… ", style="dim")
        if connected:
            line.append(" ● server connected ", style="bold green")
        else:
            line.append(" ● server lost, reconnecting ", style="bold red")
        self.update(line)


class ConversationItem(ListItem):
    """One entry of the sidebar: presence, title, unread count."""

    def __init__(self, conversation: Conversation) -> None:
        super().__init__()
        self.conversation = conversation
        self._label = Label(Text(""), markup=False)
        self.plain = ""  # what the entry shows, as plain text

    def compose(self) -> ComposeResult:
        yield self._label

    def show(self, online: int | None, members: int, key_changed: bool) -> None:
        """`online`: None when unknown; for a group, how many of its `members` are.
        `key_changed`: the number's new key waits for the person's trust."""
        conv = self.conversation
        line = Text(no_wrap=True, overflow="ellipsis")
        if conv.group:
            line.append("# ", style="bold cyan")
        elif online:
            line.append("● ", style="bold green")
        else:
            line.append("○ ", style="bright_black")
        line.append_text(literal(conv.title, style="bold" if conv.unread else ""))
        if conv.group and online is not None:
            line.append(f" {online}/{members}", style="dim")
        if key_changed:
            line.append(" ⚠", style="bold yellow")
        if conv.unread:
            line.append(f" ({conv.unread})", style="bold magenta")
        if conv.group and (conv.detail or not conv.member):
            line.append("\n  ")
            detail = conv.detail if conv.member else "you left the group"
            line.append_text(literal(detail, style="dim"))
        self._label.update(line)
        self.plain = line.plain


def change_words(change: dict[str, object], name_of: Callable[[str], str]) -> str:
    """A change of a group's members (`{"op", "phones"}`), as its sender did it."""
    phones = change.get("phones")
    names = ", ".join(name_of(str(p)) for p in phones) if isinstance(phones, list) else ""
    match change.get("op"):
        case "create":
            return f"made the group, with {names}"
        case "add":
            return f"added {names}"
        case "remove":
            return f"removed {names}"
        case "left":
            return f"{names} left the group"
        case _:
            return "left the group"


class MessageBox(Vertical):
    """One message: who and when, the text or the photo (with a preview and, while it is
    being sent, a progress bar), and for ours the state per recipient."""

    def __init__(self, row: Row, name_of: Callable[[str], str], group: bool) -> None:
        classes = "note" if row.note else ("mine" if row.mine else "theirs")
        super().__init__(classes=classes)
        self.row = row
        self._name_of = name_of
        self._group = group
        self._head = Static(markup=False)
        self._preview = Static(classes="preview", markup=False)
        #: Only while the photo is being sent: an idle bar still runs its timers (15 a
        #: second each), which a long conversation's hundreds of boxes cannot afford.
        self._bar: ProgressBar | None = None
        self._states = Static(classes="states", markup=False)
        self._has_preview = False
        self._graphic: Widget | None = None

    def compose(self) -> ComposeResult:
        yield self._head
        if self._graphic is not None:
            yield self._graphic
        yield self._preview
        yield self._states

    def on_mount(self) -> None:
        self.refresh_row()

    def plain(self) -> str:
        """What the message shows, as plain text (previews aside)."""
        parts = [str(self._head.content)]
        if self._states.display:
            parts.append(str(self._states.content))
        return "\n".join(parts)

    @property
    def has_preview(self) -> bool:
        return self._has_preview

    def set_graphic(self, picture: Widget) -> None:
        """Show the photo with the terminal's graphics protocol instead of half blocks."""
        self._has_preview = True
        self._graphic = picture
        picture.add_class("graphic")
        if self.is_mounted:
            self.mount(picture, after=self._head)

    def set_preview(self, preview: Text) -> None:
        self._has_preview = True
        self._preview.update(preview)
        self._preview.display = True

    def refresh_row(self) -> None:
        row = self.row
        head = Text()
        if row.note:  # our own output (a command's, /help): its lines as lines
            head.append_text(message(row.text or "", style="italic"))
            self._head.update(head)
            for part in (self._preview, self._states):
                part.display = False
            return
        head.append(f"{clock_of(row.timestamp)} ", style="dim")
        who = "me" if row.mine else self._name_of(row.sender)
        head.append_text(literal(who, style="bold blue" if row.mine else "bold magenta"))
        head.append(": ")
        if row.change is not None:  # news of the group's members, in our names for them
            head.append_text(literal(change_words(row.change, self._name_of), style="italic"))
        elif row.photo is not None or row.photo_name is not None:
            head.append("photo ", style="italic")
            head.append_text(literal(row.photo_name or "", style="underline"))
            if row.photo is not None and not row.mine:
                head.append("\n")
                head.append_text(literal(f"saved to {row.photo}", style="dim"))
        else:
            head.append_text(message(row.text or ""))
        self._head.update(head)
        self._preview.display = self._has_preview and self._graphic is None
        if row.progress is not None and any(state == SENDING for state in row.states.values()):
            if self._bar is None:
                self._bar = ProgressBar(show_eta=False, classes="progress")
                self.mount(self._bar, before=self._states)
            done, total = row.progress
            self._bar.update(total=max(total, 1), progress=done)
        elif self._bar is not None:
            self._bar.remove()
            self._bar = None
        self._states.display = bool(row.states) and row.mine
        if row.mine:
            self._states.update(self._state_line())

    def _state_line(self) -> Text:
        line = Text(style="dim")
        for i, (phone, state) in enumerate(self.row.states.items()):
            if i:
                line.append("  ")
            error, shown = self.row.errors.get(phone, ""), state
            if state == "failed":
                mark, colour, shown, error = _failure(phone, self.row.codes.get(phone), error)
            else:
                mark, colour = _STATE_MARKS.get(state, ("?", ""))
                words = ROUTE_WORDS.get(self.row.routes.get(phone, "direct"))
                if state == "delivered" and words is not None:
                    shown = f"{state}, {words}"
            line.append(f"{mark} ", style=colour)
            line.append_text(literal(self._name_of(phone)))
            line.append(f" {shown}")
            if error:
                line.append(": ")
                line.append_text(literal(error))
        return line
