"""Where connections come from: TCP on the machine's network, or an in-memory network in
tests. The adapters above ask a `Network` to dial or to listen with an asyncio protocol
factory, and never open a socket themselves."""

from __future__ import annotations

import asyncio
import socket
import typing
from collections.abc import Callable

__all__ = ["Listening", "Network", "TcpNetwork"]

P = typing.TypeVar("P", bound=asyncio.BaseProtocol)


class Listening(typing.Protocol):
    """A listening endpoint."""

    @property
    def address(self) -> tuple[str, int]:
        """The address actually bound (the real port when 0 was asked for)."""

    def close(self) -> None:
        """Accept no more connections (those accepted stay)."""

    async def wait_closed(self) -> None: ...


class Network(typing.Protocol):
    async def connect(
        self,
        host: str,
        port: int,
        factory: Callable[[], P],
        timeout: float,
        local_port: int | None = None,
    ) -> P:
        """A connection to `host:port` driven by the protocol `factory` made, from
        `local_port` when given (the port we listen on: a router then maps it to the
        same outside port for every connection, which is what punching a hole needs);
        raises OSError (refused, unreachable, reset, that port busy towards that address)
        or TimeoutError after `timeout` s."""

    async def listen(self, host: str, port: int, factory: Callable[[], P]) -> Listening:
        """Accept connections on `host:port`, each driven by a protocol from `factory`,
        while connections may leave from that port too (`connect`'s `local_port`);
        raises OSError (in use, not an address of this machine)."""


class _TcpListening:
    def __init__(self, server: asyncio.Server) -> None:
        self._server = server
        # Any: typeshed says a tuple, uvloop gives a list
        bound = typing.cast(typing.Any, server).sockets[0].getsockname()
        self.address = (str(bound[0]), int(bound[1]))

    def close(self) -> None:
        self._server.close()

    async def wait_closed(self) -> None:
        await self._server.wait_closed()


class TcpNetwork:
    """The machine's TCP/IP. Listening sockets and connections from their port share it
    (SO_REUSEPORT); a port another socket holds is refused first, so two modules never
    share one."""

    async def connect(
        self,
        host: str,
        port: int,
        factory: Callable[[], P],
        timeout: float,
        local_port: int | None = None,
    ) -> P:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            if local_port is None:
                _, protocol = await loop.create_connection(factory, host, port)
                return protocol
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                sock.setblocking(False)
                sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", local_port))
                await loop.sock_connect(sock, (host, port))
                _, protocol = await loop.create_connection(factory, sock=sock)
            except BaseException:
                sock.close()
                raise
        return protocol

    async def listen(self, host: str, port: int, factory: Callable[[], P]) -> Listening:
        loop = asyncio.get_running_loop()
        if port:  # (SO_REUSEPORT would let us share a port another module holds)
            with socket.create_server((host, port)):
                pass
        server = await loop.create_server(factory, host, port, backlog=1024, reuse_port=True)
        return _TcpListening(server)
