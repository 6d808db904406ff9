"""A module's side of a relay connection, for tests: an asyncio protocol that keeps what it
receives and lets a test await it (on TCP, or on tests/memory.py's network)."""

from __future__ import annotations

import asyncio
import os
import time
import typing
from collections.abc import Callable

from whatsap2p.net.network import Network
from whatsap2p.protocol.relay import encode_preface, mint

SECRET = bytes(range(32))
ALICE, BOB = "+5511999990001", "+5511999990002"


def token(now: float | None = None, ttl: float = 60, secret: bytes = SECRET) -> bytes:
    """A fresh token for ALICE and BOB, as the directory would mint it."""
    return mint(secret, ALICE, BOB, time.time() if now is None else now, ttl)


class RelayClient(asyncio.Protocol):
    #: Every client made, for the tests' clean-up (tests/relay/conftest.py).
    opened: typing.ClassVar[list[RelayClient]] = []

    def __init__(self) -> None:
        RelayClient.opened.append(self)
        self.transport: asyncio.Transport | None = None
        self.received = bytearray()
        self.eof = False
        self.lost = False
        self.lost_with: Exception | None = None
        self.paused = asyncio.Event()  # its writes are backed up (past the high-water mark)
        self._changed: list[asyncio.Future[None]] = []

    # --- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports implement asyncio.Transport without subclassing it)
        self.transport = typing.cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.received += data
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return True  # half closed: we may still write

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost, self.lost_with = True, exc
        self._wake()

    def pause_writing(self) -> None:
        self.paused.set()

    def resume_writing(self) -> None:
        self.paused.clear()

    # --- for the test ----------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def present(self, token: bytes) -> None:
        self.write(encode_preface(token))

    async def until(self, done: Callable[[], bool]) -> None:
        while not done():
            waiter = asyncio.get_running_loop().create_future()
            self._changed.append(waiter)
            await waiter

    async def status(self) -> int | None:
        """The relay's answer (None: the connection ended with none)."""
        await self.until(lambda: bool(self.received) or self.eof or self.lost)
        if not self.received:
            return None
        answer = self.received[0]
        del self.received[:1]
        return answer

    async def read(self, size: int) -> bytes:
        """The next `size` bytes (fewer if the connection ends first)."""
        await self.until(lambda: len(self.received) >= size or self.eof or self.lost)
        data = bytes(self.received[:size])
        del self.received[:size]
        return data

    async def some(self) -> bytes:
        """Whatever has come (at least a byte; empty only once the connection ended)."""
        await self.until(lambda: bool(self.received) or self.eof or self.lost)
        data = bytes(self.received)
        self.received.clear()
        return data

    async def ended(self) -> bytes:
        """Everything until the other side's end (EOF or loss)."""
        await self.until(lambda: self.eof or self.lost)
        data = bytes(self.received)
        self.received.clear()
        return data

    async def closed(self) -> None:
        await self.until(lambda: self.lost)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _wake(self) -> None:
        waiters, self._changed = self._changed, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


async def connect(port: int, host: str = "127.0.0.1", source: str | None = None) -> RelayClient:
    """A TCP connection to the relay, from `source` (another loopback address: 127.0.0.2...)
    when given, so that a test can play several source IPs."""
    _, client = await asyncio.get_running_loop().create_connection(
        RelayClient, host, port, local_addr=(source, 0) if source else None
    )
    return client


async def connect_on(network: Network, address: tuple[str, int]) -> RelayClient:
    return await network.connect(address[0], address[1], RelayClient, timeout=5.0)


async def pair(port: int, token_bytes: bytes | None = None) -> tuple[RelayClient, RelayClient]:
    """Two halves joined through the relay at `port`, their status bytes read."""
    token_bytes = token_bytes or token()
    first, second = await connect(port), await connect(port)
    first.present(token_bytes)
    second.present(token_bytes)
    assert await first.status() == 0
    assert await second.status() == 0
    return first, second


def random_bytes(size: int) -> bytes:
    return os.urandom(size)
