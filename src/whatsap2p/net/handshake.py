"""Running an initiator's secure handshake over a fresh stream, for any connection kind."""

from __future__ import annotations

import asyncio
from typing import Protocol

__all__ = ["HandshakeInterrupted", "Initiator", "complete_handshake"]

_READ_SIZE = 64 * 1024


class Initiator(Protocol):
    """What DirectoryClientConnection and PeerSender have in common for the handshake."""

    @property
    def established(self) -> bool: ...

    def data_to_send(self) -> bytes: ...

    def receive_data(self, data: bytes) -> None: ...


class HandshakeInterrupted(ConnectionError):
    """The other side closed the connection before the handshake completed."""


async def complete_handshake(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: Initiator, timeout: float
) -> None:
    """Exchange handshake messages until `conn` is established.

    Raises TimeoutError, OSError (HandshakeInterrupted on EOF) or the protocol's errors
    (RemoteKeyMismatch when the other side proves an unexpected key); the caller closes
    the writer and says what failed in its own words.
    """
    async with asyncio.timeout(timeout):
        writer.write(conn.data_to_send())
        while not conn.established:
            data = await reader.read(_READ_SIZE)
            if not data:
                raise HandshakeInterrupted("closed during the secure handshake")
            conn.receive_data(data)
            writer.write(conn.data_to_send())
        await writer.drain()
