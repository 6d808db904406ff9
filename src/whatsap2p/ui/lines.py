"""The plain line mode, for people at a shell: slash commands in (read and carried out
by the table in `commands`), one line per result or event out."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import sys
from collections.abc import Awaitable
from typing import Any, TextIO, TypeVar, assert_never

from whatsap2p.app.contacts import Contact, Group
from whatsap2p.app.events import (
    DeliveryReport,
    GroupChanged,
    IdentityChanged,
    PhotoReceived,
    PresenceChanged,
    QueuedDelivered,
    Received,
    ServerConnectionChanged,
    SessionEvent,
    TextReceived,
)
from whatsap2p.app.history import HistoryEntry
from whatsap2p.app.session import Session
from whatsap2p.errors import WhatsAp2pError
from whatsap2p.ui import commands
from whatsap2p.ui.commands import (
    Cancelled,
    ContactList,
    ContactRemoved,
    GroupList,
    HelpText,
    Identity,
    KeyTrusted,
    Leaving,
    MessageHistory,
    Outbox,
    Presence,
    Result,
    ShowHistory,
    UsageError,
)
from whatsap2p.ui.stdin import LineReader
from whatsap2p.ui.terminal import safe_text

__all__ = [
    "LineMode",
    "escape_untrusted",
    "format_error",
    "format_event",
    "format_history",
    "format_received",
    "format_report",
    "format_result",
]

T = TypeVar("T")


def escape_untrusted(text: str) -> str:
    """A name from a peer or a file (one line), safe to print (ui/terminal.py)."""
    return safe_text(text)


def message_text(text: str) -> str:
    """A message's text, safe to print, its line breaks kept: each line after the first
    is indented, so no line of a message can pass for a message of its own."""
    return safe_text(text, lines=True).replace("\n", "\n  ")


def format_received(event: Received) -> str:
    try:
        stamp = dt.datetime.fromisoformat(event.timestamp).astimezone()
        clock = stamp.strftime("%H:%M")
    except ValueError:
        clock = "--:--"
    who = escape_untrusted(event.name or event.sender)
    if event.group is not None:  # (and the start of its id: two groups may share a name)
        short = "" if event.group_id is None else f" #{event.group_id[:6]}"
        who += f" [{escape_untrusted(event.group)}{short}]"
    if isinstance(event, PhotoReceived):
        return f"[{clock}] {who}: photo saved to {event.photo.path}"
    return f"[{clock}] {who}: {message_text(event.text)}"


def format_event(event: SessionEvent) -> str:
    if isinstance(event, QueuedDelivered):
        return f"! queued message {event.id} delivered to {event.phone}"
    if isinstance(event, PresenceChanged):
        return f"! {event.phone} is {'online' if event.online else 'offline'}"
    if isinstance(event, ServerConnectionChanged):
        if event.state == "lost":
            return (
                "! lost the connection to the server; reconnecting"
                " (/msg fails meanwhile; /queue keeps what you send)"
            )
        return "! connected to the server again"
    if isinstance(event, IdentityChanged):
        return (
            f"! the key of {event.phone} changed (now {event.fingerprint}); nothing is "
            f"exchanged with it until you check it and /trust {event.phone}"
        )
    if isinstance(event, GroupChanged):
        return f"! {format_group(event.group)}"
    return format_received(event)


def format_group(group: Group) -> str:
    """`group NAME (id ID, by CREATOR): MEMBERS` (a private list: `list NAME ...`)."""
    name = escape_untrusted(group.name)
    if group.private:
        return f"list {name} (id {group.id}): {' '.join(group.members)}"
    return f"group {name} (id {group.id}, by {group.creator}): {' '.join(group.members)}"


def _summary(entry: HistoryEntry) -> str:
    if entry.photo is not None:
        return f"photo {escape_untrusted(str(entry.photo.get('filename', '')))}"
    return message_text(entry.text or "")


def format_history(entry: HistoryEntry) -> str:
    """One line of a conversation, oldest first: `[HH:MM] FROM -> TO: text (state)`."""
    try:
        clock = dt.datetime.fromisoformat(entry.timestamp).astimezone().strftime("%H:%M")
    except ValueError:
        clock = "--:--"
    return f"[{clock}] {entry.sender} -> {entry.recipient}: {_summary(entry)} ({entry.state})"


#: How a route other than the usual one (we dialled the peer) is said after a send.
ROUTE_WORDS = {
    "reverse": "it connected back",
    "punched": "through a punched hole",
    "relay": "through a relay",
}


def delivered_to(phone: str, route: str | None) -> str:
    """`phone`, and how the message got there when it was not the usual way."""
    words = ROUTE_WORDS.get(route or "direct")
    return phone if words is None else f"{phone} ({words})"


#: Failures a retry may mend (not a changed key, which needs /trust first, nor a
#: message its recipient will not store).
RETRY_HELPS = frozenset(
    {"unreachable", "timeout", "refused", "unconfirmed", "rate-limited", "no-room", "protocol"}
)


def format_report(report: DeliveryReport) -> str:
    parts = []
    if report.delivered:
        phones = (delivered_to(phone, report.routes.get(phone)) for phone in report.delivered)
        parts.append("delivered to " + ", ".join(phones))
    if report.offline:
        parts.append("offline: " + ", ".join(report.offline))
    if report.queued:
        parts.append("queued for: " + ", ".join(report.queued))
    # (an error may quote the peer's own reason for refusing)
    parts.extend(
        f"failed: {failed.phone} ({escape_untrusted(failed.error)})" for failed in report.failed
    )
    if any(failed.code in RETRY_HELPS for failed in report.failed):
        parts.append(f"/retry {report.id} tries again")
    return "; ".join(parts) or "no recipients"


def format_result(result: Result) -> str:
    """What a command did, as the line mode prints it (the terminal UI shows it as a note)."""
    match result:
        case Contact(name, phone):
            return f"contact {escape_untrusted(name)}: {phone}"
        case ContactRemoved(name):
            return f"removed {escape_untrusted(name)}"
        case Group():
            return format_group(result)
        case DeliveryReport():
            return format_report(result)
        case ContactList(entries):
            return (
                "\n".join(
                    f"{escape_untrusted(c.name)}: {c.phone} key {fingerprint or 'not seen yet'}"
                    for c, fingerprint in entries
                )
                or "no contacts"
            )
        case GroupList(groups):
            return "\n".join(format_group(g) for g in groups) or "no groups"
        case Outbox(entries):
            return (
                "\n".join(f"{e.id} to {e.recipient}: {_summary(e)}" for e in entries)
                or "nothing is waiting"
            )
        case Cancelled(message_id, phones):
            return f"cancelled {message_id} for {', '.join(phones)}"
        case MessageHistory(entries, more):
            if not entries:
                return "no older messages" if more else "no messages yet"
            return "\n".join(format_history(e) for e in entries)
        case Presence(online):
            return ", ".join(f"{p} {'online' if up else 'offline'}" for p, up in online.items())
        case Identity(phone, fingerprint):
            return f"{phone} key {fingerprint}"
        case KeyTrusted(phone, fingerprint):
            return f"trusting {phone} with key {fingerprint}"
        case HelpText(text):
            return text
        case Leaving():
            return ""
        case _:
            assert_never(result)


def format_error(exc: Exception) -> str:
    """A command that could not be carried out: its usage, or why."""
    if isinstance(exc, UsageError):
        return f"usage: {exc}"
    return f"error: {safe_text(str(exc), lines=True)}"  # (it may quote what was typed)


class LineMode:
    def __init__(self, session: Session, out: TextIO | None = None) -> None:
        self._session = session
        self._out = out or sys.stdout
        self._pages = commands.HistoryPages()

    def say(self, line: str) -> None:
        self._out.write(line + "\n")
        self._out.flush()

    async def run(self, stop: asyncio.Event) -> None:
        session = self._session
        assert session.published is not None
        self.say(
            f"online as {session.phone} (peers reach this module at "
            f"{session.published.host}:{session.published.port}); /help lists the commands"
        )
        pump = asyncio.create_task(self._print_received())
        reader = LineReader()
        try:
            while True:
                line = await self._until_stopped(reader.readline(), stop)
                if line is None:  # the end of input, or a signal
                    return
                # a command runs (a send waits for its peers) until done or a signal
                if not await self._until_stopped(self.command(line), stop):
                    return
        finally:
            pump.cancel()

    @staticmethod
    async def _until_stopped(work: Awaitable[T], stop: asyncio.Event) -> T | None:
        """What `work` gives, or None once a signal came first (`work` is cancelled)."""
        task = asyncio.ensure_future(work)
        stopping = asyncio.ensure_future(stop.wait())
        either: set[asyncio.Future[Any]] = {task, stopping}
        try:
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return None

    async def _print_received(self) -> None:
        while True:
            event = await self._session.events.get()
            self.say(format_event(event))
            if isinstance(event, TextReceived | PhotoReceived):
                self._session.shown(event)

    async def command(self, line: str) -> bool:
        """Carry out one line; False when the user asked to quit."""
        line = line.strip()
        if not line:
            return True
        if line == LineReader.TOO_LONG:
            self.say("error: line too long")
            return True
        result: Result
        try:
            call = commands.parse(line)
            if isinstance(call.request, ShowHistory):  # `more` goes on from the last page
                result = await commands.show_history(self._session, call.request, self._pages)
            else:
                result = await call.run(self._session)
        except (WhatsAp2pError, ValueError) as exc:
            self.say(format_error(exc))
            return True
        if isinstance(result, Leaving):
            return False
        self.say(format_result(result))
        return True
