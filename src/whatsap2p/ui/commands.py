"""The slash commands people type, one table for the line mode and the terminal UI: what
each is called, how its words are read, what it does to the Session.

A typed line is parsed once into a `Call`: the command and its request, a frozen
dataclass of the values it names (`AddContact("my mom", "+55 11 99999-0001")`). A
handler takes the Session and a request and returns what came of it, as data (a
`Contact`, a `DeliveryReport`, a `ContactList`...); each UI shows that its own way
(`lines.format_result` is the text the line mode prints). A UI that asks for the values
in a form builds the request itself and calls the same handler.
"""

from __future__ import annotations

import shlex
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

from whatsap2p.app.contacts import Contact, Group
from whatsap2p.app.events import DeliveryReport
from whatsap2p.app.history import HistoryEntry
from whatsap2p.app.session import Session

__all__ = [
    "COMMANDS",
    "HISTORY_DEFAULT",
    "AddContact",
    "Call",
    "Cancel",
    "Cancelled",
    "ChangeGroup",
    "Command",
    "CommandError",
    "ContactList",
    "ContactRemoved",
    "CreateGroup",
    "GroupList",
    "HelpText",
    "HistoryPages",
    "Identity",
    "KeyTrusted",
    "LeaveGroup",
    "Leaving",
    "ListContacts",
    "ListGroups",
    "MessageHistory",
    "Outbox",
    "Presence",
    "Progress",
    "Quit",
    "RemoveContact",
    "Request",
    "Result",
    "Retry",
    "SendPhoto",
    "SendText",
    "ShowHelp",
    "ShowHistory",
    "ShowIdentity",
    "ShowOutbox",
    "TrustKey",
    "UnknownCommand",
    "UsageError",
    "Who",
    "add_contact",
    "cancel",
    "change_group",
    "create_group",
    "help_text",
    "leave",
    "leave_group",
    "list_contacts",
    "list_groups",
    "parse",
    "remove_contact",
    "retry",
    "send_photo",
    "send_text",
    "show_help",
    "show_history",
    "show_identity",
    "show_outbox",
    "split_target",
    "trust_key",
    "who",
]

#: Messages `/history TARGET` shows when no N is given.
HISTORY_DEFAULT = 20

#: `progress(sent, total)` of a photo being sent, in bytes over all its recipients.
Progress = Callable[[int, int], None]


# --- requests: what a command asks for, with the values it names --------------------------


@dataclass(frozen=True, slots=True)
class AddContact:
    name: str
    phone: str  # as typed: national, spaced, E.164...


@dataclass(frozen=True, slots=True)
class RemoveContact:
    name: str


@dataclass(frozen=True, slots=True)
class CreateGroup:
    name: str
    members: tuple[str, ...]  # contact names or phone numbers
    private: bool = False  # a list of ours alone: each member gets a direct message


@dataclass(frozen=True, slots=True)
class ChangeGroup:
    """Add members to a group of ours, or remove some (`add` false)."""

    group: str  # its name, or its id
    members: tuple[str, ...]  # contact names or phone numbers
    add: bool = True


@dataclass(frozen=True, slots=True)
class LeaveGroup:
    group: str


@dataclass(frozen=True, slots=True)
class SendText:
    target: str  # a contact, a group or a phone number
    text: str
    queue: bool = False  # keep it for recipients it cannot reach now
    id: str | None = None  # the message's id (a retry's: the message sent before)


@dataclass(frozen=True, slots=True)
class SendPhoto:
    target: str
    path: str  # as typed; the Session expands `~`
    id: str | None = None
    queue: bool = False  # keep it for recipients it cannot reach now


@dataclass(frozen=True, slots=True)
class Retry:
    """Send a message that did not reach everyone again, under its id (its recipients
    show it once)."""

    id: str


@dataclass(frozen=True, slots=True)
class ShowOutbox:
    pass


@dataclass(frozen=True, slots=True)
class Cancel:
    """Take a queued message out of the outbox."""

    id: str


@dataclass(frozen=True, slots=True)
class ShowHistory:
    target: str
    count: int = HISTORY_DEFAULT
    #: The page before the last one shown of `target` (`HistoryPages`), of its size.
    more: bool = False


@dataclass(frozen=True, slots=True)
class Who:
    target: str


@dataclass(frozen=True, slots=True)
class ShowIdentity:
    pass


@dataclass(frozen=True, slots=True)
class TrustKey:
    phone: str


@dataclass(frozen=True, slots=True)
class ListContacts:
    pass


@dataclass(frozen=True, slots=True)
class ListGroups:
    pass


@dataclass(frozen=True, slots=True)
class ShowHelp:
    pass


@dataclass(frozen=True, slots=True)
class Quit:
    pass


Request = (
    AddContact
    | RemoveContact
    | CreateGroup
    | ChangeGroup
    | LeaveGroup
    | SendText
    | SendPhoto
    | Retry
    | ShowOutbox
    | Cancel
    | ShowHistory
    | Who
    | ShowIdentity
    | TrustKey
    | ListContacts
    | ListGroups
    | ShowHelp
    | Quit
)


# --- results: what came of a command (besides Contact, Group and DeliveryReport) ----------


@dataclass(frozen=True, slots=True)
class ContactRemoved:
    name: str


@dataclass(frozen=True, slots=True)
class ContactList:
    """The contacts, each with its key's fingerprint (None until the number is seen)."""

    entries: tuple[tuple[Contact, str | None], ...]


@dataclass(frozen=True, slots=True)
class GroupList:
    groups: tuple[Group, ...]


@dataclass(frozen=True, slots=True)
class Outbox:
    """Queued messages still waiting, one entry per recipient."""

    entries: tuple[HistoryEntry, ...]


@dataclass(frozen=True, slots=True)
class Cancelled:
    """A queued message taken out of the outbox, for these recipients."""

    id: str
    phones: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class MessageHistory:
    """A page of the messages with a contact, a number or a group, oldest first: the
    last ones, or (`more`) those before the page shown last."""

    entries: tuple[HistoryEntry, ...]
    more: bool = False


@dataclass(frozen=True, slots=True)
class Presence:
    online: dict[str, bool]  # phone -> online, for each phone asked


@dataclass(frozen=True, slots=True)
class Identity:
    phone: str
    fingerprint: str


@dataclass(frozen=True, slots=True)
class KeyTrusted:
    phone: str
    fingerprint: str


@dataclass(frozen=True, slots=True)
class HelpText:
    text: str


@dataclass(frozen=True, slots=True)
class Leaving:
    """The person asked to quit: the UI ends (and the module unregisters)."""


Result = (
    Contact
    | ContactRemoved
    | Group
    | DeliveryReport
    | ContactList
    | GroupList
    | Outbox
    | Cancelled
    | MessageHistory
    | Presence
    | Identity
    | KeyTrusted
    | HelpText
    | Leaving
)


# --- handlers: a request carried out by the Session ---------------------------------------


async def add_contact(session: Session, request: AddContact) -> Contact:
    return session.book.add_contact(request.name, request.phone)


async def remove_contact(session: Session, request: RemoveContact) -> ContactRemoved:
    session.book.remove_contact(request.name)
    return ContactRemoved(request.name)


async def create_group(session: Session, request: CreateGroup) -> Group:
    return await session.create_group(request.name, list(request.members), request.private)


async def change_group(session: Session, request: ChangeGroup) -> Group:
    change = session.add_to_group if request.add else session.remove_from_group
    group = session.book.group(request.group)
    for member in request.members:  # (one change each, in turn: each a new version)
        group = await change(group.id, member)
    return group


async def leave_group(session: Session, request: LeaveGroup) -> Group:
    return await session.leave_group(request.group)


async def send_text(session: Session, request: SendText) -> DeliveryReport:
    return await session.send_text(
        request.target, request.text, queue=request.queue, message_id=request.id
    )


async def send_photo(
    session: Session, request: SendPhoto, progress: Progress | None = None
) -> DeliveryReport:
    return await session.send_photo(
        request.target, request.path, request.queue, progress=progress, message_id=request.id
    )


async def retry(session: Session, request: Retry) -> DeliveryReport:
    return await session.resend(request.id)


async def show_outbox(session: Session, request: ShowOutbox) -> Outbox:
    return Outbox(tuple(session.outbox()))


async def cancel(session: Session, request: Cancel) -> Cancelled:
    return Cancelled(request.id, tuple(session.cancel(request.id)))


class HistoryPages:
    """How far back each target's history has been shown, so that `/history TARGET
    more` goes on from there: one per UI (a UI without one shows the last messages)."""

    def __init__(self) -> None:
        #: target (as typed) -> the oldest message shown of it, and the page's size
        self._oldest: dict[str, tuple[str, int]] = {}

    def next_page(self, request: ShowHistory) -> tuple[str | None, int]:
        """Where `request`'s page ends (before which message id: None, the newest) and
        how many messages it shows."""
        if request.more and request.target in self._oldest:
            return self._oldest[request.target]
        return None, request.count

    def shown(self, target: str, newest_first: list[HistoryEntry], count: int) -> None:
        if newest_first:  # (an empty page: nothing older, the next `more` says so again)
            self._oldest[target] = (newest_first[-1].id, count)


async def show_history(
    session: Session, request: ShowHistory, pages: HistoryPages | None = None
) -> MessageHistory:
    pages = pages if pages is not None else HistoryPages()
    before, count = pages.next_page(request)
    newest_first = session.conversation(request.target, count, before)
    pages.shown(request.target, newest_first, count)
    return MessageHistory(tuple(reversed(newest_first)), more=before is not None)


async def who(session: Session, request: Who) -> Presence:
    return Presence(await session.status(request.target))


async def show_identity(session: Session, request: ShowIdentity) -> Identity:
    return Identity(session.phone, session.fingerprint)


async def trust_key(session: Session, request: TrustKey) -> KeyTrusted:
    phone, fingerprint = await session.trust_key(request.phone)
    return KeyTrusted(phone, fingerprint)


async def list_contacts(session: Session, request: ListContacts) -> ContactList:
    trust = session.trust
    return ContactList(tuple((c, trust.fingerprint_of(c.phone)) for c in session.book.contacts()))


async def list_groups(session: Session, request: ListGroups) -> GroupList:
    return GroupList(tuple(session.book.groups()))


async def show_help(session: Session, request: ShowHelp) -> HelpText:
    return HelpText(help_text())


async def leave(session: Session, request: Quit) -> Leaving:
    return Leaving()


# --- reading a command's words ------------------------------------------------------------


def split_target(rest: str) -> tuple[str, str]:
    """`TARGET TEXT...` -> (target, text); a target with spaces is written in quotes.

    The text is returned exactly as typed (shlex would eat its quotes and spacing).
    """
    rest = rest.lstrip()
    if rest[:1] in ("'", '"'):
        end = rest.find(rest[0], 1)
        if end < 0:
            raise ValueError("no closing quotation")
        return rest[1:end], rest[end + 1 :].lstrip()
    target, _, text = rest.partition(" ")
    return target, text.lstrip()


# Each reads the rest of the line (stripped) into a request, or None when the words do
# not fit the usage; a quote left open raises ValueError.


def _add_words(rest: str) -> AddContact | None:
    words = shlex.split(rest)
    if len(words) < 2:
        return None
    return AddContact(words[0], " ".join(words[1:]))  # people write +55 11 99999-0001


def _remove_words(rest: str) -> RemoveContact | None:
    words = shlex.split(rest)
    return RemoveContact(words[0]) if len(words) == 1 else None


def _group_words(rest: str) -> CreateGroup | None:
    words = shlex.split(rest)
    return CreateGroup(words[0], tuple(words[1:])) if len(words) >= 2 else None


def _list_words(rest: str) -> CreateGroup | None:
    words = shlex.split(rest)
    return CreateGroup(words[0], tuple(words[1:]), private=True) if len(words) >= 2 else None


def _change_words(add: bool) -> Callable[[str], ChangeGroup | None]:
    def parse(rest: str) -> ChangeGroup | None:
        words = shlex.split(rest)
        return ChangeGroup(words[0], tuple(words[1:]), add) if len(words) >= 2 else None

    return parse


def _leave_words(rest: str) -> LeaveGroup | None:
    words = shlex.split(rest)
    return LeaveGroup(words[0]) if len(words) == 1 else None


def _text_words(rest: str) -> SendText | None:
    target, text = split_target(rest)
    return SendText(target, text) if target and text else None


def _queue_words(rest: str) -> SendText | None:
    target, text = split_target(rest)
    return SendText(target, text, queue=True) if target and text else None


def _photo_words(rest: str) -> SendPhoto | None:
    words = shlex.split(rest)
    return SendPhoto(words[0], words[1]) if len(words) == 2 else None


def _retry_words(rest: str) -> Retry | None:
    words = rest.split()
    return Retry(words[0].lower()) if len(words) == 1 else None


def _cancel_words(rest: str) -> Cancel | None:
    words = rest.split()
    return Cancel(words[0].lower()) if len(words) == 1 else None


def _history_words(rest: str) -> ShowHistory | None:
    target, count = split_target(rest)
    if count == "more":
        return ShowHistory(target, more=True) if target else None
    if not target or (count and not count.isdigit()):
        return None
    return ShowHistory(target, int(count)) if count else ShowHistory(target)


def _who_words(rest: str) -> Who | None:
    target, extra = split_target(rest)
    return Who(target) if target and not extra else None


def _trust_words(rest: str) -> TrustKey | None:
    return TrustKey(rest) if rest else None  # the number as typed, spaces and all


_R = TypeVar("_R")


def _no_words(request: Callable[[], _R]) -> Callable[[str], _R | None]:
    """A command that takes nothing (anything after it is ignored)."""

    def read(rest: str) -> _R | None:
        return request()

    return read


# --- the table ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Command(Generic[_R]):
    """One slash command: its name and arguments as /help shows them, and how its words
    become a request (`parse`) that `handler` carries out."""

    name: str  # as typed: "/add"
    args: str  # "NAME PHONE"
    help: str  # one line
    parse: Callable[[str], _R | None]
    handler: Callable[[Session, _R], Awaitable[Result]]
    #: A line /help shows under this command's.
    note: str = ""

    @property
    def usage(self) -> str:
        return f"{self.name} {self.args}".rstrip()


#: Every command, in the order /help lists them.
COMMANDS: Final[tuple[Command[Any], ...]] = (
    Command("/add", "NAME PHONE", "add or update a contact", _add_words, add_contact),
    Command("/remove", "NAME", "remove a contact", _remove_words, remove_contact),
    Command(
        "/group",
        "NAME MEMBER...",
        "create a group of contacts or phone numbers (all can write to it)",
        _group_words,
        create_group,
    ),
    Command(
        "/addto",
        "GROUP WHO...",
        "add members to a group you created (everyone in it is told)",
        _change_words(add=True),
        change_group,
        note="GROUP: its name, or (when groups share one) the start of its id (/groups)",
    ),
    Command(
        "/removefrom",
        "GROUP WHO...",
        "remove members from a group you created",
        _change_words(add=False),
        change_group,
    ),
    Command("/leave", "GROUP", "leave a group (its members are told)", _leave_words, leave_group),
    Command(
        "/list",
        "NAME MEMBER...",
        "a private list: each member gets your message as a direct message",
        _list_words,
        create_group,
    ),
    Command(
        "/msg",
        "TARGET TEXT...",
        "send a text to a contact, a group or a phone number",
        _text_words,
        send_text,
    ),
    Command(
        "/photo",
        "TARGET PATH",
        "send a photo (JPEG, PNG, GIF or WebP)",
        _photo_words,
        send_photo,
    ),
    Command(
        "/queue",
        "TARGET TEXT...",
        "like /msg, and keep it for whoever it cannot reach now",
        _queue_words,
        send_text,
    ),
    Command(
        "/retry",
        "ID",
        "send a message that failed again (its recipients show it once)",
        _retry_words,
        retry,
    ),
    Command(
        "/outbox",
        "",
        "queued messages still waiting for their recipient",
        _no_words(ShowOutbox),
        show_outbox,
    ),
    Command(
        "/cancel",
        "ID",
        "take a queued message out of the outbox (/outbox lists their IDs)",
        _cancel_words,
        cancel,
    ),
    Command(
        "/history",
        "TARGET [N|more]",
        f"the last N (default {HISTORY_DEFAULT}) messages with TARGET",
        _history_words,
        show_history,
        note="more: as many again, from before the ones /history showed last",
    ),
    Command("/who", "TARGET", "who of TARGET is online", _who_words, who),
    Command(
        "/identity",
        "",
        "your number and key fingerprint",
        _no_words(ShowIdentity),
        show_identity,
    ),
    Command(
        "/trust",
        "PHONE",
        "accept the new key of a number whose key changed",
        _trust_words,
        trust_key,
    ),
    Command("/contacts", "", "list contacts", _no_words(ListContacts), list_contacts),
    Command(
        "/groups", "", "list groups, their ids and creators", _no_words(ListGroups), list_groups
    ),
    Command(
        "/help",
        "",
        "this text",
        _no_words(ShowHelp),
        show_help,
        note='names with spaces go in quotes: /msg "my mom" hello',
    ),
    Command("/quit", "", "unregister and leave", _no_words(Quit), leave),
)

_BY_NAME: Final = {command.name: command for command in COMMANDS}


def help_text() -> str:
    """What /help prints: every command of the table with its one line."""
    lines = ["commands:"]
    for command in COMMANDS:
        lines.append(f"  {command.usage:<25} {command.help}")
        if command.note:
            lines.append(f"  {command.note}")
    return "\n".join(lines)


# --- a typed line -------------------------------------------------------------------------


class CommandError(ValueError):
    """A line that is not a command the table can carry out; says why."""


class UnknownCommand(CommandError):
    pass


class UsageError(CommandError):
    """The command's words do not fit its usage (str() is the usage)."""

    def __init__(self, command: Command[Any]) -> None:
        super().__init__(command.usage)
        self.command = command


@dataclass(frozen=True, slots=True)
class Call(Generic[_R]):
    """A command with the request read from its words."""

    command: Command[_R]
    request: _R

    async def run(self, session: Session) -> Result:
        return await self.command.handler(session, self.request)


def parse(line: str) -> Call[Any]:
    """`/name words...` -> the command and its request; raises CommandError."""
    line = line.strip()
    if not line.startswith("/"):
        raise CommandError("commands start with /; /help lists them")
    name, _, rest = line.partition(" ")
    command = _BY_NAME.get(name)
    if command is None:
        raise UnknownCommand(f"unknown command {name}; /help lists them")
    try:
        request = command.parse(rest.strip())
    except ValueError as exc:  # a quote left open, or a count that is no number
        raise CommandError(str(exc)) from exc
    if request is None:
        raise UsageError(command)
    return Call(command, request)
