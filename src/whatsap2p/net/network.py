"""Where connections come from: TCP on the machine's network, or an in-memory network in
tests. The adapters above ask a `Network` to dial or to listen with an asyncio protocol
factory, and never open a socket themselves."""

from __future__ import annotations

import asyncio
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
    async def connect(self, host: str, port: int, factory: Callable[[], P], timeout: float) -> P:
        """A connection to `host:port` driven by the protocol `factory` made; raises
        OSError (refused, unreachable, reset) or TimeoutError after `timeout` s."""

    async def listen(self, host: str, port: int, factory: Callable[[], P]) -> Listening:
        """Accept connections on `host:port`, each driven by a protocol from `factory`;
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
    """The machine's TCP/IP."""

    async def connect(self, host: str, port: int, factory: Callable[[], P], timeout: float) -> P:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            _, protocol = await loop.create_connection(factory, host, port)
        return protocol

    async def listen(self, host: str, port: int, factory: Callable[[], P]) -> Listening:
        loop = asyncio.get_running_loop()
        return _TcpListening(await loop.create_server(factory, host, port, backlog=1024))
