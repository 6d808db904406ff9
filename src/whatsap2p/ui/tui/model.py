"""What the terminal UI shows, apart from how: conversations, their messages, presence.

A conversation is with one number (a contact, or a number that wrote to us) or with a
group (ours, or one we were added to), known by the group's id. A message we sent keeps
a state per recipient, updated as reports come in; a received one keeps who sent it.
Nothing here touches the network or the screen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from whatsap2p.app.events import DeliveryReport
from whatsap2p.app.history import HistoryEntry
from whatsap2p.app.session import Session
from whatsap2p.errors import WhatsAp2pError
from whatsap2p.ui.tui.render import clock_of

__all__ = ["Chats", "Conversation", "Row", "Waiting", "group_key", "phone_key"]

#: The states a recipient of a sent message can be in, as shown.
SENDING = "sending"
#: The states of the recipients a retry sends a message to again.
RETRIED = frozenset({"failed", "offline", "cancelled"})


def phone_key(phone: str) -> str:
    return f"p:{phone}"


def group_key(group_id: str) -> str:
    return f"g:{group_id}"


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
    #: For a delivered recipient: how it got there (`DeliveryReport.routes`).
    routes: dict[str, str] = field(default_factory=dict)
    #: News of a group's members (`{"op", "phones"}`) rather than a message.
    change: dict[str, object] | None = None

    def apply(self, report: DeliveryReport) -> None:
        """The outcome of the send (or of a retry), per recipient."""
        self.id = report.id
        for phone in [*report.delivered, *report.offline, *report.queued]:
            self.errors.pop(phone, None)  # (a retry's: what failed before did not now)
            self.codes.pop(phone, None)
        for phone in report.delivered:
            self.states[phone] = "delivered"
        self.routes.update(report.routes)
        for phone in report.offline:
            self.states[phone] = "offline"
        for phone in report.queued:
            self.states[phone] = "queued"
        for failed in report.failed:
            self.states[failed.phone] = "failed"
            self.errors[failed.phone] = failed.error
            self.codes[failed.phone] = failed.code

    @property
    def retryable(self) -> bool:
        """A message of ours that some recipient did not get (failed, offline, or
        taken out of the outbox): a retry under its id sends it to those."""
        return (
            self.mine
            and not self.note
            and self.change is None
            and any(s in RETRIED for s in self.states.values())
        )

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
    target: str  # what a send to it names: a phone, or a group's id
    group: bool = False
    #: A group's members but us, by name (the sidebar's second line), and whether we
    #: are still one of them.
    detail: str = ""
    member: bool = True
    unread: int = 0
    rows: list[Row] = field(default_factory=list)
    loaded: bool = False  # its newest page read from the store
    #: The oldest message read from the store: the next page is the one before it.
    oldest: str | None = None
    #: Every stored message is read (a page before `oldest` came back empty).
    complete: bool = False

    def find(self, message_id: str, sender: str | None = None) -> Row | None:
        """The row of message `message_id` (from `sender`, if given: two senders may
        choose one id)."""
        for row in reversed(self.rows):
            if row.id == message_id and (sender is None or row.sender == sender):
                return row
        return None

    def last_retryable(self) -> Row | None:
        """The newest message of ours that did not reach every recipient."""
        for row in reversed(self.rows):
            if row.retryable:
                return row
        return None

    def load(self, entries: list[HistoryEntry], me: str) -> int:
        """Put a page of the stored history (newest first, one entry per recipient of
        what we sent; the newest page, or the one before `oldest`) before what the
        conversation shows already; how many rows that added. A message is its id from
        its sender (two senders may choose one id)."""
        rows: dict[tuple[str, str], Row] = {}
        for entry in reversed(entries):
            row = rows.get((entry.id, entry.sender))
            if row is None:
                photo = entry.photo or {}
                path = photo.get("path")
                name = photo.get("filename")
                row = rows[entry.id, entry.sender] = Row(
                    entry.id,
                    entry.sender,
                    entry.timestamp,
                    mine=entry.sender == me,
                    text=entry.text,
                    photo=Path(path) if isinstance(path, str) else None,
                    photo_name=name if isinstance(name, str) else None,
                    change=entry.change,
                )
            if row.mine:
                row.states[entry.recipient] = entry.state
                if entry.error:
                    row.errors[entry.recipient] = entry.error
                if entry.code:
                    row.codes[entry.recipient] = entry.code
        seen = {(row.id, row.sender) for row in self.rows}
        older = [row for key, row in rows.items() if key not in seen]
        self.rows[:0] = older
        self.loaded = True
        if entries:
            self.oldest = entries[-1].id
        else:
            self.complete = True
        return len(older)


#: A conversation's path, by the route of the last message delivered (not a relay).
_DIRECT = {
    "direct": "direct",
    "reverse": "direct (it connects back)",
    "punched": "direct (through a punched hole)",
}


@dataclass(frozen=True)
class Waiting:
    """A message in the outbox, as the person sees it listed."""

    id: str
    to: str  # the names of the recipients it still waits for
    what: str  # its text, or the photo's name
    since: str  # when it was written (local clock time)


class Chats:
    """The conversations the app shows, who of their members is online, and the names
    they are shown by: the sidebar's and the messages' contents, apart from their look.
    Reads the session's contacts and history; never its network."""

    def __init__(self, session: Session, history_rows: int) -> None:
        self._session = session
        self._history_rows = history_rows
        self.conversations: dict[str, Conversation] = {}
        #: What we last heard of each number: online or not (absent: not known yet).
        self.online: dict[str, bool] = {}
        #: How our last message to each number got there (`DeliveryReport.routes`).
        self.routes: dict[str, str] = {}

    def name_of(self, phone: str) -> str:
        if phone == self._session.phone:
            return "me"
        return self._session.book.name_of(phone) or phone

    def wanted_keys(self) -> list[str]:
        """The sidebar's conversations: the contacts, the groups, then the numbers and
        groups we had messages with (a removed contact stays while it has some)."""
        book = self._session.book
        keys = [phone_key(c.phone) for c in book.contacts()]
        keys += [group_key(g.id) for g in book.groups()]
        keys += [k for k, c in self.conversations.items() if k not in keys and c.rows]
        return list(dict.fromkeys(keys))

    def conversation(self, key: str) -> Conversation:
        """The conversation `key` stands for, made on first use (its stored history is
        read when it is first shown: not one query per contact at start-up)."""
        conv = self.conversations.get(key)
        if conv is not None:
            return conv
        kind, _, name = key.partition(":")
        if kind == "g":
            conv = Conversation(key, name, name, group=True)
            self.describe(conv)
        else:
            conv = Conversation(key, self.name_of(name), name)
        self.conversations[key] = conv
        return conv

    def describe(self, conv: Conversation) -> None:
        """A group conversation's title (its name; and its creator where another group
        has the same name), members and whether we are one, as the address book has them."""
        book = self._session.book
        group = book.group_by_id(conv.target)
        if group is None:
            return
        me = self._session.phone
        conv.title = group.name
        if book.named_alike(group):
            conv.title += f" (by {self.name_of(group.creator)})"
        conv.detail = ", ".join(self.name_of(p) for p in group.others(me))
        conv.member = group.private or me in group.members

    def key_of(self, target: str) -> str:
        """The key of the conversation a send to `target` belongs to."""
        recipients = self._session.book.resolve(target)
        if recipients.group is not None:
            return group_key(recipients.group.id)
        return phone_key(recipients.phones[0])

    def load(self, conv: Conversation) -> None:
        """Read the newest page of the conversation's stored history, once."""
        try:
            conv.load(
                self._session.conversation(conv.target, self._history_rows), self._session.phone
            )
        except WhatsAp2pError:  # a group we were never messaged in: nothing stored
            conv.loaded = conv.complete = True

    def load_older(self, conv: Conversation) -> int:
        """Read the page of the stored history before the oldest message read yet
        (after `load`); how many rows it put before the conversation's (0: none older)."""
        while not conv.complete and conv.oldest is not None:
            try:
                page = self._session.conversation(conv.target, self._history_rows, conv.oldest)
            except WhatsAp2pError:  # (the oldest read was dropped from the store meanwhile)
                conv.complete = True
                break
            added = conv.load(page, self._session.phone)
            if added:  # (else the page held only rows it has: they came while it was open)
                return added
        return 0

    def members(self, conv: Conversation) -> list[str]:
        if not conv.group:
            return [conv.target]
        group = self._session.book.group_by_id(conv.target)
        return [] if group is None else list(group.others(self._session.phone))

    def recipients(self, conv: Conversation) -> list[str]:
        """Who a message in `conv` goes to: its members but us."""
        return [p for p in self.members(conv) if p != self._session.phone]

    def presence(self, conv: Conversation) -> tuple[int | None, int, bool]:
        """For the sidebar: how many of its recipients are online (None: not known yet),
        how many there are, and whether the key of its number changed."""
        recipients = self.recipients(conv)
        known = [self.online[p] for p in recipients if p in self.online]
        online = sum(known) if known or not recipients else None
        changed = not conv.group and conv.target in self._session.changed_keys
        return online, len(recipients), changed

    def watched_phones(self) -> list[str]:
        """Every number of every conversation shown, but ours."""
        phones: set[str] = set()
        for conv in self.conversations.values():
            phones.update(self.members(conv))
        phones.discard(self._session.phone)
        return sorted(phones)

    def learn(self, report: DeliveryReport) -> None:
        """A send has just asked the server: the freshest presence there is; and the
        way each delivered recipient was reached."""
        self.online.update(dict.fromkeys(report.delivered, True))
        self.online.update(dict.fromkeys([*report.offline, *report.queued], False))
        self.routes.update(report.routes)

    def path(self, conv: Conversation) -> str | None:
        """For the conversation's heading: how our messages reach its recipients, as
        of the last one delivered to each (None: none delivered yet). A path through a
        relay is not direct; the others are, and say how the connection was made when
        it was not dialled."""
        routes = [self.routes[p] for p in self.recipients(conv) if p in self.routes]
        if not routes:
            return None
        relayed = routes.count("relay")
        if not conv.group:
            return "via relay" if relayed else _DIRECT[routes[0]]
        if not relayed:
            return "direct"
        if relayed == len(routes):
            return "via relay"
        return f"direct to {len(routes) - relayed}, via relay to {relayed}"

    def waiting(self) -> list[Waiting]:
        """The outbox, a line per message (oldest first): whom it still waits for."""
        messages: dict[str, list[HistoryEntry]] = {}
        for entry in self._session.outbox():
            messages.setdefault(entry.id, []).append(entry)
        listed = []
        for message_id, entries in messages.items():
            first = entries[0]
            names = ", ".join(self.name_of(entry.recipient) for entry in entries)
            to = f"{names} (# {first.group})" if first.group else names
            photo = first.photo or {}
            name = photo.get("filename")
            what = first.text or (f"photo {name}" if isinstance(name, str) else "a photo")
            listed.append(Waiting(message_id, to, what, clock_of(first.timestamp)))
        return listed

    def find(self, message_id: str) -> Row | None:
        """The row of message `message_id`, in whichever conversation shows it."""
        for conv in self.conversations.values():
            row = conv.find(message_id)
            if row is not None:
                return row
        return None
