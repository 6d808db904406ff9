"""Meeting a peer at a relay (`whatsap2p relay`, docs/protocol.md §6.11 and §11) when no direct
way connects: both modules connect to the first of the relays their server named that
takes their ticket, and the relay joins the two connections. What flows through it is
the usual peer connection, sealed end to end: the relay sees ciphertext only.
"""

from __future__ import annotations

import asyncio
import typing

from whatsap2p.config import Timeouts
from whatsap2p.errors import PeerTimedOut, PeerUnreachable
from whatsap2p.lan import may_dial_back
from whatsap2p.net.network import Network
from whatsap2p.protocol import events as ev
from whatsap2p.protocol.relay import Status, encode_preface

__all__ = ["meet"]

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
    """A connection joined to the peer's at the first of `relays` that takes `ticket`
    (each tried in turn: one that cannot be reached, or refuses, gives way to the
    next), with reading paused, and the peer's bytes that came with the join; all
    within `Timeouts.relay_meet`. PeerUnreachable (or PeerTimedOut) saying why each
    relay failed. `server_host`: where our server is (a relay on loopback or a LAN only
    with a server there too, as for connecting back)."""
    preface = encode_preface(ticket)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeouts.relay_meet
    why: list[str] = []
    for relay in relays:
        where = f"{relay.host}:{relay.port}"
        if not may_dial_back(relay.host, server_host):
            why.append(f"{where}: not an address to connect to from here")
            continue
        left = deadline - loop.time()
        if left <= 0:
            why.append(f"{where}: no time left")
            break
        meeting: _Meeting | None = None
        try:
            async with asyncio.timeout(left):
                meeting = await network.connect(
                    relay.host, relay.port, lambda: _Meeting(preface), min(left, timeouts.connect)
                )
                status, rest = await meeting.answer
        except (OSError, TimeoutError) as exc:
            if meeting is not None:
                meeting.transport.abort()
            why.append(f"{where}: {str(exc) or 'no answer in time'}")
            continue
        if status == Status.JOINED:
            return meeting.transport, rest
        meeting.transport.abort()
        why.append(f"{where}: {_REFUSALS.get(status, f'refused ({status})')}")
    failure = PeerTimedOut if loop.time() >= deadline else PeerUnreachable
    raise failure("no relay joined us: " + "; ".join(why or ["none named"]))
