"""The directory protocol between a user module (client) and the central server.

The server side enforces the order: a connection must register (within a deadline) before
it may look anyone up, one registration per connection, and a connection that stays
silent past the idle deadline is timed out. The client side checks that every answer
matches a request it has outstanding.
"""

from __future__ import annotations

import enum
import re
from collections import deque
from typing import Final, cast

from whatsap2p.config import Limits, Timeouts
from whatsap2p.errors import LocalProtocolError, RemoteProtocolError
from whatsap2p.protocol import events as ev
from whatsap2p.protocol.channel import Buffer, Channel, OverChannel, PlainChannel
from whatsap2p.protocol.codec import decode_message, encode_message

__all__ = [
    "TOKEN_BYTES",
    "DirectoryClientConnection",
    "DirectoryServerConnection",
    "ServerState",
]

E164: Final = re.compile(r"\+[1-9][0-9]{1,14}")

# The kinds of message, as sets of classes checked with `type(message) in ...`: every
# message class is a leaf, and isinstance() against a msgspec Struct class that does not
# match goes through its metaclass (a Python call each, several on every request's path).
_REQUESTS: Final = frozenset(
    {ev.Register, ev.Lookup, ev.Watch, ev.Reverse, ev.Relay, ev.Report, ev.Unregister, ev.Ping}
)
_ANSWERS: Final = frozenset(
    {
        ev.Registered,
        ev.LookupResult,
        ev.Watching,
        ev.Reversing,
        ev.Reported,
        ev.Relaying,
        ev.Unregistered,
        ev.Pong,
        ev.Failure,
    }
)
_ANSWER_TO: Final[dict[type[ev.Message], type[ev.Message]]] = {
    ev.Register: ev.Registered,
    ev.Lookup: ev.LookupResult,
    ev.Watch: ev.Watching,
    ev.Reverse: ev.Reversing,
    ev.Report: ev.Reported,
    ev.Relay: ev.Relaying,
    ev.Unregister: ev.Unregistered,
    ev.Ping: ev.Pong,
}
#: What the server sends on its own (rid 0), not as an answer.
_PUSHES: Final = frozenset({ev.Online, ev.Dial, ev.Relayed, ev.Failure})
#: The bytes of a `reverse` token.
TOKEN_BYTES: Final = 16
#: At most this many relays in `relaying` / `relayed`, and bytes in their ticket.
MAX_RELAYS: Final = 8
MAX_TICKET_BYTES: Final = 256
_FROM_SERVER: Final = _ANSWERS | _PUSHES


class ServerState(enum.Enum):
    NEW = "new"  # connected, not registered
    REGISTERED = "registered"
    CLOSED = "closed"  # unregistered, timed out, or broke the protocol

    # Members are singletons compared by identity: hash them so too, in C (Enum's own
    # __hash__ is Python, and the state tables below are looked up on every message).
    __hash__ = object.__hash__


# (state, request type) -> allowed. Anything not listed is a remote protocol error.
_SERVER_ACCEPTS: Final[dict[tuple[ServerState, type[ev.Message]], bool]] = {
    (ServerState.NEW, ev.Register): True,
    (ServerState.NEW, ev.Ping): True,
    (ServerState.REGISTERED, ev.Lookup): True,
    (ServerState.REGISTERED, ev.Watch): True,
    (ServerState.REGISTERED, ev.Reverse): True,
    (ServerState.REGISTERED, ev.Report): True,
    (ServerState.REGISTERED, ev.Relay): True,
    (ServerState.REGISTERED, ev.Ping): True,
    (ServerState.REGISTERED, ev.Unregister): True,
}

# (state, answer type) -> next state.
_SERVER_SENDS: Final[dict[tuple[ServerState, type[ev.Message]], ServerState]] = {
    (ServerState.NEW, ev.Registered): ServerState.REGISTERED,
    (ServerState.NEW, ev.Failure): ServerState.NEW,
    (ServerState.NEW, ev.Pong): ServerState.NEW,
    (ServerState.REGISTERED, ev.LookupResult): ServerState.REGISTERED,
    (ServerState.REGISTERED, ev.Watching): ServerState.REGISTERED,
    (ServerState.REGISTERED, ev.Online): ServerState.REGISTERED,
    (ServerState.REGISTERED, ev.Reversing): ServerState.REGISTERED,
    (ServerState.REGISTERED, ev.Dial): ServerState.REGISTERED,
    (ServerState.REGISTERED, ev.Reported): ServerState.REGISTERED,
    (ServerState.REGISTERED, ev.Relaying): ServerState.REGISTERED,
    (ServerState.REGISTERED, ev.Relayed): ServerState.REGISTERED,
    (ServerState.REGISTERED, ev.Pong): ServerState.REGISTERED,
    (ServerState.REGISTERED, ev.Failure): ServerState.REGISTERED,
    (ServerState.REGISTERED, ev.Unregistered): ServerState.CLOSED,
}


class DirectoryServerConnection(OverChannel):
    """The server's view of one user module's connection. Sans-IO; time is passed in."""

    def __init__(
        self,
        now: float,
        limits: Limits | None = None,
        timeouts: Timeouts | None = None,
        channel: Channel | None = None,
    ) -> None:
        self.limits = limits or Limits()
        self.timeouts = timeouts or Timeouts()
        self.state = ServerState.NEW
        self._channel = channel or PlainChannel(self.limits.max_directory_frame)
        self._events: deque[ev.Message | ev.ConnectionTimedOut] = deque()
        self._deadline = now + (
            self.timeouts.register_deadline
            if self._channel.established
            else self.timeouts.handshake
        )
        self._pending: set[int] = set()
        self._now = now
        #: Since when our answers do not drain (None: they do).
        self._stalled_since: float | None = None

    def writing_paused(self, now: float) -> None:
        """Our answers no longer drain: the client stopped reading them."""
        if self._stalled_since is None:
            self._stalled_since = now

    def writing_resumed(self) -> None:
        self._stalled_since = None

    def receive_data(self, data: Buffer, now: float) -> None:
        """Bytes from the client. Raises RemoteProtocolError; the caller then closes."""
        if self.state is ServerState.CLOSED:
            return
        self._now = now
        was_established = self._channel.established
        self._channel.receive_data(data)
        while (body := self._channel.next_body()) is not None:
            message = decode_message(body)
            self._accept(message)
            if self.state is ServerState.REGISTERED:
                self._deadline = now + self.timeouts.server_idle
            self._events.append(message)
        if not was_established and self._channel.established:
            self._deadline = now + self.timeouts.register_deadline

    def _accept(self, message: ev.Message) -> None:
        if type(message) not in _REQUESTS:
            raise RemoteProtocolError(f"a client may not send {message.TYPE!r}")
        message = cast(ev.DirectoryMessage, message)  # (what the set says, for the checker)
        if not _SERVER_ACCEPTS.get((self.state, type(message))):
            raise RemoteProtocolError(f"{message.TYPE!r} is not allowed when {self.state.value}")
        if message.rid <= 0:
            raise RemoteProtocolError("request ids start at 1 (0 is the server's pushes)")
        if message.rid in self._pending:
            raise RemoteProtocolError(f"request id {message.rid} is already in use")
        if type(message) is ev.Register:
            if self._pending:
                raise RemoteProtocolError("register must wait for the answers it follows")
            _check_phone(message.phone)
            if not 0 < message.port < 65536:
                raise RemoteProtocolError(f"invalid port {message.port}")
            if message.host is not None and not 0 < len(message.host) <= 255:
                raise RemoteProtocolError("invalid advertised host")
            if message.local is not None and not 0 < len(message.local) <= 64:
                raise RemoteProtocolError("invalid local address")
        elif type(message) is ev.Reverse:
            _check_phone(message.phone)
            if len(message.token) != TOKEN_BYTES:
                raise RemoteProtocolError(f"a token is {TOKEN_BYTES} bytes")
            if message.punch is not None and not 0 < message.punch < 65536:
                raise RemoteProtocolError(f"invalid port {message.punch}")
        elif type(message) is ev.Relay:
            _check_phone(message.phone)
        elif type(message) is ev.Report:
            if message.route not in ev.ROUTES:
                raise RemoteProtocolError(f"no such route: {message.route[:16]!r}")
            if message.token is not None and len(message.token) != TOKEN_BYTES:
                raise RemoteProtocolError(f"a token is {TOKEN_BYTES} bytes")
        elif type(message) is ev.Lookup or type(message) is ev.Watch:
            if len(message.phones) > self.limits.max_lookup_phones:
                raise RemoteProtocolError(
                    f"a lookup may ask for at most {self.limits.max_lookup_phones} numbers"
                )
            for phone in message.phones:
                if len(phone) > self.limits.max_phone_chars:
                    raise RemoteProtocolError("phone number too long")
        self._pending.add(message.rid)

    def next_event(self) -> ev.Message | ev.ConnectionTimedOut | None:
        return self._events.popleft() if self._events else None

    def has_events(self) -> bool:
        return bool(self._events)

    def send(self, message: ev.Message) -> Buffer:
        if type(message) not in _FROM_SERVER:
            raise LocalProtocolError(f"the server does not send {message.TYPE!r}")
        message = cast(ev.DirectoryMessage, message)
        next_state = _SERVER_SENDS.get((self.state, type(message)))
        if next_state is None:
            raise LocalProtocolError(f"cannot send {message.TYPE!r} when {self.state.value}")
        pushed = type(message) in _PUSHES and message.rid == 0
        if message.rid not in self._pending and not pushed:
            raise LocalProtocolError(f"no request {message.rid} to answer")
        self._pending.discard(message.rid)
        if next_state is ServerState.REGISTERED and self.state is not ServerState.REGISTERED:
            # Registered from now on: the idle deadline replaces the registration one,
            # counted from the request's arrival (the latest time we were given).
            self._deadline = self._now + self.timeouts.server_idle
        self.state = next_state
        return self._channel.seal(encode_message(message))

    def get_timer(self) -> float | None:
        """The handshake, registration or idle deadline, or the stalled answers' (no
        draining for `write_drain`), whichever comes first."""
        if self.state is ServerState.CLOSED:
            return None
        stalled = self._stalled_since
        if stalled is not None and stalled + self.timeouts.write_drain < self._deadline:
            return stalled + self.timeouts.write_drain
        return self._deadline

    def handle_timer(self, now: float) -> None:
        timer = self.get_timer()
        if timer is None or now < timer:
            return
        if now < self._deadline:
            reason = "it stopped reading"
        elif not self._channel.established:
            reason = "no secure handshake in time"
        elif self.state is ServerState.NEW:
            reason = "no registration in time"
        else:
            reason = "heartbeats stopped"
        self.state = ServerState.CLOSED
        self._events.append(ev.ConnectionTimedOut(reason))


def _check_relays(message: ev.Relaying | ev.Relayed) -> None:
    if not 0 < len(message.ticket) <= MAX_TICKET_BYTES:
        raise RemoteProtocolError(f"a ticket is 1 to {MAX_TICKET_BYTES} bytes")
    if not 0 < len(message.relays) <= MAX_RELAYS:
        raise RemoteProtocolError(f"1 to {MAX_RELAYS} relays")
    for relay in message.relays:
        if not (0 < len(relay.host) <= 255 and 0 < relay.port < 65536):
            raise RemoteProtocolError("a malformed relay address")


def _check_phone(phone: str) -> None:
    if not E164.fullmatch(phone):
        raise RemoteProtocolError(f"not an E.164 phone number: {phone[:32]!r}")


class DirectoryClientConnection(OverChannel):
    """The user module's side: numbers requests, checks every answer against them, and
    owns the client's deadlines (time passed in):

    - the secure handshake must complete within `Timeouts.handshake`;
    - every request must be answered within `Timeouts.server_reply` (a heartbeat within
      one `heartbeat_interval`): a server that does not answer is gone, or frozen, and
      the connection is timed out (`ConnectionTimedOut`) — the same for every request,
      since an answer out of order would mean the server lost the others;
    - once registered, a heartbeat (`ping`) is due every `heartbeat_interval`:
      `handle_timer` queues it in `data_to_send`, and its `pong` is taken here.
    """

    def __init__(
        self,
        now: float,
        limits: Limits | None = None,
        timeouts: Timeouts | None = None,
        channel: Channel | None = None,
    ) -> None:
        self.limits = limits or Limits()
        self.timeouts = timeouts or Timeouts()
        self._channel = channel or PlainChannel(self.limits.max_directory_frame)
        self._next_rid = 1
        #: rid -> (the request's type, when its answer is due), oldest first: every
        #: request but a heartbeat has the same reply timeout, so the first is due first.
        self._outstanding: dict[int, tuple[type[ev.Message], float]] = {}
        self._events: deque[ev.DirectoryMessage | ev.ConnectionTimedOut] = deque()
        self._out: list[Buffer] = []
        self._handshake_due = now + self.timeouts.handshake
        #: Heartbeats: when the next is due (None until registered), and the one out
        #: (its rid, 0 if none, and when its pong is due).
        self._ping_at: float | None = None
        self._ping_rid = 0
        self._pong_due = 0.0
        self._register_rid = 0
        self.closed = False

    def next_rid(self) -> int:
        rid = self._next_rid
        self._next_rid += 1
        return rid

    def send(self, message: ev.Message, now: float) -> Buffer:
        if type(message) not in _REQUESTS:
            raise LocalProtocolError(f"a client does not send {message.TYPE!r}")
        message = cast(ev.DirectoryMessage, message)
        if self.closed:
            raise LocalProtocolError("the connection is closed")
        rid = message.rid
        if rid <= 0:
            raise LocalProtocolError("request ids start at 1 (0 is the server's pushes)")
        if rid in self._outstanding or rid == self._ping_rid:
            raise LocalProtocolError(f"request id {rid} is already outstanding")
        self._outstanding[rid] = (type(message), now + self.timeouts.server_reply)
        if type(message) is ev.Register:
            self._register_rid = rid
        return self._channel.seal(encode_message(message))

    def receive_data(self, data: Buffer, now: float) -> None:
        """Bytes from the server. Raises RemoteProtocolError; the caller then closes."""
        if self.closed:
            return
        self._channel.receive_data(data)
        while (body := self._channel.next_body()) is not None:
            message = decode_message(body)
            kind = type(message)
            if kind not in _FROM_SERVER:
                raise RemoteProtocolError(f"a server may not send {message.TYPE!r}")
            message = cast(ev.DirectoryMessage, message)
            rid = message.rid
            if kind in _PUSHES and rid == 0:
                if kind is ev.Dial:
                    dial = cast(ev.Dial, message)
                    if (
                        len(dial.token) != TOKEN_BYTES
                        or not 0 < dial.peer.port < 65536
                        or (dial.punch is not None and not 0 < dial.punch < 65536)
                    ):
                        raise RemoteProtocolError("a malformed 'dial'")
                elif kind is ev.Relayed:
                    _check_relays(cast(ev.Relayed, message))
                self._events.append(message)
                continue
            if rid == self._ping_rid and rid != 0:
                if kind is not ev.Pong:
                    raise RemoteProtocolError(f"{message.TYPE!r} does not answer 'ping'")
                self._ping_rid = 0
                continue
            asked = self._outstanding.pop(rid, None)
            if asked is None:
                raise RemoteProtocolError(f"answer to unknown request {rid}")
            if kind is not _ANSWER_TO[asked[0]] and kind is not ev.Failure:
                raise RemoteProtocolError(f"{message.TYPE!r} does not answer {asked[0].TYPE!r}")
            if kind is ev.Relaying:
                _check_relays(cast(ev.Relaying, message))
            if rid == self._register_rid:
                self._register_rid = 0
                if kind is ev.Registered:  # registered: heartbeats from now on
                    self._ping_at = now + self.timeouts.heartbeat_interval
            self._events.append(message)

    def data_to_send(self) -> bytes:
        """Bytes to write that no `send` asked for: the handshake's, and heartbeats."""
        handshake = self._channel.data_to_send()
        if not self._out:
            return handshake
        out, self._out = self._out, []
        return handshake + b"".join(out)

    def next_event(self) -> ev.DirectoryMessage | ev.ConnectionTimedOut | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        """When `handle_timer` has something to do next (None: nothing, ever)."""
        if self.closed:
            return None
        if not self._channel.established:
            return self._handshake_due
        timer = self._ping_at
        if self._ping_rid and (timer is None or self._pong_due < timer):
            timer = self._pong_due
        if self._outstanding:
            due = next(iter(self._outstanding.values()))[1]
            if timer is None or due < timer:
                timer = due
        return timer

    def handle_timer(self, now: float) -> None:
        if self.closed:
            return
        if not self._channel.established:
            if now >= self._handshake_due:
                self._time_out("no secure handshake in time")
            return
        if self._outstanding and next(iter(self._outstanding.values()))[1] <= now:
            self._time_out("the server does not answer")
            return
        if self._ping_rid and self._pong_due <= now:
            self._time_out("the server does not answer heartbeats")
            return
        if self._ping_at is not None and self._ping_at <= now and not self._ping_rid:
            rid = self._ping_rid = self.next_rid()
            interval = self.timeouts.heartbeat_interval
            self._pong_due = now + interval
            # once an interval from the registration on, however late this one came
            self._ping_at = max(self._ping_at + interval, now)
            self._out.append(self._channel.seal(encode_message(ev.Ping(rid))))

    def _time_out(self, reason: str) -> None:
        self.closed = True
        self._events.append(ev.ConnectionTimedOut(reason))
