"""Links to peers kept for reuse: a burst of sends to one contact pays for one connection
and one handshake, not one each.

Texts to a peer (its address and key) share one link, many at once; a photo takes a
link of its own, at most `Limits.max_links_per_peer` to one peer at once (further
photos wait for one). A link closes itself after `Timeouts.link_keep` without use (its
sender's idle deadline) and is forgotten then.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from whatsap2p.config import Limits, Timeouts
from whatsap2p.errors import DeliveryFailed, LinkClosed, Unconfirmed
from whatsap2p.net.deadlines import Deadlines
from whatsap2p.net.link import PeerLink, PhotoSource
from whatsap2p.net.network import Network, TcpNetwork
from whatsap2p.protocol import events as ev
from whatsap2p.protocol.keys import StaticKey

__all__ = ["LinkPool"]

#: Peers whose working path is remembered (the oldest forgotten first).
_REMEMBERED = 1024


def _found_closed(failure: DeliveryFailed) -> bool:
    """Whether `failure` is a kept link found gone (its peer closed it, or the network
    dropped it, since it was last used): worth once more on a new link (the receiver
    recognises a message it already has by its id)."""
    cause = failure.__cause__ if isinstance(failure, Unconfirmed) else failure
    return isinstance(cause, LinkClosed)


class LinkPool:
    def __init__(
        self,
        me: str,
        key: StaticKey,
        limits: Limits,
        timeouts: Timeouts,
        network: Network | None = None,
    ) -> None:
        self._me = me
        self._key = key
        self._limits = limits
        self._timeouts = timeouts
        self._network = network or TcpNetwork()
        self._deadlines = Deadlines()
        #: The link carrying the texts to each peer, or the task opening it.
        self._texts: dict[ev.PeerAddress, PeerLink] = {}
        self._opening: dict[ev.PeerAddress, asyncio.Task[PeerLink]] = {}
        #: Photo links not in use, per peer; and how many may be in use at once.
        self._idle: dict[ev.PeerAddress, list[PeerLink]] = {}
        self._slots: dict[ev.PeerAddress, asyncio.Semaphore] = {}
        self._busy: dict[ev.PeerAddress, int] = {}
        self._links: set[PeerLink] = set()
        #: Where each peer was last reached (its LAN address, or its published one).
        self._reached_at: dict[ev.PeerAddress, str] = {}
        self._closed = False

    async def send_text(self, address: ev.PeerAddress, text: ev.Text) -> None:
        """Send `text` on the text link to `address` (opened if there is none; sends made
        meanwhile wait for the same one); returns once acknowledged, DeliveryFailed as it
        says. A kept link found closed is replaced once."""
        link = self._texts.get(address)
        if link is not None:
            try:
                await link.send_text(text)
                return
            except DeliveryFailed as exc:
                if not _found_closed(exc):
                    raise
        await (await self._text_link(address)).send_text(text)

    async def send_photo(
        self,
        address: ev.PeerAddress,
        offer: ev.PhotoOffer,
        stream_from: Callable[[int], PhotoSource],
    ) -> int:
        """Send a photo on a link of its own (see `PeerLink.send_photo`); a kept link
        found closed is replaced once (the photo resumes where the receiver has it)."""
        slots = self._slots.setdefault(address, asyncio.Semaphore(self._limits.max_links_per_peer))
        self._busy[address] = self._busy.get(address, 0) + 1
        try:
            async with slots:
                link = self._take(address)
                if link is not None:
                    try:
                        return await self._photo_on(address, link, offer, stream_from)
                    except DeliveryFailed as exc:
                        if not _found_closed(exc):
                            raise
                link = await self._open(address)
                return await self._photo_on(address, link, offer, stream_from)
        finally:
            self._busy[address] -= 1
            if not self._busy[address]:
                del self._busy[address]
                if address not in self._idle:
                    self._slots.pop(address, None)

    async def close(self) -> None:
        """Close every link (what still waits on one fails)."""
        self._closed = True
        for opening in self._opening.values():
            opening.cancel()
        await asyncio.gather(*self._opening.values(), return_exceptions=True)
        links = list(self._links)
        await asyncio.gather(*(link.close() for link in links), return_exceptions=True)
        self._deadlines.close()

    # --- the rest --------------------------------------------------------------------------

    async def _photo_on(
        self,
        address: ev.PeerAddress,
        link: PeerLink,
        offer: ev.PhotoOffer,
        stream_from: Callable[[int], PhotoSource],
    ) -> int:
        try:
            sent = await link.send_photo(offer, stream_from)
        except BaseException:
            link.abort()
            raise
        if link.usable and not self._closed:
            self._idle.setdefault(address, []).append(link)
        else:
            link.abort()
        return sent

    async def _text_link(self, address: ev.PeerAddress) -> PeerLink:
        """The text link to `address` (an ended link is no longer listed), the one being
        opened, or a new one."""
        link = self._texts.get(address)
        if link is not None:
            return link
        opening = self._opening.get(address)
        if opening is None:
            opening = asyncio.get_running_loop().create_task(self._open_text_link(address))
            self._opening[address] = opening
            # Seen here, so a failure nobody awaited any more is not logged as lost.
            opening.add_done_callback(lambda task: task.cancelled() or task.exception())
        return await asyncio.shield(opening)

    async def _open_text_link(self, address: ev.PeerAddress) -> PeerLink:
        try:
            link = await self._open(address)
        finally:
            del self._opening[address]
        self._texts[address] = link
        return link

    async def _open(self, address: ev.PeerAddress) -> PeerLink:
        if self._closed:
            raise LinkClosed("closing")
        link = await PeerLink.open(
            self._network,
            address,
            self._me,
            self._key,
            self._limits,
            self._timeouts,
            self._deadlines,
            prefer=self._reached_at.get(address),
        )
        if link.host is not None:  # (the path that worked is tried first next time)
            self._reached_at[address] = link.host
            while len(self._reached_at) > _REMEMBERED:
                del self._reached_at[next(iter(self._reached_at))]
        link.on_ended = self._forget
        self._links.add(link)
        if self._closed:
            link.abort()
            raise LinkClosed("closing")
        return link

    def _take(self, address: ev.PeerAddress) -> PeerLink | None:
        links = self._idle.get(address)
        while links:
            link = links.pop()
            if link.usable:
                return link
        self._idle.pop(address, None)
        return None

    def _forget(self, link: PeerLink) -> None:
        """`link` ended (closed, lost, or idle): it is no longer offered."""
        self._links.discard(link)
        address = link.address
        assert address is not None
        if self._texts.get(address) is link:
            del self._texts[address]
        links = self._idle.get(address)
        if links is not None:
            with contextlib.suppress(ValueError):
                links.remove(link)
            if not links:
                del self._idle[address]
                if address not in self._busy:
                    self._slots.pop(address, None)
