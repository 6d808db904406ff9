"""An in-memory network and a virtual clock, for tests above protocol/ (as h11's
`ConnectionPair` and aioquic's `now=` tests are for the protocols themselves).

`MemoryNetwork` is a `whatsap2p.net.network.Network`: `connect` joins the two sides'
asyncio protocols with a pair of `MemoryTransport`s, in this process, with TCP's order,
flow control (a reader that pauses makes its writer pause) and endings (close, half
close, reset). The test holds the network, so it can count connections, freeze one (a
peer that stops reading, as a stopped process), cut one (a reset), or stop a listener,
all through the network's own face, never through the objects under test.

`run_in_virtual_time` runs a coroutine on an event loop whose clock jumps to the next
timer whenever nothing else is ready: a test of a 20 s timeout takes no time, and its
timings are exact. Use it only where no thread is at work (photos hash and write on
threads; their tests use real time).
"""

from __future__ import annotations

import asyncio
import errno
import selectors
import typing
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field

from tests.conftest import record_loop_errors

__all__ = [
    "MemoryConnection",
    "MemoryNetwork",
    "MemoryTransport",
    "run_in_virtual_time",
]

P = typing.TypeVar("P", bound=asyncio.BaseProtocol)
T = typing.TypeVar("T")

#: Bytes handed to `data_received` at most at once (as a socket read would).
_READ_SIZE = 256 * 1024


class MemoryTransport(asyncio.Transport):
    """One side of an in-memory connection."""

    def __init__(
        self,
        connection: MemoryConnection,
        protocol: asyncio.Protocol,
        sockname: tuple[str, int],
        peername: tuple[str, int],
    ) -> None:
        super().__init__()
        self._connection = connection
        self._protocol = protocol
        self._loop = asyncio.get_running_loop()
        self._extra = {"sockname": sockname, "peername": peername}
        self.peer: MemoryTransport | None = None
        self._pending: deque[bytes] = deque()
        self._size = 0
        self._high = 64 * 1024
        self._low = 16 * 1024
        self._writing_paused = False
        self._reading = True
        self._closing = False  # close() or abort() called, or the connection is gone
        self._eof_after_flush = False  # write_eof() or close(): the peer sees EOF then
        self._close_after_flush = False
        self._lost = False
        self._pump_soon = False

    # --- asyncio.Transport ---------------------------------------------------------------

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self._extra.get(name, default)

    def is_closing(self) -> bool:
        return self._closing

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = typing.cast(asyncio.Protocol, protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def is_reading(self) -> bool:
        return self._reading

    def pause_reading(self) -> None:
        self._reading = False

    def resume_reading(self) -> None:
        if not self._reading:
            self._reading = True
            if self.peer is not None:
                self.peer._schedule()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._high = 64 * 1024 if high is None else high
        self._low = self._high // 4 if low is None else low

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def get_write_buffer_size(self) -> int:
        return self._size

    #: What this side writes is lost on the way (MemoryConnection.hush).
    hushed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._reset or self.hushed:
            return  # lost in the reset, as the kernel would lose it; or on the way
        if self._closing or self._eof_after_flush:
            # (what uvloop does; asyncio would only log)
            raise RuntimeError("unable to perform operation on a closed transport")
        if not data:
            return
        self._pending.append(bytes(data))
        self._size += len(data)
        if self._size > self._high and not self._writing_paused:
            self._writing_paused = True
            self._protocol.pause_writing()
        self._schedule()

    def writelines(self, list_of_data: typing.Iterable[bytes | bytearray | memoryview]) -> None:
        for data in list_of_data:
            self.write(data)

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        if self._closing or self._eof_after_flush:
            return
        self._eof_after_flush = True
        self._schedule()

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._eof_after_flush = self._close_after_flush = True
        self._schedule()

    def abort(self) -> None:
        if self._lost:
            return
        peer = self.peer
        if peer is not None and not peer._lost:
            peer._reset = peer._closing = True
            peer._pending.clear()
            peer._loop.call_soon(peer._gone, ConnectionResetError(errno.ECONNRESET, "reset"))
        self._closing = True
        self._pending.clear()
        self._size = 0
        self._gone(None)

    # --- moving the bytes ----------------------------------------------------------------

    def _schedule(self) -> None:
        if not self._pump_soon and not self._lost:
            self._pump_soon = True
            self._loop.call_soon(self._pump)

    def _pump(self) -> None:
        """Hand what was written to the peer, as far as it reads and the test lets it."""
        self._pump_soon = False
        peer = self.peer
        if self._lost or peer is None:
            return
        if self._connection.frozen:
            return  # the test thaws it: then it is scheduled again
        while self._pending and not peer._lost:
            if not peer._reading:
                return  # the peer's resume_reading schedules us again
            data = b"".join(self._pending)
            self._pending.clear()
            if len(data) > _READ_SIZE:
                self._pending.append(data[_READ_SIZE:])
                data = data[:_READ_SIZE]
            self._size -= len(data)
            peer._protocol.data_received(data)
            if self._writing_paused and self._size <= self._low:
                self._writing_paused = False
                self._protocol.resume_writing()
        self._connection._changed()
        if self._pending:
            return  # the peer is gone: what is left is lost
        if self._eof_after_flush and not peer._lost and not peer._saw_eof:
            peer._saw_eof = True
            keep_open = peer._protocol.eof_received()
            if not keep_open:
                peer.close()
        if self._close_after_flush:
            self._gone(None)

    _saw_eof = False
    _reset = False

    def _gone(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._closing = True
        if self._writing_paused:
            self._writing_paused = False
        self._connection.ended(self)
        self._protocol.connection_lost(exc)
        peer = self.peer
        if peer is not None and not peer._lost and not peer._saw_eof and not peer._reset:
            # our side is closed: the peer reads EOF once what we wrote has gone
            peer._loop.call_soon(peer._peer_closed)

    def _peer_closed(self) -> None:
        if self._lost or self._saw_eof or self._reset:
            return
        self._saw_eof = True
        keep_open = self._protocol.eof_received()
        if not keep_open:
            self.close()

    def _thawed(self) -> None:
        self._schedule()


@dataclass(eq=False)
class MemoryConnection:
    """One connection of the network: what a test may do to it, and wait for."""

    network: MemoryNetwork
    client: tuple[str, int]
    server: tuple[str, int]
    frozen: bool = False
    transports: list[MemoryTransport] = field(default_factory=list)
    open: bool = True
    _waiters: list[asyncio.Future[None]] = field(default_factory=list)

    async def delivered(self) -> None:
        """Once what either side wrote has been handed to the other (or is lost)."""
        while self.open and any(t._pending and not t._lost for t in self.transports):
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter

    async def closed(self) -> None:
        """Once both sides have seen the connection end."""
        while self.open:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter

    def _changed(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def freeze(self) -> None:
        """Nothing moves either way (a stopped process, a dead path) until `thaw`."""
        self.frozen = True

    def thaw(self) -> None:
        self.frozen = False
        for transport in self.transports:
            transport._thawed()

    def hush(self) -> None:
        """From now on what the accepting side writes is lost on the way (a path that
        fails one way); what the connecting side writes still arrives."""
        self.transports[1].hushed = True

    def cut(self) -> None:
        """A reset: both ends see the connection lost (ConnectionResetError), and what
        was on its way is lost."""
        for transport in self.transports:
            if not transport._lost:
                transport._reset = transport._closing = True
                transport._pending.clear()
                transport._loop.call_soon(
                    transport._gone, ConnectionResetError(errno.ECONNRESET, "reset")
                )

    def ended(self, transport: MemoryTransport) -> None:
        if all(t._lost for t in self.transports):
            self.open = False
        self._changed()


class _Listener:
    def __init__(
        self,
        network: MemoryNetwork,
        address: tuple[str, int],
        factory: Callable[[], asyncio.BaseProtocol],
    ) -> None:
        self.network = network
        self.address = address
        self.factory = factory
        self.accepted = 0

    def close(self) -> None:
        if self.network._listeners.get(self.address) is self:
            del self.network._listeners[self.address]

    async def wait_closed(self) -> None:
        return None


class MemoryNetwork:
    """Hosts and ports in memory. `at(host)` is the same network as seen from `host`
    (where its connections come from); the network itself connects from 127.0.0.1."""

    def __init__(self) -> None:
        self._listeners: dict[tuple[str, int], _Listener] = {}
        self._ports = 40000
        self.connections: list[MemoryConnection] = []
        #: Every connection attempt: (when, from host, to address, accepted).
        self.attempts: list[tuple[float, str, tuple[str, int], bool]] = []
        self._attempted: list[asyncio.Future[None]] = []
        self._host = "127.0.0.1"
        self._refused: set[tuple[str, int]] = set()

    def at(self, host: str) -> _HostView:
        return _HostView(self, host)

    async def listen(
        self,
        host: str,
        port: int,
        factory: Callable[[], P],
        reuse_port: bool = False,
        *,
        _from: str | None = None,
    ) -> _Listener:
        """(`reuse_port` is taken and forgotten: connections here have no ports to share.)"""
        if host in ("0.0.0.0", "", "::"):
            host = _from or self._host
        if port == 0:
            port = self._next_port()
        address = (host, port)
        if address in self._listeners:
            raise OSError(errno.EADDRINUSE, "Address already in use")
        listener = self._listeners[address] = _Listener(self, address, factory)
        return listener

    async def connect(
        self,
        host: str,
        port: int,
        factory: Callable[[], P],
        timeout: float,
        local_port: int | None = None,
        *,
        _from: str | None = None,
    ) -> P:
        """(`local_port` is taken and forgotten: no router here maps ports.)"""
        listener = None if (host, port) in self._refused else self._listeners.get((host, port))
        now = asyncio.get_running_loop().time()
        self.attempts.append((now, _from or self._host, (host, port), listener is not None))
        attempted, self._attempted = self._attempted, []
        for waiter in attempted:
            if not waiter.done():
                waiter.set_result(None)
        if listener is None:
            raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
        client_address = (_from or self._host, self._next_port())
        connection = MemoryConnection(self, client_address, listener.address)
        self.connections.append(connection)
        listener.accepted += 1
        client = factory()
        server = listener.factory()
        assert isinstance(client, asyncio.Protocol)
        assert isinstance(server, asyncio.Protocol)
        client_side = MemoryTransport(connection, client, client_address, listener.address)
        server_side = MemoryTransport(connection, server, listener.address, client_address)
        client_side.peer, server_side.peer = server_side, client_side
        connection.transports = [client_side, server_side]
        server.connection_made(server_side)
        client.connection_made(client_side)
        return typing.cast(P, client)

    async def attempted(self, address: tuple[str, int], count: int) -> list[float]:
        """Once `count` connections to `address` were tried: when each was."""
        while len(times := [when for when, _, to, _ in self.attempts if to == address]) < count:
            waiter = asyncio.get_running_loop().create_future()
            self._attempted.append(waiter)
            await waiter
        return times

    def accepted(self, address: tuple[str, int]) -> int:
        """Connections accepted so far at `address`."""
        listener = self._listeners.get(address)
        return 0 if listener is None else listener.accepted

    def to(self, address: tuple[str, int]) -> list[MemoryConnection]:
        """The connections made to `address`, oldest first."""
        return [c for c in self.connections if c.server == address]

    def open_to(self, address: tuple[str, int]) -> list[MemoryConnection]:
        return [c for c in self.to(address) if c.open]

    def stop_listening(self, address: tuple[str, int]) -> None:
        """Nobody accepts at `address` any more (those accepted stay)."""
        self._listeners.pop(address, None)

    def take_down(self, address: tuple[str, int]) -> None:
        """The host at `address` goes down (as a process killed with -9): every connection
        to it is reset, and new ones are refused until `bring_up`."""
        self._refused.add(address)
        for connection in self.open_to(address):
            connection.cut()

    def bring_up(self, address: tuple[str, int]) -> None:
        """`address` accepts connections again (the same listener: a server restarted on
        its port, with what it keeps on disk)."""
        self._refused.discard(address)

    def _next_port(self) -> int:
        self._ports += 1
        return self._ports


class _HostView:
    """The network as seen from one host."""

    def __init__(self, network: MemoryNetwork, host: str) -> None:
        self.network = network
        self.host = host

    async def listen(
        self, host: str, port: int, factory: Callable[[], P], reuse_port: bool = False
    ) -> _Listener:
        return await self.network.listen(host, port, factory, reuse_port, _from=self.host)

    async def connect(
        self,
        host: str,
        port: int,
        factory: Callable[[], P],
        timeout: float,
        local_port: int | None = None,
    ) -> P:
        return await self.network.connect(host, port, factory, timeout, local_port, _from=self.host)


# --- the virtual clock ------------------------------------------------------------------


class _JumpingSelector(selectors.DefaultSelector):
    """A selector that, when it would wait with nothing ready, moves the loop's clock to
    the end of the wait instead."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            return super().select(None)  # only a thread can wake us: wait for it
        self.now += timeout
        return []


class _VirtualLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self._clock = _JumpingSelector()
        super().__init__(self._clock)

    def time(self) -> float:
        return self._clock.now


def run_in_virtual_time(main: Callable[[], Coroutine[object, object, T]]) -> T:
    """Run `main()` to its end on a loop whose clock only moves when nothing is ready."""
    loop = _VirtualLoop()
    record_loop_errors(loop)
    try:
        return loop.run_until_complete(main())
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
