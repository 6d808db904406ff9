"""The directory server: accepts user modules and answers register / lookup / unregister.

Every connection runs inside a Noise channel: the server proves its key, the module
proves its own, and a number may only be registered by the key it is bound to. Each
connection has its own deadlines (handshake, register, heartbeat, write drain) and rate
limits, so a slow, hostile or greedy client never stalls others.

A connection is an `asyncio.Protocol`, not a task with streams: the server holds tens
of thousands of mostly idle connections, and a task, a StreamReader and a StreamWriter
each would be most of a connection's memory. Bytes go straight into the sans-IO state
machine; each request is answered by a plain call that returns its sealed answer, and
only an answer that waits for a directory in another process (Redis) is awaited, by a
task that then answers the rest in order; the connections' deadlines share one loop
timer (a heap), so a busy connection costs nothing per request to keep its deadline, and
an idle one no timer of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import typing
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field

from whatsap2p.config import Limits, RateLimits, Timeouts
from whatsap2p.errors import ProtocolError, StoreError
from whatsap2p.net.deadlines import Deadlines
from whatsap2p.net.network import Listening, Network, TcpNetwork
from whatsap2p.protocol import events as ev
from whatsap2p.protocol.channel import Buffer
from whatsap2p.protocol.directory import MAX_RELAYS, DirectoryServerConnection
from whatsap2p.protocol.keys import StaticKey
from whatsap2p.protocol.noise import COMPACT, NoiseChannel
from whatsap2p.ratelimit import BucketsByKey, TokenBucket
from whatsap2p.server.addresses import (
    InvalidHost,
    reachable_from,
    vouched_host,
    vouched_local,
)
from whatsap2p.server.bindings import Bindings
from whatsap2p.server.directory import (
    Bind,
    Dialled,
    Directory,
    Found,
    MemoryDirectory,
    Refused,
    Spend,
)
from whatsap2p.server.metrics import ServerMetrics
from whatsap2p.server.quiet import Throttled

__all__ = ["DirectoryServer", "ServerConfig"]

log = logging.getLogger(__name__)

#: A number this connection asked for less than a window ago costs a tenth of a token;
#: it remembers the last few numbers it asked for.
_REPEAT_COST: typing.Final = 0.1
_REPEAT_WINDOW: typing.Final = 1.0
_RECENT_NUMBERS: typing.Final = 64
#: Tokens of `reverse`s passed on that a connection may still report the outcome of.
_ASKED_KEPT: typing.Final = 64
#: Requests refused because the store fails are logged at most once per this many seconds.
STORE_FAILURES_EVERY: typing.Final = 5.0
#: Stop reading a client's requests while this much of our answers waits unsent.
_WRITE_HIGH: typing.Final = 64 * 1024
#: What a refused registration is told, by refusal (its failure code).
_REFUSED: typing.Final[dict[str, str]] = {
    "rate-limited": "too many registrations",
    "number-bound": "{phone} is bound to another key",
    "number-online": "{phone} is already online",
}

#: A request whose answer is awaited: the request, its answer to come, when it was read.
_Waiting = tuple[ev.Message, Awaitable[Buffer], float]


@dataclass(frozen=True, slots=True)
class ServerConfig:
    key: StaticKey
    host: str = "127.0.0.1"
    port: int = 5555
    limits: Limits = field(default_factory=Limits)
    timeouts: Timeouts = field(default_factory=Timeouts)
    rates: RateLimits = field(default_factory=RateLimits)
    #: The relays (1 to 8) handed to users that no direct way connects (`relay`), and
    #: what mints a ticket they take for two numbers (None: no relay).
    relays: tuple[ev.RelayAddress, ...] = ()
    tickets: Callable[[str, str], bytes] | None = None

    def __post_init__(self) -> None:
        if len(self.relays) > MAX_RELAYS:
            raise ValueError(f"at most {MAX_RELAYS} relays")


class DirectoryServer:
    def __init__(
        self, config: ServerConfig, bindings: Bindings | None, directory: Directory | None = None
    ) -> None:
        """`bindings` may be None only with a directory that binds keys itself."""
        self.config = config
        self.bindings = bindings
        self.directory: Directory = directory or MemoryDirectory()
        assert bindings is not None or self.directory.binds_keys
        #: What binds a number to its key at registration, for a directory that does not.
        self.bind: Bind | None = (
            None if bindings is None or self.directory.binds_keys else bindings.bind
        )
        self._server: Listening | None = None
        self._ids = itertools.count(1)
        self.connections: set[_Client] = set()
        #: Work that outlives a connection (taking its number offline), awaited by close().
        self.background: set[asyncio.Task[None]] = set()
        self.unauthenticated: Counter[str] = Counter()
        #: phone -> the connections waiting for it to come online
        self.watchers: dict[str, set[_Client]] = {}
        #: phone -> the connection it is registered through, on this server
        self.here: dict[str, _Client] = {}
        #: Requests to connect back, per source IP, and per number asked (taken by the
        #: server the number is connected to, which every request for it reaches).
        self.reverses = BucketsByKey(config.rates.ip_reverse_rate, config.rates.ip_reverse_burst)
        self.reverses_to = BucketsByKey(config.rates.reverse_to_rate, config.rates.reverse_to_burst)
        self.metrics = ServerMetrics(self._online_users)
        self.deadlines = Deadlines()
        #: Requests refused because the directory's store fails: said at most every 5 s
        #: (while it fails over, every request is; the metrics count each).
        self.store_failures = Throttled(log, STORE_FAILURES_EVERY)
        #: While closing: resolved once the last connection is gone.
        self._all_lost: asyncio.Future[None] | None = None

    async def start(self, network: Network | None = None) -> tuple[str, int]:
        """Bind (on TCP, or the `network` given); returns the address actually bound (the
        real port when asked for 0)."""
        await self.directory.start(self.came_online, self.push_dial)
        self._server = await (network or TcpNetwork()).listen(
            self.config.host, self.config.port, lambda: _Client(self, next(self._ids))
        )
        return self._server.address

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        if self.connections:  # each takes its number offline once its transport says lost
            self._all_lost = asyncio.get_running_loop().create_future()
            for client in list(self.connections):
                client.abort()
            with contextlib.suppress(TimeoutError):  # bounded, should a transport not say
                async with asyncio.timeout(5.0):
                    await self._all_lost
        while self.background:
            await asyncio.gather(*self.background, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        await self.directory.close()
        self.deadlines.close()
        self.metrics.close()

    def store_event(self, event: str) -> None:
        """What the shared store says (redis_store.py `on_event`): counted; once it is
        back, the refusals not yet said are."""
        self.metrics.store_event(event)
        if event == "store-back":
            self.store_failures.flush()

    def _online_users(self) -> int:
        # list() copies the set in one step under the GIL: the exporter's thread calls this
        return sum(client.phone is not None for client in list(self.connections))

    def came_online(self, address: ev.PeerAddress) -> None:
        """`address` registered (the directory says so, for this server and any other
        sharing it): tell the connections waiting for it."""
        for watcher in list(self.watchers.get(address.phone, ())):
            watcher.push_online(address)

    def push_dial(self, phone: str, dial: ev.Dial | ev.Relayed) -> Dialled:
        """Ask `phone`'s module, connected here, to connect to `dial.peer` (asked through
        this server or passed on by another), or to meet it at a relay: within the
        number's rate limit, and only to an address that cannot mean the module's own
        machine or network; `Reversing` with where its connection comes from (to punch
        a hole towards), or why not."""
        callee = self.here.get(phone)
        if callee is None:
            return ev.Failure(0, "offline", f"{phone} is not online at this server")
        # (its module answers a few a second, however many servers they come through)
        if not self.reverses_to.take(phone, asyncio.get_running_loop().time()):
            return ev.Failure(0, "rate-limited", "too many ask that number")
        if type(dial) is ev.Relayed:  # (to the relays this directory names)
            callee.push(dial)
            self.metrics.relayed += 1
            return ev.Reversing(0, callee.ip, callee.seen_port or None)
        caller = dial.peer.host  # where the asker's own server sees it
        if not reachable_from(caller, callee.ip):
            return ev.Failure(
                0,
                "invalid-host",
                f"{phone} is not where {caller} would mean this machine or network",
            )
        callee.push(dial)
        self.metrics.reversals += 1
        return ev.Reversing(0, callee.ip, callee.seen_port or None)

    def lost_all(self) -> None:
        """The last connection is gone."""
        if self._all_lost is not None and not self._all_lost.done():
            self._all_lost.set_result(None)

    def spawn(self, work: Coroutine[object, object, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self.background.add(task)
        task.add_done_callback(self.background.discard)


def _seen_from(ip: str, address: ev.PeerAddress) -> ev.PeerAddress:
    """`address` as a connection from `ip` may see it: its LAN address only from behind
    the same public address (the same router); from elsewhere, only that it is behind
    one (`nat`)."""
    if address.local is None or address.host == ip:
        return address
    return ev.PeerAddress(address.phone, address.host, address.port, address.key, nat=True)


class _Client(asyncio.Protocol):
    """One connected user module."""

    __slots__ = (
        "__weakref__",
        "_answering",
        "_asked",
        "_conn",
        "_counted",
        "_entry",
        "_id",
        "_ip",
        "_lookups",
        "_loop",
        "_port",
        "_recent",
        "_reports",
        "_reverses",
        "_scheduled",
        "_seen_port",
        "_server",
        "_transport",
        "phone",
        "watching",
    )

    def __init__(self, server: DirectoryServer, conn_id: int) -> None:
        self._loop = asyncio.get_running_loop()
        self._server = server
        self._id = conn_id
        self._ip = "?"
        self._transport: asyncio.Transport | None = None
        self._conn: DirectoryServerConnection | None = None
        self._lookups: TokenBucket | None = None
        self._reverses: TokenBucket | None = None
        self._reports: TokenBucket | None = None
        #: The tokens of the `reverse`s passed on for it, not reported yet (the latest).
        self._asked: dict[bytes, None] | None = None
        self._port = 0  # where its module accepts peers (registered)
        self._seen_port = 0  # the port this connection comes from, as we see it
        #: This connection's live entry in the server's deadlines: when it comes up (None:
        #: no entry) and its number.
        self._scheduled: float | None = None
        self._entry = 0
        self._answering: asyncio.Task[None] | None = None
        self._recent: dict[str, float] | None = None  # number -> when it was last asked
        self.phone: str | None = None
        self.watching: tuple[str, ...] = ()
        self._counted = False

    @property
    def ip(self) -> str:
        """The address this connection comes from."""
        return self._ip

    @property
    def seen_port(self) -> int:
        """The port this connection comes from, as we see it (0: unknown)."""
        return self._seen_port

    # --- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = typing.cast(asyncio.Transport, transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self._ip = ip = str(peer[0]) if peer else "?"
        self._seen_port = int(peer[1]) if peer else 0
        server = self._server
        config = server.config
        if server.unauthenticated[ip] >= config.rates.max_unauthenticated_per_ip:
            log.warning("refusing a connection from %s: too many unauthenticated ones", ip)
            transport.abort()
            return
        server.unauthenticated[ip] += 1
        self._counted = True
        server.connections.add(self)
        transport.set_write_buffer_limits(high=_WRITE_HIGH)
        channel = NoiseChannel(
            config.key,
            initiator=False,
            max_body=config.limits.max_directory_frame,
            max_send=config.limits.max_directory_answer,
            suite=COMPACT,
        )
        now = self._loop.time()
        self._conn = DirectoryServerConnection(now, config.limits, config.timeouts, channel)
        self._arm_timer()

    def data_received(self, data: bytes) -> None:
        conn, transport = self._conn, self._transport
        if conn is None or transport is None or transport.is_closing():
            return
        try:
            conn.receive_data(data, self._loop.time())
        except ProtocolError as exc:
            self._broke_protocol(exc)
            return
        if self._counted:  # in the handshake still (counted as unauthenticated until done)
            if handshake := conn.data_to_send():
                transport.write(handshake)
            if conn.established:
                self.authenticated()
        self._arm_timer()
        self._start_answering()

    def eof_received(self) -> bool:
        return False  # the client is done: close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if self._scheduled is not None:
            self._scheduled = None
            self._entry = 0
            self._server.deadlines.dropped()
        if self._answering is not None:
            self._answering.cancel()
        server = self._server
        if self not in server.connections:
            return  # refused in connection_made
        server.connections.discard(self)
        self.authenticated()  # no longer counts as unauthenticated, whatever happened
        self.watch(())
        if self.phone is not None:
            if server.here.get(self.phone) is self:
                del server.here[self.phone]
            server.spawn(self._offline(self.phone))
        if not server.connections:
            server.lost_all()

    def pause_writing(self) -> None:
        # The client stopped reading our answers: stop reading its requests (its
        # connection's state machine drops it if it does not catch up in time).
        assert self._transport is not None
        assert self._conn is not None
        self._transport.pause_reading()
        self._conn.writing_paused(self._loop.time())
        self._arm_timer()

    def resume_writing(self) -> None:
        if self._conn is not None:
            self._conn.writing_resumed()
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    # --- the rest --------------------------------------------------------------------------

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def authenticated(self) -> None:
        if self._counted:
            self._counted = False
            self._server.unauthenticated[self._ip] -= 1
            if self._server.unauthenticated[self._ip] <= 0:
                del self._server.unauthenticated[self._ip]

    def watch(self, phones: tuple[str, ...]) -> None:
        """Replace the numbers this connection waits for."""
        watchers = self._server.watchers
        for phone in self.watching:
            waiting = watchers.get(phone)
            if waiting is not None:
                waiting.discard(self)
                if not waiting:
                    del watchers[phone]
        self.watching = tuple(dict.fromkeys(phones))
        for phone in self.watching:
            watchers.setdefault(phone, set()).add(self)

    def push_online(self, address: ev.PeerAddress) -> None:
        """Tell this connection a number it watches has come online."""
        self.push(ev.Online(0, _seen_from(self._ip, address)))

    def push(self, message: ev.Online | ev.Dial | ev.Relayed) -> None:
        """Send `message` on our own (a client that stops reading is dropped by the
        write-drain deadline)."""
        if self._conn is None or self._transport is None or self._transport.is_closing():
            return
        with contextlib.suppress(ProtocolError):
            self._transport.write(self._conn.send(message))

    def failure(self, rid: int, code: str, message: str) -> Buffer:
        assert self._conn is not None
        self._server.metrics.rejected(code)
        return self._conn.send(ev.Failure(rid, code, message))

    def _broke_protocol(self, exc: ProtocolError) -> None:
        log.info("client %s broke the protocol: %s", self._ip, exc)
        assert self._transport is not None
        with contextlib.suppress(Exception):
            self._transport.write(self.failure(0, "protocol-error", str(exc)))
        self._transport.close()  # after the failure is written

    def _arm_timer(self) -> None:
        """Keep an entry in the server's deadlines no later than this connection's deadline.
        A deadline that moved later keeps the entry (it re-arms when it comes up); one that
        moved earlier (the register deadline after the handshake one) takes a new entry."""
        assert self._conn is not None
        deadline = self._conn.get_timer()
        scheduled = self._scheduled
        if scheduled is not None:
            if deadline is not None and scheduled <= deadline:
                return
            self._server.deadlines.dropped()  # its entry is stale from now on
        self._scheduled = deadline
        self._entry = 0 if deadline is None else self._server.deadlines.push(deadline, self)

    def deadline_reached(self) -> None:
        """The server's deadlines say this connection's live entry came up."""
        conn = self._conn
        assert conn is not None
        self._scheduled = None
        self._entry = 0
        conn.handle_timer(self._loop.time())
        self._arm_timer()  # at the deadline that replaced this one; none once timed out
        self._start_answering()

    def entry_current(self, entry: int) -> bool:
        """Whether the deadlines' `entry` is this connection's live one."""
        return entry == self._entry

    async def _offline(self, phone: str) -> None:
        try:
            removing = self._server.directory.unregister(phone, self._id)
            removed = removing if isinstance(removing, bool) else await removing
        except StoreError as exc:  # the registration expires on its own
            log.warning("could not take %s offline now: %s", phone, exc)
            return
        if removed:
            log.info("%s offline (connection closed)", phone)
        else:  # (taken over: its module moved to another server, say while we were frozen)
            log.info("%s: an old connection closed (registered through another since)", phone)

    def _start_answering(self) -> None:
        """Answer the requests received so far, in order: each by a plain call, sent at
        once; the first whose answer must be awaited (the directory is in another
        process) is awaited by a task, which then answers the rest the same way. One such
        task at most per connection: what arrives meanwhile waits its turn."""
        assert self._conn is not None
        if self._answering is not None or not self._conn.has_events():
            return  # nothing to answer, or the task answers it (in order)
        waiting = self._answer_now()
        if waiting is not None:
            self._answering = self._loop.create_task(self._answer_later(waiting))

    def _answer_now(self) -> _Waiting | None:
        """Answer the requests at hand until one's answer must be awaited: that one; None
        once all are answered (or the connection is closing)."""
        try:
            while (request := self._next_request()) is not None:
                started = time.perf_counter()
                try:
                    answer = self._answer(request)
                except StoreError as exc:
                    answer = self._unavailable(request, exc)
                if not isinstance(answer, (bytes, bytearray)):
                    return request, answer, started
                if not self._answered(request, answer, started):
                    return None
        except Exception as exc:
            self._failed(exc)
        return None

    async def _answer_later(self, waiting: _Waiting) -> None:
        """Await the answer of `waiting`, send it, answer the requests after it (awaiting
        here those that must be); cancelled when the connection is lost."""
        try:
            while True:
                request, answer, started = waiting
                try:
                    sealed = await answer
                except StoreError as exc:
                    sealed = self._unavailable(request, exc)
                if not self._answered(request, sealed, started):
                    return
                after = self._answer_now()
                if after is None:
                    return
                waiting = after
        except Exception as exc:
            self._failed(exc)
        finally:
            self._answering = None

    def _unavailable(self, request: ev.Message, exc: StoreError) -> Buffer:
        """The answer to `request` when the directory's store fails: the shared store is
        down, say so and keep serving."""
        self._server.store_failures.warning(
            time.monotonic(), "answering a %s: %s", request.TYPE, exc
        )
        assert isinstance(request, ev.DirectoryMessage)
        return self.failure(request.rid, "unavailable", "directory store unavailable")

    def _answered(self, request: ev.Message, answer: Buffer, started: float) -> bool:
        """Send the answer to `request` (read at `started`); False if the connection is
        closing (nothing more to answer)."""
        transport = self._transport
        assert transport is not None
        if transport.is_closing():
            return False
        transport.write(answer)
        self._server.metrics.answered(request.TYPE, time.perf_counter() - started)
        if type(request) is ev.Register:
            self._arm_timer()  # its answer starts the idle deadline
        elif type(request) is ev.Unregister:
            self._arm_timer()  # (none any more: the connection is done)
            transport.close()  # once the answer has gone out
            return False
        return True

    def _next_request(self) -> ev.Message | None:
        """The next request to answer; None when there is none, or when the connection
        timed out (it is then dropped)."""
        assert self._conn is not None
        event = self._conn.next_event()
        if isinstance(event, ev.ConnectionTimedOut):
            log.info("dropping %s: %s", self.phone or self._ip, event.reason)
            assert self._transport is not None
            self._transport.abort()
            return None
        return event

    def _failed(self, exc: Exception) -> None:
        """Answering stopped on `exc` (called in its handler): bad input closes the
        connection as a protocol error; anything else is a bug: say so loudly, close this
        connection, serve the rest."""
        if isinstance(exc, ProtocolError):
            self._broke_protocol(exc)
            return
        log.exception("unexpected error on the connection from %s", self._ip)
        assert self._transport is not None
        self._transport.abort()

    def _answer(self, request: ev.Message) -> Buffer | Awaitable[Buffer]:
        """The sealed answer to `request`; an awaitable of it when the directory's answer
        must be awaited (each request makes one directory call at most)."""
        # Dispatch on type(request), most frequent first: an isinstance() that does not
        # match a message class is slow (see protocol/directory.py).
        if type(request) is ev.Lookup or type(request) is ev.Watch:
            return self._lookup(request)
        if type(request) is ev.Ping:
            return self._pong(request)
        if type(request) is ev.Register:
            return self._register(request)
        if type(request) is ev.Reverse:
            return self._reverse(request)
        if type(request) is ev.Report:
            return self._report(request)
        if type(request) is ev.Relay:
            return self._relay(request)
        assert type(request) is ev.Unregister  # the connection lets no other request through
        return self._unregister(request)

    def _reverse(self, request: ev.Reverse) -> Buffer | Awaitable[Buffer]:
        """Ask `request.phone`'s module to connect to this one, at the address this
        connection comes from (never one it merely claims): through its connection, here
        or (passed on through the directory) at the server it is connected to."""
        refused = self._may_introduce(request)
        if refused is not None:
            return refused
        dial = ev.Dial(0, self._me(), request.token, request.punch)
        return self._introduced(request, dial, None)

    def _may_introduce(self, request: ev.Reverse | ev.Relay) -> Buffer | None:
        """The refusal of a request to have another module connect to this one (back to
        it, or at a relay), over this connection's or its IP's rate; None: go ahead."""
        server = self._server
        rates = server.config.rates
        now = self._loop.time()
        if self._reverses is None:
            self._reverses = TokenBucket(rates.reverse_rate, rates.reverse_burst, now)
        if not self._reverses.take(now) or not server.reverses.take(self._ip, now):
            return self.failure(request.rid, "rate-limited", "too many requests to connect")
        if self.phone is None or request.phone == self.phone:  # (none: taken over since)
            return self.failure(
                request.rid, "offline", f"{request.phone} is not online at this server"
            )
        return None

    def _me(self) -> ev.PeerAddress:
        """This module as another is told of it: its number and key, at the address this
        connection comes from, and the port it registered."""
        assert self.phone is not None
        assert self._conn is not None
        key = self._conn.remote_key
        assert key is not None
        return ev.PeerAddress(self.phone, self._ip, self._port, key)

    def _introduced(
        self,
        request: ev.Reverse | ev.Relay,
        push: ev.Dial | ev.Relayed,
        answer: ev.Relaying | None,
    ) -> Buffer | Awaitable[Buffer]:
        """Push `push` to `request.phone`'s module (here, or through its server), and
        answer: `answer`, or where that module's connection comes from (`reversing`)."""
        server = self._server
        if request.phone in server.here:
            return self._answer_introduced(request, server.push_dial(request.phone, push), answer)
        dialled = server.directory.pass_on(request.phone, push)
        if isinstance(dialled, (ev.Reversing, ev.Failure)):
            return self._answer_introduced(request, dialled, answer)
        return self._introduced_later(request, dialled, answer)

    async def _introduced_later(
        self,
        request: ev.Reverse | ev.Relay,
        dialled: Awaitable[Dialled],
        answer: ev.Relaying | None,
    ) -> Buffer:
        return self._answer_introduced(request, await dialled, answer)

    def _answer_introduced(
        self, request: ev.Reverse | ev.Relay, dialled: Dialled, answer: ev.Relaying | None
    ) -> Buffer:
        """The answer to `request`, from what came of it."""
        if type(dialled) is ev.Failure:
            return self.failure(request.rid, dialled.code, dialled.message)
        assert type(dialled) is ev.Reversing
        assert self._conn is not None
        if answer is not None:
            return self._conn.send(answer)
        assert type(request) is ev.Reverse
        asked = self._asked  # (its outcome may be reported: see _report)
        if asked is None:
            asked = self._asked = {}
        asked[request.token] = None
        if len(asked) > _ASKED_KEPT:
            del asked[next(iter(asked))]
        return self._conn.send(ev.Reversing(request.rid, dialled.host, dialled.port))

    def _relay(self, request: ev.Relay) -> Buffer | Awaitable[Buffer]:
        """Introduce this module and `request.phone`'s at the relays: both are given the
        same ones and a ticket for the pair (pushed to it through its
        connection, here or at the server it is connected to)."""
        config = self._server.config
        if not config.relays or config.tickets is None:
            return self.failure(request.rid, "no-relay", "this directory has no relay")
        refused = self._may_introduce(request)
        if refused is not None:
            return refused
        assert self.phone is not None
        ticket = config.tickets(self.phone, request.phone)
        relayed = ev.Relayed(0, self._me(), config.relays, ticket)
        answer = ev.Relaying(request.rid, config.relays, ticket)
        return self._introduced(request, relayed, answer)

    def _report(self, request: ev.Report) -> Buffer:
        """Count how its module made a connection, within this connection's rate; as a
        rendezvous outcome only for a `reverse` this server passed on for it (a module
        can say how its own connections went, not make up attempts)."""
        rates = self._server.config.rates
        now = self._loop.time()
        if self._reports is None:
            self._reports = TokenBucket(rates.report_rate, rates.report_burst, now)
        if not self._reports.take(now):
            return self.failure(request.rid, "rate-limited", "too many reports")
        asked = False
        if self._asked is not None and request.token is not None:
            asked = self._asked.pop(request.token, 0) is None
        self._server.metrics.connected(request.route, asked)
        assert self._conn is not None
        return self._conn.send(ev.Reported(request.rid))

    def _lookup(self, request: ev.Lookup | ev.Watch) -> Buffer | Awaitable[Buffer]:
        """Count a lookup (or watch: its numbers watched from now on, before looking, so
        that no registration slips between), take its tokens, look its numbers up."""
        now = self._loop.time()
        watched = self.watching
        self._server.metrics.lookups += len(request.phones)
        if type(request) is ev.Watch:
            self.watch(request.phones)
        spend = self._lookup_spend(now, request.phones)
        if spend is None:
            return self._looked_up(request, watched, None)
        # the IP's tokens taken and the numbers looked up in one call: one round trip
        found = self._server.directory.lookup_limited(list(request.phones), spend)
        if found is None or isinstance(found, list):
            return self._looked_up(request, watched, found)
        return self._looked_up_later(request, watched, found)

    async def _looked_up_later(
        self,
        request: ev.Lookup | ev.Watch,
        watched: tuple[str, ...],
        found: Awaitable[Found],
    ) -> Buffer:
        return self._looked_up(request, watched, await found)

    def _looked_up(
        self,
        request: ev.Lookup | ev.Watch,
        watched: tuple[str, ...],
        found: Found,
    ) -> Buffer:
        """The answer to a lookup or watch that found `found` (None: a bucket refused,
        this connection's or its source IP's; a refused watch watches `watched` again)."""
        conn = self._conn
        assert conn is not None
        if found is None:
            self.watch(watched)
            return self.failure(request.rid, "rate-limited", "too many lookups; slow down")
        peers = tuple(found) if not any(a.local for a in found) else self._seen(found)
        if type(request) is ev.Watch:
            return conn.send(ev.Watching(request.rid, peers))
        return conn.send(ev.LookupResult(request.rid, peers))

    def _seen(self, found: list[ev.PeerAddress]) -> tuple[ev.PeerAddress, ...]:
        """`found` as this connection may see it: a module's LAN address only when it
        sits behind the same public address as we see this connection at."""
        return tuple(_seen_from(self._ip, address) for address in found)

    def _pong(self, ping: ev.Ping) -> Buffer | Awaitable[Buffer]:
        """A heartbeat: the registration is renewed."""
        if self.phone is not None:
            renewed = self._server.directory.renew(self.phone, self._id, self._taken_over)
            if renewed is not None:
                return self._ponged_later(ping, renewed)
        assert self._conn is not None
        return self._conn.send(ev.Pong(ping.rid))

    async def _ponged_later(self, ping: ev.Ping, renewed: Awaitable[None]) -> Buffer:
        await renewed
        assert self._conn is not None
        return self._conn.send(ev.Pong(ping.rid))

    def _register(self, request: ev.Register) -> Buffer | Awaitable[Buffer]:
        server = self._server
        rates = server.config.rates
        now = self._loop.time()
        spend = Spend(
            "register", self._ip, rates.ip_register_rate, rates.ip_register_burst, 1.0, now
        )
        assert self._conn is not None
        key = self._conn.remote_key
        assert key is not None  # messages only arrive once the channel is established
        try:
            host = vouched_host(request.host, self._ip)
            local = vouched_local(request.local, self._ip, host)
        except InvalidHost as exc:
            return self.failure(request.rid, "invalid-host", str(exc))
        address = ev.PeerAddress(request.phone, host, request.port, key, local)
        refused = server.directory.register_limited(address, self._id, spend, server.bind)
        if refused is None or isinstance(refused, str):
            return self._registered(request, address, refused)
        return self._registered_later(request, address, refused)

    async def _registered_later(
        self, request: ev.Register, address: ev.PeerAddress, refused: Awaitable[Refused]
    ) -> Buffer:
        return self._registered(request, address, await refused)

    def _registered(
        self, request: ev.Register, address: ev.PeerAddress, refused: Refused
    ) -> Buffer:
        """The answer to a registration of `address`, published unless `refused`."""
        if refused is not None:
            message = _REFUSED[refused].format(phone=address.phone)
            return self.failure(request.rid, refused, message)
        self.phone = address.phone
        self._port = address.port
        self._server.here[address.phone] = self
        log.info("%s online at %s:%s", address.phone, address.host, address.port)
        assert self._conn is not None
        return self._conn.send(
            ev.Registered(request.rid, address.phone, address.host, address.port)
        )

    def _unregister(self, request: ev.Unregister) -> Buffer | Awaitable[Buffer]:
        assert self.phone is not None  # the connection lets it through only once registered
        removed = self._server.directory.unregister(self.phone, self._id)
        if isinstance(removed, bool):
            return self._unregistered(request)
        return self._unregistered_later(request, removed)

    async def _unregistered_later(self, request: ev.Unregister, removed: Awaitable[bool]) -> Buffer:
        await removed
        return self._unregistered(request)

    def _unregistered(self, request: ev.Unregister) -> Buffer:
        log.info("%s offline (unregistered)", self.phone)
        self._not_here()
        assert self._conn is not None
        return self._conn.send(ev.Unregistered(request.rid))

    def _not_here(self) -> None:
        """Our number is no longer registered through this connection."""
        if self.phone is not None and self._server.here.get(self.phone) is self:
            del self._server.here[self.phone]
        self.phone = None

    def _taken_over(self) -> None:
        """Our number was registered through another connection since (its module moved
        to another server): this one is stale."""
        if self.phone is None:
            return
        log.info("%s registered elsewhere since: dropping this connection", self.phone)
        self._not_here()  # not ours to unregister any more
        if self._transport is not None:
            self._transport.close()

    def _lookup_spend(self, now: float, phones: tuple[str, ...]) -> Spend | None:
        """What looking up `phones` takes from its source IP's bucket (in the directory,
        shared by all its servers, taken in the same round trip as the lookup), or None
        when this connection's own bucket (made on first use) refuses."""
        rates = self._server.config.rates
        if self._lookups is None:
            self._lookups = TokenBucket(rates.lookup_rate, rates.lookup_burst, now)
        cost = self._lookup_cost(now, phones) or 1.0  # an empty lookup is not free either
        if not self._lookups.take(now, cost):
            return None
        return Spend("lookup", self._ip, rates.ip_lookup_rate, rates.ip_lookup_burst, cost, now)

    def _lookup_cost(self, now: float, phones: tuple[str, ...]) -> float:
        """A number costs a token, or a tenth of one if this connection asked for it in
        the last second: scraping means many different numbers, while a burst of sends to
        one contact asks for the same few again and again (still not for free)."""
        recent = self._recent
        if recent is None:
            recent = self._recent = {}
        cost = 0.0
        for phone in phones:
            asked = recent.pop(phone, None)
            cost += _REPEAT_COST if asked is not None and now - asked < _REPEAT_WINDOW else 1.0
            recent[phone] = now
        while len(recent) > _RECENT_NUMBERS:
            del recent[next(iter(recent))]
        return cost
