"""Simulated user modules for load generation (`whatsap2p loadgen`).

A simulated user is the user module's directory connection (the same sans-IO machine,
Noise channel and asyncio adapter as `DirectoryClient`) owned by callbacks instead of
futures, as redis-benchmark drives its own connections: no task and no future per
request, so a generator holding thousands costs less than the server it measures. It
registers, heartbeats (the machine's: a ping unanswered an interval later, or a lookup
unanswered past the reply timeout, drops the connection) and runs lookups one at a time.
The users of one process share one `Deadlines` (one loop timer).
"""

from __future__ import annotations

import array
import asyncio
import time
from collections import Counter
from collections.abc import Callable

from whatsap2p.config import Limits, Timeouts
from whatsap2p.errors import ProtocolError, ServerUnreachable
from whatsap2p.net.deadlines import Deadlines
from whatsap2p.net.directory_client import cannot_reach, handshake_failed, refusal
from whatsap2p.net.directory_connection import (
    DirectoryConnection,
    DirectoryEvents,
    client_connection,
)
from whatsap2p.net.network import Network
from whatsap2p.protocol import events as ev
from whatsap2p.protocol.keys import StaticKey

__all__ = ["HEARTBEAT_SLACK", "SimulatedUser", "connect_simulated"]

#: The users' deadlines (heartbeats, mostly) due within this of each other are handled
#: in one wakeup of the loop: with thousands of users, one each cost more than the pings.
HEARTBEAT_SLACK = 0.01


async def connect_simulated(
    network: Network,
    host: str,
    port: int,
    key: StaticKey,
    phone: str,
    listen_port: int,
    *,
    server_fingerprint: str | None,
    limits: Limits,
    timeouts: Timeouts,
    deadlines: Deadlines,
) -> SimulatedUser:
    """A simulated user connected, its secure channel up and `phone` registered (said to
    listen at `listen_port`), heartbeating from then on. Raises the DirectoryClient's
    errors for the same failures."""
    where = f"{host}:{port}"
    loop = asyncio.get_running_loop()
    conn = client_connection(loop.time(), key, limits, timeouts, server_fingerprint)
    user = SimulatedUser()

    def adapter() -> DirectoryConnection:
        user.link = DirectoryConnection(conn, deadlines, user)
        return user.link

    try:
        await network.connect(host, port, adapter, timeouts.connect)
    except (OSError, TimeoutError) as exc:
        raise cannot_reach(where, exc) from exc
    try:
        try:
            await user.up  # the machine's handshake deadline bounds it
        except (OSError, TimeoutError, ProtocolError) as exc:
            raise handshake_failed(where, exc, server_fingerprint) from exc
        try:
            answer = await user.request(ev.Register(conn.next_rid(), phone, listen_port, None))
        except (OSError, TimeoutError, ProtocolError) as exc:
            raise ServerUnreachable(f"no answer to register: {exc or 'timed out'}") from exc
        if isinstance(answer, ev.Failure):
            raise refusal(answer)
    except BaseException:
        user.close()
        raise
    return user


class SimulatedUser(DirectoryEvents):
    """One simulated user module on its own connection."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.link: DirectoryConnection | None = None
        #: Resolved once the secure channel is up (or failed with why it is not).
        self.up: asyncio.Future[None] = self._loop.create_future()
        #: The one request awaited as a future (the registration): its rid and future.
        self._request: tuple[int, asyncio.Future[ev.Message]] | None = None
        self._lookups: _LookupRun | None = None
        #: Called once the connection is gone, if it was not closed by us.
        self.on_lost: Callable[[], None] | None = None

    # --- DirectoryEvents -------------------------------------------------------------------

    def established(self) -> None:
        if not self.up.done():
            self.up.set_result(None)

    def received(self, message: ev.DirectoryMessage) -> None:
        lookups = self._lookups
        if lookups is not None and message.rid == lookups.rid:
            lookups.answered(message)
        elif self._request is not None and message.rid == self._request[0]:
            _, future = self._request
            self._request = None
            if not future.done():
                future.set_result(message)
        # else: a push (a watched number online): nothing to do

    def lost(self, reason: BaseException) -> None:
        if not self.up.done():
            self.up.set_exception(reason)
        if self._request is not None:
            _, future = self._request
            self._request = None
            if not future.done():
                future.set_exception(reason)
        if self._lookups is not None:
            self._lookups.lost()
        on_lost, self.on_lost = self.on_lost, None
        if on_lost is not None:
            on_lost()

    # --- what the worker asks -----------------------------------------------------------

    def request(self, message: ev.DirectoryMessage) -> asyncio.Future[ev.Message]:
        """Send `message`; the future gets its answer (or the reason there is none)."""
        future: asyncio.Future[ev.Message] = self._loop.create_future()
        link = self.link
        assert link is not None
        if link.lost_reason is not None:
            future.set_exception(link.lost_reason)
        else:
            self._request = (message.rid, future)
            link.send(message)
        return future

    def look_up(
        self,
        count: int,
        pick: Callable[[], str],
        latencies: array.array[float],
        errors: Counter[str],
    ) -> asyncio.Future[None]:
        """Ask for `count` numbers from `pick`, one lookup at a time, each sent as soon
        as the one before is answered; resolved once all are answered or failed."""
        link = self.link
        assert link is not None
        lookups = self._lookups = _LookupRun(link, count, pick, latencies, errors)
        if link.lost_reason is None:
            lookups.next()
        else:  # gone before the worker heard of it (it is told in the same loop turn)
            lookups.lost()
        return lookups.done

    def close(self) -> None:
        self.on_lost = None
        if self.link is not None:
            self.link.close()

    def give_up(self, reason: BaseException) -> None:
        """Drop the connection: everything waiting on it fails with `reason`."""
        if self.link is not None:
            self.link.give_up(reason)


class _LookupRun:
    """One simulated user's run of lookups, one out at a time (the connection's machine
    times out a lookup unanswered past the reply timeout: the connection then drops)."""

    __slots__ = ("_errors", "_latencies", "_left", "_link", "_pick", "began", "done",
                 "phone", "rid")  # fmt: skip

    def __init__(
        self,
        link: DirectoryConnection,
        count: int,
        pick: Callable[[], str],
        latencies: array.array[float],
        errors: Counter[str],
    ) -> None:
        self._link = link
        self._left = count
        self._pick = pick
        self._latencies = latencies
        self._errors = errors
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.rid = 0  # the lookup out, 0 if none
        self.phone = ""
        self.began = 0.0

    def next(self) -> None:
        if self._left == 0:
            self._finish()
            return
        self._left -= 1
        self.phone = self._pick()
        self.rid = self._link.next_rid()
        self.began = time.perf_counter()
        self._link.send(ev.Lookup(self.rid, (self.phone,)))

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

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)
