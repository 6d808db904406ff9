"""What the terminal UI shows, apart from how: conversations, their messages, presence.

A conversation is with one number (a contact, or a number that wrote to us) or with a
group (ours, or one a sender named). A message we sent keeps a state per recipient,
updated as reports come in; a received one keeps who sent it. Nothing here touches the
network or the screen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from whatsap2p.app.events import DeliveryReport
from whatsap2p.app.history import HistoryEntry

__all__ = ["Conversation", "Row", "group_key", "phone_key"]

#: The states a recipient of a sent message can be in, as shown.
SENDING = "sending"


def phone_key(phone: str) -> str:
    return f"p:{phone}"


def group_key(name: str) -> str:
    return f"g:{name}"


@dataclass(eq=False)
class Row:
    """One message in a conversation (or a note of ours, `note`)."""

    id: str
    sender: str  # a phone; ours for a sent message
    timestamp: str  # ISO-8601
    mine: bool = False
    text: str | None = None
    photo: Path | None = None
    photo_name: str | None = None
    #: For a sent message: recipient phone -> delivered / queued / offline / failed / sending.
    states: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    #: For a recipient a send failed for: the failure's code (`errors.DELIVERY_CODES`),
    #: which says what to show; unknown for a row read back from the history.
    codes: dict[str, str] = field(default_factory=dict)
    note: bool = False
    #: A photo being sent: bytes sent and to send, over all its recipients.
    progress: tuple[int, int] | None = None

    def apply(self, report: DeliveryReport) -> None:
        """The outcome of the send, per recipient."""
        self.id = report.id
        for phone in report.delivered:
            self.states[phone] = "delivered"
        for phone in report.offline:
            self.states[phone] = "offline"
        for phone in report.queued:
            self.states[phone] = "queued"
        for failed in report.failed:
            self.states[failed.phone] = "failed"
            self.errors[failed.phone] = failed.error
            self.codes[failed.phone] = failed.code

    def fail(self, error: str) -> None:
        """The send as a whole was refused (nothing went out)."""
        for phone, state in self.states.items():
            if state == SENDING:
                self.states[phone] = "failed"
                self.errors[phone] = error


@dataclass(eq=False)
class Conversation:
    key: str
    title: str  # what the sidebar shows
    target: str  # what a send to it names: a phone, or a group name
    group: bool = False
    unread: int = 0
    rows: list[Row] = field(default_factory=list)
    loaded: bool = False  # history read from the store

    def find(self, message_id: str) -> Row | None:
        for row in reversed(self.rows):
            if row.id == message_id:
                return row
        return None

    def load(self, entries: list[HistoryEntry], me: str) -> None:
        """Put the stored history (newest first, one entry per recipient of what we
        sent) before what the conversation shows already."""
        rows: dict[str, Row] = {}
        for entry in reversed(entries):
            row = rows.get(entry.id)
            if row is None:
                photo = entry.photo or {}
                path = photo.get("path")
                name = photo.get("filename")
                row = rows[entry.id] = Row(
                    entry.id,
                    entry.sender,
                    entry.timestamp,
                    mine=entry.sender == me,
                    text=entry.text,
                    photo=Path(path) if isinstance(path, str) else None,
                    photo_name=name if isinstance(name, str) else None,
                )
            if row.mine:
                row.states[entry.recipient] = entry.state
                if entry.error:
                    row.errors[entry.recipient] = entry.error
                if entry.code:
                    row.codes[entry.recipient] = entry.code
        seen = {row.id for row in self.rows}
        self.rows[:0] = [row for row in rows.values() if row.id not in seen]
        self.loaded = True
