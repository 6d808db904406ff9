"""The directory server: accepts user modules and answers register / lookup / unregister.

Every connection runs inside a Noise channel: the server proves its key, the module
proves its own, and a number may only be registered by the key it is bound to. Each
connection is its own task with its own deadlines (handshake, register, heartbeat,
write drain) and rate limits, so a slow, hostile or greedy client never stalls others.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import Counter
from dataclasses import dataclass, field

from whatsap2p.config import Limits, RateLimits, Timeouts
from whatsap2p.errors import NumberAlreadyOnline, NumberBound, ProtocolError
from whatsap2p.protocol import events as ev
from whatsap2p.protocol.channel import Buffer
from whatsap2p.protocol.directory import DirectoryServerConnection
from whatsap2p.protocol.keys import StaticKey
from whatsap2p.protocol.noise import COMPACT, NoiseChannel
from whatsap2p.server.bindings import Bindings
from whatsap2p.server.directory import Directory, MemoryDirectory
from whatsap2p.server.ratelimit import BucketsByKey, TokenBucket

__all__ = ["DirectoryServer", "ServerConfig"]

log = logging.getLogger(__name__)

_READ_SIZE = 64 * 1024
#: Wait for the client to read only past this much unsent (asyncio's own high-water mark).
_WRITE_HIGH = 64 * 1024


@dataclass(frozen=True, slots=True)
class ServerConfig:
    key: StaticKey
    host: str = "127.0.0.1"
    port: int = 5555
    limits: Limits = field(default_factory=Limits)
    timeouts: Timeouts = field(default_factory=Timeouts)
    rates: RateLimits = field(default_factory=RateLimits)


class DirectoryServer:
    def __init__(
        self, config: ServerConfig, bindings: Bindings, directory: Directory | None = None
    ) -> None:
        self.config = config
        self.bindings = bindings
        self.directory: Directory = directory or MemoryDirectory()
        self._server: asyncio.Server | None = None
        self._ids = itertools.count(1)
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        rates = config.rates
        self.ip_lookups = BucketsByKey(rates.ip_lookup_rate, rates.ip_lookup_burst)
        self.ip_registrations = BucketsByKey(rates.ip_register_rate, rates.ip_register_burst)
        self.unauthenticated: Counter[str] = Counter()
        #: phone -> the connections waiting for it to come online
        self.watchers: dict[str, set[_Client]] = {}

    async def start(self) -> tuple[str, int]:
        """Bind; returns the address actually bound (the real port when asked for 0)."""
        self._server = await asyncio.start_server(
            self._serve, self.config.host, self.config.port, backlog=1024
        )
        bound = self._server.sockets[0].getsockname()
        return str(bound[0]), int(bound[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        # Aborting the transports ends each connection task normally (reads return EOF);
        # cancelling them would trip an error callback in 3.11's asyncio.streams.
        for writer in self._connections.values():
            writer.transport.abort()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        ip = str(peer[0]) if peer else "?"
        if self.unauthenticated[ip] >= self.config.rates.max_unauthenticated_per_ip:
            log.warning("refusing a connection from %s: too many unauthenticated ones", ip)
            writer.transport.abort()
            return
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        conn_id = next(self._ids)
        handler = _Client(self, conn_id, reader, writer, ip)
        try:
            await handler.run()
        except ProtocolError as exc:
            log.info("client %s broke the protocol: %s", peer, exc)
            with contextlib.suppress(Exception):
                writer.write(handler.failure(0, "protocol-error", str(exc)))
        except (OSError, TimeoutError) as exc:
            log.info("client %s: %s", peer, str(exc) or "timed out")
        except Exception:
            # A bug, not bad input: say so loudly, close this connection, serve the rest.
            log.exception("unexpected error on the connection from %s", peer)
        finally:
            handler.authenticated()  # no longer counts as unauthenticated, whatever happened
            handler.watch(())
            self._connections.pop(task, None)
            if handler.phone is not None:
                await self.directory.unregister(handler.phone, conn_id)
                log.info("%s offline (connection closed)", handler.phone)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


class _Client:
    """One connected user module."""

    __slots__ = (
        "__weakref__",
        "_conn",
        "_counted",
        "_id",
        "_ip",
        "_lookups",
        "_loop",
        "_reader",
        "_server",
        "_timeouts",
        "_writer",
        "phone",
        "watching",
    )

    def __init__(
        self,
        server: DirectoryServer,
        conn_id: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        ip: str,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._server = server
        self._id = conn_id
        self._reader = reader
        self._writer = writer
        self._ip = ip
        config = server.config
        self._timeouts = config.timeouts
        now = self._loop.time()
        channel = NoiseChannel(
            config.key,
            initiator=False,
            max_body=config.limits.max_directory_frame,
            suite=COMPACT,
        )
        self._conn = DirectoryServerConnection(now, config.limits, config.timeouts, channel)
        self._lookups = TokenBucket(config.rates.lookup_rate, config.rates.lookup_burst, now)
        self.phone: str | None = None
        self.watching: tuple[str, ...] = ()
        self._counted = True
        server.unauthenticated[ip] += 1

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
        """Tell this connection a number it watches has come online. Its own loop drains
        the write, and drops the connection if it stops reading."""
        with contextlib.suppress(ProtocolError):
            self._writer.write(self._conn.send(ev.Online(0, address)))

    def failure(self, rid: int, code: str, message: str) -> Buffer:
        return self._conn.send(ev.Failure(rid, code, message))

    async def run(self) -> None:
        while True:
            timer = self._conn.get_timer()
            if timer is None:
                return
            try:
                # timeout_at, not wait_for: no task per read (this loop is the server's
                # hot path, once per request of every connection).
                async with asyncio.timeout_at(timer):
                    data = await self._reader.read(_READ_SIZE)
            except TimeoutError:
                self._conn.handle_timer(self._loop.time())
            else:
                if not data:
                    return
                self._conn.receive_data(data, self._loop.time())
                self._writer.write(self._conn.data_to_send())
                if self._conn.established:
                    self.authenticated()
            while (event := self._conn.next_event()) is not None:
                if isinstance(event, ev.ConnectionTimedOut):
                    log.info("dropping %s: %s", self.phone or self._ip, event.reason)
                    return
                self._writer.write(await self._answer(event))
            if self._writer.transport.get_write_buffer_size() > _WRITE_HIGH:
                await asyncio.wait_for(self._writer.drain(), self._timeouts.write_drain)

    async def _answer(self, request: ev.Message) -> Buffer:
        server = self._server
        now = self._loop.time()
        if isinstance(request, ev.Register):
            if not server.ip_registrations.take(self._ip, now):
                return self.failure(request.rid, "rate-limited", "too many registrations")
            key = self._conn.remote_key
            assert key is not None  # messages only arrive once the channel is established
            try:
                server.bindings.bind(request.phone, key)
            except NumberBound as exc:
                return self.failure(request.rid, "number-bound", str(exc))
            address = ev.PeerAddress(request.phone, request.host or self._ip, request.port, key)
            try:
                await server.directory.register(address, self._id)
            except NumberAlreadyOnline as exc:
                return self.failure(request.rid, "number-online", str(exc))
            self.phone = request.phone
            log.info("%s online at %s:%s", address.phone, address.host, address.port)
            for watcher in list(server.watchers.get(address.phone, ())):
                watcher.push_online(address)
            return self._conn.send(
                ev.Registered(request.rid, address.phone, address.host, address.port)
            )
        if isinstance(request, ev.Lookup):
            cost = max(1, len(request.phones))
            if not self._lookups.take(now, cost) or not server.ip_lookups.take(self._ip, now, cost):
                return self.failure(request.rid, "rate-limited", "too many lookups; slow down")
            found = await server.directory.lookup(list(request.phones))
            return self._conn.send(ev.LookupResult(request.rid, tuple(found)))
        if isinstance(request, ev.Watch):
            cost = max(1, len(request.phones))
            if not self._lookups.take(now, cost) or not server.ip_lookups.take(self._ip, now, cost):
                return self.failure(request.rid, "rate-limited", "too many lookups; slow down")
            self.watch(request.phones)
            found = await server.directory.lookup(list(request.phones))
            return self._conn.send(ev.Watching(request.rid, tuple(found)))
        if isinstance(request, ev.Unregister):
            assert self.phone is not None
            await server.directory.unregister(self.phone, self._id)
            log.info("%s offline (unregistered)", self.phone)
            self.phone = None
            return self._conn.send(ev.Unregistered(request.rid))
        assert isinstance(request, ev.Ping)
        return self._conn.send(ev.Pong(request.rid))
