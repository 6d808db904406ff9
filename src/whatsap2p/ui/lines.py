"""The plain line mode: slash commands in, one line per event out, for people at a shell."""

from __future__ import annotations

import asyncio
import datetime as dt
import shlex
import sys
import unicodedata
from typing import TextIO

from whatsap2p.app.events import (
    DeliveryReport,
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
from whatsap2p.ui.stdin import LineReader

__all__ = [
    "HELP",
    "LineMode",
    "escape_untrusted",
    "format_event",
    "format_received",
    "split_target",
]

HELP = """\
commands:
  /add NAME PHONE           add or update a contact
  /remove NAME              remove a contact
  /group NAME MEMBER...     create a group of contacts or phone numbers
  /msg TARGET TEXT...       send a text to a contact, a group or a phone number
  /photo TARGET PATH        send a photo (JPEG, PNG, GIF or WebP)
  /queue TARGET TEXT...     like /msg, and keep it for recipients who are offline
  /outbox                   queued messages still waiting for their recipient
  /history TARGET [N]       the last N (default 20) messages with TARGET
  /who TARGET               who of TARGET is online
  /identity                 your number and key fingerprint
  /trust PHONE              accept the new key of a number whose key changed
  /contacts                 list contacts
  /groups                   list groups
  /help                     this text
  names with spaces go in quotes: /msg "my mom" hello
  /quit                     unregister and leave"""

# Characters that reorder or hide text on a terminal (Trojan Source, CVE-2021-42574).
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def escape_untrusted(text: str) -> str:
    """Text from a peer, safe to print: control, format and bidi characters escaped."""
    out = []
    for char in text:
        if char in _BIDI or unicodedata.category(char) in ("Cc", "Cf", "Cs", "Co", "Cn"):
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(char)
    return "".join(out)


def format_received(event: Received) -> str:
    try:
        stamp = dt.datetime.fromisoformat(event.timestamp).astimezone()
        clock = stamp.strftime("%H:%M")
    except ValueError:
        clock = "--:--"
    who = escape_untrusted(event.name or event.sender)
    if event.group is not None:
        who += f" [{escape_untrusted(event.group)}]"
    if isinstance(event, PhotoReceived):
        return f"[{clock}] {who}: photo saved to {event.photo.path}"
    return f"[{clock}] {who}: {escape_untrusted(event.text)}"


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


def format_event(event: SessionEvent) -> str:
    if isinstance(event, QueuedDelivered):
        return f"! queued message {event.id} delivered to {event.phone}"
    if isinstance(event, PresenceChanged):
        return f"! {event.phone} is {'online' if event.online else 'offline'}"
    if isinstance(event, ServerConnectionChanged):
        if event.state == "lost":
            return "! lost the connection to the server; reconnecting (sends fail meanwhile)"
        return "! connected to the server again"
    if isinstance(event, IdentityChanged):
        return (
            f"! the key of {event.phone} changed (now {event.fingerprint}); nothing is "
            f"exchanged with it until you check it and /trust {event.phone}"
        )
    return format_received(event)


def _summary(entry: HistoryEntry) -> str:
    if entry.photo is not None:
        return f"photo {escape_untrusted(str(entry.photo.get('filename', '')))}"
    return escape_untrusted(entry.text or "")


def format_history(entry: HistoryEntry) -> str:
    """One line of a conversation, oldest first: `[HH:MM] FROM -> TO: text (state)`."""
    try:
        clock = dt.datetime.fromisoformat(entry.timestamp).astimezone().strftime("%H:%M")
    except ValueError:
        clock = "--:--"
    return f"[{clock}] {entry.sender} -> {entry.recipient}: {_summary(entry)} ({entry.state})"


def format_report(report: DeliveryReport) -> str:
    parts = []
    if report.delivered:
        parts.append("delivered to " + ", ".join(report.delivered))
    if report.offline:
        parts.append("offline: " + ", ".join(report.offline))
    if report.queued:
        parts.append("queued for: " + ", ".join(report.queued))
    parts.extend(f"failed: {failed.phone} ({failed.error})" for failed in report.failed)
    return "; ".join(parts) or "no recipients"


class LineMode:
    def __init__(self, session: Session, out: TextIO | None = None) -> None:
        self._session = session
        self._out = out or sys.stdout

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
                line_task = asyncio.ensure_future(reader.readline())
                stop_task = asyncio.ensure_future(stop.wait())
                await asyncio.wait({line_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
                stop_task.cancel()
                if not line_task.done():
                    line_task.cancel()
                    return
                line = line_task.result()
                if line is None or not await self.command(line):
                    return
        finally:
            pump.cancel()

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
        if not line.startswith("/"):
            self.say("error: commands start with /; /help lists them")
            return True
        name, _, rest = line.partition(" ")
        try:
            return await self._dispatch(name, rest.strip())
        except WhatsAp2pError as exc:
            self.say(f"error: {exc}")
        except ValueError as exc:  # shlex: unbalanced quotes
            self.say(f"error: {exc}")
        return True

    async def _dispatch(self, name: str, rest: str) -> bool:
        book = self._session.book
        if name == "/quit":
            return False
        if name == "/help":
            self.say(HELP)
        elif name == "/contacts":
            trust = self._session.trust
            self.say(
                "\n".join(
                    f"{c.name}: {c.phone} key {trust.fingerprint_of(c.phone) or 'not seen yet'}"
                    for c in book.contacts()
                )
                or "no contacts"
            )
        elif name == "/identity":
            self.say(f"{self._session.phone} key {self._session.fingerprint}")
        elif name == "/trust":
            if not rest:
                self.say("usage: /trust PHONE")
            else:
                phone, fingerprint = await self._session.trust_key(rest)
                self.say(f"trusting {phone} with key {fingerprint}")
        elif name == "/groups":
            groups = book.groups()
            self.say("\n".join(f"{g.name}: {' '.join(g.members)}" for g in groups) or "no groups")
        elif name == "/add":
            args = shlex.split(rest)
            if len(args) < 2:
                self.say("usage: /add NAME PHONE")
            else:  # people write numbers with spaces: +55 11 99999-0001
                contact = book.add_contact(args[0], " ".join(args[1:]))
                self.say(f"contact {contact.name}: {contact.phone}")
        elif name == "/remove":
            args = shlex.split(rest)
            if len(args) != 1:
                self.say("usage: /remove NAME")
            else:
                book.remove_contact(args[0])
                self.say(f"removed {args[0]}")
        elif name == "/group":
            args = shlex.split(rest)
            if len(args) < 2:
                self.say("usage: /group NAME MEMBER...")
            else:
                group = book.create_group(args[0], args[1:])
                self.say(f"group {group.name}: {' '.join(group.members)}")
        elif name == "/msg":
            target, text = split_target(rest)
            if not target or not text:
                self.say("usage: /msg TARGET TEXT...")
            else:
                self.say(format_report(await self._session.send_text(target, text)))
        elif name == "/queue":
            target, text = split_target(rest)
            if not target or not text:
                self.say("usage: /queue TARGET TEXT...")
            else:
                self.say(format_report(await self._session.send_text(target, text, queue=True)))
        elif name == "/outbox":
            pending = self._session.outbox()
            self.say(
                "\n".join(f"{e.id} to {e.recipient}: {_summary(e)}" for e in pending)
                or "nothing is waiting"
            )
        elif name == "/history":
            target, count = split_target(rest)
            if not target or (count and not count.isdigit()):
                self.say("usage: /history TARGET [N]")
            else:
                entries = self._session.conversation(target, int(count or 20))
                self.say(
                    "\n".join(format_history(e) for e in reversed(entries)) or "no messages yet"
                )
        elif name == "/photo":
            args = shlex.split(rest)
            if len(args) != 2:
                self.say("usage: /photo TARGET PATH")
            else:
                self.say(format_report(await self._session.send_photo(args[0], args[1])))
        elif name == "/who":
            target, extra = split_target(rest)
            if not target or extra:
                self.say("usage: /who TARGET")
            else:
                online = await self._session.status(target)
                self.say(
                    ", ".join(f"{p} {'online' if up else 'offline'}" for p, up in online.items())
                )
        else:
            self.say(f"error: unknown command {name}; /help lists them")
        return True
