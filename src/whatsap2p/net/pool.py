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
import secrets
import typing
from collections.abc import Awaitable, Callable

from whatsap2p.config import Limits, Timeouts
from whatsap2p.errors import (
    DeliveryFailed,
    LinkClosed,
    NoRelay,
    PeerTimedOut,
    PeerUnreachable,
    Unconfirmed,
)
from whatsap2p.net.deadlines import Deadlines
from whatsap2p.net.link import PeerLink, PhotoSource
from whatsap2p.net.network import Network, TcpNetwork
from whatsap2p.protocol import events as ev
from whatsap2p.protocol.directory import TOKEN_BYTES
from whatsap2p.protocol.keys import StaticKey

__all__ = ["LinkPool"]

#: Peers whose working path is remembered (the oldest forgotten first).
_REMEMBERED = 1024


class _Way(typing.NamedTuple):
    """How a peer was last reached: the route, the host dialled (None: it connected to
    us, or a relay joined us), and when (loop time)."""

    route: str
    host: str | None
    when: float


#: A deadline seen this long after it was due means that we were frozen, not the peer.
_FROZEN = 1.0


def _found_closed(failure: DeliveryFailed) -> bool:
    """Whether `failure` is a kept link found gone (its peer closed it, or the network
    dropped it, since it was last used): worth once more on a new link (the receiver
    recognises a message it already has by its id)."""
    cause = failure.__cause__ if isinstance(failure, Unconfirmed) else failure
    return isinstance(cause, LinkClosed)


def _we_were_frozen(failure: DeliveryFailed) -> bool:
    """Whether `failure` is a deadline seen long after it was due: our own process (or
    machine) was frozen or suspended meanwhile, and the peer, alive, may have given up
    on the link; worth once more on a new one (a photo resumes where it has it)."""
    return isinstance(failure, PeerTimedOut) and failure.late > _FROZEN


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
        #: Asks `address`'s module (through the server) to connect to us, opening with
        #: the token given, and returns that connection and its route ("reverse",
        #: "punched"); DeliveryFailed if none comes. None: never asked.
        self.reverse: (
            Callable[[ev.PeerAddress, bytes], Awaitable[tuple[asyncio.Transport, str]]] | None
        ) = None
        #: Meets `address`'s module at a relay the server introduces us both to, and
        #: returns that connection and its route ("relay"); DeliveryFailed if none
        #: joins us, NoRelay if the server names none. None: never asked.
        self.relay: Callable[[ev.PeerAddress], Awaitable[tuple[asyncio.Transport, str]]] | None = (
            None
        )
        #: Told how each connection was made (a route of ev.ROUTES, "none" when none
        #: was) and the token of the request to connect back it made, if any.
        self.reported: Callable[[str, bytes | None], None] | None = None
        #: How each peer was last reached (the oldest forgotten first): tried that way
        #: first next time.
        self._worked: dict[ev.PeerAddress, _Way] = {}
        self._closed = False

    async def send_text(self, address: ev.PeerAddress, text: ev.Text) -> str:
        """Send `text` on the text link to `address` (opened if there is none; sends made
        meanwhile wait for the same one); returns once acknowledged, with the link's
        route ("direct", "reverse"); DeliveryFailed as it says. A kept link found closed
        is replaced once (and if the text had gone out on it, unacknowledged, and the new
        link fails, the failure says it may have arrived: Unconfirmed)."""
        link = self._texts.get(address)
        went_out: Unconfirmed | None = None
        if link is not None:
            try:
                await link.send_text(text)
                return link.route
            except DeliveryFailed as exc:
                if not _found_closed(exc):
                    raise
                went_out = exc if isinstance(exc, Unconfirmed) else None
        try:
            link = await self._text_link(address)
            await link.send_text(text)
        except DeliveryFailed as exc:
            if went_out is None or isinstance(exc, Unconfirmed):
                raise
            raise went_out from exc
        return link.route

    async def send_photo(
        self,
        address: ev.PeerAddress,
        offer: ev.PhotoOffer,
        stream_from: Callable[[int], PhotoSource],
    ) -> str:
        """Send a photo on a link of its own (see `PeerLink.send_photo`), returning the
        link's route; a kept link found closed is replaced once, and so is a new one lost
        on the way, or timed out while we were frozen (the photo resumes where the
        receiver has it)."""
        slots = self._slots.setdefault(address, asyncio.Semaphore(self._limits.max_links_per_peer))
        self._busy[address] = self._busy.get(address, 0) + 1
        try:
            async with slots:
                # A kept link (if any), a new one, and once more a new one if that is cut
                # off on its way (the peer's network changed, a relay went away): which
                # resumes where the receiver has it.
                link = self._take(address)
                tries = 2 if link is None else 3
                while True:
                    tries -= 1
                    if link is None:
                        link = await self._open(address)
                    try:
                        return await self._photo_on(address, link, offer, stream_from)
                    except DeliveryFailed as exc:
                        if not tries or not (_found_closed(exc) or _we_were_frozen(exc)):
                            raise
                    link = None
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
    ) -> str:
        try:
            await link.send_photo(offer, stream_from)
        except BaseException:
            link.abort()
            raise
        if link.usable and not self._closed:
            self._idle.setdefault(address, []).append(link)
        else:
            link.abort()
        return link.route

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
        asked: list[bytes] = []
        try:
            link = await self._reach(address, asked)
        except DeliveryFailed:
            self._report("none", asked)
            raise
        at_lan = address.local is not None and link.host == address.local
        self._report("lan" if at_lan else link.route, asked)
        # The way that worked is tried first next time: the host dialled, at once the
        # request to connect back, or (for a while) the relay.
        self._worked.pop(address, None)  # (to the newest end)
        self._worked[address] = _Way(link.route, link.host, asyncio.get_running_loop().time())
        if len(self._worked) > _REMEMBERED:
            del self._worked[next(iter(self._worked))]
        link.on_ended = self._forget
        self._links.add(link)
        if self._closed:
            link.abort()
            raise LinkClosed("closing")
        return link

    def _report(self, route: str, asked: list[bytes]) -> None:
        if self.reported is not None:
            self.reported(route, asked[-1] if asked else None)

    async def _reach(self, address: ev.PeerAddress, asked: list[bytes]) -> PeerLink:
        """A link to `address` by a direct way (see `_reach_directly`), or else through a
        relay: used last, and first only for a peer reached through one less than
        `Timeouts.relay_keep` ago at this address (a peer that moved has a new one, and
        its direct ways are tried first again)."""
        relay = self.relay
        if relay is None:
            return await self._reach_directly(address, asked)
        way = self._worked.get(address)
        now = asyncio.get_running_loop().time()
        if way is not None and way.route == "relay" and now - way.when < self._timeouts.relay_keep:
            with contextlib.suppress(DeliveryFailed, NoRelay):  # (then the other ways)
                return await self._adopted(address, relay(address))
        try:
            return await self._reach_directly(address, asked)
        except DeliveryFailed as failed:
            try:
                return await self._adopted(address, relay(address))
            except NoRelay:
                raise failed from None
            except DeliveryFailed as failed_relay:
                kind = type(failed)
                raise kind(f"{failed}; through a relay: {failed_relay}") from failed_relay

    async def _reach_directly(self, address: ev.PeerAddress, asked: list[bytes]) -> PeerLink:
        """A link to `address`: dialled; and when that fails to connect, or has not
        connected within `Timeouts.reverse_after` (at once if it came back last time, or
        the server says it is behind a router), also asked for the other way round
        (`reverse`: the peer dials us). The first link wins, the other is closed. (Once
        the dial connected, the way is open: what fails then is the module there.) The
        tokens of the requests to connect back go in `asked`."""
        connected = asyncio.Event()
        dialled = asyncio.ensure_future(
            PeerLink.open(
                self._network,
                address,
                self._me,
                self._key,
                self._limits,
                self._timeouts,
                self._deadlines,
                prefer=None if (way := self._worked.get(address)) is None else way.host,
                connected=connected,
            )
        )
        if self.reverse is None:
            return await dialled
        went_through = asyncio.ensure_future(connected.wait())
        try:
            await asyncio.wait(
                (dialled, went_through),
                timeout=0.0
                if address.nat or (way is not None and way.route in ("reverse", "punched"))
                else self._timeouts.reverse_after,
                return_when=asyncio.FIRST_COMPLETED,
            )
        except BaseException:
            _drop(dialled)
            raise
        finally:
            went_through.cancel()
        if connected.is_set() or (
            dialled.done() and not isinstance(dialled.exception(), PeerUnreachable | PeerTimedOut)
        ):
            try:
                return await dialled
            except (PeerUnreachable, PeerTimedOut) as failed:
                # It connected, but what answered there is not the module (something else
                # takes connections at that address, or nothing answers in it): ask it to
                # connect back, as when nothing connects.
                try:
                    return await self._reversed(address, asked)
                except DeliveryFailed as failed_back:
                    raise _both_ways(failed, failed_back) from failed_back
        reversed_ = asyncio.ensure_future(self._reversed(address, asked))
        racing = {dialled, reversed_}
        winner: PeerLink | None = None
        try:
            while racing and winner is None:
                done, racing = await asyncio.wait(racing, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task.exception() is None:
                        if winner is None:
                            winner = task.result()
                        else:  # (both at once: one is enough)
                            _drop(task)
        except BaseException:
            for task in (dialled, reversed_):
                _drop(task)
            raise
        finally:
            for task in racing:  # (the one that lost the race)
                _drop(task)
        if winner is not None:
            return winner
        dial_failure, back_failure = dialled.exception(), reversed_.exception()
        assert dial_failure is not None
        assert back_failure is not None
        raise _both_ways(dial_failure, back_failure) from back_failure

    async def _reversed(self, address: ev.PeerAddress, asked: list[bytes]) -> PeerLink:
        """A link on the connection `address`'s module opens to us when asked to (the
        request's token added to `asked`)."""
        assert self.reverse is not None
        token = secrets.token_bytes(TOKEN_BYTES)
        asked.append(token)
        return await self._adopted(address, self.reverse(address, token))

    async def _adopted(
        self, address: ev.PeerAddress, coming: Awaitable[tuple[asyncio.Transport, str]]
    ) -> PeerLink:
        """A link on the connection `coming` brings (connected back, punched, or joined at
        a relay), with its route."""
        transport, route = await coming
        try:
            return await PeerLink.adopt(
                transport,
                address,
                self._me,
                self._key,
                self._limits,
                self._timeouts,
                self._deadlines,
                route,
            )
        except BaseException:
            transport.abort()
            raise

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


def _drop(task: asyncio.Future[PeerLink]) -> None:
    """Let go of a link being made that is not wanted: cancelled, or closed once made."""
    if not task.done():
        task.cancel()
    task.add_done_callback(_abort_made)


def _abort_made(task: asyncio.Future[PeerLink]) -> None:
    if not task.cancelled() and task.exception() is None:
        task.result().abort()


def _both_ways(failed: BaseException, failed_back: BaseException) -> DeliveryFailed:
    """The dial's failure (its type, so its code), with why connecting back failed too."""
    kind = type(failed) if isinstance(failed, DeliveryFailed) else PeerUnreachable
    return kind(f"{failed}; asked to connect back: {failed_back}")
