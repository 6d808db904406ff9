"""Who waits for whom at a relay, and what each source holds: sans-IO (the connections are
opaque handles, time is passed in). The adapter (relay/service.py) asks it at each step
of a connection and does what it answers.

A connection's states:

    PREFACE --genuine token, new nonce------------> WAITING --its other half came--> JOINED
       |     --genuine token, a nonce waiting---------------------------------------> JOINED
       |     --forged / expired / nonce spent / over a limit--> refused (gone)
    WAITING --timed out, or its connection ended--> gone (its nonce spent)
    JOINED  --its connection ended--> gone (the pair counts until both halves are)

A nonce is remembered from its first presentation until its token expires (plus the
allowed clock skew): a third presentation, or one after its first half left, is a replay.
"""

from __future__ import annotations

import enum
import heapq
import ipaddress
from collections import Counter, OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from whatsap2p.protocol.relay import Status, Verified
from whatsap2p.relay.limits import RelayLimits

__all__ = ["Admitted", "Joined", "Pairing", "Refused", "Waiting", "source_of"]

H = TypeVar("H", bound=Hashable)
K = TypeVar("K", str, bytes)


def source_of(ip: str) -> str:
    """What a relay counts connections by: an IPv4 address (also written as IPv6), or an
    IPv6 address's /64 (one subscriber's whole network, where each host may pick any
    address)."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:  # (an in-memory network's host name, in tests)
        return ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class _State(enum.Enum):
    PREFACE = "preface"
    WAITING = "waiting"
    JOINED = "joined"


@dataclass(frozen=True, slots=True)
class Admitted(Generic[H]):
    """The new connection may send its preface; `evicted`, when there is one, is the
    oldest connection still in its preface, which the adapter closes to make room."""

    evicted: H | None = None


@dataclass(frozen=True, slots=True)
class Waiting:
    """The token is the pair's first: wait (reading nothing) for the other half."""


@dataclass(frozen=True, slots=True)
class Joined(Generic[H]):
    """The other half was waiting: the two are a pair now."""

    other: H


@dataclass(frozen=True, slots=True)
class Refused(Generic[H]):
    """Answer `status` and close; `also`: the waiting half refused with it (a pair over a
    limit), which is gone from the pairing too."""

    status: Status
    reason: str
    also: H | None = None


class _Half:
    __slots__ = ("ip", "nonce", "pair", "partner", "state")

    def __init__(self, ip: str) -> None:
        self.ip = ip
        self.state = _State.PREFACE
        self.nonce = b""
        self.pair = b""
        self.partner: object = None


class Pairing(Generic[H]):
    def __init__(self, limits: RelayLimits) -> None:
        self._limits = limits
        self._halves: dict[H, _Half] = {}
        self._prefacing: OrderedDict[H, None] = OrderedDict()  # oldest first
        self._waiting: dict[bytes, H] = {}  # nonce -> the half waiting with it
        #: Every nonce presented, until its token expires: nonce -> when to forget it, and
        #: the same as a heap to forget them in order.
        self._nonces: dict[bytes, float] = {}
        self._forget: list[tuple[float, bytes]] = []
        self._prefacing_from: Counter[str] = Counter()
        self._waiting_from: Counter[str] = Counter()
        self._joined_from: Counter[str] = Counter()
        self._pairs: Counter[bytes] = Counter()  # pair -> sessions with a half still open
        self.sessions = 0

    # --- what the metrics show ---------------------------------------------------------------

    @property
    def prefacing(self) -> int:
        return len(self._prefacing)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def nonces(self) -> int:
        return len(self._nonces)

    # --- the steps of a connection -------------------------------------------------------

    def connected(self, half: H, source: str) -> Admitted[H] | Refused[H]:
        """A new connection from `source` (see `source_of`)."""
        limits = self._limits
        if self._prefacing_from[source] >= limits.max_prefacing_per_ip:
            return Refused(Status.BUSY, "busy")
        evicted = None
        if len(self._prefacing) >= limits.max_prefacing:
            evicted = next(iter(self._prefacing))
            self.gone(evicted)
        self._halves[half] = _Half(source)
        self._prefacing[half] = None
        self._prefacing_from[source] += 1
        return Admitted(evicted)

    def presented(self, half: H, token: Verified, now: float) -> Waiting | Joined[H] | Refused[H]:
        """`half` sent a genuine, unexpired token (verified at `now`, unix seconds)."""
        entry = self._halves[half]
        if entry.state is not _State.PREFACE:
            raise AssertionError(f"a token presented twice on one connection ({entry.state})")
        self._leave_preface(half, entry)
        self._forget_expired(now)
        limits = self._limits
        other = self._waiting.get(token.nonce)
        if other is not None:
            waiting = self._halves[other]
            del self._waiting[token.nonce]
            _less(self._waiting_from, waiting.ip)
            reason = self._no_room_for_pair(entry.ip, waiting.ip, token.pair)
            if reason is not None:
                del self._halves[half], self._halves[other]
                return Refused(Status.BUSY, reason, also=other)
            for one, partner in ((entry, other), (waiting, half)):
                one.state = _State.JOINED
                one.pair = token.pair
                one.partner = partner
                self._joined_from[one.ip] += 1
            self.sessions += 1
            self._pairs[token.pair] += 1
            return Joined(other)
        del self._halves[half]  # from here, refused unless it waits
        if token.nonce in self._nonces:
            return Refused(Status.REPLAYED, "replayed")
        if len(self._waiting) >= limits.max_waiting:
            return Refused(Status.BUSY, "busy")
        if self._waiting_from[entry.ip] >= limits.max_waiting_per_ip:
            return Refused(Status.BUSY, "busy")
        if len(self._nonces) >= limits.max_nonces:
            return Refused(Status.BUSY, "busy")
        self._halves[half] = entry
        forget_at = token.expiry + limits.clock_skew
        self._nonces[token.nonce] = forget_at
        heapq.heappush(self._forget, (forget_at, token.nonce))
        entry.state = _State.WAITING
        entry.nonce = token.nonce
        self._waiting[token.nonce] = half
        self._waiting_from[entry.ip] += 1
        return Waiting()

    def gone(self, half: H) -> None:
        """`half` is refused, timed out, evicted or its connection ended (a half already
        gone: nothing)."""
        entry = self._halves.pop(half, None)
        if entry is None:
            return
        if entry.state is _State.PREFACE:
            self._leave_preface(half, entry)
        elif entry.state is _State.WAITING:
            del self._waiting[entry.nonce]  # (its nonce is remembered: spent)
            _less(self._waiting_from, entry.ip)
        else:
            _less(self._joined_from, entry.ip)
            if entry.partner not in self._halves:  # the pair's last half
                self.sessions -= 1
                _less(self._pairs, entry.pair)

    # --- internals ---------------------------------------------------------------------------

    def _leave_preface(self, half: H, entry: _Half) -> None:
        del self._prefacing[half]
        _less(self._prefacing_from, entry.ip)

    def _no_room_for_pair(self, ip: str, other_ip: str, pair: bytes) -> str | None:
        limits = self._limits
        if self.sessions >= limits.max_sessions:
            return "busy"
        adding = Counter((ip, other_ip))
        for source, more in adding.items():
            if self._joined_from[source] + more > limits.max_sessions_per_ip:
                return "busy"
        if self._pairs[pair] >= limits.max_sessions_per_pair:
            return "busy"
        return None

    def _forget_expired(self, now: float) -> None:
        """Forget the nonces whose tokens have expired: no relay takes those any more."""
        forget, nonces = self._forget, self._nonces
        while forget and forget[0][0] < now:
            _, nonce = heapq.heappop(forget)
            nonces.pop(nonce, None)


def _less(counter: Counter[K], key: K) -> None:
    """One less for `key`, dropped at zero (a counter of every source ever seen would grow
    without bound)."""
    left = counter[key] - 1
    if left > 0:
        counter[key] = left
    else:
        del counter[key]
