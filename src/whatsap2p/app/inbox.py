"""What arrives: the listener's `Inbound` — senders checked and held to their limits
(`IncomingLimits`: contacts more than strangers), messages stored before they are
acknowledged, then published to the UI, each shown once."""

from __future__ import annotations

import asyncio
import functools
from collections import Counter
from collections.abc import Awaitable, Callable

from whatsap2p.app.contacts import AddressBook
from whatsap2p.app.events import GroupChanged, PhotoReceived, SessionEvent, TextReceived
from whatsap2p.app.groups import change_json
from whatsap2p.app.history import History
from whatsap2p.app.photos import IncomingPhoto, PhotoFile, PhotoStore
from whatsap2p.app.trust import Trust
from whatsap2p.config import IncomingLimits
from whatsap2p.errors import (
    DirectoryError,
    MessageRefused,
    NotMember,
    PeerRefused,
    SenderThrottled,
)
from whatsap2p.protocol import events as ev
from whatsap2p.ratelimit import BucketsByKey

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
        limits: IncomingLimits | None = None,
        group_changed: Callable[[GroupChanged], None] = lambda changed: None,
    ) -> None:
        """`group_changed(event)`: a peer's message changed what we know of a group."""
        self._history = history
        self._group_changed = group_changed
        self._book = book
        self._photos = photos
        self._trust = trust
        self._lookup = lookup
        self._publish = publish
        self._limits = limits = limits or IncomingLimits()
        # A bucket per sender, contacts' (True) and strangers' (False).
        most = limits.max_senders
        self._messages = {
            True: BucketsByKey(limits.contact_messages_rate, limits.contact_messages_burst, most),
            False: BucketsByKey(
                limits.stranger_messages_rate, limits.stranger_messages_burst, most
            ),
        }
        self._photo_bytes = {
            True: BucketsByKey(limits.contact_photo_rate, limits.contact_photo_burst, most),
            False: BucketsByKey(limits.stranger_photo_rate, limits.stranger_photo_burst, most),
        }
        #: Photos arriving now, per sender, and from strangers in all.
        self._arriving: Counter[str] = Counter()
        self._strangers_arriving = 0

    def show_again(self) -> None:
        """Publish what was stored but never shown before the last run ended."""
        for entry in self._history.unshown():
            name = self._book.name_of(entry.sender)
            if entry.photo is None:
                self._publish(
                    TextReceived(
                        entry.id,
                        entry.sender,
                        name,
                        entry.group,
                        entry.timestamp,
                        entry.text or "",
                        entry.group_id,
                        entry.change,
                    )
                )
            else:
                stored = PhotoFile.from_description(entry.photo)
                self._publish(
                    PhotoReceived(
                        entry.id,
                        entry.sender,
                        name,
                        entry.group,
                        entry.timestamp,
                        stored,
                        entry.group_id,
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

    def _admit(self, sender: str, message_id: str) -> bool:
        """Take message `message_id` from `sender`'s allowance, or refuse it with
        SenderThrottled (unless it is stored already: a retry, acknowledged again);
        whether `sender` is a contact."""
        known = self._book.knows(sender)
        now = asyncio.get_running_loop().time()
        if not self._messages[known].take(sender, now) and not self._history.was_received(
            message_id, sender
        ):
            limits = self._limits
            rate, burst = (
                (limits.contact_messages_rate, limits.contact_messages_burst)
                if known
                else (limits.stranger_messages_rate, limits.stranger_messages_burst)
            )
            raise SenderThrottled(
                f"too many messages: {burst:g} at once, then {rate:g} a second"
                + ("" if known else " from a number not in the contacts")
            )
        return known

    def _place(
        self, sender: str, message_id: str, name: str | None, info: ev.GroupInfo | None
    ) -> tuple[str | None, str | None]:
        """The group a message is shown in (its id and name; no id: a direct message);
        NotMember or MessageRefused when it claims a group it may not (app/groups.py).
        A message without a group id (from a version before ids) is a direct one."""
        if info is None or name is None:
            return None, name
        try:
            group, changed = self._book.judge(sender, name, info)
        except (NotMember, MessageRefused):
            # A retry of one stored before its sender stopped counting (removed since):
            # acknowledged again, not stored or shown again. (Asked only then: a retry
            # the rules take changes nothing, and the store is not asked per message.)
            if self._history.was_received(message_id, sender):
                return info.id, name
            raise
        if changed:
            change = None if info.change is None else change_json(info.change)
            self._group_changed(GroupChanged(group, sender, change))
        return group.id, group.name

    def text_received(self, sender: str, text: ev.Text) -> Awaitable[None]:
        # Stored before it is acknowledged; a copy already stored is acknowledged again
        # (the sender retried) but not shown twice.
        self._admit(sender, text.id)
        group_id, group = self._place(sender, text.id, text.group, text.grp)
        change = None
        if group_id is not None and text.grp is not None and text.grp.change is not None:
            change = change_json(text.grp.change)
        stored = self._history.store_received(
            text.id,
            sender,
            group,
            text.timestamp,
            text=text.body,
            group_id=group_id,
            change=change,
        )
        return self._show_once_stored(stored, sender, text, group_id, group, change)

    async def _show_once_stored(
        self,
        stored: asyncio.Future[bool],
        sender: str,
        text: ev.Text,
        group_id: str | None,
        group: str | None,
        change: dict[str, object] | None,
    ) -> None:
        if await stored:
            name = self._book.name_of(sender)
            self._publish(
                TextReceived(
                    text.id, sender, name, group, text.timestamp, text.body, group_id, change
                )
            )

    def photo_offered(self, sender: str, offer: ev.PhotoOffer) -> _PhotoSink | None:
        if self._history.was_received(offer.id, sender):
            return None  # already stored: acknowledge without taking the bytes again
        known = self._admit(sender, offer.id)
        group_id, group = self._place(sender, offer.id, offer.group, offer.grp)
        limits = self._limits
        at_once = limits.contact_photos_at_once if known else limits.stranger_photos_at_once
        if self._arriving[sender] >= at_once:
            raise SenderThrottled(f"too many photos at once: at most {at_once} from one sender")
        if not known and self._strangers_arriving >= limits.strangers_photos_at_once:
            raise SenderThrottled("too many photos from numbers not in the contacts at once")
        share = limits.contact_partial_bytes if known else limits.stranger_partial_bytes
        incoming = self._photos.begin(sender, offer, share)
        # The bytes still to come are taken from the sender's allowance now, and those
        # that do not come (an interrupted transfer) given back.
        photo_bytes = self._photo_bytes[known]
        if not photo_bytes.take(sender, asyncio.get_running_loop().time(), incoming.left):
            incoming.interrupted()  # (what it kept from before stays, for a resume)
            raise SenderThrottled(
                "too many photo bytes: try later"
                + ("" if known else " (a number not in the contacts)")
            )
        self._arriving[sender] += 1
        self._strangers_arriving += not known
        ended = functools.partial(self._photo_ended, sender, known)
        where = (group_id, group)
        return _PhotoSink(sender, offer, where, incoming, self, photo_bytes, ended)

    def _photo_ended(self, sender: str, known: bool) -> None:
        """A photo `photo_offered` took is stored, refused or cut off."""
        self._arriving[sender] -= 1
        if self._arriving[sender] <= 0:
            del self._arriving[sender]
        self._strangers_arriving -= not known

    async def photo_stored(
        self,
        sender: str,
        offer: ev.PhotoOffer,
        where: tuple[str | None, str | None],
        stored: PhotoFile,
    ) -> None:
        """Photo `offer` is stored at `stored`: in the history, in group `where` (its id
        and name, as `_place` said at the offer), then shown."""
        group_id, group = where
        if not await self._history.store_received(
            offer.id, sender, group, offer.timestamp, photo=stored.describe(), group_id=group_id
        ):
            stored.path.unlink()  # the same photo arrived twice at once: keep one
            return
        name = self._book.name_of(sender)
        self._publish(
            PhotoReceived(offer.id, sender, name, group, offer.timestamp, stored, group_id)
        )


class _PhotoSink:
    """Where one incoming photo's chunks go (net.listener.PhotoSink)."""

    def __init__(
        self,
        sender: str,
        offer: ev.PhotoOffer,
        where: tuple[str | None, str | None],
        incoming: IncomingPhoto,
        inbox: Inbox,
        allowance: BucketsByKey,
        ended: Callable[[], None],
    ) -> None:
        self._sender = sender
        self._offer = offer
        self._where = where
        self._incoming = incoming
        self._inbox = inbox
        self._allowance = allowance
        self._ended = ended
        self.offset = incoming.offset

    async def turn(self) -> None:
        await self._incoming.turn()

    async def write(self, data: memoryview) -> None:
        await self._incoming.write(data)

    async def complete(self, sha256: str) -> None:
        try:
            stored = await asyncio.to_thread(self._incoming.finish, sha256)
        finally:
            self._end()
        await self._inbox.photo_stored(self._sender, self._offer, self._where, stored)

    def interrupted(self) -> None:
        self._incoming.interrupted()
        self._allowance.give(self._sender, self._incoming.left)  # taken, never sent
        self._end()

    def _end(self) -> None:
        ended, self._ended = self._ended, _nothing
        ended()


def _nothing() -> None:
    pass
