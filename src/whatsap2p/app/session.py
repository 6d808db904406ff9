"""The Session: one user module's life — register, look up, send, receive.

Every UI (JSON-RPC, plain lines, terminal UI) drives a Session and reads its `received`
queue; none of them touches a socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from whatsap2p.app.contacts import FILE_NAME, AddressBook, Recipients
from whatsap2p.app.events import DeliveryReport, PhotoReceived, Received, TextReceived
from whatsap2p.app.photos import (
    IncomingPhoto,
    OutgoingPhoto,
    PhotoStore,
    prepare_photo,
    read_chunks,
)
from whatsap2p.app.storage import DataDirLock
from whatsap2p.config import Limits, Timeouts
from whatsap2p.errors import CannotListen, DeliveryFailed, InvalidInput, StoreError
from whatsap2p.net.directory_client import DirectoryClient
from whatsap2p.net.peers import PeerLink, PeerListener
from whatsap2p.phone import DEFAULT_REGION
from whatsap2p.protocol import events as ev

__all__ = ["Session", "SessionConfig"]

log = logging.getLogger(__name__)


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
    limits: Limits = field(default_factory=Limits)
    timeouts: Timeouts = field(default_factory=Timeouts)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


class Session:
    """Use as `async with Session(config) as session:`; it is registered inside."""

    def __init__(self, config: SessionConfig) -> None:
        self.config = config
        self.phone = config.phone
        self.book = AddressBook.load(
            config.data_dir / FILE_NAME, config.region, config.limits.max_name_chars
        )
        self.photos = PhotoStore(config.data_dir / "photos", config.limits)
        self.received: asyncio.Queue[Received] = asyncio.Queue()
        self.listen_address: tuple[str, int] | None = None
        self.published: ev.Registered | None = None
        self._listener = PeerListener(_Inbound(self), config.limits, config.timeouts)
        self._lock = DataDirLock(config.data_dir)
        self._directory: DirectoryClient | None = None

    @property
    def server_lost(self) -> asyncio.Event:
        """Set when the connection to the server ends (and with it the registration)."""
        assert self._directory is not None
        return self._directory.closed

    async def __aenter__(self) -> Session:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Listen for peers, then register at the server (so we are reachable when listed)."""
        config = self.config
        try:
            config.data_dir.mkdir(parents=True, exist_ok=True)
            if not self._lock.acquire():
                raise StoreError(
                    f"data dir {config.data_dir} is in use by another whatsap2p module"
                )
            # Only with the lock held: this clears half-received photos of earlier runs.
            self.photos.open()
        except OSError as exc:
            self._lock.release()
            raise StoreError(f"cannot use data dir {config.data_dir}: {exc.strerror}") from exc
        try:
            self.listen_address = await self._listener.start(config.listen_host, config.listen_port)
        except OSError as exc:
            self._lock.release()
            raise CannotListen(
                f"cannot listen on {config.listen_host}:{config.listen_port}: {exc.strerror}"
            ) from exc
        try:
            self._directory = await DirectoryClient.connect(
                config.server_host, config.server_port, config.limits, config.timeouts
            )
            self.published = await self._directory.register(
                self.phone, self.listen_address[1], config.advertise
            )
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Unregister (if the server is still there) and stop listening."""
        if self._directory is not None:
            if self.published is not None and not self._directory.closed.is_set():
                with contextlib.suppress(Exception):
                    await self._directory.unregister()
            await self._directory.close()
        await self._listener.close()
        self._lock.release()

    # --- directory ------------------------------------------------------------------------

    async def lookup(self, phones: list[str]) -> dict[str, ev.PeerAddress]:
        assert self._directory is not None, "start() the session first"
        return await self._directory.lookup(phones)

    async def status(self, target: str) -> dict[str, bool]:
        """Online or not, for every phone `target` stands for."""
        recipients = self.book.resolve(target)
        online = await self.lookup(list(recipients.phones))
        return {phone: phone in online for phone in recipients.phones}

    # --- sending --------------------------------------------------------------------------

    async def send_text(self, target: str, text: str) -> DeliveryReport:
        if not isinstance(text, str):
            raise InvalidInput("text must be a string")
        if len(text.encode("utf-8", "surrogatepass")) > self.config.limits.max_text_bytes:
            raise InvalidInput(f"text longer than {self.config.limits.max_text_bytes} bytes")
        recipients = self._recipients(target)
        message = ev.Text(uuid.uuid4().hex, _now(), text, recipients.group)

        async def deliver(link: PeerLink) -> None:
            await link.send_text(message)

        return await self._fan_out(message.id, recipients, deliver)

    async def send_photo(self, target: str, path: str | Path) -> DeliveryReport:
        recipients = self._recipients(target)
        photo: OutgoingPhoto = await asyncio.to_thread(
            prepare_photo, Path(path), self.config.limits
        )
        offer = ev.PhotoOffer(
            uuid.uuid4().hex,
            _now(),
            photo.filename,
            photo.size,
            photo.sha256,
            photo.mime,
            recipients.group,
        )

        async def deliver(link: PeerLink) -> None:
            await link.send_photo(offer, read_chunks(photo, self.config.limits.photo_chunk))

        return await self._fan_out(offer.id, recipients, deliver)

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
        deliver: Callable[[PeerLink], Awaitable[None]],
    ) -> DeliveryReport:
        """One lookup for all recipients, then every online one concurrently."""
        online = await self.lookup(list(recipients.phones))
        report = DeliveryReport(message_id)
        report.offline = [p for p in recipients.phones if p not in online]
        targets = [p for p in recipients.phones if p in online]
        outcomes = await asyncio.gather(*(self._deliver_to(online[p], deliver) for p in targets))
        for phone, error in zip(targets, outcomes, strict=True):
            if error is None:
                report.delivered.append(phone)
            else:
                report.failed.append((phone, error))
        return report

    async def _deliver_to(
        self, address: ev.PeerAddress, deliver: Callable[[PeerLink], Awaitable[None]]
    ) -> str | None:
        """None when the peer acknowledged, else the reason it did not."""
        config = self.config
        try:
            link = await PeerLink.open(address, self.phone, config.limits, config.timeouts)
            try:
                await deliver(link)
            finally:
                await link.close()
        except DeliveryFailed as exc:
            log.info("delivery to %s failed: %s", address.phone, exc)
            return str(exc)
        return None

    # --- receiving ------------------------------------------------------------------------

    def _publish(self, event: Received) -> None:
        self.received.put_nowait(event)


class _Inbound:
    """What the peer listener calls: turns messages into events for the UI."""

    def __init__(self, session: Session) -> None:
        self._session = session

    async def text_received(self, sender: str, text: ev.Text) -> None:
        session = self._session
        name = session.book.name_of(sender)
        session._publish(TextReceived(text.id, sender, name, text.group, text.timestamp, text.body))

    def photo_offered(self, sender: str, offer: ev.PhotoOffer) -> _PhotoSink:
        return _PhotoSink(self._session, sender, offer, self._session.photos.begin(offer))


class _PhotoSink:
    def __init__(
        self, session: Session, sender: str, offer: ev.PhotoOffer, incoming: IncomingPhoto
    ) -> None:
        self._session = session
        self._sender = sender
        self._offer = offer
        self._incoming = incoming

    def write(self, data: bytes) -> None:
        self._incoming.write(data)

    async def complete(self) -> None:
        stored = await asyncio.to_thread(self._incoming.finish)
        offer, session = self._offer, self._session
        name = session.book.name_of(self._sender)
        session._publish(
            PhotoReceived(offer.id, self._sender, name, offer.group, offer.timestamp, stored)
        )

    def discard(self) -> None:
        self._incoming.discard()
