"""The directory server: accepts user modules and answers register / lookup / unregister.

Each connection is its own task with its own deadlines (register in time, heartbeat or
be dropped, drain writes in time), so a slow or hostile client never stalls the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from dataclasses import dataclass, field

from whatsap2p.config import Limits, Timeouts
from whatsap2p.errors import NumberAlreadyOnline, ProtocolError
from whatsap2p.protocol import events as ev
from whatsap2p.protocol.directory import DirectoryServerConnection
from whatsap2p.server.directory import Directory, MemoryDirectory

__all__ = ["DirectoryServer", "ServerConfig"]

log = logging.getLogger(__name__)

_READ_SIZE = 64 * 1024


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 5555
    limits: Limits = field(default_factory=Limits)
    timeouts: Timeouts = field(default_factory=Timeouts)


class DirectoryServer:
    def __init__(self, config: ServerConfig, directory: Directory | None = None) -> None:
        self.config = config
        self.directory: Directory = directory or MemoryDirectory()
        self._server: asyncio.Server | None = None
        self._ids = itertools.count(1)
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

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
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        conn_id = next(self._ids)
        peer = writer.get_extra_info("peername")
        handler = _Client(self, conn_id, reader, writer, str(peer[0]) if peer else "?")
        try:
            await handler.run()
        except ProtocolError as exc:
            log.info("client %s broke the protocol: %s", peer, exc)
            with contextlib.suppress(Exception):
                writer.write(handler.failure(0, "protocol-error", str(exc)))
        except (OSError, TimeoutError) as exc:
            log.info("client %s: %s", peer, exc or "timed out")
        finally:
            self._connections.pop(task, None)
            if handler.phone is not None:
                await self.directory.unregister(handler.phone, conn_id)
                log.info("%s offline (connection closed)", handler.phone)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


class _Client:
    """One connected user module."""

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
        self._conn = DirectoryServerConnection(self._loop.time(), config.limits, config.timeouts)
        self.phone: str | None = None

    def failure(self, rid: int, code: str, message: str) -> bytes:
        return self._conn.send(ev.Failure(rid, code, message))

    async def run(self) -> None:
        while True:
            timer = self._conn.get_timer()
            if timer is None:
                return
            try:
                data = await asyncio.wait_for(
                    self._reader.read(_READ_SIZE), max(0.0, timer - self._loop.time())
                )
            except TimeoutError:
                self._conn.handle_timer(self._loop.time())
            else:
                if not data:
                    return
                self._conn.receive_data(data, self._loop.time())
            while (event := self._conn.next_event()) is not None:
                if isinstance(event, ev.ConnectionTimedOut):
                    log.info("dropping %s: %s", self.phone or self._ip, event.reason)
                    return
                self._writer.write(await self._answer(event))
            await asyncio.wait_for(self._writer.drain(), self._timeouts.write_drain)

    async def _answer(self, request: ev.Message) -> bytes:
        directory = self._server.directory
        if isinstance(request, ev.Register):
            address = ev.PeerAddress(request.phone, request.host or self._ip, request.port)
            try:
                await directory.register(address, self._id)
            except NumberAlreadyOnline as exc:
                return self.failure(request.rid, "number-online", str(exc))
            self.phone = request.phone
            log.info("%s online at %s:%s", address.phone, address.host, address.port)
            return self._conn.send(ev.Registered(request.rid, *_fields(address)))
        if isinstance(request, ev.Lookup):
            found = await directory.lookup(list(request.phones))
            return self._conn.send(ev.LookupResult(request.rid, tuple(found)))
        if isinstance(request, ev.Unregister):
            assert self.phone is not None
            await directory.unregister(self.phone, self._id)
            log.info("%s offline (unregistered)", self.phone)
            self.phone = None
            return self._conn.send(ev.Unregistered(request.rid))
        assert isinstance(request, ev.Ping)
        return self._conn.send(ev.Pong(request.rid))


def _fields(address: ev.PeerAddress) -> tuple[str, str, int]:
    return address.phone, address.host, address.port
