"""Meeting a peer at a relay (`whatsap2p relay`, docs/protocol.md §6.11 and §11) when no
direct way connects: both modules present their ticket to all the relays their server
named, and a relay that both reach joins their two connections. What flows through it is
the usual peer connection, sealed end to end: the relay sees ciphertext only.
"""

from __future__ import annotations

import asyncio
import typing
from collections.abc import Callable

from whatsap2p.config import Timeouts
from whatsap2p.errors import DeliveryFailed, PeerTimedOut, PeerUnreachable
from whatsap2p.lan import may_dial_back
from whatsap2p.net.network import Network
from whatsap2p.protocol import events as ev
from whatsap2p.protocol.relay import Status, encode_preface

__all__ = ["meet", "meet_each"]

#: Why a relay did not join us, by its answer (protocol/relay.py's Status).
_REFUSALS: typing.Final[dict[int, str]] = {
    Status.FORGED: "it does not take the ticket",
    Status.EXPIRED: "the ticket expired",
    Status.REPLAYED: "the ticket was used already",
    Status.BUSY: "it is busy",
    Status.TIMEOUT: "the other side did not come",
}


class _Meeting(asyncio.Protocol):
    """A connection to a relay until it is joined to the peer's: says the ticket, waits
    for the relay's answer, then stops reading (what comes next is the peer's, for the
    protocol that takes the connection over)."""

    def __init__(self, preface: bytes) -> None:
        self._preface = preface
        self.answer: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        self.transport = typing.cast(asyncio.Transport, None)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = typing.cast(asyncio.Transport, transport)
        self.transport.write(self._preface)

    def data_received(self, data: bytes) -> None:
        if not self.answer.done():
            self.transport.pause_reading()
            self.answer.set_result((data[0], data[1:]))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answer.done():
            self.answer.set_exception(ConnectionResetError("the relay closed the connection"))


async def meet(
    network: Network,
    relays: tuple[ev.RelayAddress, ...],
    ticket: bytes,
    timeouts: Timeouts,
    server_host: str,
) -> tuple[asyncio.Transport, bytes]:
    """A connection joined to the peer's at one of `relays` that take `ticket`: the
    ticket is presented to all of them at once, the first joined is taken and the others
    are let go (so a relay one side cannot reach, or that keeps one side waiting, costs
    nothing: the peer's module does the same, `meet_each`). Reading is paused; the
    peer's bytes that came with the join are returned with it. PeerUnreachable (or
    PeerTimedOut, after `Timeouts.relay_meet`) saying why each relay failed.
    `server_host`: where our server is (a relay on loopback or a LAN only with a server
    there too, as for connecting back)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeouts.relay_meet
    why: dict[ev.RelayAddress, str] = {}
    trying = {
        asyncio.ensure_future(_attempt(network, relay, ticket, timeouts, deadline)): relay
        for relay in _reachable(relays, server_host, why)
    }
    pending = set(trying)
    taken = None
    try:
        while pending and taken is None:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for attempt in done:
                failed = attempt.exception()
                if failed is not None:
                    why[trying[attempt]] = str(failed)
                elif taken is None:
                    taken = attempt
    finally:
        for attempt in trying:
            if attempt is not taken:
                _let_go(attempt)
    if taken is not None:
        return taken.result()
    kind = PeerTimedOut if loop.time() >= deadline else PeerUnreachable
    said = [f"{relay.host}:{relay.port}: {why[relay]}" for relay in relays if relay in why]
    raise kind("no relay joined us: " + "; ".join(said or ["none named"]))


async def meet_each(
    network: Network,
    relays: tuple[ev.RelayAddress, ...],
    ticket: bytes,
    timeouts: Timeouts,
    server_host: str,
    joined: Callable[[asyncio.Transport, bytes], None],
) -> list[str]:
    """The peer's side of `meet`: present `ticket` to all of `relays` at once and hand
    each connection joined (reading paused, with the bytes that came with the join) to
    `joined`: the peer starts its handshake on the one it took and closes the others,
    which then end by themselves. Why each relay did not join us."""
    deadline = asyncio.get_running_loop().time() + timeouts.relay_meet
    why: dict[ev.RelayAddress, str] = {}

    async def at(relay: ev.RelayAddress) -> None:
        try:
            transport, rest = await _attempt(network, relay, ticket, timeouts, deadline)
        except DeliveryFailed as exc:
            why[relay] = str(exc)
            return
        joined(transport, rest)

    await asyncio.gather(*(at(relay) for relay in _reachable(relays, server_host, why)))
    return [f"{relay.host}:{relay.port}: {why[relay]}" for relay in relays if relay in why]


def _reachable(
    relays: tuple[ev.RelayAddress, ...], server_host: str, why: dict[ev.RelayAddress, str]
) -> list[ev.RelayAddress]:
    """Those of `relays` we may connect to (the others' reasons go in `why`)."""
    allowed = []
    for relay in dict.fromkeys(relays):
        if may_dial_back(relay.host, server_host):
            allowed.append(relay)
        else:
            why[relay] = "not an address to connect to from here"
    return allowed


async def _attempt(
    network: Network, relay: ev.RelayAddress, ticket: bytes, timeouts: Timeouts, deadline: float
) -> tuple[asyncio.Transport, bytes]:
    """A connection to `relay` joined to the peer's (reading paused), and the bytes that
    came with the join; DeliveryFailed saying why not. Whatever ends it otherwise
    (cancelled) closes the connection."""
    loop = asyncio.get_running_loop()
    meeting: _Meeting | None = None
    try:
        async with asyncio.timeout_at(deadline):
            meeting = await network.connect(
                relay.host,
                relay.port,
                lambda: _Meeting(encode_preface(ticket)),
                max(0.0, min(deadline - loop.time(), timeouts.connect)),
            )
            status, rest = await meeting.answer
    except (OSError, TimeoutError) as exc:
        if meeting is not None:
            meeting.transport.abort()
        failure = PeerTimedOut if isinstance(exc, TimeoutError) else PeerUnreachable
        raise failure(str(exc) or "no answer in time") from exc
    except BaseException:
        if meeting is not None:
            meeting.transport.abort()
        raise
    if status != Status.JOINED:
        meeting.transport.abort()
        raise PeerUnreachable(_REFUSALS.get(status, f"refused ({status})"))
    return meeting.transport, rest


def _let_go(attempt: asyncio.Future[tuple[asyncio.Transport, bytes]]) -> None:
    """An attempt not taken: cancelled (which closes its connection), or its connection
    closed if it was joined after all."""
    if not attempt.done():
        attempt.cancel()
    elif not attempt.cancelled() and attempt.exception() is None:
        attempt.result()[0].abort()
