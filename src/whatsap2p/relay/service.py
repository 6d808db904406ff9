"""The relay process's network side: accepts modules' connections, reads each one's
preface, lets the pairing (relay/pairing.py) decide, and forwards a joined pair's bytes
both ways.

Each connection is an `asyncio.Protocol`, not a task with streams: the bytes a half reads
are written to its other half's transport in the same callback (uvloop sends them at once
when the socket has room), so forwarding costs one copy and no buffer of ours. Nothing
is held that flow control does not bound: a half waiting for its pair says nothing (a
byte from it closes it); a half whose other half's write buffer is past the high-water
mark is not read until it drains; a half over its byte rate is not read until its
allowance is back. Deadlines
(preface, wait, idle) share one loop timer, as the directory's connections do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass, field

from whatsap2p.errors import RemoteProtocolError
from whatsap2p.net.deadlines import Deadlines
from whatsap2p.net.network import Listening, Network, TcpNetwork
from whatsap2p.protocol.relay import PrefaceDecoder, Status, TokenRefused, verify
from whatsap2p.relay.allowance import Allowance, Allowances
from whatsap2p.relay.limits import RelayLimits
from whatsap2p.relay.metrics import RelayMetrics
from whatsap2p.relay.pairing import Joined, Pairing, Refused, Waiting, source_of

__all__ = ["RelayConfig", "RelayServer"]

log = logging.getLogger(__name__)

# A half's states (an int compared in the forwarding path, not an enum's attribute).
_PREFACE: typing.Final = 0
_WAITING: typing.Final = 1
_FORWARDING: typing.Final = 2
_CLOSED: typing.Final = 3  # refused, dropped, or its connection ended

# Why a half's reading is paused: a bit each, read again when none is left.
_HELD_PEER_FULL: typing.Final = 2  # its other half's write buffer is past the high-water mark
_HELD_RATE: typing.Final = 4  # over its pair's or its source's byte rate

_REASONS: typing.Final = {
    Status.FORGED: "forged",
    Status.EXPIRED: "expired",
    Status.REPLAYED: "replayed",
    Status.BUSY: "busy",
    Status.TIMEOUT: "timeout",
}
_STATUS_BYTES: typing.Final = {status: bytes((status,)) for status in Status}


@dataclass(frozen=True, slots=True)
class RelayConfig:
    secret: bytes
    host: str = "127.0.0.1"
    port: int = 5560
    limits: RelayLimits = field(default_factory=RelayLimits)


class RelayServer:
    def __init__(self, config: RelayConfig, clock: Callable[[], float] = time.time) -> None:
        """`clock`: unix seconds, what token expiries are read against."""
        self.config = config
        self.limits = config.limits
        self.clock = clock
        self.pairing: Pairing[_Half] = Pairing(config.limits)
        self.allowances = Allowances(
            config.limits.ip_rate, config.limits.ip_burst, config.limits.max_ips
        )
        self.metrics = RelayMetrics(self._counts)
        self.deadlines = Deadlines()
        self.connections: set[_Half] = set()
        self._server: Listening | None = None
        self._all_lost: asyncio.Future[None] | None = None

    async def start(self, network: Network | None = None) -> tuple[str, int]:
        """Bind (on TCP, or the `network` given); returns the address actually bound."""
        self._server = await (network or TcpNetwork()).listen(
            self.config.host, self.config.port, lambda: _Half(self)
        )
        return self._server.address

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        if self.connections:
            self._all_lost = asyncio.get_running_loop().create_future()
            for half in list(self.connections):
                half.abort()
            with contextlib.suppress(TimeoutError):  # bounded, should a transport not say
                async with asyncio.timeout(5.0):
                    await self._all_lost
        if self._server is not None:
            await self._server.wait_closed()
        self.deadlines.close()
        self.metrics.close()

    def lost(self, half: _Half) -> None:
        self.connections.discard(half)
        if not self.connections and self._all_lost is not None and not self._all_lost.done():
            self._all_lost.set_result(None)

    def buffered(self) -> int:
        """Bytes held in the connections' write buffers now: what flow control bounds
        (by `write_high` and one read, for each connection written to)."""
        return sum(half.buffered for half in list(self.connections))

    def _counts(self) -> tuple[int, int, int, int]:
        pairing = self.pairing
        return pairing.prefacing, pairing.waiting, pairing.sessions, self.buffered()


class _Session:
    """A joined pair: its byte allowance (both ways together) and its idle deadline."""

    __slots__ = ("_entry", "_open", "_relay", "allowance", "halves", "last")

    def __init__(self, relay: RelayServer, halves: tuple[_Half, _Half], now: float) -> None:
        self._relay = relay
        self.halves: tuple[_Half, ...] = halves  # (none once both have ended)
        limits = relay.limits
        self.allowance = Allowance(limits.session_rate, limits.session_burst, now)
        self.last = now  # when a byte last moved, either way (loop time)
        self._open = 2  # halves whose connection has not ended yet
        self._entry = relay.deadlines.push(now + limits.idle_timeout, self)

    def entry_current(self, entry: int) -> bool:
        return entry == self._entry

    def deadline_reached(self) -> None:
        relay = self._relay
        now = asyncio.get_running_loop().time()
        idle = relay.limits.idle_timeout
        if now < self.last + idle:
            self._entry = relay.deadlines.push(self.last + idle, self)
            return
        self._entry = 0
        relay.metrics.idle_closed += 1
        self.abort()

    def abort(self) -> None:
        for half in self.halves:
            half.abort()

    def half_lost(self) -> None:
        """One of its halves' connection ended; after the second, its deadline goes."""
        self._open -= 1
        if not self._open:
            self.halves = ()
            if self._entry:
                self._entry = 0
                self._relay.deadlines.dropped()


class _Half(asyncio.Protocol):
    """One module's connection to the relay."""

    __slots__ = (
        "__weakref__",
        "_allowance",
        "_deadline",
        "_entry",
        "_eof",
        "_held",
        "_loop",
        "_peer",
        "_peer_transport",
        "_preface",
        "_rate_timer",
        "_relay",
        "_session",
        "_source",
        "_state",
        "_transport",
    )

    def __init__(self, relay: RelayServer) -> None:
        self._relay = relay
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._source = "?"
        self._state = _PREFACE
        self._preface: PrefaceDecoder | None = PrefaceDecoder()
        self._peer: _Half | None = None
        self._peer_transport: asyncio.Transport | None = None
        self._session: _Session | None = None
        self._allowance: Allowance | None = None
        self._held = 0
        self._rate_timer: asyncio.TimerHandle | None = None
        self._eof = False
        #: This half's live entry in the relay's deadlines (0: none), and when it is due.
        self._entry = 0
        self._deadline = 0.0

    # --- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = transport = typing.cast(asyncio.Transport, transport)
        relay = self._relay
        relay.connections.add(self)
        peer = transport.get_extra_info("peername")
        self._source = source_of(str(peer[0]) if peer else "?")
        admitted = relay.pairing.connected(self, self._source)
        if isinstance(admitted, Refused):
            self._refuse(admitted.status)
            return
        if admitted.evicted is not None:
            admitted.evicted.drop("evicted")
        transport.set_write_buffer_limits(high=relay.limits.write_high)
        self._arm(self._loop.time() + relay.limits.preface_timeout)

    def data_received(self, data: bytes) -> None:
        if self._state != _FORWARDING:
            self._preface_received(data)
            return
        # The hot path: every forwarded byte passes here once.
        peer_transport = self._peer_transport
        assert peer_transport is not None
        peer_transport.write(data)
        size = len(data)
        relay = self._relay
        relay.metrics.forwarded += size
        now = self._loop.time()
        session = self._session
        assert session is not None
        session.last = now
        wait = session.allowance.spend(size, now)
        assert self._allowance is not None
        wait = max(wait, self._allowance.spend(size, now))
        if wait > 0.0:
            self._throttle(wait)

    def eof_received(self) -> bool:
        if self._state != _FORWARDING:
            self.drop(None)
            return False
        # Half a close: passed on, and the other way stays open until it closes too.
        self._eof = True
        peer, peer_transport = self._peer, self._peer_transport
        assert peer is not None
        assert peer_transport is not None
        if not peer_transport.is_closing():
            peer_transport.write_eof()
        if peer._eof:
            self.close()
            peer.close()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._state = _CLOSED
        self._disarm()
        if self._rate_timer is not None:
            self._rate_timer.cancel()
            self._rate_timer = None
        relay = self._relay
        relay.pairing.gone(self)
        session, peer = self._session, self._peer
        if session is not None and peer is not None:
            if peer._state == _FORWARDING:
                peer.close()  # once what we sent it has gone out
            session.half_lost()
        self._session = self._peer = self._peer_transport = None  # (no cycles left)
        relay.lost(self)

    def pause_writing(self) -> None:
        # Our client reads slower than its other half sends: stop reading that one.
        if self._peer is not None:
            self._peer._hold(_HELD_PEER_FULL)

    def resume_writing(self) -> None:
        if self._peer is not None:
            self._peer._release(_HELD_PEER_FULL)

    # --- what the relay and the deadlines call -------------------------------------------

    @property
    def buffered(self) -> int:
        transport = self._transport
        return 0 if transport is None else transport.get_write_buffer_size()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def close(self) -> None:
        """Close once what is written has gone (a half still being forwarded to)."""
        if self._transport is not None:
            self._transport.close()

    def drop(self, reason: str | None) -> None:
        """Close without a word (not a module speaking our protocol, or too slow to)."""
        if reason is not None:
            self._relay.metrics.refused(reason)
            log.info("closed a connection from %s: %s", self._source, reason)
        self._end()
        if self._transport is not None:
            self._transport.close()

    def entry_current(self, entry: int) -> bool:
        return entry == self._entry

    def deadline_reached(self) -> None:
        self._entry = 0
        if self._loop.time() < self._deadline:  # it moved later: take an entry for it
            self._entry = self._relay.deadlines.push(self._deadline, self)
        elif self._state == _PREFACE:
            self.drop("slow")
        elif self._state == _WAITING:
            self._refuse(Status.TIMEOUT)

    # --- internals -------------------------------------------------------------------------

    def _preface_received(self, data: bytes) -> None:
        if self._state == _WAITING:  # (a module says nothing until it is joined)
            self.drop("garbled")
            return
        if self._state != _PREFACE or self._preface is None:
            return  # (refused or closing: what it still sends is dropped)
        try:
            token = self._preface.receive_data(data)
        except RemoteProtocolError:
            self.drop("garbled")
            return
        if token is None:
            return
        self._preface = None
        relay = self._relay
        limits = relay.limits
        now = relay.clock()
        try:
            verified = verify(
                relay.config.secret, token, now, limits.clock_skew, limits.token_ahead
            )
        except TokenRefused as exc:
            self._refuse(exc.status)
            return
        outcome = relay.pairing.presented(self, verified, now)
        if isinstance(outcome, Waiting):
            # (still read: a byte from it is garbled, and its module leaving is seen at
            # once, its place given up)
            self._state = _WAITING
            self._arm(self._loop.time() + limits.wait_timeout)
        elif isinstance(outcome, Joined):
            self._join(outcome.other)
        else:
            if outcome.also is not None:
                outcome.also._refuse(outcome.status)
            self._refuse(outcome.status)

    def _join(self, other: _Half) -> None:
        log.info("joined %s and %s", other._source, self._source)
        relay = self._relay
        now = self._loop.time()
        session = _Session(relay, (other, self), now)
        relay.metrics.joined += 1
        joined = _STATUS_BYTES[Status.JOINED]
        for half, peer in ((other, self), (self, other)):
            half._disarm()
            half._state = _FORWARDING
            half._session = session
            half._peer = peer
            half._peer_transport = peer._transport
            half._allowance = relay.allowances.of(half._source, now)
            transport = half._transport
            assert transport is not None
            if not transport.is_closing():  # (one closing: its connection_lost ends both)
                transport.write(joined)

    def _refuse(self, status: Status) -> None:
        """Answer `status` and close."""
        self._relay.metrics.refused(_REASONS[status])
        log.info("refused a connection from %s: %s", self._source, _REASONS[status])
        self._end()
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(_STATUS_BYTES[status])
            transport.close()

    def _end(self) -> None:
        """No longer waiting, prefacing or timed: what remains is for the transport to
        close (and say so in connection_lost)."""
        self._state = _CLOSED
        self._preface = None
        self._disarm()
        self._relay.pairing.gone(self)

    def _hold(self, why: int) -> None:
        transport = self._transport
        if not self._held and transport is not None and not transport.is_closing():
            transport.pause_reading()
        self._held |= why

    def _release(self, why: int) -> None:
        if not self._held & why:
            return
        self._held &= ~why
        transport = self._transport
        if not self._held and transport is not None and not transport.is_closing():
            transport.resume_reading()

    def _throttle(self, wait: float) -> None:
        self._relay.metrics.throttled += 1
        if self._rate_timer is not None:
            self._rate_timer.cancel()
        self._hold(_HELD_RATE)
        self._rate_timer = self._loop.call_later(wait, self._unthrottle)

    def _unthrottle(self) -> None:
        self._rate_timer = None
        if self._session is not None:  # waiting for its rate is not being idle
            self._session.last = self._loop.time()
        self._release(_HELD_RATE)

    def _arm(self, when: float) -> None:
        """Keep an entry in the relay's deadlines no later than `when`: a deadline moved
        later keeps its entry (which takes a new one when it comes up)."""
        entry, earlier = self._entry, self._deadline
        self._deadline = when
        if entry and earlier <= when:
            return
        deadlines = self._relay.deadlines
        if entry:
            deadlines.dropped()
        self._entry = deadlines.push(when, self)

    def _disarm(self) -> None:
        if self._entry:
            self._entry = 0
            self._relay.deadlines.dropped()
