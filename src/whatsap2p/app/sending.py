"""Sending: one lookup for all the recipients of a message, then the content straight to
each one online (concurrently), a report per recipient, and the history of it.

A send may name its message's id (a retry of an earlier send): it is the same message,
which its recipients show once; the recipients that already have it, or whose copy waits
in the outbox, are not sent it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import functools
import logging
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from whatsap2p.app.contacts import AddressBook, Recipients
from whatsap2p.app.events import DeliveryReport, FailedDelivery
from whatsap2p.app.groups import Group, change_json
from whatsap2p.app.history import History, State
from whatsap2p.app.outbox import Outbox
from whatsap2p.app.photos import PhotoFile, PhotoStream, file_sha256, prepare_photo
from whatsap2p.app.trust import Trust
from whatsap2p.config import Limits
from whatsap2p.errors import DeliveryFailed, DirectoryError, InvalidInput
from whatsap2p.net.pool import LinkPool
from whatsap2p.protocol import events as ev

__all__ = ["Sender", "check_message_id"]

log = logging.getLogger(__name__)

#: Failures a queued message waits out in the outbox (online, but not reached now: a
#: refusal of the whole connection too, which a receiver that cannot check our key at its
#: own server says until it can); the others (identity changed, rejected, a broken
#: protocol) are final. (A server that cannot be asked, for the lookup, queues every
#: recipient too.)
_WAITS = frozenset(
    {"unreachable", "timeout", "unconfirmed", "rate-limited", "no-room", "refused", "not-member"}
)

#: A message id as a send may give it: 32 lowercase hex digits (128 bits).
_MESSAGE_ID = re.compile(r"[0-9a-f]{32}")


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def check_message_id(message_id: object) -> str:
    """`message_id` if it is one a send may give; InvalidInput otherwise."""
    if not isinstance(message_id, str) or not _MESSAGE_ID.fullmatch(message_id):
        raise InvalidInput("a message id is 32 lowercase hexadecimal digits")
    return message_id


@dataclass(slots=True)
class _Outcome:
    """How a fan-out went: the report, the recipients online but not reached now (and
    why), whether the server could be asked at all, and the outbox's `mark` before it was."""

    report: DeliveryReport
    unreached: dict[str, str]
    looked_up: bool
    since: int
    #: Those queued whose copy went out but was not acknowledged: it may have arrived.
    unconfirmed: set[str] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class _Earlier:
    """What an earlier send of the same message id left: its timestamp (the message's),
    the recipients that have it and those whose copy waits in the outbox."""

    timestamp: str
    delivered: frozenset[str]
    queued: frozenset[str]

    def merge(self, report: DeliveryReport, order: tuple[str, ...]) -> None:
        """Count the recipients left out of this send in `report`, in `order`."""
        rank = {phone: i for i, phone in enumerate(order)}
        delivered = {*report.delivered, *(p for p in self.delivered if p in rank)}
        queued = {*report.queued, *(p for p in self.queued if p in rank)}
        report.delivered = sorted(delivered, key=rank.__getitem__)
        report.queued = sorted(queued, key=rank.__getitem__)


def _on_the_wire(group: Group | None) -> tuple[str | None, ev.GroupInfo | None]:
    """What a message to `group` says of it: a shared group's name and its members; a
    private list is ours alone (its members get direct messages)."""
    if group is None or group.private:
        return None, None
    return group.name, group.info()


class Sender:
    def __init__(
        self,
        me: str,
        book: AddressBook,
        trust: Trust,
        pool: LinkPool,
        history: History,
        outbox: Outbox,
        lookup: Callable[[list[str]], Awaitable[dict[str, ev.PeerAddress]]],
        watch_outbox: Callable[[], Awaitable[object]],
        limits: Limits,
    ) -> None:
        self._me = me
        self._book = book
        self._trust = trust
        self._pool = pool
        self._history = history
        self._outbox = outbox
        self._lookup = lookup
        self._watch_outbox = watch_outbox
        self._limits = limits
        #: The ids of the sends under way that named theirs: a second send of one
        #: (a retry made before the first ended) waits for the first.
        self._sending: dict[str, asyncio.Event] = {}

    async def send_text(
        self, target: str, text: str, queue: bool = False, message_id: str | None = None
    ) -> DeliveryReport:
        """Send `text`; under `message_id` if given (a retry of an earlier send of it)."""
        if not isinstance(text, str):
            raise InvalidInput("text must be a string")
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError as exc:  # e.g. a lone UTF-16 surrogate, "\ud800" in JSON
            raise InvalidInput(
                f"text is not valid Unicode (a lone surrogate at character {exc.start})"
            ) from exc
        if size > self._limits.max_text_bytes:
            raise InvalidInput(f"text longer than {self._limits.max_text_bytes} bytes")
        recipients = self._recipients(target)
        named = message_id is not None
        message_id = secrets.token_hex(16) if message_id is None else check_message_id(message_id)
        async with self._one_send_of(message_id):
            earlier = (
                self._earlier(message_id, recipients.group, text=text, to=recipients.phones)
                if named
                else None
            )
            to_send = self._to_send(recipients, earlier)
            if queue:
                self._outbox.check_room(to_send)
            message = ev.Text(
                message_id,
                _now() if earlier is None else earlier.timestamp,
                text,
                *_on_the_wire(recipients.group),
            )
            outcome = await self._send_text(message, to_send, queue)
            await self._record(outcome, recipients.group, message, text=text)
        if earlier is not None:
            earlier.merge(outcome.report, recipients.phones)
        return outcome.report

    async def send_change(
        self, group: Group, change: ev.GroupChange, to: tuple[str, ...], words: str
    ) -> DeliveryReport:
        """Tell `to` of a change of `group`'s members (`group` as it is after it), as a
        text saying it in `words`; queued for whoever cannot be reached now."""
        to = tuple(phone for phone in to if phone != self._me)
        message = ev.Text(secrets.token_hex(16), _now(), words, group.name, group.info(change))
        if to:
            self._outbox.check_room(Recipients(to, group))
        outcome = await self._send_text(message, Recipients(to, group), queue=True)
        await self._record(outcome, group, message, text=words)
        return outcome.report

    async def _send_text(self, message: ev.Text, to: Recipients, queue: bool) -> _Outcome:
        pool = self._pool

        def deliver(address: ev.PeerAddress) -> Awaitable[str]:
            return pool.send_text(address, message)

        return await self._fan_out(message.id, to, deliver, queue)

    async def send_photo(
        self,
        target: str,
        path: str | Path,
        queue: bool = False,
        progress: Callable[[int, int], None] | None = None,
        message_id: str | None = None,
    ) -> DeliveryReport:
        """Send a photo; `progress(sent, total)` follows the transfer, in bytes summed
        over the recipients being sent to (a resumed transfer starts part way). Under
        `message_id` if given (a retry of an earlier send of the same photo)."""
        recipients = self._recipients(target)
        named = message_id is not None
        message_id = secrets.token_hex(16) if message_id is None else check_message_id(message_id)
        photo: PhotoFile = await asyncio.to_thread(prepare_photo, Path(path), self._limits)
        async with self._one_send_of(message_id):
            earlier = None
            if named and self._history.sent(message_id):
                sha256 = await asyncio.to_thread(file_sha256, photo.path)
                earlier = self._earlier(
                    message_id, recipients.group, sha256=sha256, to=recipients.phones
                )
            to_send = self._to_send(recipients, earlier)
            if queue:
                self._outbox.check_room(to_send)
            offer = ev.PhotoOffer(
                message_id,
                _now() if earlier is None else earlier.timestamp,
                photo.filename,
                photo.size,
                photo.key,
                photo.mime,
                *_on_the_wire(recipients.group),
            )
            streams: dict[str, PhotoStream] = {}  # each hashes the whole file as it sends it

            def report_progress() -> None:
                assert progress is not None
                progress(sum(s.done for s in streams.values()), photo.size * len(streams))

            def stream_to(phone: str, offset: int) -> PhotoStream:
                stream = streams[phone] = PhotoStream(photo, self._limits.photo_chunk, offset)
                if progress is not None:
                    stream.on_progress = report_progress
                    report_progress()
                return stream

            pool = self._pool

            async def deliver(address: ev.PeerAddress) -> str:
                return await pool.send_photo(
                    address, offer, functools.partial(stream_to, address.phone)
                )

            outcome = await self._fan_out(offer.id, to_send, deliver, queue)
            report = outcome.report
            digests = [s.sha256 for s in streams.values() if s.sha256 is not None]
            if digests:
                photo = dataclasses.replace(photo, sha256=digests[0])
            else:  # sent to nobody (offline, queued, failed, or already had it): hash it now
                sha256 = await asyncio.to_thread(file_sha256, photo.path)
                photo = dataclasses.replace(photo, sha256=sha256)
            kept = photo
            if report.queued:
                kept = await asyncio.to_thread(self._outbox.keep_photo, photo, offer.id)
            await self._record(outcome, recipients.group, offer, photo=kept.describe())
        if earlier is not None:
            earlier.merge(report, recipients.phones)
        return report

    def _recipients(self, target: str) -> Recipients:
        recipients = self._book.resolve(target)
        group = recipients.group
        if group is not None and not group.private and self._me not in group.members:
            raise InvalidInput(f"you are no longer a member of group {group.name!r}")
        others = tuple(p for p in recipients.phones if p != self._me)
        if not others:
            if group is None:
                raise InvalidInput("you cannot send a message to yourself")
            raise InvalidInput(f"group {group.name!r} has no members besides you")
        return Recipients(others, group)

    @contextlib.asynccontextmanager
    async def _one_send_of(self, message_id: str) -> AsyncIterator[None]:
        """One send at a time of a message (another of the same id is a retry, which
        must know what the first did)."""
        while (other := self._sending.get(message_id)) is not None:
            await other.wait()
        done = self._sending[message_id] = asyncio.Event()
        try:
            yield
        finally:
            del self._sending[message_id]
            done.set()

    def _earlier(
        self,
        message_id: str,
        group: Group | None,
        text: str | None = None,
        sha256: str | None = None,
        to: tuple[str, ...] = (),
    ) -> _Earlier | None:
        """What an earlier send of `message_id` did, if there was one: it must have sent
        the same content (the `text`, or a photo of digest `sha256`) to the same place
        (the group, or the one number of `to`)."""
        rows = self._history.sent(message_id)
        if not rows:
            return None
        first = rows[0]
        if first.change is not None:
            raise InvalidInput(
                f"message {message_id} is the news of a change of a group's members: it is"
                " not sent again as a message (leave out the id to send a new one)"
            )
        if text is not None:
            same = first.photo is None and first.text == text
        else:
            same = first.photo is not None and first.photo.get("sha256") == sha256
        if not same:
            raise InvalidInput(
                f"message {message_id} was sent before with other content: a retry sends "
                "the same message (leave out the id to send a new one)"
            )
        group_id = None if group is None else group.id
        if first.group_id != group_id or (group is None and first.recipient not in to):
            where = f"group {first.group!r}" if first.group is not None else first.recipient
            raise InvalidInput(
                f"message {message_id} was sent before to {where}: a retry goes to the "
                "same place (leave out the id to send a new message)"
            )
        return _Earlier(
            first.timestamp,
            frozenset(row.recipient for row in rows if row.state == "delivered"),
            frozenset(row.recipient for row in rows if row.state == "queued"),
        )

    @staticmethod
    def _to_send(recipients: Recipients, earlier: _Earlier | None) -> Recipients:
        """The recipients this send goes to: not those an earlier send of the message
        reached, or left in the outbox."""
        if earlier is None:
            return recipients
        done = earlier.delivered | earlier.queued
        return Recipients(tuple(p for p in recipients.phones if p not in done), recipients.group)

    async def _fan_out(
        self,
        message_id: str,
        recipients: Recipients,
        deliver: Callable[[ev.PeerAddress], Awaitable[str]],
        queue: bool,
    ) -> _Outcome:
        """One lookup for all recipients, then every online one concurrently; the
        offline ones are reported `offline`, or `queued` for later when asked to, as are
        then those online but not reached now (kept apart too, with why). With `queue`,
        a server that cannot be asked (unreachable, or refusing for now) queues them all."""
        report = DeliveryReport(message_id)
        unreached: dict[str, str] = {}
        outcome = _Outcome(report, unreached, True, self._outbox.mark())
        if not recipients.phones:  # (an earlier send of it reached them all)
            return outcome
        try:
            online = await self._lookup(list(recipients.phones))
        except DirectoryError as exc:
            if not queue:
                raise
            log.info("queued %s for later: %s", message_id, exc)
            report.queued = list(recipients.phones)
            outcome.looked_up = False
            return outcome
        absent = [p for p in recipients.phones if p not in online]
        if queue:
            report.queued = absent
        else:
            report.offline = absent
        targets = []
        for phone in recipients.phones:
            if phone in online:
                refusal = self._trust.check(phone, online[phone].key)
                if refusal is None:
                    targets.append(phone)
                else:
                    report.failed.append(FailedDelivery.of(phone, refusal))
        if len(targets) == 1:  # the common case: no gather (its futures cost per message)
            outcomes = [await self._deliver_to(online[targets[0]], deliver)]
        else:
            sends = (self._deliver_to(online[p], deliver) for p in targets)
            outcomes = await asyncio.gather(*sends)
        for phone, result in zip(targets, outcomes, strict=True):
            if isinstance(result, str):
                report.delivered.append(phone)
                report.routes[phone] = result
            elif queue and result.code in _WAITS:  # kept, and tried again later
                report.queued.append(phone)
                unreached[phone] = str(result)
                if result.code == "unconfirmed":
                    outcome.unconfirmed.add(phone)
            else:
                report.failed.append(FailedDelivery.of(phone, result))
        order = {phone: i for i, phone in enumerate(recipients.phones)}
        report.failed.sort(key=lambda failed: order[failed.phone])
        report.queued.sort(key=order.__getitem__)  # (the unreached came after the absent)
        return outcome

    @staticmethod
    async def _deliver_to(
        address: ev.PeerAddress, deliver: Callable[[ev.PeerAddress], Awaitable[str]]
    ) -> DeliveryFailed | str:
        """The route it went by when the peer acknowledged, else why it did not."""
        try:
            return await deliver(address)
        except DeliveryFailed as exc:
            log.info("delivery to %s failed: %s", address.phone, exc)
            return exc

    async def _record(
        self,
        outcome: _Outcome,
        group: Group | None,
        message: ev.Text | ev.PhotoOffer,
        text: str | None = None,
        photo: dict[str, object] | None = None,
    ) -> None:
        """The send in the history, a row per recipient; the queued ones handed to the
        outbox, which sees that each is tried (watched for, or tried again later)."""
        report = outcome.report
        delivered: tuple[State, str | None] = ("delivered", None)
        outcomes = dict.fromkeys(report.delivered, delivered)
        outcomes.update((phone, ("offline", None)) for phone in report.offline)
        outcomes.update((phone, ("queued", None)) for phone in report.queued)
        outcomes.update((failed.phone, ("failed", failed.error)) for failed in report.failed)
        if not outcomes:
            return
        codes = {failed.phone: failed.code for failed in report.failed}
        codes.update(dict.fromkeys(outcome.unconfirmed, "unconfirmed"))  # (queued: it may have)
        info = message.grp
        change = None if info is None or info.change is None else change_json(info.change)
        await self._history.store_sent(
            report.id,
            outcomes,
            None if group is None else group.name,
            message.timestamp,
            text,
            photo,
            codes,
            group_id=None if group is None else group.id,
            group_info=None if info is None else msgspec.json.encode(info).decode(),
            change=change,
        )
        if not report.queued:
            return
        self._outbox.kept(report.queued, outcome.unreached, outcome.since, outcome.looked_up)
        if outcome.looked_up and not self._outbox.watching(report.queued):
            await self._watch_outbox()  # (which tries those online again at once)
