"""Connections a router would keep out, made the other way round (docs/protocol.md
§6.9-6.10): asking a peer, through the server, to connect back to us while punching a
hole towards it (`reach`, which the link pool races with its dial), and answering such
requests from others (`asked`), within limits and only towards where the asker can be.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import typing
from collections.abc import Callable
from typing import Any

from whatsap2p.background import Background
from whatsap2p.config import IncomingLimits, Timeouts
from whatsap2p.errors import DirectoryError, NoRelay, PeerTimedOut, PeerUnreachable
from whatsap2p.lan import may_dial_back
from whatsap2p.net.directory_client import DirectoryClient
from whatsap2p.net.listener import PeerListener
from whatsap2p.net.network import Network
from whatsap2p.net.relays import meet
from whatsap2p.protocol import events as ev
from whatsap2p.ratelimit import BucketsByKey, TokenBucket

__all__ = ["Rendezvous"]

log = logging.getLogger(__name__)


class Rendezvous:
    def __init__(
        self,
        listener: PeerListener,
        network: Network,
        timeouts: Timeouts,
        limits: IncomingLimits,
        known: Callable[[str], bool],
        directory: Callable[[], DirectoryClient | None],
    ) -> None:
        """`known(phone)`: whether it is a contact; `directory()`: the connection to
        the server now (None while there is none)."""
        self._listener = listener
        self._network = network
        self._timeouts = timeouts
        self._known = known
        self._directory = directory
        #: Requests to connect back that we answer: per stranger; contacts', strangers'.
        self._dials_each = BucketsByKey(limits.dials_each_rate, limits.dials_each_burst)
        self._dials = {
            True: TokenBucket(limits.contact_dials_rate, limits.contact_dials_burst, 0.0),
            False: TokenBucket(limits.stranger_dials_rate, limits.stranger_dials_burst, 0.0),
        }
        self._reports = Background(log, logging.DEBUG)
        self._closed = False

    def asked(self, directory: DirectoryClient, dial: ev.Dial) -> None:
        """`peer` cannot reach us and asks, through the server, that we connect to it:
        we do, to an address that can only be its own (see lan.may_dial_back), within
        our limits."""
        peer = dial.peer
        server = directory.server_host
        if server is None or not may_dial_back(peer.host, server):
            log.warning("not connecting back to %s at %s: not its own", peer.phone, peer.host)
            return
        if self._may_answer(peer.phone):
            self._listener.dial_back(peer, dial.token, dial.punch)

    def relayed(self, directory: DirectoryClient, relayed: ev.Relayed) -> None:
        """`peer` cannot reach us by any direct way and asks, through the server, that we
        meet it at a relay: we do, within the same limits."""
        server = directory.server_host
        if server is not None and self._may_answer(relayed.peer.phone):
            self._listener.meet(relayed.peer, relayed.relays, relayed.ticket, server)

    def _may_answer(self, phone: str) -> bool:
        """Whether to answer one more request to connect from `phone`: contacts apart from
        strangers, and a few a second per stranger (one asker's flood cannot use up
        everyone's share)."""
        now = asyncio.get_running_loop().time()
        known = self._known(phone)
        if (not known and not self._dials_each.take(phone, now)) or not self._dials[known].take(
            now
        ):
            log.warning("not connecting to %s: asked too often", phone)
            return False
        return True

    async def relay(self, address: ev.PeerAddress) -> tuple[asyncio.Transport, str]:
        """Meet `address`'s module at a relay that the server introduces us both to: the
        connection joined to its, ("relay"); DeliveryFailed if none joins us, NoRelay if
        the server names none."""
        directory = self._directory()
        server = None if directory is None else directory.server_host
        if directory is None or server is None:
            raise PeerUnreachable("no server to ask for a relay")
        try:
            relaying = await directory.relay(address.phone)
        except NoRelay:
            raise
        except DirectoryError as exc:
            raise PeerUnreachable(f"no relay: {exc}") from exc
        transport, rest = await meet(
            self._network, relaying.relays, relaying.ticket, self._timeouts, server
        )
        if rest:  # (it answers our handshake: it never speaks first)
            transport.abort()
            raise PeerUnreachable("something spoke first at the relay")
        return transport, "relay"

    def report(self, route: str, token: bytes | None) -> None:
        """Tell the server how a connection to a peer was made (`route`, one of
        ev.ROUTES; `token`: of the `reverse` it asked for, if any), for its operator's
        counters; in the background, and nothing comes of it failing."""
        directory = self._directory()
        if directory is None or self._closed:
            return
        self._reports.start(directory.report(route, token), "reporting a connection's route")

    async def close(self) -> None:
        """Stop reporting (what is on its way is dropped)."""
        self._closed = True
        await self._reports.close()

    async def reach(self, address: ev.PeerAddress, token: bytes) -> tuple[asyncio.Transport, str]:
        """Ask `address`'s module, through the server, to connect to us opening with
        `token` (TOKEN_BYTES random bytes), and meanwhile punch a hole towards it
        (connect from the port we listen on to where the server sees it, as it does
        towards us): the first connection to come, and how ("reverse", "punched");
        DeliveryFailed if none comes."""
        directory = self._directory()
        if directory is None:
            raise PeerUnreachable("no server to ask it to connect back")
        arrival = self._listener.expect(token)
        # A fresh port to punch from (a router that keeps ports maps it to the same one
        # outside: the peer connects to it there), one per try: two connections between
        # the same ports cannot be.
        punch_from = _free_port()
        punching: asyncio.Task[asyncio.BaseProtocol] | None = None
        taken: asyncio.Future[asyncio.Transport] | asyncio.Task[asyncio.BaseProtocol] | None = None
        try:
            try:
                seen = await directory.reverse(address.phone, token, punch_from)
            except DirectoryError as exc:
                raise PeerUnreachable(f"it cannot be asked to connect back: {exc}") from exc
            server = directory.server_host
            if seen.host and seen.port and server and may_dial_back(seen.host, server):
                punching = asyncio.ensure_future(
                    self._network.connect(
                        seen.host,
                        seen.port,
                        _Parked,
                        self._timeouts.connect,
                        punch_from,
                    )
                )
            ways: set[asyncio.Future[Any]] = {arrival} if punching is None else {arrival, punching}
            deadline = asyncio.get_running_loop().time() + self._timeouts.connect
            while ways and taken is None:
                done, ways = await asyncio.wait(
                    ways,
                    timeout=deadline - asyncio.get_running_loop().time(),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if not done:
                    break
                taken = next((way for way in done if way.exception() is None), None)
            if taken is arrival:
                return arrival.result(), "reverse"
            if taken is not None and punching is not None:
                parked = punching.result()
                assert isinstance(parked, _Parked)
                return parked.transport, "punched"
            raise PeerTimedOut("it did not connect back either")
        finally:
            self._listener.forget(token)
            if taken is not arrival and arrival.done() and not arrival.cancelled():
                arrival.result().abort()  # (it came as we gave up: nobody takes it)
            if punching is not None and taken is not punching:
                punching.cancel()
                punching.add_done_callback(_abort_parked)


class _Parked(asyncio.Protocol):
    """Holds a connection we punched until a link takes it over (its peer says nothing
    before we start the handshake)."""

    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = typing.cast(asyncio.Transport, transport)


def _abort_parked(punching: asyncio.Task[asyncio.BaseProtocol]) -> None:
    """A hole punched after all, when another way was taken: close it."""
    if not punching.cancelled() and punching.exception() is None:
        parked = punching.result()
        assert isinstance(parked, _Parked)
        parked.transport.abort()


def _free_port() -> int:
    """A port no socket of this machine holds now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("0.0.0.0", 0))
        port: int = probe.getsockname()[1]
    return port
