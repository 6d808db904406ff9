"""The secure channel under every connection: Noise_XX_25519_AESGCM_SHA256.

The handshake (three messages, run by the noiseprotocol library) authenticates both
sides' long-term keys and agrees the two transport keys; after it, every message body
is encrypted and authenticated. Noise limits a transport message to 65,535 bytes, so a
body is carried in segments, each one frame: a 1-byte flag (more / last) in the clear
and up to 65,519 bytes sealed with the flag as associated data, so it is authenticated
too. The transport is Noise's CipherState (ENCRYPT(k, n++, ad, plaintext), the nonce
the big-endian counter after four zero bytes) on the keys the handshake split, run on
cryptography's AES-GCM directly: a body's segments are sealed in place into the one
buffer that goes out, and opened each into its own bytes, joined once at the last (a
bytearray grown segment by segment is re-allocated and zero-filled on every step).

How a channel holds its AES-GCM objects depends on what it carries. cryptography builds
one with its key schedule up front, which costs memory and makes each seal cheap. A peer
connection (BULK) moving photos keeps its own; the directory's connections (COMPACT),
held by the ten thousand and mostly idle, share a pool of the most recently used ones,
an idle connection's rebuilt from its key when it speaks again. The figures behind these
choices are in docs/performance.md.

The initiator may name the key it expects the responder to have (`expected_remote`, or
its `expected_fingerprint`): a different key stops the handshake before the initiator
reveals its own identity or sends anything.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from noise.connection import Keypair, NoiseConnection
from noise.exceptions import (
    NoiseHandshakeError,
    NoiseInvalidMessage,
    NoiseMaxNonceError,
    NoiseValidationError,
    NoiseValueError,
)

from whatsap2p.errors import LocalProtocolError, RemoteKeyMismatch, RemoteProtocolError
from whatsap2p.protocol.channel import Channel
from whatsap2p.protocol.framing import HEADER_SIZE, PROTOCOL_VERSION, FrameDecoder, encode_frame
from whatsap2p.protocol.keys import StaticKey, fingerprint

__all__ = ["BULK", "COMPACT", "NoiseChannel"]

#: Connections that move large bodies (peers) keep their own AES-GCM objects; those held
#: by the thousand with small messages (the directory) take them from the pool.
#: (The module's constants are Final: compiled, they are C statics or inlined, where a
#: plain module global is a dictionary lookup at every use, a few of them per message.)
BULK: Final = "bulk"
COMPACT: Final = "compact"
NOISE_NAME: Final = b"Noise_XX_25519_AESGCM_SHA256"
#: Binds the handshake to this protocol and version: a peer speaking anything else fails.
PROLOGUE: Final = b"WhatsAp2p/%d" % PROTOCOL_VERSION
MAX_NOISE_MESSAGE: Final = 65535
_TAG: Final = 16
_MORE: Final = 0
_LAST: Final = 1
_FLAGS: Final = (b"\x00", b"\x01")
#: Plaintext bytes per segment: a sealed segment is exactly one maximal Noise message.
SEGMENT: Final = MAX_NOISE_MESSAGE - _TAG
_SEGMENT_FRAME: Final = 1 + MAX_NOISE_MESSAGE  # flag + sealed segment
_HEADER: Final = struct.Struct(">BI")
#: A frame's header and its segment's flag, packed at once for the common small message.
_HEADER_FLAG: Final = struct.Struct(">BIB")
#: Noise's AES-GCM nonce: four zero bytes, then the counter big-endian.
_NONCE: Final = struct.Struct(">4xQ")
#: A sealed segment this small is opened from a copy of its bytes; a larger one through
#: a view of the receive buffer (copying 64 KiB would cost a fifth of opening it).
_COPY_BELOW: Final = 4096
#: A channel refuses to go on at this many messages in one direction. Noise allows
#: 2**64 - 1; this bound (never reached: 2**62 messages) keeps the counter a machine
#: integer in the compiled code, where a larger one would be compared as an object.
_NONCE_LIMIT: Final = 2**62 - 1
#: How many AES-GCM objects the pool keeps (two per connection that spoke lately): 1,024
#: is ~2.5 MB, and a busy server's answering connections at any moment are far fewer.
POOL_SIZE: Final = 1024


class _AeadPool:
    """The AES-GCM objects of the most recently used keys."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._objects: OrderedDict[bytes, AESGCM] = OrderedDict()

    def __len__(self) -> int:
        return len(self._objects)

    def resize(self, size: int) -> None:
        """Keep at most `size` objects from now on (the most recently used)."""
        self.size = size
        while len(self._objects) > size:
            self._objects.popitem(last=False)

    def get(self, key: bytes) -> AESGCM:
        objects = self._objects
        aead = objects.get(key)
        if aead is not None:
            objects.move_to_end(key)
            return aead
        aead = objects[key] = AESGCM(key)
        if len(objects) > self.size:
            objects.popitem(last=False)
        return aead


_POOL: Final = _AeadPool(POOL_SIZE)


# What the library (and cryptography beneath it) raise for bytes that are not a valid
# handshake or transport message; they have no common base class.
_NOISE_ERRORS = (
    NoiseHandshakeError,
    NoiseInvalidMessage,
    NoiseMaxNonceError,
    NoiseValidationError,
    NoiseValueError,
    InvalidTag,
    ValueError,
)


class NoiseChannel(Channel):
    """Sans-IO: `receive_data` bytes in, `next_body` / `data_to_send` out."""

    __slots__ = (
        "_expected",
        "_frames",
        "_handshake",
        "_have",
        "_max_body",
        "_max_send",
        "_noise",
        "_outgoing",
        "_rx_aead",
        "_rx_key",
        "_rx_n",
        "_segments",
        "_suite",
        "_tx_aead",
        "_tx_key",
        "_tx_n",
    )

    def __init__(
        self,
        key: StaticKey,
        *,
        initiator: bool,
        max_body: int,
        max_send: int | None = None,
        expected_remote: bytes | None = None,
        expected_fingerprint: str | None = None,
        suite: str = BULK,
    ) -> None:
        """`max_body`: the largest body accepted from the other side; `max_send`: the
        largest this side sends (`max_body` unless given)."""
        if suite not in (BULK, COMPACT):
            raise ValueError(f"unknown cipher suite {suite!r}")
        self._suite = suite
        self._max_body = max_body
        self._max_send = max_body if max_send is None else max_send
        self._expected = (
            fingerprint(expected_remote) if expected_remote is not None else expected_fingerprint
        )
        self._frames = FrameDecoder(_SEGMENT_FRAME)
        self._outgoing = bytearray()
        #: The segments of a body received so far, and their bytes in all (no list until
        #: a body comes in several: the directory's thousands of channels never need one).
        self._segments: list[bytes] | tuple[()] = ()
        self._have = 0
        # Noise's two CipherStates, one per direction, kept here rather than in objects
        # of their own (two fewer per connection, and read without a lookup): the key,
        # its AES-GCM object (BULK; COMPACT ones come from the pool) and the next nonce.
        self._tx_key = self._rx_key = b""
        self._tx_aead: AESGCM | None = None
        self._rx_aead: AESGCM | None = None
        self._tx_n = self._rx_n = 0
        self.remote_key: bytes | None = None
        noise = NoiseConnection.from_name(NOISE_NAME)
        if initiator:
            noise.set_as_initiator()
        else:
            noise.set_as_responder()
        noise.set_keypair_from_private_bytes(Keypair.STATIC, key.private)
        noise.set_prologue(PROLOGUE)
        noise.start_handshake()
        self._noise: NoiseConnection | None = noise
        # The library drops its handshake state when the handshake ends; keep a handle
        # to read the remote static key from.
        self._handshake = noise.noise_protocol.handshake_state
        if initiator:
            self._send_handshake()

    @property
    def established(self) -> bool:
        return self._noise is None  # dropped once the transport keys are in place

    def data_to_send(self) -> bytes:
        """Handshake bytes the channel wants sent (empty when there are none)."""
        data = bytes(self._outgoing)
        self._outgoing.clear()
        return data

    def receive_data(self, data: bytes | bytearray) -> None:
        self._frames.receive_data(data)

    def next_body(self) -> bytes | None:
        frames = self._frames
        while (span := frames.next_span()) is not None:
            start, end = span
            if self._noise is not None:
                self._handshake_step(bytes(frames.buffer[start:end]))
                continue
            body = self._open(frames.buffer, start, end)
            if body is not None:
                return body
        return None

    def seal(self, body: bytes | bytearray) -> bytes | bytearray:
        if self._noise is not None:
            raise LocalProtocolError("cannot send before the secure channel is established")
        size = len(body)
        if size > self._max_send:
            raise LocalProtocolError(f"message of {size} bytes exceeds {self._max_send}")
        pending = self._outgoing  # a pending handshake message goes first
        if size <= SEGMENT and not pending:  # the common small message: one segment
            small = self._aead(True).encrypt(self._nonce(True), body, _FLAGS[_LAST])
            return _HEADER_FLAG.pack(PROTOCOL_VERSION, 1 + len(small), _LAST) + small
        segments = max(1, -(-size // SEGMENT))
        pos = len(pending)
        out = bytearray(pos + size + segments * (HEADER_SIZE + 1 + _TAG))
        out[:pos] = pending
        pending.clear()
        with memoryview(body) as plain, memoryview(out) as sealed:
            for start in range(0, max(size, 1), SEGMENT):
                chunk = plain[start : start + SEGMENT]
                last = start + SEGMENT >= size
                frame = 1 + len(chunk) + _TAG
                _HEADER.pack_into(sealed, pos, PROTOCOL_VERSION, frame)
                sealed[pos + HEADER_SIZE] = last
                pos += HEADER_SIZE + 1
                self._aead(True).encrypt_into(
                    self._nonce(True), chunk, _FLAGS[last], sealed[pos : pos + frame - 1]
                )
                pos += frame - 1
        return out

    # --- internals ------------------------------------------------------------------------

    def _send_handshake(self) -> None:
        assert self._noise is not None
        try:
            message = self._noise.write_message()
        except _NOISE_ERRORS as exc:
            # Answering needs a DH with what the other side sent: a low-order point (an
            # all-zero key, say) fails here, not while reading it. Found by fuzzing.
            raise RemoteProtocolError(f"secure handshake failed: {exc}") from exc
        self._outgoing += encode_frame(bytes(message), MAX_NOISE_MESSAGE)
        self._start_transport()

    def _handshake_step(self, frame: bytes) -> None:
        assert self._noise is not None
        try:
            self._noise.read_message(frame)
        except _NOISE_ERRORS as exc:
            raise RemoteProtocolError(
                f"secure handshake failed: {exc or type(exc).__name__}"
            ) from exc
        remote = self._handshake.rs
        if self.remote_key is None and remote is not None and hasattr(remote, "public_bytes"):
            self.remote_key = bytes(remote.public_bytes)
            if self._expected is not None and fingerprint(self.remote_key) != self._expected:
                raise RemoteKeyMismatch(
                    f"the other side's key {fingerprint(self.remote_key)} is not the expected "
                    f"{self._expected}",
                    self.remote_key,
                )
        if self._noise.handshake_finished:
            self._start_transport()
        else:
            self._send_handshake()

    def _start_transport(self) -> None:
        """Once the handshake is done, keep the two split keys and drop the rest."""
        noise = self._noise
        if noise is None or not noise.handshake_finished:
            return
        protocol = noise.noise_protocol
        encrypt, decrypt = protocol.cipher_state_encrypt, protocol.cipher_state_decrypt
        self._tx_key, self._tx_n = encrypt.k, encrypt.n
        self._rx_key, self._rx_n = decrypt.k, decrypt.n
        if self._suite == BULK:
            self._tx_aead, self._rx_aead = AESGCM(self._tx_key), AESGCM(self._rx_key)
        self._noise = None
        self._handshake = None

    def _aead(self, sending: bool) -> AESGCM:
        """The AES-GCM object of one direction: the channel's own, or the pool's."""
        if sending:
            return self._tx_aead or _POOL.get(self._tx_key)
        return self._rx_aead or _POOL.get(self._rx_key)

    def _nonce(self, sending: bool) -> bytes:
        """The next nonce of one direction (ENCRYPT(k, n++, ...))."""
        n = self._tx_n if sending else self._rx_n
        if n >= _NONCE_LIMIT:
            raise LocalProtocolError("the secure channel used up its nonces")
        if sending:
            self._tx_n = n + 1
        else:
            self._rx_n = n + 1
        return _NONCE.pack(n)

    def _open(self, buffer: bytearray, start: int, end: int) -> bytes | None:
        size = end - start - 1 - _TAG
        flag = buffer[start] if size >= 0 else -1
        if flag not in (_MORE, _LAST):
            raise RemoteProtocolError("malformed secure segment")
        segments = self._segments
        have = self._have
        if have + size > self._max_body:
            raise RemoteProtocolError(f"message exceeds the {self._max_body}-byte cap")
        try:
            aead, nonce, ad = self._aead(False), self._nonce(False), _FLAGS[flag]
            if size <= _COPY_BELOW:  # a copy costs less than a view and its release
                plain = aead.decrypt(nonce, buffer[start + 1 : end], ad)
            else:
                with memoryview(buffer) as sealed:
                    plain = aead.decrypt(nonce, sealed[start + 1 : end], ad)
        except (InvalidTag, ValueError) as exc:
            raise RemoteProtocolError("a message failed authentication") from exc
        if flag == _LAST and not segments:  # the common small message: one segment
            return plain
        if not segments:
            segments = self._segments = []
        segments.append(plain)
        if flag == _MORE:
            self._have = have + size
            return None
        self._segments, self._have = (), 0
        return b"".join(segments)
