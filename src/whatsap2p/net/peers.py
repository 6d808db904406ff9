"""Peer connections: the listener that receives messages, and the links that send them.

What a received message means (where a photo is written, who is told) is the app's
business, reached through the `Inbound` interface; this module only moves bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import typing
from collections import Counter, deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine
from typing import Protocol

from whatsap2p.config import Limits, Timeouts
from whatsap2p.errors import (
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
    WhatsAp2pError,
)
from whatsap2p.net.handshake import complete_handshake
from whatsap2p.protocol import events as ev
from whatsap2p.protocol.channel import Buffer
from whatsap2p.protocol.keys import StaticKey
from whatsap2p.protocol.noise import NoiseChannel
from whatsap2p.protocol.peer import PeerReceiver, PeerSender, ReceiverEvent

__all__ = ["Inbound", "LinkPool", "PeerLink", "PeerListener", "PhotoSink", "PhotoSource"]

log = logging.getLogger(__name__)

_READ_SIZE = 256 * 1024
#: Bytes a receiver lets wait unread before it stops reading from the socket.
_INBOX_HIGH = 1024 * 1024
_WRITE_BUFFER = 2 * 1024 * 1024
#: After a refusal, how long a receiver drains the sender's bytes (so the refusal is not
#: lost in a TCP reset) and how long a sender waits for that refusal once writes fail.
_REFUSAL_GRACE = 2.0


class PhotoSource(Protocol):
    """A photo's bytes from some offset on, in chunks; then the whole file's SHA-256."""

    sha256: str | None

    def __aiter__(self) -> AsyncGenerator[bytes]: ...


class PhotoSink(Protocol):
    """Where the chunks of one incoming photo go."""

    #: How many of its bytes are already here (kept from an interrupted transfer).
    offset: int

    async def write(self, data: memoryview) -> None: ...

    async def complete(self, sha256: str) -> None:
        """All bytes are in, and the sender's digest of them: verify and store, or raise
        WhatsAp2pError saying why not."""

    def interrupted(self) -> None:
        """The transfer stopped short: keep what can be resumed, show nothing."""


class Inbound(Protocol):
    """The app's side of the listener. Raising WhatsAp2pError refuses the message."""

    async def sender_proved(self, sender: str, key: bytes) -> None:
        """A sender claims number `sender` and proved `key`: raise to refuse it."""

    def text_received(self, sender: str, text: ev.Text) -> Awaitable[None]:
        """Start storing `text` now (texts that arrived together are stored together);
        the awaitable ends once it is stored, or raises WhatsAp2pError to refuse it."""

    def photo_offered(self, sender: str, offer: ev.PhotoOffer) -> PhotoSink | None:
        """Where the photo's bytes go; None when it is already stored (it is then
        acknowledged at once, and its bytes are not taken again)."""


class PeerListener:
    """Accepts peer connections and feeds each one through a PeerReceiver."""

    def __init__(
        self, inbound: Inbound, key: StaticKey, limits: Limits, timeouts: Timeouts
    ) -> None:
        self._inbound = inbound
        self._key = key
        self._limits = limits
        self._timeouts = timeouts
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], _Inbox] = {}
        self._per_ip: Counter[str] = Counter()
        #: Peer connections taken since the start (senders keep theirs for a burst).
        self.accepted = 0

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Bind and start accepting; returns the address actually bound."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Inbox(self._serve), host, port)
        bound = self._server.sockets[0].getsockname()
        return str(bound[0]), int(bound[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        # Abort rather than cancel: the tasks then end normally (see server/service.py).
        for connection in self._connections.values():
            connection.transport.abort()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, connection: _Inbox) -> None:
        peer = connection.get_extra_info("peername")
        ip = str(peer[0]) if peer else "?"
        limits = self._limits
        if (
            len(self._connections) >= limits.max_peer_connections
            or self._per_ip[ip] >= limits.max_peer_connections_per_ip
        ):
            log.warning("refusing a peer connection from %s: too many at once", ip)
            connection.transport.abort()
            return
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = connection
        self._per_ip[ip] += 1
        self.accepted += 1
        try:
            await _ReceiverSession(
                self._inbound, self._key, connection, self._limits, self._timeouts
            ).run()
        except ProtocolError as exc:
            log.warning("peer %s broke the protocol: %s", peer, exc)
        except (OSError, asyncio.IncompleteReadError) as exc:
            log.info("peer %s: connection lost: %s", peer, exc)
        except Exception:
            # A bug, not bad input: say so loudly, close this connection, serve the rest.
            log.exception("unexpected error on the connection from %s", peer)
        finally:
            self._connections.pop(task, None)
            self._per_ip[ip] -= 1
            if self._per_ip[ip] <= 0:
                del self._per_ip[ip]
            connection.close()
            with contextlib.suppress(OSError):
                await connection.wait_closed()


class _Inbox(asyncio.Protocol):
    """An incoming peer connection, offering _ReceiverSession what it used of asyncio's
    StreamReader and StreamWriter, without StreamReader's buffer: each chunk the transport
    read is handed over as it is (two copies fewer for every byte of a photo). Reading
    pauses while more than `_INBOX_HIGH` bytes wait to be handled."""

    def __init__(self, serve: Callable[[_Inbox], Coroutine[object, object, None]]) -> None:
        self._serve = serve
        self._loop = asyncio.get_running_loop()
        self.transport = typing.cast(asyncio.Transport, None)
        self._chunks: deque[bytes] = deque()
        self._waiting = 0  # bytes received, not yet read
        self._eof = False
        self._reading_paused = False
        self._readable: asyncio.Future[None] | None = None
        self._writable: asyncio.Future[None] | None = None
        self._closed: asyncio.Future[None] = self._loop.create_future()
        self._task: asyncio.Task[None] | None = None

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = typing.cast(asyncio.Transport, transport)
        self._task = self._loop.create_task(self._serve(self))  # held: the loop keeps weak refs

    def data_received(self, data: bytes) -> None:
        self._chunks.append(data)
        self._waiting += len(data)
        self._wake_reader()
        if self._waiting > _INBOX_HIGH and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake_reader()
        return True  # keep our side open: an answer may still have to go out

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._wake_reader()
        if self._writable is not None and not self._writable.done():
            self._writable.set_exception(ConnectionResetError("connection lost"))
        if not self._closed.done():
            self._closed.set_result(None)

    def pause_writing(self) -> None:
        self._writable = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    # --- what the session uses ---------------------------------------------------------------

    async def read(self, _: int = -1) -> bytes:
        """The next chunk received, or b"" at the end."""
        while not self._chunks and not self._eof:
            self._readable = self._loop.create_future()
            try:
                await self._readable
            finally:
                self._readable = None
        if not self._chunks:
            return b""
        data = self._chunks.popleft()
        self._waiting -= len(data)
        if self._reading_paused and self._waiting <= _INBOX_HIGH // 2:
            self._reading_paused = False
            self.transport.resume_reading()
        return data

    def write(self, data: bytes | bytearray) -> None:
        self.transport.write(data)

    def write_eof(self) -> None:
        if self.transport.can_write_eof() and not self.transport.is_closing():
            self.transport.write_eof()

    async def drain(self) -> None:
        if self.transport.is_closing() and self._closed.done():
            raise ConnectionResetError("connection lost")
        if self._writable is not None:
            await asyncio.shield(self._writable)

    def get_extra_info(self, name: str) -> typing.Any:
        return self.transport.get_extra_info(name)

    def close(self) -> None:
        self.transport.close()

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)

    def _wake_reader(self) -> None:
        if self._readable is not None and not self._readable.done():
            self._readable.set_result(None)


class _ReceiverSession:
    """One incoming connection, from hello to close."""

    def __init__(
        self,
        inbound: Inbound,
        key: StaticKey,
        connection: _Inbox,
        limits: Limits,
        timeouts: Timeouts,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._inbound = inbound
        self._io = connection
        self._timeouts = timeouts
        channel = NoiseChannel(key, initiator=False, max_body=limits.max_peer_frame)
        self._conn = PeerReceiver(self._loop.time(), limits, timeouts, channel)
        self._sink: PhotoSink | None = None

    async def run(self) -> None:
        try:
            while True:
                timer = self._conn.get_timer()
                if timer is None:
                    return
                try:
                    async with asyncio.timeout_at(timer):  # no task per read, unlike wait_for
                        data = await self._io.read(_READ_SIZE)
                except TimeoutError:
                    self._conn.handle_timer(self._loop.time())
                else:
                    if not data:
                        return
                    self._conn.receive_data(data, self._loop.time())
                    self._io.write(self._conn.data_to_send())
                if not await self._drain_events():
                    await self._linger()
                    return
        finally:
            if self._sink is not None:
                self._sink.interrupted()

    async def _linger(self) -> None:
        # Closing with unread bytes makes the kernel send a reset, which can destroy the
        # Rejected we just wrote before the sender reads it: half-close, drain, then close.
        with contextlib.suppress(OSError, TimeoutError):
            self._io.write_eof()
            async with asyncio.timeout(_REFUSAL_GRACE):
                while await self._io.read(_READ_SIZE):
                    pass

    async def _drain_events(self) -> bool:
        """Handle what the receiver produced; False once the connection must close."""
        event = self._conn.next_event()
        while event is not None:
            if isinstance(event, ev.Text):
                # Texts that came together are stored together and answered in one write.
                texts = [event]
                while isinstance(event := self._conn.next_event(), ev.Text):
                    texts.append(event)
                await self._answer_texts(texts)
                continue
            if not await self._handle(event):
                return False
            event = self._conn.next_event()
        return True

    async def _handle(self, event: ReceiverEvent) -> bool:
        """One event other than a text; False once the connection must close."""
        if isinstance(event, ev.ConnectionTimedOut):
            log.info("closing peer connection: %s", event.reason)
            return False
        if isinstance(event, ev.Hello):
            assert self._conn.remote_key is not None
            try:
                await self._inbound.sender_proved(event.phone, self._conn.remote_key)
            except WhatsAp2pError as exc:
                log.warning("refusing a sender claiming %s: %s", event.phone, exc)
                await self._answer(ev.Closing(str(exc)))
                return False
        elif isinstance(event, ev.Refused):
            await self._answer(ev.Rejected(event.id, event.reason))
        elif isinstance(event, ev.PhotoOffer):
            assert self._conn.peer_phone is not None
            try:
                self._sink = self._inbound.photo_offered(self._conn.peer_phone, event)
            except WhatsAp2pError as exc:
                await self._answer(ev.Rejected(event.id, str(exc)))
                return True
            if self._sink is None:
                await self._answer(ev.Ack(event.id))  # already stored: no bytes needed
            else:
                await self._answer(ev.Resume(event.id, self._sink.offset))
        elif isinstance(event, ev.PhotoChunk):
            assert self._sink is not None
            try:
                await self._sink.write(event.data)
            except WhatsAp2pError as exc:
                await self._answer(ev.Rejected(event.id, str(exc)))
                return False
        elif isinstance(event, ev.PhotoCompleted):
            sink, self._sink = self._sink, None
            assert sink is not None
            try:
                await sink.complete(event.sha256)
            except WhatsAp2pError as exc:
                await self._answer(ev.Rejected(event.id, str(exc)))
            else:
                await self._answer(ev.Ack(event.id))
        return True

    async def _answer_texts(self, texts: list[ev.Text]) -> None:
        """Store texts that came together (all handed over before any is awaited, so they
        share a commit), then acknowledge (or refuse) each, in one write."""
        sender = self._conn.peer_phone
        assert sender is not None
        storing: list[Awaitable[None] | WhatsAp2pError] = []
        for text in texts:
            try:
                storing.append(self._inbound.text_received(sender, text))
            except WhatsAp2pError as exc:
                storing.append(exc)
        answers: list[ev.Ack | ev.Rejected] = []
        for text, store in zip(texts, storing, strict=True):
            try:
                if isinstance(store, WhatsAp2pError):
                    raise store
                await store
            except WhatsAp2pError as exc:
                answers.append(ev.Rejected(text.id, str(exc)))
            else:
                answers.append(ev.Ack(text.id))
        self._io.write(b"".join([self._conn.send(answer) for answer in answers]))
        await _drained(self._io, self._timeouts.write_drain)

    async def _answer(self, answer: ev.Ack | ev.Rejected | ev.Resume | ev.Closing) -> None:
        self._io.write(self._conn.send(answer))
        await _drained(self._io, self._timeouts.write_drain)


class PeerLink:
    """An outgoing connection to one peer, after hello; sends messages, awaits answers."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        conn: PeerSender,
        timeouts: Timeouts,
    ) -> None:
        """Use `open`: it hands over a connection whose secure channel is established."""
        self._reader = reader
        self._writer = writer
        self._timeouts = timeouts
        self._conn = conn

    @classmethod
    async def open(
        cls,
        address: ev.PeerAddress,
        me: str,
        key: StaticKey,
        limits: Limits,
        timeouts: Timeouts,
    ) -> PeerLink:
        """Connect, prove our key, and make the peer prove the key the server gave for it."""
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(address.host, address.port, limit=_READ_SIZE),
                timeouts.connect,
            )
        except TimeoutError as exc:
            raise PeerTimedOut("connection timed out") from exc
        except OSError as exc:
            raise PeerUnreachable(f"cannot connect: {exc.strerror or exc}") from exc
        # A photo streams in chunks: let a few of them queue in the transport so the
        # socket never idles while we wait for `drain`.
        writer.transport.set_write_buffer_limits(high=_WRITE_BUFFER)
        channel = NoiseChannel(
            key, initiator=True, max_body=limits.max_peer_frame, expected_remote=address.key
        )
        conn = PeerSender(limits, channel)
        try:
            await complete_handshake(reader, writer, conn, timeouts.handshake)
        except RemoteKeyMismatch as exc:
            writer.close()
            raise PeerUnreachable(
                "the module at that address is not the one the server knows for this number"
            ) from exc
        except (OSError, TimeoutError, ProtocolError) as exc:
            writer.close()
            failure: type[DeliveryFailed] = (
                PeerTimedOut
                if isinstance(exc, TimeoutError)
                else PeerProtocolError
                if isinstance(exc, ProtocolError)
                else PeerUnreachable
            )
            raise failure(f"no secure connection to the peer: {str(exc) or 'timed out'}") from exc
        link = cls(reader, writer, conn, timeouts)
        await link._write(ev.Hello(me))
        return link

    async def __aenter__(self) -> PeerLink:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            await self.close()
        else:
            self.abort()

    async def close(self) -> None:
        """Close after what was written has gone out; abort if that does not happen in
        time (a graceful close waits for a frozen peer forever)."""
        self._writer.close()
        try:
            async with asyncio.timeout(self._timeouts.write_drain):
                await self._writer.wait_closed()
        except (OSError, TimeoutError):
            self.abort()

    def abort(self) -> None:
        """Drop the connection now, unsent bytes and all."""
        self._writer.transport.abort()

    @property
    def usable(self) -> bool:
        """Still open both ways, with nothing unread (so it may carry another message)."""
        return not (
            self._writer.transport.is_closing() or self._reader.at_eof() or self._conn.has_events()
        )

    async def send_text(self, text: ev.Text) -> None:
        """Returns once the peer acknowledged; raises DeliveryFailed with the reason."""
        await self._write(text)
        await self._answer_to(text.id)

    async def send_photo(
        self, offer: ev.PhotoOffer, stream_from: Callable[[int], PhotoSource]
    ) -> int:
        """Offer the photo and stream it from where the peer says (it may hold the start
        of it from an interrupted transfer), then its digest; returns once the peer stored
        and verified it, with the number of bytes that had to be sent."""
        await self._write(offer)
        decision = await self._answer_for(offer.id)
        if isinstance(decision, ev.Ack):
            return 0  # the peer already has it
        assert isinstance(decision, ev.Resume)
        answer_task = asyncio.create_task(self._answer_to(offer.id))
        source = stream_from(decision.offset)
        ended = False
        try:
            try:
                async with contextlib.aclosing(aiter(source)) as chunks:
                    async for chunk in chunks:
                        if answer_task.done():  # refused early: stop sending
                            break
                        await self._write(ev.PhotoChunk(offer.id, memoryview(chunk)))
                if not answer_task.done():
                    assert source.sha256 is not None
                    await self._write(ev.PhotoEnd(offer.id, source.sha256))
                    ended = True
            except DeliveryFailed:
                # A receiver that refuses says why, then closes: prefer its reason.
                with contextlib.suppress(TimeoutError, Unconfirmed):
                    await asyncio.wait_for(asyncio.shield(answer_task), _REFUSAL_GRACE)
                raise
            try:
                await answer_task
            except Unconfirmed as exc:
                if ended:
                    raise
                # Not all of it went out: it cannot have been stored.
                raise PeerTimedOut("the peer stopped taking the photo (timed out)") from exc
        finally:
            if not answer_task.done():
                answer_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await answer_task
        return offer.size - decision.offset

    # --- for a text lane, which writes and reads on its own schedule ------------------------

    def seal(self, text: ev.Text) -> Buffer:
        """`text` as bytes to write (DeliveryFailed if it may not be sent now)."""
        try:
            return self._conn.send(text)
        except ProtocolError as exc:
            raise PeerProtocolError(str(exc)) from exc

    def write_now(self, data: Buffer) -> None:
        self._writer.transport.write(data)

    async def drained(self) -> None:
        """Once the peer has read enough of what we wrote; DeliveryFailed otherwise."""
        try:
            await _drained(self._writer, self._timeouts.write_drain)
        except TimeoutError as exc:
            raise PeerTimedOut("peer stopped reading (timed out)") from exc
        except OSError as exc:
            raise LinkClosed(f"connection lost: {exc.strerror or exc}") from exc

    async def answers(self) -> list[ev.Ack | ev.Rejected | ev.Resume | ev.Closing]:
        """The answers in the next bytes read (maybe none yet); LinkClosed at the end."""
        await self._receive()
        answers = []
        while (answer := self._conn.next_event()) is not None:
            answers.append(answer)
        return answers

    async def _write(self, message: ev.PeerMessage) -> None:
        try:
            self._writer.write(self._conn.send(message))
            await _drained(self._writer, self._timeouts.write_drain)
        except TimeoutError as exc:
            raise PeerTimedOut("peer stopped reading (timed out)") from exc
        except OSError as exc:
            raise LinkClosed(f"connection lost: {exc.strerror or exc}") from exc
        except ProtocolError as exc:
            raise PeerProtocolError(str(exc)) from exc

    async def _answer_to(self, message_id: str) -> None:
        """Wait for the ack of `message_id`; DeliveryFailed (or Refused) otherwise."""
        answer = await self._answer_for(message_id)
        if isinstance(answer, ev.Resume):
            raise PeerProtocolError("peer asked for a photo it had already been sent")

    async def _answer_for(self, message_id: str) -> ev.Ack | ev.Resume:
        """The peer's next answer, if it is about `message_id` and not a refusal."""
        try:
            async with asyncio.timeout(self._timeouts.peer_ack):
                answer = await self._next_answer()
        except TimeoutError as exc:
            raise Unconfirmed("no acknowledgement from the peer (timed out)") from exc
        if isinstance(answer, ev.Closing):
            raise PeerRefused(f"refused by the peer: {answer.reason}")
        if answer.id != message_id:
            raise PeerProtocolError("peer acknowledged another message")
        if isinstance(answer, ev.Rejected):
            raise DeliveryRejected(f"refused by the peer: {answer.reason}")
        return answer

    async def _next_answer(self) -> ev.Ack | ev.Rejected | ev.Resume | ev.Closing:
        while (answer := self._conn.next_event()) is None:
            await self._receive()
        return answer

    async def _receive(self) -> None:
        """Read the next bytes into the sender's state: LinkClosed at the end, or when the
        connection is lost; DeliveryFailed when they break the protocol."""
        try:
            data = await self._reader.read(_READ_SIZE)
            if data:
                self._conn.receive_data(data)
        except OSError as exc:
            raise LinkClosed(f"connection lost: {exc.strerror or exc}") from exc
        except ProtocolError as exc:
            raise PeerProtocolError(f"peer broke the protocol: {exc}") from exc
        if not data:
            raise LinkClosed("peer closed the connection before acknowledging")


class _TextLane:
    """One connection to a peer carrying many texts at once: each is written as soon as
    it is sent (those sent in one turn of the event loop in one write), its answer is
    matched by id as it comes, and no text waits for the one before it. Answers are read
    by one task; one timer watches the oldest unanswered text (texts wait in the order
    they were sent, so its deadline comes first) and, when nothing is outstanding, the
    idle time after which the lane closes."""

    def __init__(
        self,
        address: ev.PeerAddress,
        link: PeerLink,
        timeouts: Timeouts,
        idle: float,
        gone: Callable[[_TextLane], None],
    ) -> None:
        self.address = address
        self._link = link
        self._timeouts = timeouts
        self._idle = idle
        self._gone = gone
        self._loop = asyncio.get_running_loop()
        #: id -> (answer, deadline), oldest first
        self._waiting: dict[str, tuple[asyncio.Future[None], float]] = {}
        self._out: list[Buffer] = []
        self._last_used = self._loop.time()
        #: The loop's timer and when it is set for (uvloop hands back a plain Handle, with
        #: no when(), for a time less than half a millisecond ahead, or already past).
        self._timer: asyncio.Handle | None = None
        self._armed_at = 0.0
        self._arm(self._last_used + idle)
        #: Why the lane can carry nothing more (set once).
        self.ended: DeliveryFailed | None = None
        self._reader = self._loop.create_task(self._read(), name="text-lane")

    async def send(self, text: ev.Text) -> None:
        """Returns once the peer acknowledged; DeliveryFailed (LinkClosed if the
        connection was found gone) with the reason otherwise."""
        if self.ended is not None:
            raise self.ended
        try:
            await self._link.drained()
        except DeliveryFailed as exc:
            self._end(exc)
        if self.ended is not None:
            raise self.ended
        frame = self._link.seal(text)
        answer = self._loop.create_future()
        self._last_used = now = self._loop.time()
        deadline = now + self._timeouts.peer_ack
        self._waiting[text.id] = (answer, deadline)
        timer = self._timer
        if timer is not None and self._armed_at > deadline:  # it was waiting out idle time
            timer.cancel()
            self._arm(deadline)
        if not self._out:
            self._loop.call_soon(self._flush)
        self._out.append(frame)
        try:
            await answer
        finally:
            self._waiting.pop(text.id, None)

    def _flush(self) -> None:
        out, self._out = self._out, []
        if out and self.ended is None:
            self._link.write_now(b"".join(out))

    async def _read(self) -> None:
        try:
            while True:
                for answer in await self._link.answers():
                    self._answered(answer)
        except DeliveryFailed as exc:
            self._end(exc)

    def _answered(self, answer: ev.Ack | ev.Rejected | ev.Resume | ev.Closing) -> None:
        if isinstance(answer, ev.Closing):
            raise PeerRefused(f"refused by the peer: {answer.reason}")
        if isinstance(answer, ev.Resume):  # (the sender state refuses it: no photo here)
            raise PeerProtocolError("peer asked for a photo it had not been offered")
        waiting = self._waiting.pop(answer.id, None)
        if waiting is None or waiting[0].done():
            return  # its sender gave up (cancelled)
        if isinstance(answer, ev.Rejected):
            waiting[0].set_exception(DeliveryRejected(f"refused by the peer: {answer.reason}"))
        else:
            waiting[0].set_result(None)

    def _arm(self, when: float) -> None:
        self._armed_at = when
        self._timer = self._loop.call_at(when, self._tick)

    def _tick(self) -> None:
        self._timer = None
        now = self._loop.time()
        if self._waiting:
            _, deadline = next(iter(self._waiting.values()))
            if deadline <= now:
                self._end(Unconfirmed("no acknowledgement from the peer (timed out)"))
            else:
                self._arm(deadline)
        elif now >= self._last_used + self._idle:
            self.close()
        else:
            self._arm(self._last_used + self._idle)

    def _end(self, why: DeliveryFailed, abort: bool = True) -> None:
        """Carry nothing more: every text still waiting fails with `why`."""
        if self.ended is not None:
            return
        self.ended = why
        self._gone(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for answer, _ in self._waiting.values():
            if not answer.done():
                answer.set_exception(why)
        self._waiting.clear()
        if abort:
            self._link.abort()
        if asyncio.current_task() is not self._reader:
            self._reader.cancel()

    def close(self) -> None:
        """No more texts: those still waiting fail (LinkClosed); `wait_closed` then
        closes the connection after what was written has gone out."""
        self._end(LinkClosed("the link was closed"), abort=False)

    async def wait_closed(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self._link.close()


class LinkPool:
    """Open links kept for reuse, per peer (its address and key): a burst of sends to
    one contact pays for one connection and one handshake, not one each. Texts share one
    lane per peer, many at once (`send_text`); a photo takes a link of its own
    (`deliver`), at most `Limits.max_links_per_peer` to one peer at once (further sends
    wait for one). Each is kept `idle` seconds after its last use, less than a
    receiver's idle timeout."""

    def __init__(
        self,
        me: str,
        key: StaticKey,
        limits: Limits,
        timeouts: Timeouts,
        idle: float = 10.0,
    ) -> None:
        self._me = me
        self._key = key
        self._limits = limits
        self._timeouts = timeouts
        self._per_peer = limits.max_links_per_peer
        self._idle_for = min(idle, timeouts.peer_idle / 2)
        self._idle: dict[ev.PeerAddress, list[PeerLink]] = {}
        self._slots: dict[ev.PeerAddress, asyncio.Semaphore] = {}
        self._busy: dict[ev.PeerAddress, int] = {}  # sends under way, per peer
        self._expiry: dict[PeerLink, asyncio.TimerHandle] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._closed = False
        #: Texts travel on one lane per peer, many at once; photos on links of their own.
        self._lanes: dict[ev.PeerAddress, _TextLane] = {}
        self._opening: dict[ev.PeerAddress, asyncio.Task[_TextLane]] = {}

    async def send_text(self, address: ev.PeerAddress, text: ev.Text) -> None:
        """Send `text` on the lane to `address` (opened if there is none; sends made
        meanwhile wait for the same one); returns once acknowledged, DeliveryFailed as it
        says. A lane found closed (the peer went away since its last use) is replaced
        once: the receiver recognises a text it already has by its id."""
        lane = self._lanes.get(address)
        if lane is not None:
            try:
                await lane.send(text)
                return
            except LinkClosed:
                pass  # gone since its last use: once more, on a new lane
        await (await self._lane(address)).send(text)

    async def _lane(self, address: ev.PeerAddress) -> _TextLane:
        """The lane to `address` (an ended lane is no longer listed), the one being
        opened, or a new one."""
        if self._closed:
            raise LinkClosed("closing")
        lane = self._lanes.get(address)
        if lane is not None:
            return lane
        opening = self._opening.get(address)
        if opening is None:
            opening = asyncio.get_running_loop().create_task(self._open_lane(address))
            self._opening[address] = opening
            # Seen here, so a failure nobody awaited any more is not logged as lost.
            opening.add_done_callback(lambda task: task.cancelled() or task.exception())
        return await asyncio.shield(opening)

    async def _open_lane(self, address: ev.PeerAddress) -> _TextLane:
        try:
            link = await PeerLink.open(address, self._me, self._key, self._limits, self._timeouts)
        finally:
            del self._opening[address]
        lane = _TextLane(address, link, self._timeouts, self._idle_for, self._lane_ended)
        if self._closed:
            lane.close()
            raise LinkClosed("closing")
        self._lanes[address] = lane
        return lane

    def _lane_ended(self, lane: _TextLane) -> None:
        address = lane.address
        if self._lanes.get(address) is lane:
            del self._lanes[address]
        self._closing_task(lane.wait_closed())

    async def deliver(
        self, address: ev.PeerAddress, deliver: Callable[[PeerLink], Awaitable[object]]
    ) -> None:
        """Run `deliver` on a link to `address`; DeliveryFailed as it says. `deliver` must
        be safe to repeat: on a kept link found closed it runs once more on a new one (the
        receiver recognises a message it already has by its id)."""
        slots = self._slots.setdefault(address, asyncio.Semaphore(self._per_peer))
        self._busy[address] = self._busy.get(address, 0) + 1
        try:
            async with slots:
                await self._run(address, deliver)
        finally:
            self._busy[address] -= 1
            if not self._busy[address]:
                del self._busy[address]
                if address not in self._idle:
                    self._slots.pop(address, None)

    async def _run(
        self, address: ev.PeerAddress, deliver: Callable[[PeerLink], Awaitable[object]]
    ) -> None:
        link = self._take(address)
        if link is not None:
            try:
                await deliver(link)
            except LinkClosed:
                link.abort()  # went away while idle: try once on a new connection
            except BaseException:
                link.abort()
                raise
            else:
                self._keep(address, link)
                return
        link = await PeerLink.open(address, self._me, self._key, self._limits, self._timeouts)
        try:
            await deliver(link)
        except BaseException:
            link.abort()
            raise
        self._keep(address, link)

    async def close(self) -> None:
        self._closed = True  # links still sending are closed when they come back
        for opening in self._opening.values():
            opening.cancel()
        await asyncio.gather(*self._opening.values(), return_exceptions=True)
        for lane in list(self._lanes.values()):
            lane.close()
        for links in self._idle.values():
            for link in links:
                self._closing_task(link.close())
        self._idle.clear()
        for handle in self._expiry.values():
            handle.cancel()
        self._expiry.clear()
        await asyncio.gather(*self._closing, return_exceptions=True)

    def _take(self, address: ev.PeerAddress) -> PeerLink | None:
        links = self._idle.get(address)
        while links:
            link = links.pop()
            self._expiry.pop(link).cancel()
            if link.usable:
                return link
            link.abort()
        self._idle.pop(address, None)
        return None

    def _keep(self, address: ev.PeerAddress, link: PeerLink) -> None:
        if self._closed:
            self._closing_task(link.close())
            return
        self._idle.setdefault(address, []).append(link)
        loop = asyncio.get_running_loop()
        self._expiry[link] = loop.call_later(self._idle_for, self._expire, address, link)

    def _expire(self, address: ev.PeerAddress, link: PeerLink) -> None:
        self._expiry.pop(link, None)
        links = self._idle.get(address)
        if links is not None and link in links:
            links.remove(link)
            if not links:
                del self._idle[address]
                if address not in self._busy:
                    self._slots.pop(address, None)
            self._closing_task(link.close())

    def _closing_task(self, closing: Coroutine[object, object, None]) -> None:
        """Run `closing` (a link's or a lane's close); `close` waits for it."""
        task = asyncio.get_running_loop().create_task(closing)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)


class _Writer(typing.Protocol):
    @property
    def transport(self) -> asyncio.WriteTransport: ...

    async def drain(self) -> None: ...


async def _drained(writer: _Writer, timeout: float) -> None:
    """Wait (at most `timeout`) for the peer to read, when more than the transport's
    high-water mark waits unsent; otherwise return at once, without a timer or a task."""
    transport = writer.transport
    if transport.get_write_buffer_size() > transport.get_write_buffer_limits()[1]:
        async with asyncio.timeout(timeout):
            await writer.drain()
