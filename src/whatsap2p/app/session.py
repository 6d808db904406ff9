"""The Session: one user module's life — register, look up, send, receive.

Every UI (JSON-RPC, plain lines, terminal UI) drives a Session and reads its `events`
queue; none of them touches a socket.

Who is who: the module proves its own key (identity.key) to the server and to peers.
A send only completes a handshake with the key the server returned for the number and,
once a number's key is pinned (trust.json, trust on first use), only with that key. A
receiver checks that the key a sender proved is the one bound to the number it claims.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import functools
import logging
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from whatsap2p.app.contacts import FILE_NAME as CONTACTS_FILE
from whatsap2p.app.contacts import AddressBook, Recipients
from whatsap2p.app.events import (
    DeliveryReport,
    FailedDelivery,
    IdentityChanged,
    PhotoReceived,
    PresenceChanged,
    QueuedDelivered,
    ServerConnectionChanged,
    SessionEvent,
    TextReceived,
)
from whatsap2p.app.history import FILE_NAME as HISTORY_FILE
from whatsap2p.app.history import History, HistoryEntry, State
from whatsap2p.app.photos import (
    IncomingPhoto,
    PhotoFile,
    PhotoStore,
    PhotoStream,
    file_sha256,
    photo_key,
    prepare_photo,
)
from whatsap2p.app.storage import DataDirLock, write_atomically
from whatsap2p.app.trust import FILE_NAME as TRUST_FILE
from whatsap2p.app.trust import TrustStore
from whatsap2p.config import Limits, Timeouts
from whatsap2p.errors import (
    CannotListen,
    DeliveryFailed,
    DeliveryRejected,
    DirectoryError,
    InvalidInput,
    PeerIdentityChanged,
    PeerRefused,
    ServerUnreachable,
    StoreError,
    UnknownTarget,
)
from whatsap2p.keyfile import load_or_create_key
from whatsap2p.net.directory_client import DirectoryClient
from whatsap2p.net.peers import LinkPool, PeerLink, PeerListener
from whatsap2p.phone import DEFAULT_REGION, normalise_phone
from whatsap2p.protocol import events as ev
from whatsap2p.protocol.keys import StaticKey, fingerprint

__all__ = ["IDENTITY_FILE", "Session", "SessionConfig"]

log = logging.getLogger(__name__)

IDENTITY_FILE = "identity.key"


@dataclass(frozen=True, slots=True)
class SessionConfig:
    phone: str  # E.164
    server_host: str
    server_port: int
    data_dir: Path
    listen_host: str = "0.0.0.0"
    listen_port: int = 0
    advertise: str | None = None
    region: str = DEFAULT_REGION
    #: Refuse any server whose key does not have this fingerprint.
    server_fingerprint: str | None = None
    limits: Limits = field(default_factory=Limits)
    timeouts: Timeouts = field(default_factory=Timeouts)
    #: More servers of the same deployment (sharing one directory and one key), tried in
    #: turn after (server_host, server_port) when it does not answer or is lost.
    more_servers: tuple[tuple[str, int], ...] = ()

    @property
    def servers(self) -> tuple[tuple[str, int], ...]:
        return ((self.server_host, self.server_port), *self.more_servers)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


class Session:
    """Use as `async with Session(config) as session:`; it is registered inside."""

    def __init__(self, config: SessionConfig) -> None:
        self.config = config
        self.phone = config.phone
        self.book = AddressBook.load(
            config.data_dir / CONTACTS_FILE, config.region, config.limits.max_name_chars
        )
        self.trust = TrustStore.load(config.data_dir / TRUST_FILE)
        self.photos = PhotoStore(config.data_dir / "photos", config.limits)
        self.events: asyncio.Queue[SessionEvent] = asyncio.Queue()
        self.listen_address: tuple[str, int] | None = None
        self.published: ev.Registered | None = None
        self.identity: StaticKey | None = None
        self.history: History | None = None
        self._listener: PeerListener | None = None
        #: Links to peers, kept a few seconds for the next message to the same peer.
        self._links: LinkPool | None = None
        self._directory: DirectoryClient | None = None
        self._lock = DataDirLock(config.data_dir)
        #: Keys that differ from the pinned ones, waiting for the user's `trust`.
        self._changed: dict[str, bytes] = {}
        self._supervisor: asyncio.Task[None] | None = None
        #: Outbox deliveries running, one per recipient, and the retries waiting.
        self._flushing: dict[str, asyncio.Task[None]] = {}
        self._retries: dict[str, asyncio.TimerHandle] = {}
        self._retry_pause: dict[str, float] = {}
        #: Numbers the server has been asked to watch on the current connection.
        self._watched: frozenset[str] = frozenset()
        #: The server of `config.servers` we use (or last used, or try next).
        self._server_index = 0
        #: Numbers whose coming online the UI wants to hear of (PresenceChanged).
        self._presence: frozenset[str] = frozenset()
        self._queued_count = 0

    @property
    def server_connected(self) -> bool:
        return self._directory is not None and not self._directory.closed.is_set()

    @property
    def changed_keys(self) -> frozenset[str]:
        """Numbers that proved a key other than the pinned one, waiting for `trust_key`."""
        return frozenset(self._changed)

    @property
    def fingerprint(self) -> str:
        assert self.identity is not None, "start() the session first"
        return self.identity.fingerprint

    async def __aenter__(self) -> Session:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Take the data dir, listen for peers, then register (reachable once listed)."""
        config = self.config
        try:
            config.data_dir.mkdir(parents=True, exist_ok=True)
            if not self._lock.acquire():
                raise StoreError(
                    f"data dir {config.data_dir} is in use by another whatsap2p module"
                )
            # Only with the lock held: this clears half-received photos of earlier runs.
            self.photos.open(time.time(), config.timeouts.partial_keep)
            self.identity = load_or_create_key(config.data_dir / IDENTITY_FILE)
            self.history = History(
                config.data_dir / HISTORY_FILE, self.phone, config.limits.max_history
            )
            self._queued_count = self.history.count_queued()
        except OSError as exc:
            self._lock.release()
            raise StoreError(f"cannot use data dir {config.data_dir}: {exc.strerror}") from exc
        except BaseException:
            self._lock.release()
            raise
        self._listener = PeerListener(_Inbound(self), self.identity, config.limits, config.timeouts)
        self._links = LinkPool(self.phone, self.identity, config.limits, config.timeouts)
        try:
            self.listen_address = await self._listener.start(config.listen_host, config.listen_port)
        except OSError as exc:
            self._lock.release()
            raise CannotListen(
                f"cannot listen on {config.listen_host}:{config.listen_port}: {exc.strerror}"
            ) from exc
        try:
            await self._register()
        except BaseException:
            await self.close()
            raise
        self._supervisor = asyncio.create_task(self._stay_registered(), name="stay-registered")
        self._show_again()

    def _show_again(self) -> None:
        """Publish what was stored but never shown before the last run ended."""
        assert self.history is not None
        for entry in self.history.unshown():
            name = self.book.name_of(entry.sender)
            if entry.photo is None:
                self._publish(
                    TextReceived(
                        entry.id, entry.sender, name, entry.group, entry.timestamp, entry.text or ""
                    )
                )
            else:
                stored = PhotoFile.from_description(entry.photo)
                self._publish(
                    PhotoReceived(
                        entry.id, entry.sender, name, entry.group, entry.timestamp, stored
                    )
                )

    def shown(self, event: TextReceived | PhotoReceived) -> None:
        """The UI has shown `event`: it will not be shown again after a restart."""
        if self.history is not None:
            self.history.mark_shown(event.id, event.sender)

    async def _register(self, first: int = 0) -> None:
        """Connect to a server and register (replacing any earlier connection): the
        servers of the list in turn from `first`, until one answers."""
        config = self.config
        servers = config.servers
        error: DirectoryError | None = None
        for step in range(len(servers)):
            index = (first + step) % len(servers)
            try:
                await self._register_at(*servers[index])
            except ServerUnreachable as exc:
                if len(servers) > 1:
                    log.info("server %s:%s: %s", *servers[index], exc)
                error = exc
                continue
            self._server_index = index
            return
        assert error is not None
        raise error

    async def _register_at(self, host: str, port: int) -> None:
        config = self.config
        assert self.identity is not None
        assert self.listen_address is not None
        directory = await DirectoryClient.connect(
            host,
            port,
            self.identity,
            server_fingerprint=config.server_fingerprint,
            limits=config.limits,
            timeouts=config.timeouts,
        )
        try:
            self.published = await directory.register(
                self.phone, self.listen_address[1], config.advertise
            )
        except BaseException:
            await directory.close()
            raise
        self._directory = directory
        directory.on_online = self._came_online
        self._watched = frozenset()
        await self._watch_outbox()

    async def _stay_registered(self) -> None:
        """When the server connection ends, say so, and reconnect with backoff and jitter
        until registered again (after a server restart: within a couple of seconds)."""
        timeouts = self.config.timeouts
        while True:
            assert self._directory is not None
            await self._directory.closed.wait()
            log.warning("lost the connection to the server; reconnecting")
            self._publish(ServerConnectionChanged("lost"))
            pause = timeouts.reconnect_first
            while True:
                # Jitter spreads the reconnections of many modules after a server restart.
                await asyncio.sleep(pause * random.uniform(0.5, 1.0))
                try:
                    # the next server first: the one just lost may be down for good
                    await self._register(self._server_index + 1)
                except DirectoryError as exc:
                    log.info("reconnecting: %s", exc)
                    pause = min(pause * 2, timeouts.reconnect_max)
                    continue
                break
            log.warning("connected to the server again")
            self._publish(ServerConnectionChanged("restored"))

    async def close(self) -> None:
        """Unregister (if the server is still there) and stop listening."""
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
        for handle in self._retries.values():
            handle.cancel()
        for task in list(self._flushing.values()):
            task.cancel()
        await asyncio.gather(*self._flushing.values(), return_exceptions=True)
        if self._directory is not None:
            if self.published is not None and not self._directory.closed.is_set():
                with contextlib.suppress(Exception):
                    await self._directory.unregister()
            await self._directory.close()
        if self._links is not None:
            await self._links.close()
        if self._listener is not None:
            await self._listener.close()
        if self.history is not None:
            self.history.close()
            self.history = None
        self._lock.release()

    # --- directory and trust ------------------------------------------------------------

    async def lookup(self, phones: list[str]) -> dict[str, ev.PeerAddress]:
        assert self._directory is not None, "start() the session first"
        if self._directory.closed.is_set():
            raise ServerUnreachable("not connected to the server (reconnecting)")
        return await self._directory.lookup(phones)

    async def status(self, target: str) -> dict[str, bool]:
        """Online or not, for every phone `target` stands for."""
        recipients = self.book.resolve(target)
        online = await self.lookup(list(recipients.phones))
        return {phone: phone in online for phone in recipients.phones}

    async def trust_key(self, phone_text: str) -> tuple[str, str]:
        """Accept the key `phone` now has (the changed one we saw, or the one the server
        holds for it now); returns (phone, fingerprint)."""
        phone = normalise_phone(phone_text, self.config.region)
        key = self._changed.pop(phone, None)
        if key is None:
            online = await self.lookup([phone])
            key = online[phone].key if phone in online else self.trust.pinned(phone)
        if key is None:
            raise InvalidInput(f"no key known for {phone}: it has not been seen online")
        self.trust.pin(phone, key)
        assert self.history is not None
        if phone in self.history.queued_phones():  # its outbox waited for this
            asyncio.get_running_loop().create_task(self._retry(phone))
        return phone, fingerprint(key)

    def _check_pinned(self, phone: str, key: bytes) -> PeerIdentityChanged | None:
        """None if `key` may be used for `phone` (pinning it on first use), else why not."""
        pinned = self.trust.pinned(phone)
        if pinned is None:
            self.trust.pin(phone, key)
            return None
        if pinned == key:
            return None
        if self._changed.get(phone) != key:
            self._changed[phone] = key
            self._publish(IdentityChanged(phone, fingerprint(key)))
        return PeerIdentityChanged(
            f"identity changed: {phone} now proves key {fingerprint(key)}, not the "
            f"pinned {fingerprint(pinned)}; nothing was sent (use trust to accept it)"
        )

    # --- sending --------------------------------------------------------------------------

    async def send_text(self, target: str, text: str, queue: bool = False) -> DeliveryReport:
        if not isinstance(text, str):
            raise InvalidInput("text must be a string")
        if len(text.encode("utf-8", "surrogatepass")) > self.config.limits.max_text_bytes:
            raise InvalidInput(f"text longer than {self.config.limits.max_text_bytes} bytes")
        recipients = self._recipients(target)
        self._check_outbox_room(recipients, queue)
        message = ev.Text(secrets.token_hex(16), _now(), text, recipients.group)

        links = self._links
        assert links is not None

        def deliver(address: ev.PeerAddress) -> Awaitable[None]:
            return links.send_text(address, message)

        report = await self._fan_out(message.id, recipients, deliver, queue)
        await self._record_sent(report, recipients.group, message.timestamp, text=text)
        if not self._watched.issuperset(report.queued):
            await self._watch_outbox()
        return report

    async def send_photo(
        self,
        target: str,
        path: str | Path,
        queue: bool = False,
        progress: Callable[[int, int], None] | None = None,
    ) -> DeliveryReport:
        """Send a photo; `progress(sent, total)` follows the transfer, in bytes summed
        over the recipients being sent to (a resumed transfer starts part way)."""
        recipients = self._recipients(target)
        self._check_outbox_room(recipients, queue)
        photo: PhotoFile = await asyncio.to_thread(prepare_photo, Path(path), self.config.limits)
        offer = ev.PhotoOffer(
            secrets.token_hex(16),
            _now(),
            photo.filename,
            photo.size,
            photo.key,
            photo.mime,
            recipients.group,
        )
        streams: dict[str, PhotoStream] = {}  # each hashes the whole file as it sends it

        def report_progress() -> None:
            assert progress is not None
            progress(sum(s.done for s in streams.values()), photo.size * len(streams))

        def stream_to(phone: str, offset: int) -> PhotoStream:
            stream = streams[phone] = PhotoStream(photo, self.config.limits.photo_chunk, offset)
            if progress is not None:
                stream.on_progress = report_progress
                report_progress()
            return stream

        links = self._links
        assert links is not None

        async def deliver(address: ev.PeerAddress) -> None:
            stream_from = functools.partial(stream_to, address.phone)
            await links.deliver(address, lambda link: link.send_photo(offer, stream_from))

        report = await self._fan_out(offer.id, recipients, deliver, queue)
        digests = [s.sha256 for s in streams.values() if s.sha256 is not None]
        if digests:
            photo = dataclasses.replace(photo, sha256=digests[0])
        else:  # sent to nobody (offline, queued, failed, or already had it): hash it now
            sha256 = await asyncio.to_thread(file_sha256, photo.path)
            photo = dataclasses.replace(photo, sha256=sha256)
        kept = photo
        if report.queued:  # the original may change or go away before it is delivered
            kept = await asyncio.to_thread(self._keep_for_outbox, photo, offer.id)
        await self._record_sent(report, recipients.group, offer.timestamp, photo=kept.describe())
        if not self._watched.issuperset(report.queued):
            await self._watch_outbox()
        return report

    async def _record_sent(
        self,
        report: DeliveryReport,
        group: str | None,
        timestamp: str,
        text: str | None = None,
        photo: dict[str, object] | None = None,
    ) -> None:
        assert self.history is not None
        delivered: tuple[State, str | None] = ("delivered", None)
        outcomes = dict.fromkeys(report.delivered, delivered)
        outcomes.update((phone, ("offline", None)) for phone in report.offline)
        outcomes.update((phone, ("queued", None)) for phone in report.queued)
        outcomes.update((failed.phone, ("failed", failed.error)) for failed in report.failed)
        await self.history.store_sent(report.id, outcomes, group, timestamp, text, photo)
        self._queued_count += len(report.queued)

    def conversation(self, target: str, limit: int) -> list[HistoryEntry]:
        """Newest first: the messages with a contact or number, or of a group (ours, or
        one we were messaged in: group names are chosen by their senders)."""
        assert self.history is not None
        try:
            recipients = self.book.resolve(target)
        except UnknownTarget:
            if not self.history.has_group(target):
                raise
            return self.history.entries(group=target, limit=limit)
        if recipients.group is not None:
            return self.history.entries(group=recipients.group, limit=limit)
        (phone,) = recipients.phones
        return self.history.entries(phone=phone, limit=limit)

    def _recipients(self, target: str) -> Recipients:
        recipients = self.book.resolve(target)
        others = tuple(p for p in recipients.phones if p != self.phone)
        if not others:
            if recipients.group is None:
                raise InvalidInput("you cannot send a message to yourself")
            raise InvalidInput(f"group {recipients.group!r} has no members besides you")
        return Recipients(others, recipients.group)

    async def _fan_out(
        self,
        message_id: str,
        recipients: Recipients,
        deliver: Callable[[ev.PeerAddress], Awaitable[None]],
        queue: bool = False,
    ) -> DeliveryReport:
        """One lookup for all recipients, then every online one concurrently; the
        offline ones are reported `offline`, or `queued` for later when asked to."""
        online = await self.lookup(list(recipients.phones))
        report = DeliveryReport(message_id)
        absent = [p for p in recipients.phones if p not in online]
        if queue:
            report.queued = absent
        else:
            report.offline = absent
        targets = []
        for phone in recipients.phones:
            if phone in online:
                refusal = self._check_pinned(phone, online[phone].key)
                if refusal is None:
                    targets.append(phone)
                else:
                    report.failed.append(FailedDelivery.of(phone, refusal))
        if len(targets) == 1:  # the common case: no gather (its futures cost per message)
            outcomes = [await self._deliver_to(online[targets[0]], deliver)]
        else:
            sends = (self._deliver_to(online[p], deliver) for p in targets)
            outcomes = await asyncio.gather(*sends)
        for phone, error in zip(targets, outcomes, strict=True):
            if error is None:
                report.delivered.append(phone)
            else:
                report.failed.append(FailedDelivery.of(phone, error))
        order = {phone: i for i, phone in enumerate(recipients.phones)}
        report.failed.sort(key=lambda failure: order[failure.phone])
        return report

    async def _deliver_to(
        self, address: ev.PeerAddress, deliver: Callable[[ev.PeerAddress], Awaitable[None]]
    ) -> DeliveryFailed | None:
        """None when the peer acknowledged, else why it did not."""
        try:
            await deliver(address)
        except DeliveryFailed as exc:
            log.info("delivery to %s failed: %s", address.phone, exc)
            return exc
        return None

    # --- the outbox -------------------------------------------------------------------------

    def outbox(self) -> list[HistoryEntry]:
        assert self.history is not None
        return self.history.queued()

    def _check_outbox_room(self, recipients: Recipients, queue: bool) -> None:
        assert self.history is not None
        limit = self.config.limits.max_outbox
        if queue and self._queued_count + len(recipients.phones) > limit:
            raise InvalidInput(f"the outbox is full ({limit} messages wait for delivery)")

    def _keep_for_outbox(self, photo: PhotoFile, message_id: str) -> PhotoFile:
        """A private copy of a queued photo (blocking: run it in a thread)."""
        folder = self.config.data_dir / "outbox"
        folder.mkdir(exist_ok=True)
        final = folder / f"{message_id}{photo.path.suffix or '.img'}"
        try:
            write_atomically(final, photo.path.read_bytes())
        except OSError as exc:
            raise StoreError(f"cannot keep the photo for later delivery: {exc.strerror}") from exc
        return dataclasses.replace(photo, path=final)

    async def _watch_outbox(self) -> dict[str, ev.PeerAddress]:
        """Ask the server to say when recipients of queued messages (and the numbers the
        UI watches) come online; returns those online now."""
        assert self.history is not None
        directory = self._directory
        if directory is None or directory.closed.is_set():
            return {}  # done again when the connection is restored
        queued = self.history.queued_phones()
        phones = sorted(set(queued) | self._presence)
        try:
            online = await directory.watch(phones)
        except DirectoryError as exc:
            log.warning("cannot watch the outbox recipients: %s", exc)
            return {}
        self._watched = frozenset(phones)
        for address in online.values():
            if address.phone in queued:
                self._schedule_flush(address)
        return online

    def _came_online(self, address: ev.PeerAddress) -> None:
        """The server's push: a watched number came online."""
        if address.phone in self._presence:
            self._publish(PresenceChanged(address.phone, True))
        self._schedule_flush(address)

    async def watch_presence(self, phones: Iterable[str]) -> dict[str, bool]:
        """Be told (PresenceChanged) when any of `phones` comes online, instead of the
        numbers given before; returns which of them are online now."""
        wanted = frozenset(normalise_phone(p, self.config.region) for p in phones)
        self._presence = wanted
        online = await self._watch_outbox()
        return {phone: phone in online for phone in sorted(wanted)}

    async def presence(self, phones: Iterable[str]) -> dict[str, bool]:
        """Which of `phones` are online now (one lookup)."""
        wanted = sorted({normalise_phone(p, self.config.region) for p in phones})
        online = await self.lookup(wanted) if wanted else {}
        return {phone: phone in online for phone in wanted}

    def _schedule_flush(self, address: ev.PeerAddress) -> None:
        if address.phone not in self._flushing:
            task = asyncio.create_task(self._flush(address), name=f"outbox-{address.phone}")
            self._flushing[address.phone] = task

    async def _flush(self, address: ev.PeerAddress) -> None:
        """Deliver everything queued for one recipient that is online, over one connection."""
        assert self.history is not None
        assert self.identity is not None
        phone = address.phone
        try:
            pending = self.history.queued(phone)
            if not pending:
                return
            refusal = self._check_pinned(phone, address.key)
            if refusal is not None:
                log.warning("outbox for %s waits: %s", phone, refusal)
                return  # until the user trusts the new key
            config = self.config
            link = await PeerLink.open(
                address, self.phone, self.identity, config.limits, config.timeouts
            )
            async with link:
                while pending:
                    for entry in pending:
                        await self._deliver_queued(link, entry)
                    pending = self.history.queued(phone)
            self._retry_pause.pop(phone, None)
        except DeliveryFailed as exc:
            self._retry_later(phone, str(exc))
        finally:
            self._flushing.pop(phone, None)

    async def _deliver_queued(self, link: PeerLink, entry: HistoryEntry) -> None:
        assert self.history is not None
        phone = entry.recipient
        try:
            if entry.photo is None:
                await link.send_text(
                    ev.Text(entry.id, entry.timestamp, entry.text or "", entry.group)
                )
            else:
                await link.send_photo(*await asyncio.to_thread(self._queued_photo, entry))
        except DeliveryRejected as exc:  # final: it will not be stored, however often we try
            self.history.set_state(entry.id, phone, "failed", str(exc))
        else:
            self.history.set_state(entry.id, phone, "delivered", None)
            self._publish(QueuedDelivered(entry.id, phone))
        self._queued_count -= 1
        self._drop_outbox_copy(entry)

    def _drop_outbox_copy(self, entry: HistoryEntry) -> None:
        """Remove a queued photo's private copy once no recipient waits for it."""
        assert self.history is not None
        if entry.photo is None or self.history.still_queued(entry.id):
            return
        kept = Path(str(entry.photo["path"]))
        if kept.parent == self.config.data_dir / "outbox":
            with contextlib.suppress(OSError):
                kept.unlink()

    def _queued_photo(
        self, entry: HistoryEntry
    ) -> tuple[ev.PhotoOffer, Callable[[int], PhotoStream]]:
        """The offer of a queued photo, and its bytes (blocking: reads the photo's key)."""
        photo = entry.photo
        assert photo is not None
        kept = PhotoFile.from_description(photo)
        try:
            key = photo_key(kept.path, kept.size)
        except OSError as exc:
            raise DeliveryFailed(f"cannot read the queued photo: {exc.strerror}") from exc
        offer = ev.PhotoOffer(
            entry.id, entry.timestamp, kept.filename, kept.size, key, kept.mime, entry.group
        )
        chunk = self.config.limits.photo_chunk
        return offer, lambda offset: PhotoStream(kept, chunk, offset)

    def _retry_later(self, phone: str, reason: str) -> None:
        """The recipient is online but could not be reached: try again, less and less often."""
        timeouts = self.config.timeouts
        pause = self._retry_pause.get(phone, timeouts.outbox_retry_first)
        self._retry_pause[phone] = min(pause * 2, timeouts.outbox_retry_max)
        log.info("outbox for %s: %s; retrying in %.0f s", phone, reason, pause)
        old = self._retries.pop(phone, None)
        if old is not None:
            old.cancel()
        loop = asyncio.get_running_loop()
        self._retries[phone] = loop.call_later(
            pause, lambda: asyncio.ensure_future(self._retry(phone))
        )

    async def _retry(self, phone: str) -> None:
        self._retries.pop(phone, None)
        with contextlib.suppress(DirectoryError):
            online = await self.lookup([phone])
            if phone in online:
                self._schedule_flush(online[phone])
        # offline: the server's push will bring it back

    # --- receiving ------------------------------------------------------------------------

    def _publish(self, event: SessionEvent) -> None:
        self.events.put_nowait(event)


class _Inbound:
    """What the peer listener calls: checks senders, turns messages into events."""

    def __init__(self, session: Session) -> None:
        self._session = session

    async def sender_proved(self, sender: str, key: bytes) -> None:
        session = self._session
        try:
            online = await session.lookup([sender])
        except DirectoryError as exc:
            raise PeerRefused(f"cannot check the sender's key: {exc}") from exc
        if sender not in online or online[sender].key != key:
            raise PeerRefused(f"the sender's key is not the one bound to {sender}")
        refusal = session._check_pinned(sender, key)
        if refusal is not None:
            raise refusal

    def text_received(self, sender: str, text: ev.Text) -> Awaitable[None]:
        session = self._session
        assert session.history is not None
        # Stored before it is acknowledged; a copy already stored is acknowledged again
        # (the sender retried) but not shown twice.
        stored = session.history.store_received(
            text.id, sender, text.group, text.timestamp, text=text.body
        )
        return self._show_once_stored(stored, sender, text)

    async def _show_once_stored(
        self, stored: asyncio.Future[bool], sender: str, text: ev.Text
    ) -> None:
        session = self._session
        if await stored:
            name = session.book.name_of(sender)
            session._publish(
                TextReceived(text.id, sender, name, text.group, text.timestamp, text.body)
            )

    def photo_offered(self, sender: str, offer: ev.PhotoOffer) -> _PhotoSink | None:
        session = self._session
        assert session.history is not None
        if session.history.was_received(offer.id, sender):
            return None  # already stored: acknowledge without taking the bytes again
        return _PhotoSink(session, sender, offer, session.photos.begin(sender, offer))


class _PhotoSink:
    def __init__(
        self, session: Session, sender: str, offer: ev.PhotoOffer, incoming: IncomingPhoto
    ) -> None:
        self._session = session
        self._sender = sender
        self._offer = offer
        self._incoming = incoming
        self.offset = incoming.offset

    async def write(self, data: memoryview) -> None:
        await self._incoming.write(data)

    async def complete(self, sha256: str) -> None:
        stored = await asyncio.to_thread(self._incoming.finish, sha256)
        offer, session = self._offer, self._session
        assert session.history is not None
        if not await session.history.store_received(
            offer.id, self._sender, offer.group, offer.timestamp, photo=stored.describe()
        ):
            stored.path.unlink()  # the same photo arrived twice at once: keep one
            return
        name = session.book.name_of(self._sender)
        session._publish(
            PhotoReceived(offer.id, self._sender, name, offer.group, offer.timestamp, stored)
        )

    def interrupted(self) -> None:
        self._incoming.interrupted()
