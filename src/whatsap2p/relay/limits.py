"""Every limit and timeout of a relay in one place (`whatsap2p relay` sets the important
ones from its options). What they cost at most, with the defaults, is in
docs/deployment.md ("A relay")."""

from __future__ import annotations

from dataclasses import dataclass

from whatsap2p.config import KiB, MiB

__all__ = ["RelayLimits"]


@dataclass(frozen=True, slots=True)
class RelayLimits:
    """A relay joins only pairs the directory introduced (a token it verifies), and no
    source of connections, tokens or bytes can hold more than its share: what is over a
    limit is refused (status `busy`) or waits (its bytes are not read), never buffered."""

    #: Connections that have not yet sent their whole preface, in all. At the cap, the
    #: oldest of them is closed to make room for the new one: a crowd of silent
    #: connections cannot keep a module (whose preface comes at once) out.
    max_prefacing: int = 1024
    #: ...from one source (an IPv4 address, an IPv6 /64): more are refused `busy`.
    max_prefacing_per_ip: int = 32
    #: Halves waiting for their other half (each holds a genuine token), in all and from
    #: one source; more are refused `busy`. The second half of a pair never counts.
    max_waiting: int = 1024
    max_waiting_per_ip: int = 64
    #: Joined pairs, in all; joined connections from one source (a pair counts once for
    #: each of its halves); pairs joined for one pair of numbers at once, whichever of
    #: the two opened them (each module opens up to 33 connections to the other: texts,
    #: and 32 photos; both at once, 66).
    max_sessions: int = 512
    max_sessions_per_ip: int = 128
    max_sessions_per_pair: int = 72
    #: Token nonces remembered (each until its token expires, so that no token joins
    #: twice); a new token beyond is refused `busy`. ~200 bytes each.
    max_nonces: int = 100_000
    #: Bytes per second through one joined pair (both ways together), and the burst it
    #: may save up: one largest photo (64 MiB, plus its framing) goes through at full
    #: speed, a stream of them at the rate. Over it, the sender's bytes are not read.
    session_rate: float = 16.0 * MiB
    session_burst: float = 96.0 * MiB
    #: The same for what one source sends through all its connections together.
    ip_rate: float = 64.0 * MiB
    ip_burst: float = 512.0 * MiB
    #: Sources whose byte allowance is remembered (least recently used forgotten first).
    max_ips: int = 65536
    #: A connection's write buffer: past this, its other half's bytes are not read until
    #: it drains (to a quarter). With one read (256 KiB) on top, what a joined pair holds.
    write_high: int = 256 * KiB
    #: Seconds: to send the whole preface after connecting; for a lone half to be joined
    #: (then refused `timeout`); a joined pair with no byte either way is closed.
    preface_timeout: float = 5.0
    wait_timeout: float = 15.0
    idle_timeout: float = 60.0
    #: Seconds the directory's clock may be ahead of or behind ours: a token is taken
    #: until its expiry plus this. One expiring more than `token_ahead` (plus this) from
    #: now is refused: its nonce would have to be remembered that long.
    clock_skew: float = 30.0
    token_ahead: float = 600.0
