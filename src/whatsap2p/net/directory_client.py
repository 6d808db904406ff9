"""The user module's connection to the central server, as awaitable requests.

The connection itself (handshake, deadlines, heartbeats) is the sans-IO
`DirectoryClientConnection` driven by the `DirectoryConnection` adapter; this class
owns it and turns its answers into futures.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from whatsap2p.config import Limits, Timeouts
from whatsap2p.errors import (
    DirectoryError,
    NoRelay,
    NumberAlreadyOnline,
    NumberBound,
    ProtocolError,
    RateLimited,
    RemoteKeyMismatch,
    ServerKeyMismatch,
    ServerRefused,
    ServerUnreachable,
    StoreUnavailable,
)
from whatsap2p.net.deadlines import Deadlines
from whatsap2p.net.directory_connection import (
    DirectoryConnection,
    DirectoryEvents,
    client_connection,
)
from whatsap2p.net.network import Network, TcpNetwork
from whatsap2p.protocol import events as ev
from whatsap2p.protocol.keys import StaticKey, fingerprint

__all__ = ["DirectoryClient", "cannot_reach", "handshake_failed", "refusal"]

log = logging.getLogger(__name__)

_FAILURES: dict[str, type[DirectoryError]] = {
    "number-online": NumberAlreadyOnline,
    "number-bound": NumberBound,
    "rate-limited": RateLimited,
    "no-relay": NoRelay,
    "unavailable": StoreUnavailable,
}


def refusal(answer: ev.Failure) -> DirectoryError:
    """The error a Failure answer from the server stands for."""
    return _FAILURES.get(answer.code, ServerRefused)(f"the server refused: {answer.message}")


def cannot_reach(where: str, exc: OSError | TimeoutError) -> ServerUnreachable:
    """Why opening the connection to the server at `where` failed."""
    reason = "timed out" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
    return ServerUnreachable(f"cannot reach the server at {where}: {reason}")


def handshake_failed(
    where: str, exc: OSError | TimeoutError | ProtocolError, expected: str | None
) -> DirectoryError:
    """Why the secure handshake with the server at `where` failed: it proved a key other
    than the `expected` one, or it did not complete."""
    if isinstance(exc, RemoteKeyMismatch):
        return ServerKeyMismatch(
            f"the server at {where} has key {fingerprint(exc.remote_key)}, "
            f"not the expected {expected}: refusing it"
        )
    return ServerUnreachable(
        f"no secure connection to the server at {where}: {str(exc) or 'timed out'}"
    )


def _lost(reason: BaseException) -> ServerUnreachable:
    return ServerUnreachable(f"lost the connection to the server: {reason}")


class DirectoryClient(DirectoryEvents):
    """One connection to the server; the registration lives as long as it does."""

    def __init__(self, limits: Limits) -> None:
        """Use `connect`: it hands over a connection whose secure channel is established."""
        self._link: DirectoryConnection | None = None
        self._deadlines = Deadlines()
        self._up: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        #: Called with each watched number that comes online (pushed by the server).
        self.on_online: Callable[[ev.PeerAddress], None] | None = None
        #: Called when a module asks (through the server) to be connected to.
        self.on_dial: Callable[[ev.Dial], None] | None = None
        #: Called when a module asks (through the server) to be met at a relay.
        self.on_relayed: Callable[[ev.Relayed], None] | None = None
        #: Called once the connection is gone (lost, or closed), after `closed` is set.
        self.on_closed: Callable[[], None] | None = None
        self._waiting: dict[int, asyncio.Future[ev.Message]] = {}
        self.closed = asyncio.Event()
        #: Why the connection is gone (None while it is not): a `ServerUnreachable`.
        self.lost_error: DirectoryError | None = None
        # Numbers waiting for the next lookup request, and the one request out (its rid
        # and its batch).
        self._batches: deque[_LookupBatch] = deque()
        self._lookup_out: tuple[int, _LookupBatch] | None = None
        self._max_lookup = limits.max_lookup_phones

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        key: StaticKey,
        *,
        server_fingerprint: str | None = None,
        limits: Limits | None = None,
        timeouts: Timeouts | None = None,
        network: Network | None = None,
        local_port: int | None = None,
    ) -> DirectoryClient:
        """Connect and complete the secure handshake; with `server_fingerprint`, refuse
        any server that proves another key (before revealing ours). From `local_port`
        if given and free (the port we listen on: the server then sees the port our
        router maps it to, where a peer can punch through), else from any."""
        timeouts = timeouts or Timeouts()
        limits = limits or Limits()
        where = f"{host}:{port}"
        client = cls(limits)
        now = asyncio.get_running_loop().time()
        conn = client_connection(now, key, limits, timeouts, server_fingerprint)

        def adapter() -> DirectoryConnection:
            client._link = DirectoryConnection(conn, client._deadlines, client)
            return client._link

        network = network or TcpNetwork()
        try:
            try:
                await network.connect(host, port, adapter, timeouts.connect, local_port)
            except OSError as exc:
                if local_port is None:
                    raise
                # That port's last connection to this server lingers in TIME_WAIT, say:
                # from any port then (a peer cannot punch a hole to us meanwhile).
                log.info("connecting to the server from port %s failed (%s)", local_port, exc)
                await network.connect(host, port, adapter, timeouts.connect)
        except (OSError, TimeoutError) as exc:
            client._deadlines.close()
            raise cannot_reach(where, exc) from exc
        try:
            await client._up  # the machine's handshake deadline bounds it
        except (OSError, TimeoutError, ProtocolError) as exc:
            await client.close()
            raise handshake_failed(where, exc, server_fingerprint) from exc
        return client

    @property
    def server_key(self) -> bytes | None:
        return None if self._link is None else self._link.server_key

    @property
    def local_host(self) -> str | None:
        """The IP our connection to the server leaves from (our address on our network)."""
        return None if self._link is None else self._link.local_host

    @property
    def server_host(self) -> str | None:
        """The server's IP, as our connection reaches it."""
        return None if self._link is None else self._link.remote_host

    async def register(
        self, phone: str, port: int, host: str | None = None, local: str | None = None
    ) -> ev.Registered:
        answer = await self.request(ev.Register(self.next_rid(), phone, port, host, local))
        assert isinstance(answer, ev.Registered)
        return answer

    async def reverse(self, phone: str, token: bytes, punch: int | None = None) -> ev.Reversing:
        """Ask `phone`'s module (through the server) to connect to us, opening with
        `token` (and to punch a hole towards our port `punch`); the answer says where
        the server sees that module (to punch towards); DirectoryError if the server
        would not pass it on."""
        answer = await self.request(ev.Reverse(self.next_rid(), phone, token, punch))
        assert isinstance(answer, ev.Reversing)
        return answer

    async def relay(self, phone: str) -> ev.Relaying:
        """Ask the server to introduce us and `phone`'s module at a relay (no direct way
        works): the relays to try, in order, and the ticket they take; DirectoryError if
        it would not (none configured, offline, rate-limited)."""
        answer = await self.request(ev.Relay(self.next_rid(), phone))
        assert isinstance(answer, ev.Relaying)
        return answer

    async def report(self, route: str, token: bytes | None = None) -> None:
        """Tell the server how a connection to a peer was made (for its operator's
        counters; `token`: the `reverse` this attempt asked for, if any)."""
        await self.request(ev.Report(self.next_rid(), route, token))

    async def lookup(self, phones: list[str]) -> dict[str, ev.PeerAddress]:
        """The online ones among `phones`, with their addresses.

        Lookups are coalesced like group commits: while one lookup request is out,
        the numbers asked meanwhile wait together for the next one, sent as soon as the
        answer is in. Every caller's answer so comes from a request made after it asked,
        and a burst of sends costs a few requests (and rate-limit tokens), not one each."""
        if not phones:
            return {}
        batch = self._batches[-1] if self._batches else None
        if batch is None or len(batch.phones) + len(phones) > self._max_lookup:
            batch = _LookupBatch()
            self._batches.append(batch)
        asked = batch.ask(phones)
        if self._lookup_out is None:
            self._send_lookup()
        found = await asked
        return {phone: found[phone] for phone in phones if phone in found}

    async def watch(self, phones: list[str]) -> dict[str, ev.PeerAddress]:
        """Be told (on_online) when any of `phones` comes online; returns those online now."""
        answer = await self.request(ev.Watch(self.next_rid(), tuple(phones)))
        assert isinstance(answer, ev.Watching)
        return {peer.phone: peer for peer in answer.peers}

    async def unregister(self) -> None:
        await self.request(ev.Unregister(self.next_rid()))

    async def ping(self) -> None:
        """One heartbeat now (the server renews our registration), besides the
        connection's own every interval."""
        await self.request(ev.Ping(self.next_rid()))

    def abort(self) -> None:
        """Drop the connection at once, without unregistering (as a killed module's
        would be): the server takes the number offline when it sees it go."""
        if self._link is not None:
            self._link.give_up(ConnectionAbortedError("aborted by this module"))

    async def close(self) -> None:
        # Reset, not closed: a graceful close from our side would hold our end of the
        # connection in TIME_WAIT for a minute, and the module's next connection to this
        # server could not leave from the same port (the one it listens on).
        if self._link is not None:
            self._link.give_up(ConnectionAbortedError("closed by this module"))
        self._deadlines.close()
        self.lost(ConnectionAbortedError("the connection to the server is closed"))

    # --- DirectoryEvents -----------------------------------------------------------------

    def established(self) -> None:
        if not self._up.done():
            self._up.set_result(None)

    def received(self, message: ev.DirectoryMessage) -> None:
        if type(message) is ev.Online:
            if self.on_online is not None:
                self.on_online(message.peer)
            return
        if type(message) is ev.Dial:
            if self.on_dial is not None:
                self.on_dial(message)
            return
        if type(message) is ev.Relayed:
            if self.on_relayed is not None:
                self.on_relayed(message)
            return
        out = self._lookup_out
        if out is not None and message.rid == out[0]:
            self._lookup_answered(message)
            return
        future = self._waiting.pop(message.rid, None)
        if future is not None and not future.done():
            future.set_result(message)
        elif isinstance(message, ev.Failure):
            log.warning("server: %s", message.message)

    def lost(self, reason: BaseException) -> None:
        if self.closed.is_set():
            return
        if not self._up.done():
            self._up.set_exception(reason)
            self._up.exception()  # (seen: connect() may not be awaiting it)
        error = self.lost_error = _lost(reason)
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(error)
        self._waiting.clear()
        if self._lookup_out is not None:
            _, batch = self._lookup_out
            self._lookup_out = None
            batch.fail(error)
        while self._batches:
            self._batches.popleft().fail(error)
        self.closed.set()
        if self.on_closed is not None:
            self.on_closed()

    # --- the rest --------------------------------------------------------------------------

    def next_rid(self) -> int:
        """A request id for `request`."""
        assert self._link is not None
        return self._link.next_rid()

    async def request(self, message: ev.DirectoryMessage) -> ev.Message:
        """Send any request and await its answer (a `failure` raises the error it stands
        for); ServerUnreachable when the connection is lost meanwhile (the machine drops
        it when the server does not answer in time)."""
        link = self._link
        assert link is not None
        if link.lost_reason is not None:
            raise _lost(link.lost_reason)
        future: asyncio.Future[ev.Message] = asyncio.get_running_loop().create_future()
        self._waiting[message.rid] = future
        try:
            link.send(message)
            answer = await future
        finally:
            self._waiting.pop(message.rid, None)
        if isinstance(answer, ev.Failure):
            raise refusal(answer)
        return answer

    def _send_lookup(self) -> None:
        """Send the oldest waiting batch as one lookup request. No task and no drain: one
        request is out at a time, answered by `received`, which sends the next."""
        if not self._batches:
            return
        batch = self._batches.popleft()
        link = self._link
        assert link is not None
        if link.lost_reason is not None:
            self._fail_lookups(batch, _lost(link.lost_reason))
            return
        rid = link.next_rid()
        self._lookup_out = (rid, batch)
        link.send(ev.Lookup(rid, tuple(batch.phones)))

    def _lookup_answered(self, answer: ev.Message) -> None:
        assert self._lookup_out is not None
        _, batch = self._lookup_out
        self._lookup_out = None
        if isinstance(answer, ev.LookupResult):
            batch.answer({peer.phone: peer for peer in answer.peers})
            self._send_lookup()
        elif isinstance(answer, ev.Failure):
            self._fail_lookups(batch, refusal(answer))
        else:
            self._fail_lookups(batch, ServerRefused(f"unexpected answer {type(answer).__name__}"))

    def _fail_lookups(self, batch: _LookupBatch, error: DirectoryError) -> None:
        """This batch and every one waiting behind it fail with `error`."""
        for failed in (batch, *self._batches):
            failed.fail(error)
        self._batches.clear()


@dataclass(eq=False)
class _LookupBatch:
    """Numbers asked while another lookup was out, answered together. Each asker waits
    on a future of its own: one that gives up (is cancelled) leaves the others waiting,
    and none is left holding an answer or a failure that nobody will read."""

    phones: set[str] = field(default_factory=set)
    askers: list[asyncio.Future[dict[str, ev.PeerAddress]]] = field(default_factory=list)

    def ask(self, phones: list[str]) -> asyncio.Future[dict[str, ev.PeerAddress]]:
        self.phones.update(phones)
        asked: asyncio.Future[dict[str, ev.PeerAddress]] = (
            asyncio.get_running_loop().create_future()
        )
        self.askers.append(asked)
        return asked

    def answer(self, found: dict[str, ev.PeerAddress]) -> None:
        for asked in self.askers:
            if not asked.done():  # cancelled: its asker gave up
                asked.set_result(found)

    def fail(self, error: DirectoryError) -> None:
        for asked in self.askers:
            if not asked.done():
                asked.set_exception(error)
