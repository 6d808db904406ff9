"""The relay's wire format (docs/protocol.md §11): the token a directory mints for a pair of
numbers and a relay verifies, the preface a module opens a relay connection with, and the
status byte the relay answers. Sans-IO: time and randomness come in as arguments.

A token is HMAC-SHA256 over its fields with a secret the directory and the relay share;
the two numbers appear in it only as a keyed hash (`pair`), so a relay, and anyone
watching its traffic, never learns them.

    offset  size  field
    0       1     version (1)
    1       8     expiry, unix seconds, unsigned big-endian
    9       16    nonce: random, names the session the two halves join
    25      32    pair = HMAC-SHA256(K_pair, the two numbers, sorted, each length-prefixed)
    57      32    mac  = HMAC-SHA256(K_mac, bytes 0..56)

K_pair and K_mac are derived from the secret (HMAC-SHA256(secret, label)), one key per use.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
import struct
from dataclasses import dataclass
from typing import Final

from whatsap2p.errors import RemoteProtocolError

__all__ = [
    "MAGIC",
    "MAX_TOKEN",
    "MIN_SECRET",
    "NONCE_SIZE",
    "TOKEN_SIZE",
    "TOKEN_TTL",
    "TOKEN_VERSION",
    "PrefaceDecoder",
    "Status",
    "TokenExpired",
    "TokenForged",
    "TokenRefused",
    "Verified",
    "encode_preface",
    "mint",
    "pair_of",
    "verify",
]

#: What a module writes first on a connection to a relay: "WA2Rly" and the relay
#: protocol's version; then the token's length (2 bytes, big-endian) and the token.
MAGIC: Final = b"WA2Rly\x01"
_LENGTH: Final = struct.Struct(">H")
_HEADER_SIZE: Final = len(MAGIC) + _LENGTH.size
#: The largest token length a relay reads (this version's tokens are TOKEN_SIZE bytes;
#: the room is for later versions): a preface is never more than 521 bytes.
MAX_TOKEN: Final = 512

TOKEN_VERSION: Final = 1
_FIELDS: Final = struct.Struct(">BQ16s32s")
NONCE_SIZE: Final = 16
_MAC_SIZE: Final = 32
TOKEN_SIZE: Final = _FIELDS.size + _MAC_SIZE  # 89
#: Shortest secret accepted: 32 bytes, SHA-256's own strength.
MIN_SECRET: Final = 32
#: Seconds a token minted now stays valid, by default: both modules connect within a few
#: seconds of being introduced, and a relay remembers every nonce until its token expires.
TOKEN_TTL: Final = 60

_PAIR_LABEL: Final = b"whatsap2p relay pair v1"
_MAC_LABEL: Final = b"whatsap2p relay token v1"


class Status(enum.IntEnum):
    """The one byte a relay answers a preface with. Every value but JOINED is followed by
    the relay closing the connection."""

    JOINED = 0  # the other half is here: from the next byte on, the stream is theirs
    FORGED = 1  # not a token this relay can verify (forged, malformed, or not valid here)
    EXPIRED = 2  # a genuine token past its expiry
    REPLAYED = 3  # its nonce was already joined, or its first half gave up waiting
    BUSY = 4  # over one of the relay's limits: try later, or another relay
    TIMEOUT = 5  # the other half did not come in time


class TokenRefused(RemoteProtocolError):
    """A relay will not take this token; `status` is what it answers."""

    status: Status = Status.FORGED


class TokenForged(TokenRefused):
    """Malformed, of an unknown version, its MAC wrong (another secret), or expiring
    further ahead than any token this relay would accept."""

    status = Status.FORGED


class TokenExpired(TokenRefused):
    """A genuine token whose expiry has passed."""

    status = Status.EXPIRED


@dataclass(frozen=True, slots=True)
class Verified:
    """What a genuine token says."""

    expiry: int
    nonce: bytes
    pair: bytes


def _key(secret: bytes, label: bytes) -> bytes:
    if len(secret) < MIN_SECRET:
        raise ValueError(f"a relay secret has at least {MIN_SECRET} bytes, not {len(secret)}")
    return hmac.digest(secret, label, hashlib.sha256)


def pair_of(secret: bytes, phone_a: str, phone_b: str) -> bytes:
    """The pair's keyed hash: the same whichever number comes first, and nothing anyone
    without the secret can tell the numbers from."""
    encoded = sorted(phone.encode() for phone in (phone_a, phone_b))
    message = b"".join(_LENGTH.pack(len(number)) + number for number in encoded)
    return hmac.digest(_key(secret, _PAIR_LABEL), message, hashlib.sha256)


def mint(
    secret: bytes,
    phone_a: str,
    phone_b: str,
    now: float,
    ttl: float = TOKEN_TTL,
    nonce: bytes | None = None,
) -> bytes:
    """A token for the pair, valid until `now + ttl` (unix seconds); `nonce`: random
    unless given (tests)."""
    if nonce is None:
        nonce = os.urandom(NONCE_SIZE)
    if len(nonce) != NONCE_SIZE:
        raise ValueError(f"a nonce has {NONCE_SIZE} bytes")
    fields = _FIELDS.pack(
        TOKEN_VERSION, max(0, int(now + ttl)), nonce, pair_of(secret, phone_a, phone_b)
    )
    return fields + hmac.digest(_key(secret, _MAC_LABEL), fields, hashlib.sha256)


def verify(
    secret: bytes, token: bytes, now: float, skew: float = 30.0, ahead: float = 600.0
) -> Verified:
    """The token's fields if the secret made it and it has not expired at `now` (unix
    seconds), allowing `skew` seconds between the minter's clock and ours; raises
    TokenForged or TokenExpired. A token expiring more than `ahead` seconds from now is
    refused (as forged): the relay remembers a nonce until its token expires, and no
    directory mints one for that long."""
    if len(token) != TOKEN_SIZE:
        raise TokenForged(f"a token has {TOKEN_SIZE} bytes, not {len(token)}")
    fields, mac = token[: _FIELDS.size], token[_FIELDS.size :]
    # The MAC first, in constant time: nothing else is looked at in a token not ours.
    if not hmac.compare_digest(mac, hmac.digest(_key(secret, _MAC_LABEL), fields, hashlib.sha256)):
        raise TokenForged("the token's MAC is wrong (forged, or minted with another secret)")
    version, expiry, nonce, pair = _FIELDS.unpack(fields)
    if version != TOKEN_VERSION:  # (a later minter's, under the same secret)
        raise TokenForged(f"token version {version} is not known here")
    if now > expiry + skew:
        raise TokenExpired(f"the token expired {now - expiry:.0f} s ago")
    if expiry > now + ahead + skew:
        raise TokenForged(f"the token expires {expiry - now:.0f} s from now: too far ahead")
    return Verified(expiry, nonce, pair)


def encode_preface(token: bytes) -> bytes:
    """What a module writes first on its connection to a relay."""
    if not 0 < len(token) <= MAX_TOKEN:
        raise ValueError(f"a token has 1 to {MAX_TOKEN} bytes")
    return MAGIC + _LENGTH.pack(len(token)) + token


class PrefaceDecoder:
    """The preface, from bytes as they come: `receive_data` returns the token once all of
    it is in. Raises RemoteProtocolError at the first byte that cannot be a preface
    (another protocol, a length out of range), and for bytes after the preface: a module
    sends nothing more until the relay has answered. Holds at most the preface."""

    __slots__ = ("_buffer", "_need")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._need = _HEADER_SIZE  # bytes the preface has in all, once its length is known

    def receive_data(self, data: bytes | bytearray) -> bytes | None:
        buffer = self._buffer
        while data:
            room = self._need - len(buffer)
            if room == 0:
                raise RemoteProtocolError("bytes after the relay preface, before its answer")
            buffer += data[:room]  # (never more than the preface: the cap comes first)
            data = data[room:]
            have = min(len(buffer), len(MAGIC))
            if buffer[:have] != MAGIC[:have]:
                raise RemoteProtocolError("not a relay preface")
            if len(buffer) == self._need == _HEADER_SIZE:
                (length,) = _LENGTH.unpack_from(buffer, len(MAGIC))
                if not 0 < length <= MAX_TOKEN:
                    raise RemoteProtocolError(f"a relay token of {length} bytes")
                self._need += length
        if len(buffer) < self._need or self._need == _HEADER_SIZE:
            return None
        return bytes(buffer[_HEADER_SIZE:])
