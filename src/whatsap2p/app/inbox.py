"""What arrives: the listener's `Inbound` — senders checked, messages stored before they
are acknowledged, then published to the UI, each shown once."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from whatsap2p.app.contacts import AddressBook
from whatsap2p.app.events import PhotoReceived, SessionEvent, TextReceived
from whatsap2p.app.history import History
from whatsap2p.app.photos import IncomingPhoto, PhotoFile, PhotoStore
from whatsap2p.app.trust import Trust
from whatsap2p.errors import DirectoryError, PeerRefused
from whatsap2p.protocol import events as ev

__all__ = ["Inbox"]


class Inbox:
    """The app's side of the peer listener (net.listener.Inbound): raising refuses."""

    def __init__(
        self,
        history: History,
        book: AddressBook,
        photos: PhotoStore,
        trust: Trust,
        lookup: Callable[[list[str]], Awaitable[dict[str, ev.PeerAddress]]],
        publish: Callable[[SessionEvent], None],
    ) -> None:
        self._history = history
        self._book = book
        self._photos = photos
        self._trust = trust
        self._lookup = lookup
        self._publish = publish

    def show_again(self) -> None:
        """Publish what was stored but never shown before the last run ended."""
        for entry in self._history.unshown():
            name = self._book.name_of(entry.sender)
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
        self._history.mark_shown(event.id, event.sender)

    # --- Inbound -------------------------------------------------------------------------

    async def sender_proved(self, sender: str, key: bytes) -> None:
        """The key the sender proved must be the one bound to the number it claims (the
        server says which) and the one we pinned for it."""
        try:
            online = await self._lookup([sender])
        except DirectoryError as exc:
            raise PeerRefused(f"cannot check the sender's key: {exc}") from exc
        if sender not in online or online[sender].key != key:
            raise PeerRefused(f"the sender's key is not the one bound to {sender}")
        refusal = self._trust.check(sender, key)
        if refusal is not None:
            raise refusal

    def text_received(self, sender: str, text: ev.Text) -> Awaitable[None]:
        # Stored before it is acknowledged; a copy already stored is acknowledged again
        # (the sender retried) but not shown twice.
        stored = self._history.store_received(
            text.id, sender, text.group, text.timestamp, text=text.body
        )
        return self._show_once_stored(stored, sender, text)

    async def _show_once_stored(
        self, stored: asyncio.Future[bool], sender: str, text: ev.Text
    ) -> None:
        if await stored:
            name = self._book.name_of(sender)
            self._publish(
                TextReceived(text.id, sender, name, text.group, text.timestamp, text.body)
            )

    def photo_offered(self, sender: str, offer: ev.PhotoOffer) -> _PhotoSink | None:
        if self._history.was_received(offer.id, sender):
            return None  # already stored: acknowledge without taking the bytes again
        return _PhotoSink(self, sender, offer, self._photos.begin(sender, offer))

    async def photo_stored(self, sender: str, offer: ev.PhotoOffer, stored: PhotoFile) -> None:
        if not await self._history.store_received(
            offer.id, sender, offer.group, offer.timestamp, photo=stored.describe()
        ):
            stored.path.unlink()  # the same photo arrived twice at once: keep one
            return
        name = self._book.name_of(sender)
        self._publish(PhotoReceived(offer.id, sender, name, offer.group, offer.timestamp, stored))


class _PhotoSink:
    """Where one incoming photo's chunks go (net.listener.PhotoSink)."""

    def __init__(
        self, inbox: Inbox, sender: str, offer: ev.PhotoOffer, incoming: IncomingPhoto
    ) -> None:
        self._inbox = inbox
        self._sender = sender
        self._offer = offer
        self._incoming = incoming
        self.offset = incoming.offset

    async def write(self, data: memoryview) -> None:
        await self._incoming.write(data)

    async def complete(self, sha256: str) -> None:
        stored = await asyncio.to_thread(self._incoming.finish, sha256)
        await self._inbox.photo_stored(self._sender, self._offer, stored)

    def interrupted(self) -> None:
        self._incoming.interrupted()
