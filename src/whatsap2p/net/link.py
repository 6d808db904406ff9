"""An outgoing connection to one peer: the asyncio adapter of a `PeerSender`.

It moves bytes between the transport and the sans-IO sender, and the time to it when
the deadline it asked for comes up; the sender owns every deadline (handshake, answers,
stalled writes, idle). Texts are pipelined: each is written as soon as it is sent (those
sent in one turn of the event loop in one write) and its answer matched by id as it
comes, so no text waits for the one before it. A photo streams its chunks as the
transport drains, then waits for its answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import typing
from collections.abc import AsyncGenerator, Callable
from typing import Protocol

from whatsap2p.config import Limits, Timeouts
from whatsap2p.errors import (
    REJECTIONS,
    DeliveryFailed,
    DeliveryRejected,
    LinkClosed,
    PeerProtocolError,
    PeerRefused,
    PeerTimedOut,
    PeerUnreachable,
    ProtocolError,
    RemoteKeyMismatch,
    Unconfirmed,
)
from whatsap2p.net.deadlines import Deadlines
from whatsap2p.net.network import Network
from whatsap2p.protocol import events as ev
from whatsap2p.protocol.channel import Buffer
from whatsap2p.protocol.keys import StaticKey
from whatsap2p.protocol.noise import NoiseChannel
from whatsap2p.protocol.peer import PeerSender, SenderState

__all__ = ["PeerLink", "PhotoSource"]

log = logging.getLogger(__name__)

#: A photo streams in chunks: let a few of them queue in the transport so the socket
#: never idles while the next is read.
_WRITE_BUFFER = 2 * 1024 * 1024


class PhotoSource(Protocol):
    """A photo's bytes from some offset on, in chunks; then the whole file's SHA-256."""

    sha256: str | None

    def __aiter__(self) -> AsyncGenerator[bytes]: ...


class PeerLink(asyncio.Protocol):
    """One connection to one peer, after its handshake and hello (use `open`)."""

    def __init__(self, conn: PeerSender, deadlines: Deadlines) -> None:
        self._conn = conn
        self._deadlines = deadlines
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._up: asyncio.Future[None] = self._loop.create_future()
        #: Messages awaiting their answer: id -> its future; an answer that came before
        #: its future was made (a photo's refusal right after its `resume`).
        self._waiting: dict[str, asyncio.Future[ev.Ack | ev.Resume]] = {}
        self._early: dict[str, ev.Ack | ev.Rejected] = {}
        #: Sealed texts not written yet (the turn's batch), and their ids.
        self._out: list[Buffer] = []
        self._unwritten: list[str] = []
        #: Resolved while the transport drains; a future while it is full, and how much
        #: waited unsent when the connection last looked (to tell slow from stopped).
        self._writable: asyncio.Future[None] | None = None
        self._unsent = 0
        self._scheduled: float | None = None
        self._late = 0.0
        self._entry = 0
        #: Why the link can carry nothing more (set once).
        self.ended: DeliveryFailed | None = None
        self._closed: asyncio.Future[None] = self._loop.create_future()
        #: Called once the link has ended (the pool forgets it).
        self.on_ended: Callable[[PeerLink], None] | None = None
        #: The peer it goes to.
        self.address: ev.PeerAddress | None = None
        #: The host it reached the peer at (its LAN address, or its published one).
        self.host: str | None = None
        #: How it came to be: "direct" (we dialled the peer), "reverse" (the peer dialled
        #: us, on our request through the server), "punched" (both at once, through both
        #: routers).
        self.route = "direct"

    @classmethod
    async def open(
        cls,
        network: Network,
        address: ev.PeerAddress,
        me: str,
        key: StaticKey,
        limits: Limits,
        timeouts: Timeouts,
        deadlines: Deadlines,
        prefer: str | None = None,
        connected: asyncio.Event | None = None,
    ) -> PeerLink:
        """Connect, prove our key, make the peer prove the key the server gave for it,
        and say who we are; DeliveryFailed with why not. A peer behind the same router
        (the server gave its LAN address) is tried there first, briefly, then at its
        published address; `prefer`: the host that worked last time, tried first.
        `connected` is set once the last address tried accepted the connection (what
        may still fail then is the module there, not the way to it)."""
        hosts = [address.host] if address.local is None else [address.local, address.host]
        if prefer in hosts:
            hosts.remove(prefer)
            hosts.insert(0, prefer)
        for host in hosts[:-1]:
            try:
                link = await cls._dial(
                    network, address, host, key, limits, timeouts, deadlines, timeouts.lan_connect
                )
            except DeliveryFailed as exc:
                log.info("%s not at %s (%s): trying %s", address.phone, host, exc, hosts[-1])
            else:
                break
        else:
            link = await cls._dial(
                network,
                address,
                hosts[-1],
                key,
                limits,
                timeouts,
                deadlines,
                timeouts.connect,
                connected,
            )
        link.address = address
        link._write(ev.Hello(me))
        return link

    @classmethod
    async def adopt(
        cls,
        transport: asyncio.Transport,
        address: ev.PeerAddress,
        me: str,
        key: StaticKey,
        limits: Limits,
        timeouts: Timeouts,
        deadlines: Deadlines,
        route: str = "reverse",
    ) -> PeerLink:
        """A link on a connection `address`'s module opened to us because we asked it to
        (it is behind a router that keeps us out: `reverse`), that we both opened at
        once through our routers (`punched`), or that a relay joined to its (`relay`);
        we are the sender on it, exactly as on one
        we dialled: we start the handshake, it proves its key."""
        link = cls(cls._sender(address, key, limits, timeouts), deadlines)
        transport.set_protocol(link)
        link.connection_made(transport)
        transport.resume_reading()  # (paused while the connection waited to be taken)
        await link._secured(address)
        link.route = route
        link.address = address
        link._write(ev.Hello(me))
        return link

    @staticmethod
    def _sender(
        address: ev.PeerAddress, key: StaticKey, limits: Limits, timeouts: Timeouts
    ) -> PeerSender:
        channel = NoiseChannel(
            key, initiator=True, max_body=limits.max_peer_frame, expected_remote=address.key
        )
        return PeerSender(asyncio.get_running_loop().time(), limits, timeouts, channel)

    @classmethod
    async def _dial(
        cls,
        network: Network,
        address: ev.PeerAddress,
        host: str,
        key: StaticKey,
        limits: Limits,
        timeouts: Timeouts,
        deadlines: Deadlines,
        connect: float,
        connected: asyncio.Event | None = None,
    ) -> PeerLink:
        """A secure connection to `address`'s module at `host`, or DeliveryFailed."""
        conn = cls._sender(address, key, limits, timeouts)
        try:
            link = await network.connect(host, address.port, lambda: cls(conn, deadlines), connect)
        except TimeoutError as exc:
            raise PeerTimedOut(
                f"no answer from {host}:{address.port} (a router may be keeping it out)"
            ) from exc
        except OSError as exc:
            raise PeerUnreachable(f"cannot connect: {exc.strerror or exc}") from exc
        if connected is not None:
            connected.set()
        await link._secured(address)
        link.host = host
        return link

    async def _secured(self, address: ev.PeerAddress) -> None:
        """Once the handshake is done and the peer proved `address`'s key; DeliveryFailed
        (the link aborted) if not."""
        try:
            await self._up  # the sender's handshake deadline bounds it
        except DeliveryFailed:
            raise
        except RemoteKeyMismatch as exc:
            self.abort()
            raise PeerUnreachable(
                "the module at that address is not the one the server knows for this number"
            ) from exc
        except (OSError, ProtocolError) as exc:
            self.abort()
            kind: type[DeliveryFailed] = (
                PeerProtocolError if isinstance(exc, ProtocolError) else PeerUnreachable
            )
            raise kind(f"no secure connection to the peer: {str(exc) or 'timed out'}") from exc

    # --- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = transport = typing.cast(asyncio.Transport, transport)
        transport.set_write_buffer_limits(high=_WRITE_BUFFER)
        transport.write(self._conn.data_to_send())  # the handshake's first message
        self._arm()

    def data_received(self, data: bytes) -> None:
        conn = self._conn
        try:
            conn.receive_data(data, self._loop.time())
        except ProtocolError as exc:
            if not self._up.done():
                self._up.set_exception(exc)
            self._end(PeerProtocolError(f"peer broke the protocol: {exc}"))
            return
        if not self._up.done():
            if handshake := conn.data_to_send():
                self._send_bytes(handshake)
            if conn.established:
                self._up.set_result(None)
        self._take_events()
        self._arm()

    def eof_received(self) -> bool:
        return False  # the receiver is done: close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._up.done():
            self._up.set_exception(exc or ConnectionResetError("closed during the handshake"))
            self._up.exception()  # (seen: open() may have stopped awaiting it)
        if exc is None:
            self._end(LinkClosed("peer closed the connection before answering"))
        else:
            self._end(LinkClosed(f"connection lost: {getattr(exc, 'strerror', None) or exc}"))
        if not self._closed.done():
            self._closed.set_result(None)

    def pause_writing(self) -> None:
        self._conn.writing_paused(self._loop.time())
        if self._transport is not None:
            self._unsent = self._transport.get_write_buffer_size()
        if self._writable is None:
            self._writable = self._loop.create_future()
        self._arm()

    def resume_writing(self) -> None:
        self._conn.writing_resumed(self._loop.time())
        writable, self._writable = self._writable, None
        if writable is not None and not writable.done():
            writable.set_result(None)
        self._arm()

    async def __aenter__(self) -> PeerLink:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            await self.close()
        else:
            self.abort()

    # --- sending ---------------------------------------------------------------------------

    @property
    def usable(self) -> bool:
        """Open, and ready for another message (no photo under way on it)."""
        return self.ended is None and self._conn.state is SenderState.READY

    async def send_text(self, text: ev.Text) -> None:
        """Returns once the peer acknowledged; DeliveryFailed with why not (LinkClosed
        when the link was found closed before the text went out)."""
        await self._drained()
        answer = self._loop.create_future()
        self._waiting[text.id] = answer
        try:
            if not self._out:
                self._loop.call_soon(self._flush)
            self._out.append(self._seal(text))
            self._unwritten.append(text.id)
            self._arm()
            await answer
        finally:
            self._waiting.pop(text.id, None)

    async def send_photo(
        self, offer: ev.PhotoOffer, stream_from: Callable[[int], PhotoSource]
    ) -> int:
        """Offer the photo and stream it from where the peer says (it may hold the start
        of it from an interrupted transfer), then its digest; returns once the peer stored
        and verified it, with the number of bytes that had to be sent."""
        await self._drained()
        answer: asyncio.Future[ev.Ack | ev.Resume] = self._loop.create_future()
        self._waiting[offer.id] = answer
        try:
            self._write(offer)
            decision = await answer
            if isinstance(decision, ev.Ack):
                return 0  # the peer already has it
            answer = self._loop.create_future()
            self._waiting[offer.id] = answer
            early = self._early.pop(offer.id, None)
            if early is not None:
                self._answer(answer, early)
            source = stream_from(decision.offset)
            async with contextlib.aclosing(aiter(source)) as chunks:
                try:
                    async for chunk in chunks:
                        if answer.done():  # refused early (or the link ended): stop sending
                            break
                        self._write(ev.PhotoChunk(offer.id, memoryview(chunk)))
                        await self._drained()
                except DeliveryFailed:
                    if not answer.done():
                        raise
                    # Refused, and the receiver closed the connection after saying so: the
                    # refusal says why, not the closed connection.
            if not answer.done():
                assert source.sha256 is not None
                self._write(ev.PhotoEnd(offer.id, source.sha256))
            await answer
            return offer.size - decision.offset
        finally:
            self._waiting.pop(offer.id, None)
            self._early.pop(offer.id, None)
            if answer.done() and not answer.cancelled():
                answer.exception()  # (seen: the link may have ended while it streamed)

    async def close(self) -> None:
        """Close after what was written has gone out (what still waits fails); abort if
        that does not happen in time (a graceful close waits for a frozen peer forever)."""
        self._end(LinkClosed("the link was closed"), abort=False)
        try:
            async with asyncio.timeout(self._conn.timeouts.write_drain):
                await asyncio.shield(self._closed)
        except TimeoutError:
            self.abort()

    def abort(self) -> None:
        """Drop the connection now, unsent bytes and all."""
        self._end(LinkClosed("the link was aborted"))

    # --- the deadlines -------------------------------------------------------------------

    def entry_current(self, entry: int) -> bool:
        return entry == self._entry

    def deadline_reached(self) -> None:
        now = self._loop.time()
        # How late the deadline is seen: much later than due, this process (or its
        # machine) was frozen or suspended meanwhile, not the peer.
        self._late = now - (self._scheduled if self._scheduled is not None else now)
        self._scheduled = None
        self._entry = 0
        if self._writable is not None and self._transport is not None:
            unsent = self._transport.get_write_buffer_size()
            if unsent < self._unsent:  # bytes moved since: slow, not stopped
                self._conn.writing_progressed(now)
            self._unsent = unsent
        self._conn.handle_timer(now)
        self._take_events()
        self._arm()

    def _arm(self) -> None:
        """One entry in the deadlines, no later than the sender's next deadline."""
        when = None if self.ended is not None else self._conn.get_timer()
        scheduled = self._scheduled
        if scheduled is not None:
            if when is not None and scheduled <= when:
                return
            self._deadlines.dropped()
        self._scheduled = when
        self._entry = 0 if when is None else self._deadlines.push(when, self)

    # --- the rest --------------------------------------------------------------------------

    def _seal(self, message: ev.PeerMessage) -> Buffer:
        if self.ended is not None:
            raise self.ended
        try:
            return self._conn.send(message, self._loop.time())
        except ProtocolError as exc:
            raise PeerProtocolError(str(exc)) from exc

    def _write(self, message: ev.PeerMessage) -> None:
        self._send_bytes(self._seal(message))
        self._arm()

    def _flush(self) -> None:
        out, self._out = self._out, []
        self._unwritten.clear()
        if out and self.ended is None:
            self._send_bytes(b"".join(out))

    def _send_bytes(self, data: Buffer) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            # (uvloop raises RuntimeError writing to a closed transport, not OSError)
            self._end(LinkClosed("connection lost"))
            return
        transport.write(data)

    async def _drained(self) -> None:
        """Once the transport takes more (the sender times a stalled one out)."""
        if self.ended is not None:
            raise self.ended
        while self._writable is not None:
            await asyncio.shield(self._writable)
            if self.ended is not None:
                raise self.ended

    def _take_events(self) -> None:
        conn = self._conn
        while (event := conn.next_event()) is not None:
            if isinstance(event, ev.Ack | ev.Resume | ev.Rejected):
                waiting = self._waiting.get(event.id)
                if waiting is None:
                    continue  # its sender gave up (cancelled)
                if waiting.done():
                    if not isinstance(event, ev.Resume):
                        self._early[event.id] = event
                    continue
                self._answer(waiting, event)
                if isinstance(event, ev.Rejected) and conn.state is SenderState.CLOSED:
                    self._end(LinkClosed("refused mid-photo"), abort=False)  # it closes
            elif isinstance(event, ev.Closing):
                self._end(PeerRefused(f"refused by the peer: {event.reason}"), abort=False)
            elif isinstance(event, ev.ConnectionIdle):
                self._end(LinkClosed("closed after a quiet while"), abort=False)
            else:
                timed_out = PeerTimedOut(event.reason)
                timed_out.late = self._late
                self._end(timed_out)

    @staticmethod
    def _answer(
        waiting: asyncio.Future[ev.Ack | ev.Resume], answer: ev.Ack | ev.Resume | ev.Rejected
    ) -> None:
        if isinstance(answer, ev.Rejected):
            failure = REJECTIONS.get(answer.code or "", DeliveryRejected)
            waiting.set_exception(failure(f"refused by the peer: {answer.reason}"))
        else:
            waiting.set_result(answer)

    def _end(self, why: DeliveryFailed, abort: bool = True) -> None:
        """Carry nothing more: every message still waiting fails, with `why`, or as
        unconfirmed where all of it went out (it may have arrived), unless the peer
        refused the whole connection."""
        if self.ended is not None:
            return
        self.ended = why
        if not self._up.done():
            self._up.set_exception(why)
            self._up.exception()  # (seen: open() may have stopped awaiting it)
        self._arm()  # (drops its entry)
        unwritten = set(self._unwritten)
        self._out.clear()
        self._unwritten.clear()
        # (a refused connection stored none of what it had not answered yet)
        refused = isinstance(why, PeerRefused)
        for message_id, waiting in self._waiting.items():
            if waiting.done():
                continue
            if not refused and message_id not in unwritten and self._conn.sent_whole(message_id):
                failure = Unconfirmed(f"{why}; it may have arrived")
                failure.__cause__ = why
                waiting.set_exception(failure)
            else:
                waiting.set_exception(why)
        writable, self._writable = self._writable, None
        if writable is not None and not writable.done():
            writable.set_result(None)
        if self._transport is not None:
            if abort:
                self._transport.abort()
            elif not self._transport.is_closing():
                self._transport.close()
        if self.on_ended is not None:
            self.on_ended(self)
