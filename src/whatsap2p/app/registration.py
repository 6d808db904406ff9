"""Staying registered: which server to connect to, when, and what the user is told.

`Registration` is the decision, as an explicit state machine with time and chance passed
in (as magic-wormhole's nameplate machine is): it is told `start`, `registered`,
`failed`, `lost`, the time, and `close`, and answers with what to do (`Connect` to a
server of the list) and what to say (`Lost`, `Restored`, `GaveUp`). `Registrar` carries
that out with a `DirectoryClient`.

    idle ──start──▶ connecting ──registered──▶ registered
                     │  ▲   failed, with servers left to try: the next one
                     │  └─────┘
                     │ failed, every server tried: at start, gave up (the module ends),
                     │ unless one refused only for now (its store fails over, or a rate
                     │ limit): then, as later, wait (growing pause) and try again from
                     ▼ the next server
                   waiting ──pause over──▶ connecting
    registered ──lost──▶ waiting;  any ──close──▶ closed
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Final

from whatsap2p.config import Limits, Timeouts
from whatsap2p.errors import DirectoryError, LocalProtocolError, RateLimited, StoreUnavailable
from whatsap2p.lan import is_lan
from whatsap2p.net.directory_client import DirectoryClient
from whatsap2p.net.network import Network, host_port
from whatsap2p.protocol import events as ev
from whatsap2p.protocol.keys import StaticKey

__all__ = [
    "Connect",
    "GaveUp",
    "Lost",
    "Registrar",
    "Registration",
    "RegistrationState",
    "Restored",
    "WaitingOut",
]

log = logging.getLogger(__name__)


class RegistrationState(enum.Enum):
    IDLE = "idle"
    CONNECTING = "connecting"
    REGISTERED = "registered"
    WAITING = "waiting to try again"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Connect:
    """Connect to server `index` of the list and register there."""

    index: int


@dataclass(frozen=True, slots=True)
class Lost:
    """The registration is lost (we keep trying): tell the user."""


@dataclass(frozen=True, slots=True)
class Restored:
    """Registered again after a loss: tell the user."""


@dataclass(frozen=True, slots=True)
class GaveUp:
    """No server of the list could be reached at start: the module cannot run."""


@dataclass(frozen=True, slots=True)
class WaitingOut:
    """Every server refused, one of them only for now: trying again in `pause` seconds
    (tell the user)."""

    pause: float


Action = Connect | Lost | Restored | GaveUp | WaitingOut

#: (state, input) -> next state; a pair not listed is a bug on our side.
_TRANSITIONS: Final[dict[tuple[RegistrationState, str], RegistrationState]] = {
    (RegistrationState.IDLE, "start"): RegistrationState.CONNECTING,
    (RegistrationState.CONNECTING, "registered"): RegistrationState.REGISTERED,
    (RegistrationState.CONNECTING, "failed"): RegistrationState.CONNECTING,
    (RegistrationState.CONNECTING, "failed for now"): RegistrationState.CONNECTING,
    (RegistrationState.REGISTERED, "lost"): RegistrationState.WAITING,
    (RegistrationState.WAITING, "timer"): RegistrationState.CONNECTING,
}


class Registration:
    """When to connect to which of `servers` servers. Sans-IO: time is passed in, and
    the chance that spreads many modules' retries (`rng`)."""

    def __init__(self, servers: int, timeouts: Timeouts, rng: random.Random) -> None:
        self.state = RegistrationState.IDLE
        self._servers = servers
        self._timeouts = timeouts
        self._rng = rng
        #: The server in use, or being tried.
        self.server = 0
        self._tries_left = 0  # servers of this round not tried yet
        #: A server refused only for now (`failed(..., transient=True)`) since the last
        #: registration: it exists, so the module waits for it rather than ends.
        self._for_now = False
        self._ever_registered = False
        self._pause = timeouts.reconnect_first
        self._retry_at: float | None = None

    def start(self) -> list[Action]:
        """The first server tried is one of the list at random: when a server comes back,
        the modules that start get their share of it again."""
        self._step("start")
        return self._round(self._rng.randrange(self._servers))

    def registered(self) -> list[Action]:
        self._step("registered")
        self._for_now = False
        self._pause = self._timeouts.reconnect_first
        again = self._ever_registered
        self._ever_registered = True
        return [Restored()] if again else []

    def failed(self, now: float, transient: bool = False) -> list[Action]:
        """The server being tried did not register us (unreachable, or refused);
        `transient`: it refused only for now (its store, a rate limit)."""
        self._step("failed for now" if transient else "failed")
        self._for_now |= transient
        if self._tries_left:
            return self._next_server()
        if not self._ever_registered and not self._for_now:
            self.state = RegistrationState.CLOSED
            return [GaveUp()]
        self.state = RegistrationState.WAITING
        pause = self._wait(now)
        return [] if self._ever_registered else [WaitingOut(pause)]

    def lost(self, now: float) -> list[Action]:
        """The registered connection is gone."""
        self._step("lost")
        self._pause = self._timeouts.reconnect_first
        self._wait(now)
        return [Lost()]

    def close(self) -> None:
        self.state = RegistrationState.CLOSED
        self._retry_at = None

    def get_timer(self) -> float | None:
        return self._retry_at if self.state is RegistrationState.WAITING else None

    def handle_timer(self, now: float) -> list[Action]:
        if self._retry_at is None or now < self._retry_at:
            return []
        self._step("timer")
        self._retry_at = None
        return self._round(self.server + 1)  # the next first: the one lost may be down

    def _step(self, event: str) -> None:
        next_state = _TRANSITIONS.get((self.state, event))
        if next_state is None:
            raise LocalProtocolError(f"registration: {event!r} while {self.state.value}")
        self.state = next_state

    def _round(self, first: int) -> list[Action]:
        """Try every server once, from `first` on."""
        self.server = (first - 1) % self._servers
        self._tries_left = self._servers
        return self._next_server()

    def _next_server(self) -> list[Action]:
        self._tries_left -= 1
        self.server = (self.server + 1) % self._servers
        return [Connect(self.server)]

    def _wait(self, now: float) -> float:
        """Wait a pause (doubled after each failed round, capped), jittered down by up to
        half so that many modules that lost one server do not come back at once; how long."""
        pause = self._pause * self._rng.uniform(0.5, 1.0)
        self._retry_at = now + pause
        self._pause = min(self._pause * 2, self._timeouts.reconnect_max)
        return pause


class Registrar:
    """Keeps this module registered at one of its servers (`Registration` decides), and
    says so: `on_lost` / `on_restored`; `on_registered(directory)` is awaited after each
    registration (the module's watch goes out on the new connection)."""

    def __init__(
        self,
        servers: tuple[tuple[str, int], ...],
        phone: str,
        key: StaticKey,
        listen_port: int,
        *,
        advertise: str | None,
        listen_host: str = "0.0.0.0",
        server_fingerprint: str | None,
        limits: Limits,
        timeouts: Timeouts,
        network: Network,
        rng: random.Random | None = None,
    ) -> None:
        self._servers = servers
        self._phone = phone
        self._key = key
        self._listen_port = listen_port
        self._advertise = advertise
        self._listen_host = listen_host
        self._server_fingerprint = server_fingerprint
        self._limits = limits
        self._timeouts = timeouts
        self._network = network
        self._machine = Registration(len(servers), timeouts, rng or random.Random())
        self._loop = asyncio.get_running_loop()
        #: The connection we are registered on (None while there is none).
        self.directory: DirectoryClient | None = None
        #: The address the server published for us, at the last registration.
        self.published: ev.Registered | None = None
        self.on_registered: Callable[[DirectoryClient], Awaitable[None]] | None = None
        self.on_lost: Callable[[], None] | None = None
        self.on_restored: Callable[[], None] | None = None
        self._started: asyncio.Future[None] = self._loop.create_future()
        self._tasks: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._last_error: DirectoryError | None = None
        #: Why the registered connection was lost (said in the log).
        self._lost_error: DirectoryError | None = None

    @property
    def connected(self) -> bool:
        return self.directory is not None and not self.directory.closed.is_set()

    @property
    def server(self) -> tuple[str, int] | None:
        """The server of the list we are registered at (None while we are not)."""
        return self._servers[self._machine.server] if self.connected else None

    def _local(self, directory: DirectoryClient) -> str | None:
        """Our LAN address, where peers behind the same router reach us (the address our
        connection to the server leaves from, if we listen there), or None."""
        local = directory.local_host
        if local is None or not is_lan(local):
            return None
        return local if self._listen_host in ("0.0.0.0", "::", "", local) else None

    async def start(self) -> None:
        """Registered at a server of the list; the last server's error if none would."""
        self._act(self._machine.start())
        try:
            await asyncio.shield(self._started)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Unregister (if the server is still there) and stop trying."""
        self._machine.close()
        if self._timer is not None:
            self._timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        directory, self.directory = self.directory, None
        if directory is not None:
            if not directory.closed.is_set():
                with contextlib.suppress(Exception):
                    await directory.unregister()
            await directory.close()

    def _act(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Connect):
                self._spawn(self._connect(*self._servers[action.index]))
            elif isinstance(action, Lost):
                lost = self._lost_error or "lost the connection to the server"
                log.warning("%s (%s); reconnecting", lost, self._where())
                if self.on_lost is not None:
                    self.on_lost()
            elif isinstance(action, Restored):
                log.warning("registered again, at server %s", self._where())
                if self.on_restored is not None:
                    self.on_restored()
            elif isinstance(action, WaitingOut):
                log.warning("%s; trying again in %.1f s", self._last_error, action.pause)
            elif not self._started.done():  # GaveUp
                assert self._last_error is not None
                self._started.set_exception(self._last_error)
        self._arm()

    def _spawn(self, work: Coroutine[object, object, None]) -> None:
        task = self._loop.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, host: str, port: int) -> None:
        try:
            directory = await DirectoryClient.connect(
                host,
                port,
                self._key,
                server_fingerprint=self._server_fingerprint,
                limits=self._limits,
                timeouts=self._timeouts,
                network=self._network,
                local_port=self._listen_port,
            )
            try:
                self.published = await directory.register(
                    self._phone, self._listen_port, self._advertise, self._local(directory)
                )
            except BaseException:
                await directory.close()
                raise
        except DirectoryError as exc:
            if len(self._servers) > 1 or self._started.done():
                log.info("server %s:%s: %s", host, port, exc)
            self._last_error = exc
            transient = isinstance(exc, StoreUnavailable | RateLimited)
            self._act(self._machine.failed(self._loop.time(), transient))
            return
        old, self.directory = self.directory, directory
        if old is not None:
            await old.close()
        directory.on_closed = self._lost
        actions = self._machine.registered()
        if self.on_registered is not None:
            await self.on_registered(directory)
        if not self._started.done():
            self._started.set_result(None)
        self._act(actions)

    def _where(self) -> str:
        return host_port(*self._servers[self._machine.server])

    def _lost(self) -> None:
        directory = self.directory
        self._lost_error = None if directory is None else directory.lost_error
        if self._machine.state is RegistrationState.REGISTERED:
            self._act(self._machine.lost(self._loop.time()))

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        when = self._machine.get_timer()
        if when is not None:
            self._timer = self._loop.call_at(when, self._due)

    def _due(self) -> None:
        self._timer = None
        self._act(self._machine.handle_timer(self._loop.time()))
