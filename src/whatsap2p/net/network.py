"""Where connections come from: TCP on the machine's network, or an in-memory network in
tests. The adapters above ask a `Network` to dial or to listen with an asyncio protocol
factory, and never open a socket themselves."""

from __future__ import annotations

import asyncio
import socket
import typing
from collections.abc import Callable

__all__ = ["Listening", "Network", "TcpNetwork", "host_port"]

P = typing.TypeVar("P", bound=asyncio.BaseProtocol)


def host_port(host: str, port: int) -> str:
    """`HOST:PORT` as users write it (an IPv6 host in brackets: `[::1]:5555`)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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

    async def listen(
        self, host: str, port: int, factory: Callable[[], P], reuse_port: bool = False
    ) -> Listening:
        """Accept connections on `host:port`, each driven by a protocol from `factory`;
        with `reuse_port`, connections may leave from that port too (`connect`'s
        `local_port`); raises OSError (in use, not an address of this machine)."""


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
    """The machine's TCP/IP. A listening socket asked to (`reuse_port`) shares its port
    with connections from it (SO_REUSEPORT); a port another socket holds is refused
    first, so two modules never share one."""

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
            # From `local_port`: each address of `host` in turn, as create_connection does.
            failure: OSError = OSError(f"no address for {host}")
            for family, kind, proto, _, address in await loop.getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            ):
                sock = socket.socket(family, kind, proto)
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    if hasattr(socket, "SO_REUSEPORT"):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                    sock.setblocking(False)
                    sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", local_port))
                    await loop.sock_connect(sock, address)
                    _, protocol = await loop.create_connection(factory, sock=sock)
                    return protocol
                except OSError as exc:
                    sock.close()
                    failure = exc
                except BaseException:
                    sock.close()
                    raise
            raise failure

    async def listen(
        self, host: str, port: int, factory: Callable[[], P], reuse_port: bool = False
    ) -> Listening:
        loop = asyncio.get_running_loop()
        reuse_port = reuse_port and hasattr(socket, "SO_REUSEPORT")
        if reuse_port and port:  # (SO_REUSEPORT would let us share a port another holds)
            for family, kind, proto, _, address in await loop.getaddrinfo(
                host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            ):
                with socket.socket(family, kind, proto) as probe:
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    probe.bind(address)
        server = await loop.create_server(
            factory, host, port, backlog=1024, reuse_port=reuse_port or None
        )
        return _TcpListening(server)
