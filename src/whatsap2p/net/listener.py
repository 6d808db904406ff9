"""The listener: accepts peer connections and feeds each through a `PeerReceiver`.

What a received message means (where a photo is written, who is told) is the app's
business, reached through the `Inbound` interface; this module only moves bytes and
time. The receiver owns its deadlines (handshake, hello, idle, stalled answers).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import typing
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Protocol

from whatsap2p.config import Limits, Timeouts
from whatsap2p.errors import (
    IncomingRefused,
    NoRoom,
    ProtocolError,
    RemoteProtocolError,
    WhatsAp2pError,
)
from whatsap2p.net.network import Listening, Network, TcpNetwork
from whatsap2p.net.relays import meet_each
from whatsap2p.protocol import events as ev
from whatsap2p.protocol.channel import Buffer
from whatsap2p.protocol.directory import TOKEN_BYTES
from whatsap2p.protocol.keys import StaticKey
from whatsap2p.protocol.noise import NoiseChannel
from whatsap2p.protocol.peer import REVERSE_PREFACE, PeerReceiver, ReceiverEvent, ReceiverState

__all__ = ["Inbound", "PeerListener", "PhotoSink"]

log = logging.getLogger(__name__)

_READ_SIZE = 256 * 1024
#: Bytes a receiver lets wait unread before it stops reading from the socket.
_INBOX_HIGH = 256 * 1024


def _rejected(message: str, why: WhatsAp2pError) -> ev.Rejected:
    """Message `message` refused: why, for people, and the code of a refusal for now."""
    return ev.Rejected(message, str(why), why.code if isinstance(why, IncomingRefused) else None)


class PhotoSink(Protocol):
    """Where the chunks of one incoming photo go."""

    #: How many of its bytes are already here (kept from an interrupted transfer).
    offset: int

    async def turn(self) -> None:
        """Once its bytes may come: the receiver writes a few photos at a time, and the
        others' senders wait for the answer to their offer meanwhile (so that a crowd of
        senders costs the memory of those few, see `Limits.max_photos_writing`)."""

    async def write(self, data: memoryview) -> None: ...

    async def complete(self, sha256: str) -> None:
        """All bytes are in, and the sender's digest of them: verify and store, or raise
        WhatsAp2pError saying why not."""

    def interrupted(self) -> None:
        """The transfer stopped short: keep what can be resumed (nothing after a failed
        write), show nothing."""


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
        self,
        inbound: Inbound,
        key: StaticKey,
        limits: Limits,
        timeouts: Timeouts,
        network: Network | None = None,
    ) -> None:
        self._inbound = inbound
        self._key = key
        self._limits = limits
        self._timeouts = timeouts
        self._network = network or TcpNetwork()
        self._server: Listening | None = None
        self._connections: dict[asyncio.Task[None], _Inbox] = {}
        self._per_ip: Counter[str] = Counter()
        self._arriving = _PhotosArriving(timeouts.supersede)
        #: Connections back we asked for (`expect`), by token, and ours being opened.
        self._expected: dict[bytes, asyncio.Future[asyncio.Transport]] = {}
        self._dialling: set[asyncio.Task[None]] = set()
        #: Peer connections taken since the start (senders keep theirs for a burst).
        self.accepted = 0

    def expect(self, token: bytes) -> asyncio.Future[asyncio.Transport]:
        """The connection a module will open to us saying `token` (we asked it to, through
        the server: `reverse`); `forget(token)` once no longer waited for."""
        arrival: asyncio.Future[asyncio.Transport] = asyncio.get_running_loop().create_future()
        self._expected[token] = arrival
        return arrival

    def forget(self, token: bytes) -> None:
        self._expected.pop(token, None)

    def dial_back(self, peer: ev.PeerAddress, token: bytes, punch: int | None = None) -> None:
        """Connect to `peer`, which asked us to through the server (it cannot reach us),
        say `token`, and take its messages as if it had connected to us; with `punch`
        (the port the server sees it at), also punch a hole: connect to it there from
        the port we listen on, as it does towards us at the same moment, and take its
        messages on that connection alike."""
        self._connect_out(peer.phone, peer.host, peer.port, REVERSE_PREFACE + token)
        if punch is not None and self._server is not None:
            self._connect_out(peer.phone, peer.host, punch, b"", self._server.address[1])

    def meet(
        self, peer: ev.PeerAddress, relays: tuple[ev.RelayAddress, ...], ticket: bytes,
        server_host: str,
    ) -> None:  # fmt: skip
        """Meet `peer`, which cannot reach us by any direct way, at `relays` with `ticket`
        (see relays.meet_each), and take its messages where it starts its handshake as
        if it had connected to us (limited as connections from its number, not from the
        relay's address, which all relayed peers share)."""
        self._going_out(self._met(peer.phone, relays, ticket, server_host))

    async def _met(
        self, phone: str, relays: tuple[ev.RelayAddress, ...], ticket: bytes, server_host: str
    ) -> None:
        def joined(transport: asyncio.Transport, rest: bytes) -> None:
            inbox = _Inbox(functools.partial(self._serve, source=f"{phone} (relayed)"))
            transport.set_protocol(inbox)
            inbox.connection_made(transport)
            if rest:
                inbox.data_received(rest)
            transport.resume_reading()

        why = await meet_each(self._network, relays, ticket, self._timeouts, server_host, joined)
        if len(why) == len(relays):
            log.info("cannot meet %s at a relay: %s", phone, "; ".join(why))

    def _connect_out(
        self, phone: str, host: str, port: int, preface: bytes, local_port: int | None = None
    ) -> None:
        self._going_out(self._connected_out(phone, host, port, preface, local_port))

    def _going_out(self, work: Coroutine[object, object, None]) -> None:
        """A connection we open on a peer's request (back to it, a hole, a relay): held
        until it is made or given up, and cancelled when we close."""
        task = asyncio.get_running_loop().create_task(work)
        self._dialling.add(task)
        task.add_done_callback(self._dialling.discard)

    async def _connected_out(
        self, phone: str, host: str, port: int, preface: bytes, local_port: int | None
    ) -> None:
        async def serve(connection: _Inbox) -> None:
            if preface:
                connection.write(preface)
            await self._serve(connection)

        how = "a hole to" if local_port is not None else "back to"
        try:
            await self._network.connect(
                host, port, lambda: _Inbox(serve), self._timeouts.connect, local_port
            )
        except (OSError, TimeoutError) as exc:
            log.info("cannot connect %s %s at %s:%s: %s", how, phone, host, port, exc)
        else:
            log.info("connected %s %s at %s:%s", how, phone, host, port)

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Bind and start accepting; returns the address actually bound."""
        # (connections leave from its port too: to the server, and to punch holes)
        self._server = await self._network.listen(
            host, port, lambda: _Inbox(self._serve), reuse_port=True
        )
        return self._server.address

    async def settled(self) -> None:
        """Once every connection that has ended (closed by either side, or lost) has been
        handled to its end: a photo cut off is kept for a resume, a refusal is sent."""
        ending = [task for task, inbox in self._connections.items() if inbox.ended]
        await asyncio.gather(*ending, return_exceptions=True)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for dialling in list(self._dialling):
            dialling.cancel()
        await asyncio.gather(*self._dialling, return_exceptions=True)
        # Abort rather than cancel: the tasks then end normally (see server/service.py).
        for connection in self._connections.values():
            connection.transport.abort()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, connection: _Inbox, source: str | None = None) -> None:
        """Serve `connection`, within the limits on connections at once, in all and from
        its `source` (its IP address unless given)."""
        peer = connection.get_extra_info("peername")
        ip = source or (str(peer[0]) if peer else "?")
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
        handed_over = False
        accepted = asyncio.get_running_loop().time()  # (one handshake deadline from here)
        try:
            handed_over = await self._handed_over(connection, accepted)
            if not handed_over:
                await _ReceiverSession(
                    self._inbound,
                    self._key,
                    connection,
                    self._limits,
                    self._timeouts,
                    self._arriving,
                    accepted,
                ).run()
        except TimeoutError:
            log.info("peer %s said nothing in time", peer)
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
            if not handed_over:
                connection.close()
                with contextlib.suppress(OSError):
                    await connection.wait_closed()

    async def _handed_over(self, connection: _Inbox, accepted: float) -> bool:
        """Whether `connection` is one we asked a module to open to us (it says a token we
        are waiting for, see `expect`): then it is handed to whoever waits for it. Any
        other starts with a frame: its first bytes are left to be read."""
        async with asyncio.timeout_at(accepted + self._timeouts.handshake):
            data = await connection.read()
            if data[:1] != REVERSE_PREFACE[:1]:
                connection.unread(data)
                return False
            wanted = len(REVERSE_PREFACE) + TOKEN_BYTES
            while len(data) < wanted and (more := await connection.read()):
                data += more
        if len(data) != wanted or not data.startswith(REVERSE_PREFACE):
            raise RemoteProtocolError("not a frame, nor a connection back")
        arrival = self._expected.pop(data[len(REVERSE_PREFACE) :], None)
        if arrival is None or arrival.done():
            raise RemoteProtocolError("a connection back that nobody here asked for")
        arrival.set_result(connection.transport)
        return True


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

    def unread(self, data: bytes) -> None:
        """Put `data` back: the next read returns it first."""
        if data:
            self._chunks.appendleft(data)
            self._waiting += len(data)

    @property
    def paused(self) -> bool:
        """Our writes wait in a full buffer: the peer does not read them fast enough."""
        return self._writable is not None

    def write(self, data: bytes | bytearray) -> None:
        if self.transport.is_closing():
            # (uvloop raises RuntimeError writing to a closed transport, not OSError)
            raise ConnectionResetError("connection lost")
        self.transport.write(data)

    def write_eof(self) -> None:
        if self.transport.can_write_eof() and not self.transport.is_closing():
            self.transport.write_eof()

    async def drain(self) -> None:
        if self.transport.is_closing() and self._closed.done():
            raise ConnectionResetError("connection lost")
        if self._writable is not None:
            await asyncio.shield(self._writable)

    @property
    def ended(self) -> bool:
        """The other side closed the connection, or it was lost."""
        return self._eof

    def get_extra_info(self, name: str) -> typing.Any:
        return self.transport.get_extra_info(name)

    def close(self) -> None:
        self.transport.close()

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)

    def _wake_reader(self) -> None:
        if self._readable is not None and not self._readable.done():
            self._readable.set_result(None)


class _PhotosArriving:
    """The photos arriving, by sender and photo. A photo offered again while an earlier
    transfer of it is under way waits (`Timeouts.supersede`) for that one to end: its
    sender most likely gave up on it, which the receiver may not have noticed yet (a
    connection lost stays quiet until its reset is read, or its idle deadline). Once it
    ended, the photo resumes from what it kept, and its room and allowance are free
    again. The same message offered again (a retry) ends the earlier transfer at once;
    another message of the same photo (sent twice at once) waits, then arrives apart."""

    def __init__(self, wait: float) -> None:
        self._wait = wait
        self._by_photo: dict[tuple[str, str, int], _Arriving] = {}

    async def take(self, sender: str, offer: ev.PhotoOffer, connection: _Inbox) -> None:
        photo = (sender, offer.key, offer.size)
        earlier = self._by_photo.get(photo)
        if earlier is not None and earlier.connection is not connection:
            if earlier.id == offer.id:
                log.info("%s offers photo %s again: ending its earlier transfer", sender, offer.id)
                earlier.connection.transport.abort()
            await asyncio.wait([earlier.task], timeout=self._wait)
        task = asyncio.current_task()
        assert task is not None
        self._by_photo[photo] = _Arriving(offer.id, connection, task)

    def release(self, sender: str, offer: ev.PhotoOffer, connection: _Inbox) -> None:
        photo = (sender, offer.key, offer.size)
        earlier = self._by_photo.get(photo)
        if earlier is not None and earlier.connection is connection:
            del self._by_photo[photo]


@dataclass(frozen=True, slots=True)
class _Arriving:
    id: str
    connection: _Inbox
    task: asyncio.Task[None]


class _ReceiverSession:
    """One incoming connection, from hello to close."""

    def __init__(
        self,
        inbound: Inbound,
        key: StaticKey,
        connection: _Inbox,
        limits: Limits,
        timeouts: Timeouts,
        arriving: _PhotosArriving,
        accepted: float,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._inbound = inbound
        self._io = connection
        self._timeouts = timeouts
        channel = NoiseChannel(key, initiator=False, max_body=limits.max_peer_frame)
        self._conn = PeerReceiver(accepted, limits, timeouts, channel)
        self._arriving = arriving
        #: The photo under way on this connection (its offer), and where its bytes go.
        self._photo: ev.PhotoOffer | None = None
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
            self._photo_ended()

    async def _turn(self) -> bool | None:
        """Wait for the offered photo's turn to be written: True once it came; False if it
        did not within `Timeouts.turn_wait`; None if the connection ended meanwhile."""
        assert self._sink is not None
        turn = asyncio.ensure_future(self._sink.turn())
        ended = asyncio.ensure_future(self._io.wait_closed())
        try:
            await asyncio.wait(
                (turn, ended), timeout=self._timeouts.turn_wait, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            ended.cancel()
            if not turn.done():
                turn.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await turn
        if turn.cancelled():
            return None if ended.done() and not ended.cancelled() else False
        return True

    def _photo_ended(self) -> None:
        """The photo under way is stored, refused or cut off (its sink told already)."""
        self._sink = None
        if self._photo is not None:
            assert self._conn.peer_phone is not None
            self._arriving.release(self._conn.peer_phone, self._photo, self._io)
            self._photo = None

    async def _linger(self) -> None:
        # Closing with unread bytes makes the kernel send a reset, which can destroy the
        # Rejected we just wrote before the sender reads it: half-close, drain, then close.
        with contextlib.suppress(OSError, TimeoutError):
            self._io.write_eof()
            async with asyncio.timeout(self._timeouts.refusal_grace):
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
            sender = self._conn.peer_phone
            assert sender is not None
            await self._arriving.take(sender, event, self._io)
            self._photo = event
            try:
                self._sink = self._inbound.photo_offered(sender, event)
            except WhatsAp2pError as exc:
                self._photo_ended()
                await self._answer(_rejected(event.id, exc))
                return True
            if self._sink is None:
                self._photo_ended()
                await self._answer(ev.Ack(event.id))  # already stored: no bytes needed
            else:
                turn = await self._turn()
                if turn is None:  # the connection ended while it waited
                    return False
                if not turn:
                    self._sink.interrupted()
                    self._photo_ended()
                    busy = NoRoom("the receiver is taking other photos: try again later")
                    await self._answer(_rejected(event.id, busy))
                    return True
                await self._answer(ev.Resume(event.id, self._sink.offset))
        elif isinstance(event, ev.PhotoChunk):
            assert self._sink is not None
            try:
                await self._sink.write(event.data)
            except WhatsAp2pError as exc:
                self._sink.interrupted()  # (what it wrote is removed: a write failed)
                self._photo_ended()
                await self._answer(_rejected(event.id, exc))
                return False
        elif isinstance(event, ev.PhotoCompleted):
            sink = self._sink
            assert sink is not None
            try:
                await sink.complete(event.sha256)
            except WhatsAp2pError as exc:
                await self._answer(_rejected(event.id, exc))
            else:
                await self._answer(ev.Ack(event.id))
            finally:
                self._photo_ended()
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
                answers.append(_rejected(text.id, exc))
            else:
                answers.append(ev.Ack(text.id))
        await self._send(b"".join([self._conn.send(answer) for answer in answers]))

    async def _answer(self, answer: ev.Ack | ev.Rejected | ev.Resume | ev.Closing) -> None:
        await self._send(self._conn.send(answer))

    async def _send(self, data: Buffer) -> None:
        """Write `data`; while the peer does not read it, wait, within the receiver's
        deadlines (TimeoutError once one passes: the connection is then closed)."""
        io, conn = self._io, self._conn
        io.write(data)
        if not io.paused:
            return
        conn.writing_paused(self._loop.time())
        while io.paused:
            timer = conn.get_timer()
            try:
                async with asyncio.timeout_at(timer):
                    await io.drain()
            except TimeoutError:
                conn.handle_timer(self._loop.time())
                if conn.state is ReceiverState.CLOSED:  # (a deadline passed: it says which)
                    raise TimeoutError("the sender stopped reading, or went quiet") from None
        conn.writing_resumed()
