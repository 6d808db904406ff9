"""In-process servers and sessions, for the Session and server tests: on 127.0.0.1 port 0,
or on an in-memory network (tests/memory.py) where each user is a host of its own."""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import replace
from pathlib import Path

from tests.memory import MemoryNetwork, run_in_virtual_time
from whatsap2p.app.events import GroupChanged, SessionEvent
from whatsap2p.app.session import Session, SessionConfig
from whatsap2p.config import IncomingLimits, Limits, RateLimits, Timeouts
from whatsap2p.net.directory_client import DirectoryClient
from whatsap2p.net.network import Network, TcpNetwork
from whatsap2p.protocol import events as ev
from whatsap2p.protocol.keys import StaticKey
from whatsap2p.protocol.relay import mint
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
#: What the relays of the tests' servers and the servers share.
RELAY_SECRET = bytes(range(32))


@asynccontextmanager
async def running_server(
    timeouts: Timeouts = FAST,
    directory: Directory | None = None,
    rates: RateLimits | None = None,
    db: Path | None = None,
    network: Network | None = None,
    relays: tuple[ev.RelayAddress, ...] = (),
) -> AsyncIterator[tuple[DirectoryServer, int]]:
    """A directory server; with `relays`, it names them, and mints their tickets with
    RELAY_SECRET."""
    with tempfile.TemporaryDirectory() as scratch:
        bindings = Bindings(db or Path(scratch) / "bindings.sqlite3")

        def tickets(phone_a: str, phone_b: str) -> bytes:
            return mint(RELAY_SECRET, phone_a, phone_b, time.time())

        config = ServerConfig(
            SERVER_KEY, "127.0.0.1", 0, timeouts=timeouts, rates=rates or RateLimits(),
            relays=relays, tickets=tickets if relays else None,
        )  # fmt: skip
        server = DirectoryServer(config, bindings, directory)
        _, port = await server.start(network)
        try:
            yield server, port
        finally:
            await server.close()
            bindings.close()


async def directory_client(
    port: int,
    key: StaticKey | None = None,
    timeouts: Timeouts = FAST,
    network: Network | None = None,
) -> DirectoryClient:
    """A bare client of the directory, with a fresh key unless one is given."""
    return await DirectoryClient.connect(
        "127.0.0.1", port, key or StaticKey.generate(), timeouts=timeouts, network=network
    )


def session_config(
    port: int,
    phone: str,
    data_dir: Path,
    limits: Limits | None = None,
    network: Network | None = None,
    incoming: IncomingLimits | None = None,
    **timeouts: float,
) -> SessionConfig:
    """On the in-memory `network`, the session listens on its own host's every address
    (its host is the network's view); on TCP, on 127.0.0.1."""
    return SessionConfig(
        phone=phone,
        server_host="127.0.0.1",
        server_port=port,
        data_dir=data_dir,
        listen_host="127.0.0.1" if network is None else "0.0.0.0",
        limits=limits or Limits(),
        incoming=incoming or IncomingLimits(),
        timeouts=replace(FAST, **timeouts),
        network=network or TcpNetwork(),
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
    """A real server and the sessions a test starts on it: on 127.0.0.1 port 0, or on
    the in-memory `network`, where each number's module runs on a host of its own
    (`host_of`), as on separate machines."""

    def __init__(
        self,
        stack: AsyncExitStack,
        server: DirectoryServer,
        port: int,
        root: Path,
        network: MemoryNetwork | None = None,
    ) -> None:
        self.stack, self.server, self.port, self.root = stack, server, port, root
        self.network = network
        self._hosts: dict[str, str] = {}

    def host_of(self, phone: str) -> str:
        """The in-memory host a number's module runs on."""
        return self._hosts.setdefault(phone, f"10.0.0.{len(self._hosts) + 1}")

    def network_of(self, phone: str) -> Network | None:
        return None if self.network is None else self.network.at(self.host_of(phone))

    async def user(
        self,
        phone: str,
        limits: Limits | None = None,
        data_dir: str = "",
        incoming: IncomingLimits | None = None,
        **timeouts: float,
    ) -> Session:
        folder = self.root / (data_dir or phone)
        network = self.network_of(phone)
        config = session_config(self.port, phone, folder, limits, network, incoming, **timeouts)
        return await self.stack.enter_async_context(Session(config))

    async def client(self, phone: str, key: StaticKey | None = None) -> DirectoryClient:
        """A bare directory client from `phone`'s host, with a fresh key unless given."""
        return await directory_client(self.port, key, network=self.network_of(phone))

    async def new_key(self, session: Session) -> Session:
        """`session`'s number moves to a new key: the module ends, the operator releases
        the number, a module with another data dir (another key) takes it."""
        await session.close()
        assert self.server.bindings is not None
        assert self.server.bindings.release(session.phone)
        return await self.user(session.phone, data_dir=f"new-{session.phone}")


@asynccontextmanager
async def world_at(
    root: Path, network: MemoryNetwork | None = None, relays: tuple[ev.RelayAddress, ...] = ()
) -> AsyncIterator[World]:
    """A world on 127.0.0.1, or on the in-memory `network`; its server names `relays`."""
    async with AsyncExitStack() as stack:
        server, port = await stack.enter_async_context(
            running_server(network=network, relays=relays)
        )
        yield World(stack, server, port, root, network)


Scenario = Callable[[World], Coroutine[object, object, None]]


def in_memory(tmp_path: Path, scenario: Scenario) -> None:
    """Run `scenario` in a world on an in-memory network, in virtual time."""

    async def main() -> None:
        async with world_at(tmp_path, MemoryNetwork()) as world:
            await scenario(world)

    run_in_virtual_time(main)


def network(world: World) -> MemoryNetwork:
    """The in-memory network `world` runs on."""
    assert world.network is not None
    return world.network


async def next_message(session: Session, timeout: float = 10) -> SessionEvent:
    """The session's next event but what it tells of groups (a receiver learns a group
    from its creator's first message: GroupChanged comes before the message)."""
    while True:
        event = await asyncio.wait_for(session.events.get(), timeout)
        if not isinstance(event, GroupChanged):
            return event
