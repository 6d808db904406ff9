"""Simulated user modules for load generation (`whatsap2p loadgen`).

A simulated user is the user module's directory protocol (the same sans-IO connection
and Noise channel as `DirectoryClient`) driven straight from its transport's callbacks,
as redis-benchmark drives its own: no task, no streams and no future per request, so a
generator holding thousands costs less than the server it measures. It registers,
heartbeats (a ping unanswered an interval later drops the connection; the users of one
process share one timer, `Heartbeats`) and runs lookups one at a time, each with the
answer deadline.
"""

from __future__ import annotations

import array
import asyncio
import time
import typing
from collections import Counter, deque
from collections.abc import Callable

from whatsap2p.config import Limits, Timeouts
from whatsap2p.errors import ProtocolError, ServerUnreachable
from whatsap2p.net.directory_client import (
    cannot_reach,
    client_connection,
    handshake_failed,
    refusal,
)
from whatsap2p.protocol import events as ev
from whatsap2p.protocol.directory import DirectoryClientConnection
from whatsap2p.protocol.keys import StaticKey

__all__ = ["Heartbeats", "SimulatedUser", "connect_simulated"]


async def connect_simulated(
    host: str,
    port: int,
    key: StaticKey,
    phone: str,
    listen_port: int,
    *,
    server_fingerprint: str | None,
    limits: Limits,
    timeouts: Timeouts,
    heartbeats: Heartbeats,
) -> SimulatedUser:
    """A simulated user connected, its secure channel up and `phone` registered (said to
    listen at `listen_port`), heartbeating from then on among `heartbeats`. Raises the
    DirectoryClient's errors for the same failures."""
    where = f"{host}:{port}"
    conn = client_connection(key, limits, server_fingerprint)
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeouts.connect):
            _, user = await loop.create_connection(
                lambda: SimulatedUser(conn, timeouts), host, port
            )
    except (OSError, TimeoutError) as exc:
        raise cannot_reach(where, exc) from exc
    try:
        try:
            async with asyncio.timeout(timeouts.handshake):
                await user.established
        except (OSError, TimeoutError, ProtocolError) as exc:
            raise handshake_failed(where, exc, server_fingerprint) from exc
        register = ev.Register(conn.next_rid(), phone, listen_port, None)
        try:
            async with asyncio.timeout(timeouts.server_reply):
                answer = await user.request(register)
        except (OSError, TimeoutError, ProtocolError) as exc:
            raise ServerUnreachable(f"no answer to register: {exc or 'timed out'}") from exc
        if isinstance(answer, ev.Failure):
            raise refusal(answer)
    except BaseException:
        user.close()
        raise
    heartbeats.add(user)
    return user


class _Beating(typing.Protocol):
    def beat(self) -> bool: ...


class Heartbeats:
    """The heartbeats of one process's simulated users, on one timer. Each user pings
    once an interval from its registration on, as its module does; the pings due within
    `TICK` of each other go out together, in one wakeup of the loop instead of one each
    (with thousands of users, a timer per user cost the generator more than its pings).
    The server sees the same rate: users / interval pings a second."""

    TICK: typing.Final = 0.01

    def __init__(self, interval: float) -> None:
        self._interval = interval
        #: (when, user): appended at now + interval, so in order of time.
        self._due: deque[tuple[float, _Beating]] = deque()
        #: (uvloop may hand back a plain Handle, with no when(): never asked for it.)
        self._timer: asyncio.Handle | None = None

    def add(self, user: _Beating) -> None:
        """`user` pings an interval from now, then every interval until it is lost."""
        loop = asyncio.get_running_loop()
        self._due.append((loop.time() + self._interval, user))
        if self._timer is None:
            self._timer = loop.call_at(self._due[0][0], self._beat)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._due.clear()

    def _beat(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        due, soon, later = self._due, now + self.TICK, now + self._interval
        while due and due[0][0] <= soon:
            _, user = due.popleft()
            if user.beat():
                due.append((later, user))
        self._timer = loop.call_at(due[0][0], self._beat) if due else None


class SimulatedUser(asyncio.Protocol):
    """One simulated user module on its own connection."""

    __slots__ = ("_conn", "_lookups", "_loop", "_lost", "_ping", "_request", "_transport",
                 "established", "on_lost", "timeouts")  # fmt: skip

    def __init__(self, conn: DirectoryClientConnection, timeouts: Timeouts) -> None:
        self._conn = conn
        self.timeouts = timeouts
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        #: Resolved once the secure channel is up (or failed with why it is not).
        self.established: asyncio.Future[None] = self._loop.create_future()
        #: The one request awaited as a future (the registration): its rid and future.
        self._request: tuple[int, asyncio.Future[ev.Message]] | None = None
        self._ping = 0  # the rid of the heartbeat still unanswered, 0 if none
        self._lookups: _LookupRun | None = None
        self._lost: BaseException | None = None
        #: Called once the connection is gone, if it was not closed by us.
        self.on_lost: Callable[[], None] | None = None

    # --- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport = typing.cast(asyncio.Transport, transport)
        transport.write(self._conn.data_to_send())  # the handshake's first message

    def data_received(self, data: bytes) -> None:
        conn, transport = self._conn, self._transport
        assert transport is not None
        try:
            conn.receive_data(data)
        except ProtocolError as exc:
            self._end(exc)
            transport.abort()
            return
        if not self.established.done():
            if handshake := conn.data_to_send():
                transport.write(handshake)
            if conn.established:
                self.established.set_result(None)
        while (message := conn.next_event()) is not None:
            lookups = self._lookups
            if lookups is not None and message.rid == lookups.rid:
                lookups.answered(message)
            elif message.rid == self._ping:
                self._ping = 0
            elif self._request is not None and message.rid == self._request[0]:
                _, future = self._request
                self._request = None
                if not future.done():
                    future.set_result(message)
            # else: a push (a watched number online) or a late answer: nothing to do

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(exc or ConnectionResetError("the server closed the connection"))
        if self.on_lost is not None:
            self.on_lost()

    # --- what the worker asks -----------------------------------------------------------

    def request(self, message: ev.DirectoryMessage) -> asyncio.Future[ev.Message]:
        """Send `message`; the future gets its answer (or the reason there is none)."""
        future: asyncio.Future[ev.Message] = self._loop.create_future()
        if self._lost is not None:
            future.set_exception(self._lost)
        else:
            self._request = (message.rid, future)
            self.send(message)
        return future

    def beat(self) -> bool:
        """Ping, as a module does every interval; False once the connection is gone. A
        ping still unanswered an interval later means the server (or the path) is gone:
        the connection is dropped."""
        if self._lost is not None:
            return False
        if self._ping:
            self.give_up(TimeoutError("heartbeat unanswered"))
            return False
        self._ping = self._conn.next_rid()
        self.send(ev.Ping(self._ping))
        return True

    def look_up(
        self,
        count: int,
        pick: Callable[[], str],
        latencies: array.array[float],
        errors: Counter[str],
    ) -> asyncio.Future[None]:
        """Ask for `count` numbers from `pick`, one lookup at a time, each sent as soon
        as the one before is answered; resolved once all are answered or failed."""
        lookups = self._lookups = _LookupRun(self, count, pick, latencies, errors)
        if self._lost is None:
            lookups.next()
        else:  # gone before the worker heard of it (it is told in the same loop turn)
            lookups.lost()
        return lookups.done

    def close(self) -> None:
        self.on_lost = None
        self._end(ConnectionAbortedError("closed by the load generator"))
        if self._transport is not None:
            self._transport.close()

    def send(self, message: ev.DirectoryMessage) -> None:
        assert self._transport is not None
        self._transport.write(self._conn.send(message))

    def next_rid(self) -> int:
        return self._conn.next_rid()

    def give_up(self, reason: BaseException) -> None:
        """Drop the connection: everything waiting on it fails with `reason`."""
        self._end(reason)
        if self._transport is not None:
            self._transport.abort()

    # --- the rest --------------------------------------------------------------------------

    def _end(self, reason: BaseException) -> None:
        """The connection is gone (or going): whatever waits on it fails with `reason`."""
        if self._lost is not None:
            return
        self._lost = reason
        if not self.established.done():
            self.established.set_exception(reason)
        if self._request is not None:
            _, future = self._request
            self._request = None
            if not future.done():
                future.set_exception(reason)
        if self._lookups is not None:
            self._lookups.lost()


class _LookupRun:
    """One simulated user's run of lookups: one out at a time, with a deadline."""

    __slots__ = ("_errors", "_latencies", "_left", "_loop", "_pick", "_reply", "_timer", "_user",
                 "began", "done", "phone", "rid")  # fmt: skip

    def __init__(
        self,
        user: SimulatedUser,
        count: int,
        pick: Callable[[], str],
        latencies: array.array[float],
        errors: Counter[str],
    ) -> None:
        self._user = user
        self._reply = user.timeouts.server_reply
        self._loop = asyncio.get_running_loop()
        self._left = count
        self._pick = pick
        self._latencies = latencies
        self._errors = errors
        self._timer: asyncio.TimerHandle | None = None
        self.done: asyncio.Future[None] = self._loop.create_future()
        self.rid = 0  # the lookup out, 0 if none
        self.phone = ""
        self.began = 0.0

    def next(self) -> None:
        if self._left == 0:
            self._finish()
            return
        self._left -= 1
        self.phone = self._pick()
        self.rid = self._user.next_rid()
        self.began = time.perf_counter()
        self._user.send(ev.Lookup(self.rid, (self.phone,)))
        if self._timer is None:
            self._timer = self._loop.call_later(self._reply, self._check)

    def answered(self, answer: ev.Message) -> None:
        if type(answer) is ev.LookupResult:
            self._latencies.append(time.perf_counter() - self.began)
            for peer in answer.peers:  # (a loop: any() and its generator cost twice this)
                if peer.phone == self.phone:
                    break
            else:
                self._errors["not-found"] += 1
        elif isinstance(answer, ev.Failure):
            self._errors[type(refusal(answer)).__name__] += 1
        else:
            self._errors["ServerRefused"] += 1
        self.rid = 0
        self.next()

    def lost(self) -> None:
        """The connection is gone: the lookup out and those not sent yet fail."""
        if self.done.done():
            return
        self._errors["ServerUnreachable"] += self._left + (1 if self.rid else 0)
        self._left = self.rid = 0
        self._finish()

    def _check(self) -> None:
        """One timer for the whole run: it follows the lookup out, and a lookup
        unanswered past the deadline drops the connection (the rest then fail)."""
        self._timer = None
        if not self.rid:  # the run is over
            return
        late = self.began + self._reply - time.perf_counter()
        if late > 0:
            self._timer = self._loop.call_later(late, self._check)
            return
        self._user.give_up(TimeoutError("the server does not answer"))

    def _finish(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.done.done():
            self.done.set_result(None)
