"""The asyncio adapter of a user module's connection to the directory server.

It only moves data: bytes from the transport into the sans-IO `DirectoryClientConnection`
and its events to the connection's owner (`DirectoryEvents`), requests the other way,
and the time to the state machine when the deadline it asked for comes up. The machine
owns every deadline (handshake, replies, heartbeats); the module's `DirectoryClient` and
the load generator's simulated users are two owners of the same adapter.
"""

from __future__ import annotations

import asyncio
import typing
from abc import ABC, abstractmethod

from mypy_extensions import mypyc_attr

from whatsap2p.config import Limits, Timeouts
from whatsap2p.errors import ProtocolError
from whatsap2p.net.deadlines import Deadlines
from whatsap2p.protocol import events as ev
from whatsap2p.protocol.directory import DirectoryClientConnection
from whatsap2p.protocol.keys import StaticKey
from whatsap2p.protocol.noise import COMPACT, NoiseChannel

__all__ = ["DirectoryConnection", "DirectoryEvents", "client_connection"]


def client_connection(
    now: float,
    key: StaticKey,
    limits: Limits,
    timeouts: Timeouts,
    server_fingerprint: str | None,
) -> DirectoryClientConnection:
    """A user module's side of a directory connection, before its handshake; with
    `server_fingerprint`, it refuses any server that proves another key."""
    channel = NoiseChannel(
        key,
        initiator=True,
        suite=COMPACT,
        max_body=limits.max_directory_answer,
        expected_fingerprint=server_fingerprint,
    )
    return DirectoryClientConnection(now, limits, timeouts, channel)


@mypyc_attr(allow_interpreted_subclasses=True)  # (the module's DirectoryClient is Python)
class DirectoryEvents(ABC):
    """What the owner of a directory connection hears from it. An abstract class, not a
    Protocol: compiled, the adapter calls its owner through the class's table."""

    @abstractmethod
    def established(self) -> None:
        """The secure channel is up: requests may be sent."""

    @abstractmethod
    def received(self, message: ev.DirectoryMessage) -> None:
        """An answer to a request, or a push (rid 0)."""

    @abstractmethod
    def lost(self, reason: BaseException) -> None:
        """The connection is gone (or going), and why: closed by either side, broken
        protocol (ProtocolError), or a deadline the machine saw pass (TimeoutError)."""


class DirectoryConnection(asyncio.Protocol):
    __slots__ = ("_conn", "_deadlines", "_entry", "_loop", "_owner", "_scheduled",
                 "_transport", "_up", "lost_reason")  # fmt: skip

    def __init__(
        self, conn: DirectoryClientConnection, deadlines: Deadlines, owner: DirectoryEvents
    ) -> None:
        self._conn = conn
        self._deadlines = deadlines
        self._owner = owner
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        #: This connection's live entry in the deadlines: when it comes up (None: no
        #: entry) and its number.
        self._scheduled: float | None = None
        self._entry = 0
        self._up = False
        #: Why the connection is gone (None while it is not).
        self.lost_reason: BaseException | None = None

    @property
    def server_key(self) -> bytes | None:
        """The key the server proved in the handshake."""
        return self._conn.remote_key

    @property
    def local_host(self) -> str | None:
        """The IP this connection leaves from: the module's address on its own network."""
        return self._host("sockname")

    @property
    def remote_host(self) -> str | None:
        """The server's IP, as this connection reaches it."""
        return self._host("peername")

    def _host(self, which: str) -> str | None:
        if self._transport is None:
            return None
        address = self._transport.get_extra_info(which)
        return str(address[0]) if isinstance(address, tuple) else None

    def next_rid(self) -> int:
        return self._conn.next_rid()

    # --- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = transport = typing.cast(asyncio.Transport, transport)
        transport.write(self._conn.data_to_send())  # the handshake's first message
        self._arm()

    def data_received(self, data: bytes) -> None:
        conn, transport = self._conn, self._transport
        assert transport is not None
        try:
            conn.receive_data(data, self._loop.time())
        except ProtocolError as exc:
            self.give_up(exc)
            return
        if not self._up:
            if handshake := conn.data_to_send():
                transport.write(handshake)
            if conn.established:
                self._up = True
                self._owner.established()
        self._deliver()
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(exc or ConnectionResetError("the server closed the connection"))

    # --- what the owner does ---------------------------------------------------------------

    def send(self, message: ev.DirectoryMessage) -> None:
        """Send a request (the connection must not be lost: see `lost_reason`)."""
        assert self._transport is not None
        self._transport.write(self._conn.send(message, self._loop.time()))
        self._arm()

    def close(self) -> None:
        """Close after what was written has gone out."""
        self._end(ConnectionAbortedError("closed by this module"))
        if self._transport is not None:
            self._transport.close()

    def give_up(self, reason: BaseException) -> None:
        """Drop the connection now: the owner hears `reason`."""
        self._end(reason)
        self.abort()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # --- the deadlines -------------------------------------------------------------------

    def entry_current(self, entry: int) -> bool:
        return entry == self._entry

    def deadline_reached(self) -> None:
        self._scheduled = None
        self._entry = 0
        conn = self._conn
        conn.handle_timer(self._loop.time())
        if (heartbeat := conn.data_to_send()) and self._transport is not None:
            self._transport.write(heartbeat)
        self._deliver()
        self._arm()

    def _arm(self) -> None:
        """Keep one entry in the deadlines, no later than the machine's next deadline. A
        deadline that moved later keeps the entry (it looks again when it comes up)."""
        when = None if self.lost_reason is not None else self._conn.get_timer()
        scheduled = self._scheduled
        if scheduled is not None:
            if when is not None and scheduled <= when:
                return
            self._deadlines.dropped()  # its entry is stale from now on
        self._scheduled = when
        self._entry = 0 if when is None else self._deadlines.push(when, self)

    # --- the rest --------------------------------------------------------------------------

    def _deliver(self) -> None:
        conn, owner = self._conn, self._owner
        while self.lost_reason is None and (event := conn.next_event()) is not None:
            if type(event) is ev.ConnectionTimedOut:
                self.give_up(TimeoutError(event.reason))
                return
            owner.received(typing.cast(ev.DirectoryMessage, event))

    def _end(self, reason: BaseException) -> None:
        if self.lost_reason is not None:
            return
        self.lost_reason = reason
        self._arm()  # (drops its entry)
        self._owner.lost(reason)
