"""In-process servers and sessions on 127.0.0.1 port 0, for the Session and server tests."""

from __future__ import annotations

import asyncio
import tempfile
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import replace
from pathlib import Path

from whatsap2p.app.session import Session, SessionConfig
from whatsap2p.config import Limits, RateLimits, Timeouts
from whatsap2p.net.directory_client import DirectoryClient
from whatsap2p.protocol.keys import StaticKey
from whatsap2p.server.bindings import Bindings
from whatsap2p.server.directory import Directory, MemoryDirectory
from whatsap2p.server.service import DirectoryServer, ServerConfig

FAST = Timeouts(
    connect=2,
    handshake=2,
    server_reply=3,
    write_drain=2,
    peer_ack=3,
    hello_deadline=2,
    peer_idle=5,
)
SERVER_KEY = StaticKey.generate()


@asynccontextmanager
async def running_server(
    timeouts: Timeouts = FAST,
    directory: Directory | None = None,
    rates: RateLimits | None = None,
    db: Path | None = None,
) -> AsyncIterator[tuple[DirectoryServer, int]]:
    with tempfile.TemporaryDirectory() as scratch:
        bindings = Bindings(db or Path(scratch) / "bindings.sqlite3")
        config = ServerConfig(
            SERVER_KEY, "127.0.0.1", 0, timeouts=timeouts, rates=rates or RateLimits()
        )
        server = DirectoryServer(config, bindings, directory)
        _, port = await server.start()
        try:
            yield server, port
        finally:
            await server.close()
            bindings.close()


async def directory_client(
    port: int, key: StaticKey | None = None, timeouts: Timeouts = FAST
) -> DirectoryClient:
    """A bare client of the directory, with a fresh key unless one is given."""
    return await DirectoryClient.connect(
        "127.0.0.1", port, key or StaticKey.generate(), timeouts=timeouts
    )


def session_config(
    port: int, phone: str, data_dir: Path, limits: Limits | None = None, **timeouts: float
) -> SessionConfig:
    return SessionConfig(
        phone=phone,
        server_host="127.0.0.1",
        server_port=port,
        data_dir=data_dir,
        listen_host="127.0.0.1",
        limits=limits or Limits(),
        timeouts=replace(FAST, **timeouts),
    )


class WatchedDirectory(MemoryDirectory):
    """A MemoryDirectory that lets a test await the moment a number goes offline."""

    def __init__(self) -> None:
        super().__init__()
        self.went_offline: dict[str, asyncio.Event] = defaultdict(asyncio.Event)

    async def unregister(self, phone: str, owner: int) -> bool:
        removed = await super().unregister(phone, owner)
        if removed:
            self.went_offline[phone].set()
        return removed


class World:
    """A real server on 127.0.0.1 port 0 and the sessions a test starts on it."""

    def __init__(
        self, stack: AsyncExitStack, server: DirectoryServer, port: int, root: Path
    ) -> None:
        self.stack, self.server, self.port, self.root = stack, server, port, root

    async def user(
        self, phone: str, limits: Limits | None = None, data_dir: str = "", **timeouts: float
    ) -> Session:
        folder = self.root / (data_dir or phone)
        config = session_config(self.port, phone, folder, limits, **timeouts)
        return await self.stack.enter_async_context(Session(config))

    async def new_key(self, session: Session) -> Session:
        """`session`'s number moves to a new key: the module ends, the operator releases
        the number, a module with another data dir (another key) takes it."""
        await session.close()
        assert self.server.bindings is not None
        assert self.server.bindings.release(session.phone)
        return await self.user(session.phone, data_dir=f"new-{session.phone}")


@asynccontextmanager
async def world_at(root: Path) -> AsyncIterator[World]:
    async with AsyncExitStack() as stack:
        server, port = await stack.enter_async_context(running_server())
        yield World(stack, server, port, root)
