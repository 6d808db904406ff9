"""Queued messages: kept in the history (state `queued`) for recipients who are offline,
delivered when the server says they came online, retried while they cannot be reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec

from whatsap2p.app.contacts import Recipients
from whatsap2p.app.events import QueuedDelivered, SessionEvent
from whatsap2p.app.history import History, HistoryEntry
from whatsap2p.app.photos import PhotoFile, PhotoStream, photo_key
from whatsap2p.app.storage import write_atomically
from whatsap2p.app.trust import Trust
from whatsap2p.background import Background
from whatsap2p.config import Limits, Timeouts
from whatsap2p.errors import (
    DeliveryFailed,
    DeliveryRejected,
    DirectoryError,
    InvalidInput,
    PeerFull,
    PeerNotMember,
    PeerThrottled,
    ServerUnreachable,
    StoreError,
    Unconfirmed,
)
from whatsap2p.net.directory_client import DirectoryClient
from whatsap2p.net.pool import LinkPool
from whatsap2p.protocol import events as ev

__all__ = ["Outbox"]

log = logging.getLogger(__name__)


class Outbox:
    def __init__(
        self,
        folder: Path,
        history: History,
        trust: Trust,
        pool: LinkPool,
        lookup: Callable[[list[str]], Awaitable[dict[str, ev.PeerAddress]]],
        publish: Callable[[SessionEvent], None],
        limits: Limits,
        timeouts: Timeouts,
        connected: Callable[[], bool] = lambda: True,
        member: Callable[[str, str], bool] = lambda group_id, phone: True,
    ) -> None:
        """`connected()`: whether we are registered at a server now (while we are not, the
        next registration's `watch` brings back what waits); `member(group_id, phone)`:
        whether `phone` is still a member of that group (a removed member is not given
        what was queued for it, save the news of its removal)."""
        self._folder = folder
        self._history = history
        self._trust = trust
        self._pool = pool
        self._lookup = lookup
        self._publish = publish
        self._limits = limits
        self._timeouts = timeouts
        self._connected = connected
        self._member = member
        self._count = history.count_queued()
        #: Deliveries running, one per recipient, and the retries waiting.
        self._flushing: dict[str, asyncio.Task[None]] = {}
        self._retries: dict[str, asyncio.TimerHandle] = {}
        self._retry_pause: dict[str, float] = {}
        self._retrying = Background(log)
        #: Numbers the server has been asked to watch on the current connection.
        self._watched: frozenset[str] = frozenset()
        #: Asks the server again to watch the outbox's recipients (Session's watch, with
        #: the numbers it watches for itself); a refused watch is asked again, later.
        self.rewatch: Callable[[], Awaitable[object]] | None = None
        self._rewatching: asyncio.Task[None] | None = None
        self._rewatch_pause = timeouts.outbox_retry_first
        #: A newer address of a recipient that came online while its delivery was under
        #: way (it restarted elsewhere): the next round goes there, at once.
        self._newer: dict[str, ev.PeerAddress] = {}
        #: The copies being handed over now, (message id, recipient): too late to cancel.
        self._delivering: set[tuple[str, str]] = set()
        #: How many times a recipient was said to come online, and when each last was
        #: (that count then) and where: a send that found it offline can tell whether it
        #: came online while its copy was being queued (and the push found nothing yet).
        self._pushes = 0
        self._came: dict[str, tuple[int, ev.PeerAddress]] = {}

    def entries(self) -> list[HistoryEntry]:
        return self._history.queued()

    def check_room(self, recipients: Recipients) -> None:
        limit = self._limits.max_outbox
        if self._count + len(recipients.phones) > limit:
            raise InvalidInput(f"the outbox is full ({limit} messages wait for delivery)")

    def keep_photo(self, photo: PhotoFile, message_id: str) -> PhotoFile:
        """A private copy of a queued photo (blocking: run it in a thread): the original
        may change or go away before it is delivered."""
        self._folder.mkdir(exist_ok=True)
        final = self._folder / f"{message_id}{photo.path.suffix or '.img'}"
        try:
            write_atomically(final, photo.path.read_bytes())
        except OSError as exc:
            raise StoreError(f"cannot keep the photo for later delivery: {exc.strerror}") from exc
        return dataclasses.replace(photo, path=final)

    def watching(self, phones: list[str]) -> bool:
        """Whether the server already watches all of `phones` for us."""
        return self._watched.issuperset(phones)

    def unwatched(self) -> None:
        """The connection to the server is lost, and the watches with it."""
        self._watched = frozenset()

    def mark(self) -> int:
        """Where the pushes are now (for `kept`)."""
        return self._pushes

    def kept(
        self, phones: list[str], unreached: dict[str, str], since: int, looked_up: bool
    ) -> None:
        """Copies for `phones` were queued (their rows are stored): make sure each is
        tried. `unreached`: those online but not reached (tried again later, and later);
        the others were offline when looked up after `since` (`mark`), or, not
        `looked_up`, could not be looked up at all (the server is unreachable)."""
        self._count += len(phones)
        for phone in phones:
            if phone in self._flushing or phone in self._retries:
                # its delivery under way reads the outbox again before it ends; or its
                # retry is set (another copy put it off: not further)
                continue
            if phone in unreached:
                self._retry_later(phone, unreached[phone])
            elif not looked_up:
                # Connected again already: its watch may have read the outbox before this
                # copy was stored; look it up. Not yet: the watch will see it.
                if self._connected():
                    self.retry(phone)
            else:
                came = self._came.get(phone)
                if came is not None and came[0] > since:  # online before it was stored
                    self.came_online(came[1])

    async def watch(
        self, directory: DirectoryClient | None, also: frozenset[str]
    ) -> dict[str, ev.PeerAddress]:
        """Ask the server to say when recipients of queued messages (and the numbers in
        `also`) come online; returns those online now, and starts delivering to them."""
        if directory is None or directory.closed.is_set():
            return {}  # done again when the connection is restored
        # (until the server answers, a send that queues asks for a watch of its own: this
        # one may have read the outbox before its copy was stored)
        self._watched = frozenset()
        queued = self._history.queued_phones()
        phones = sorted(set(queued) | also)
        try:
            online = await directory.watch(phones)
        except ServerUnreachable:
            return {}  # done again when the connection is restored
        except DirectoryError as exc:  # refused (rate-limited, say): asked again, later
            log.warning(
                "cannot watch the outbox recipients: %s; asking again in %.0f s",
                exc,
                self._rewatch_pause,
            )
            self._watch_later(self._rewatch_pause)
            self._rewatch_pause = min(self._rewatch_pause * 2, self._timeouts.outbox_retry_max)
            return {}
        self._rewatch_pause = self._timeouts.outbox_retry_first
        self._watched = frozenset(phones)
        for address in online.values():
            if address.phone in queued:
                self.came_online(address)
        return online

    def came_online(self, address: ev.PeerAddress) -> None:
        """`address`'s number is online: deliver what waits for it (if anything)."""
        phone = address.phone
        self._pushes += 1
        self._came[phone] = (self._pushes, address)
        if phone in self._flushing:
            self._newer[phone] = address
            return
        retry = self._retries.pop(phone, None)
        if retry is not None:
            retry.cancel()
        self._flushing[phone] = asyncio.create_task(self._flush(address), name=f"outbox-{phone}")

    def cancel(self, message_id: str) -> list[str]:
        """Take message `message_id` out of the outbox for the recipients it still waits
        for (not one being handed over right now); those recipients."""
        waiting = [e for e in self._history.sent(message_id) if e.state == "queued"]
        if waiting and waiting[0].change is not None:
            raise InvalidInput(
                f"message {message_id} is the news of a change of a group's members: it"
                " cannot be cancelled (without it, its members' views of the group would"
                " stay apart)"
            )
        phones = [e.recipient for e in waiting if (message_id, e.recipient) not in self._delivering]
        if not phones:
            if waiting:
                raise InvalidInput(
                    f"message {message_id} is being delivered now: too late to cancel it"
                )
            raise InvalidInput(f"no queued message {message_id} waits in the outbox")
        self._history.cancel(message_id, phones)
        self._count -= len(phones)
        self._drop_copy(waiting[0])
        return phones

    def drop_group(self, group_id: str, why: str) -> None:
        """We were removed from group `group_id`: the messages that wait for its members
        fail (not the news of a change: our own leave, say, still goes)."""
        for entry in self._history.queued():
            if entry.change is not None:
                continue
            if entry.group_id == group_id and (entry.id, entry.recipient) not in self._delivering:
                self._history.set_state(entry.id, entry.recipient, "failed", why, "not-member")
                self._count -= 1
                self._drop_copy(entry)

    def retry(self, phone: str) -> None:
        """Look `phone` up again now and deliver if it is online (e.g. its key was
        trusted since)."""
        self._retrying.start(self._retry(phone), f"trying the outbox for {phone} again")

    async def close(self) -> None:
        for handle in self._retries.values():
            handle.cancel()
        flushing = list(self._flushing.values())
        for task in flushing:
            task.cancel()
        await asyncio.gather(*flushing, return_exceptions=True)
        await self._retrying.close()

    # --- delivering --------------------------------------------------------------------------

    async def _flush(self, address: ev.PeerAddress) -> None:
        """Deliver everything queued for one recipient that is online, oldest first;
        again at once where it came online anew meanwhile, else later if it failed."""
        phone = address.phone
        try:
            await self._deliver_all(address)
        except DeliveryFailed as exc:
            if phone not in self._newer:
                self._retry_later(phone, str(exc))
        finally:
            del self._flushing[phone]
        newer = self._newer.pop(phone, None)
        if newer is not None:
            self.came_online(newer)

    async def _deliver_all(self, address: ev.PeerAddress) -> None:
        phone = address.phone
        if not self._history.queued(phone):
            return
        refusal = self._trust.check(phone, address.key)
        if refusal is not None:
            log.warning("outbox for %s waits: %s", phone, refusal)
            return  # until the user trusts the new key
        # A photo the recipient has no room or allowance for now waits for the next
        # try; what was queued after it goes on (a full disk never holds texts back);
        # so does a message of a group the recipient does not count us in (yet: it
        # may not have heard that we were added), for at most `not_member_wait`.
        later: dict[str, PeerFull | PeerThrottled | PeerNotMember] = {}
        while pending := [e for e in self._history.queued(phone) if e.id not in later]:
            for entry in pending:
                try:
                    await self._deliver(address, entry)
                except PeerNotMember as exc:
                    if self._waited_out(entry):
                        self._give_up(entry, str(exc))
                    else:
                        later[entry.id] = exc
                except (PeerFull, PeerThrottled) as exc:
                    if entry.photo is None:
                        raise
                    later[entry.id] = exc
        if later:
            raise next(iter(later.values()))
        self._retry_pause.pop(phone, None)

    async def _deliver(self, address: ev.PeerAddress, entry: HistoryEntry) -> None:
        phone = entry.recipient
        if not self._history.is_queued(entry.id, phone):
            return  # cancelled since the outbox was read
        handing = (entry.id, phone)
        self._delivering.add(handing)
        try:
            await self._hand_over(address, entry)
        finally:
            self._delivering.discard(handing)

    async def _hand_over(self, address: ev.PeerAddress, entry: HistoryEntry) -> None:
        phone = entry.recipient
        group = self._group_of(entry)
        if group is not None and group.change is None and not self._member(group.id, phone):
            why = "removed from the group before it could be delivered"
            self._history.set_state(entry.id, phone, "failed", why, "not-member")
            self._count -= 1
            self._drop_copy(entry)
            return
        name = None if group is None else entry.group
        try:
            if entry.photo is None:
                text = ev.Text(entry.id, entry.timestamp, entry.text or "", name, group)
                await self._pool.send_text(address, text)
            else:
                offer, stream_from = await asyncio.to_thread(self._queued_photo, entry, group)
                await self._pool.send_photo(address, offer, stream_from)
        except DeliveryRejected as exc:  # final: it will not be stored, however often we try
            self._history.set_state(entry.id, phone, "failed", str(exc), exc.code)
        except Unconfirmed:  # (still queued; but it may have arrived: a cancel says so)
            self._history.set_state(entry.id, phone, "queued", None, "unconfirmed")
            raise
        else:
            self._history.set_state(entry.id, phone, "delivered", None)
            self._publish(QueuedDelivered(entry.id, phone, entry.change is not None))
        self._count -= 1
        self._drop_copy(entry)

    def _waited_out(self, entry: HistoryEntry) -> bool:
        """Whether `entry` was sent (by our clock) `not_member_wait` ago or more."""
        try:
            sent = dt.datetime.fromisoformat(entry.timestamp).timestamp()
        except ValueError:
            return True
        return time.time() - sent >= self._timeouts.not_member_wait

    def _give_up(self, entry: HistoryEntry, why: str) -> None:
        """A copy refused `not-member` for too long: it fails."""
        self._history.set_state(entry.id, entry.recipient, "failed", why, "not-member")
        self._count -= 1
        self._drop_copy(entry)

    def _drop_copy(self, entry: HistoryEntry) -> None:
        """Remove a queued photo's private copy once no recipient waits for it."""
        if entry.photo is None or self._history.still_queued(entry.id):
            return
        kept = Path(str(entry.photo["path"]))
        if kept.parent == self._folder:
            with contextlib.suppress(OSError):
                kept.unlink()

    def _group_of(self, entry: HistoryEntry) -> ev.GroupInfo | None:
        """What a queued message said of its group when it was sent (None: direct, or to
        a private list, whose members get direct messages)."""
        if entry.group_id is None:
            return None
        info = self._history.sent_group(entry.id)
        return None if info is None else msgspec.json.decode(info, type=ev.GroupInfo)

    def _queued_photo(
        self, entry: HistoryEntry, group: ev.GroupInfo | None
    ) -> tuple[ev.PhotoOffer, Callable[[int], PhotoStream]]:
        """The offer of a queued photo, and its bytes (blocking: reads the photo's key)."""
        photo = entry.photo
        assert photo is not None
        kept = PhotoFile.from_description(photo)
        try:
            key = photo_key(kept.path, kept.size)
        except OSError as exc:
            raise DeliveryFailed(f"cannot read the queued photo: {exc.strerror}") from exc
        name = None if group is None else entry.group
        offer = ev.PhotoOffer(
            entry.id, entry.timestamp, kept.filename, kept.size, key, kept.mime, name, group
        )
        chunk = self._limits.photo_chunk
        return offer, lambda offset: PhotoStream(kept, chunk, offset)

    def retry_later(self, phone: str, reason: str) -> None:
        """A message was queued for `phone`, online but not reached now (`reason`)."""
        self._retry_later(phone, reason)

    def _retry_later(self, phone: str, reason: str) -> None:
        """The recipient is online but could not be reached: try again, less and less often."""
        pause = self._retry_pause.get(phone, self._timeouts.outbox_retry_first)
        self._retry_pause[phone] = min(pause * 2, self._timeouts.outbox_retry_max)
        log.info("outbox for %s: %s; retrying in %.0f s", phone, reason, pause)
        old = self._retries.pop(phone, None)
        if old is not None:
            old.cancel()
        loop = asyncio.get_running_loop()
        self._retries[phone] = loop.call_later(pause, self._retry_due, phone)

    def _retry_due(self, phone: str) -> None:
        self._retries.pop(phone, None)
        self.retry(phone)

    async def _retry(self, phone: str) -> None:
        try:
            online = await self._lookup([phone])
        except ServerUnreachable:
            return  # the next registration's watch brings it back
        except DirectoryError as exc:  # e.g. rate-limited: later
            self._retry_later(phone, str(exc))
            return
        if phone in online:
            self.came_online(online[phone])
        elif phone not in self._watched:  # offline, and the server was never asked: ask
            self._watch_later(0.0)
        # offline: the server's push will bring it back

    def _watch_later(self, pause: float) -> None:
        """Ask the server again, after `pause`, to watch the outbox's recipients (once,
        however many ask meanwhile)."""
        running = self._rewatching
        if self.rewatch is None or (
            running is not None and not running.done() and running is not asyncio.current_task()
        ):
            return
        rewatch = self.rewatch

        async def watch_again() -> None:
            await asyncio.sleep(pause)
            await rewatch()

        self._rewatching = self._retrying.start(
            watch_again(), "watching the outbox recipients again"
        )
