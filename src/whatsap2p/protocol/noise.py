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
bytearray grown segment by segment was re-allocated and zero-filled on every step: 0.6
GB/s where this opens 2.7).

How a channel holds its AES-GCM objects depends on what it carries. cryptography builds
one with its key schedule up front: 2.5 KB of memory (ChaCha20Poly1305's hold 2.3 KB too,
measured by RSS over 20,000 of them), and 1.2 us to seal a small message where
ChaCha20-Poly1305, copying its context per call, takes 2.9. A peer connection (BULK)
moving photos keeps its own; the directory's connections (COMPACT), held by the ten
thousand and mostly idle, share a pool of the most recently used ones, an idle
connection's rebuilt from its key (2 us) when it speaks again.

The initiator may name the key it expects the responder to have (`expected_remote`, or
its `expected_fingerprint`): a different key stops the handshake before the initiator
reveals its own identity or sends anything.
"""

from __future__ import annotations

import struct
from collections import OrderedDict

import msgspec
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
from whatsap2p.protocol.framing import HEADER_SIZE, PROTOCOL_VERSION, FrameDecoder, encode_frame
from whatsap2p.protocol.keys import StaticKey, fingerprint

__all__ = ["BULK", "COMPACT", "NoiseChannel"]

#: Connections that move large bodies (peers) keep their own AES-GCM objects; those held
#: by the thousand with small messages (the directory) take them from the pool.
BULK, COMPACT = "bulk", "compact"
NOISE_NAME = b"Noise_XX_25519_AESGCM_SHA256"
#: Binds the handshake to this protocol and version: a peer speaking anything else fails.
PROLOGUE = b"WhatsAp2p/%d" % PROTOCOL_VERSION
MAX_NOISE_MESSAGE = 65535
_TAG = 16
_MORE, _LAST = 0, 1
_FLAGS = (b"\x00", b"\x01")
#: Plaintext bytes per segment: a sealed segment is exactly one maximal Noise message.
SEGMENT = MAX_NOISE_MESSAGE - _TAG
_SEGMENT_FRAME = 1 + MAX_NOISE_MESSAGE  # flag + sealed segment
_HEADER = struct.Struct(">BI")
#: A frame's header and its segment's flag, packed at once for the common small message.
_HEADER_FLAG = struct.Struct(">BIB")
#: Noise's AES-GCM nonce: four zero bytes, then the counter big-endian.
_NONCE = struct.Struct(">4xQ")
_MAX_NONCE = 2**64 - 1
#: How many AES-GCM objects the pool keeps (two per connection that spoke lately): 1,024
#: is ~2.5 MB, and a busy server's answering connections at any moment are far fewer.
POOL_SIZE = 1024


class _AeadPool:
    """The AES-GCM objects of the most recently used keys."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._objects: OrderedDict[bytes, AESGCM] = OrderedDict()

    def __len__(self) -> int:
        return len(self._objects)

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


_POOL = _AeadPool(POOL_SIZE)


class _CipherState(msgspec.Struct, gc=False):
    """One direction of Noise's transport: AES-GCM under key k with nonce n++.

    A BULK state holds its AES-GCM object; a COMPACT one (`_aead` None) takes it from
    the pool. It refers to no container, so it can be in no reference cycle: a msgspec
    Struct with gc=False is not tracked by the garbage collector (a server holds two per
    connection, by the ten thousand)."""

    _key: bytes
    _aead: AESGCM | None
    _n: int

    @classmethod
    def start(cls, suite: str, key: bytes, n: int) -> _CipherState:
        return cls(key, AESGCM(key) if suite == BULK else None, n)

    def _nonce(self) -> bytes:
        n = self._n
        if n >= _MAX_NONCE:
            raise LocalProtocolError("the secure channel used up its nonces")
        self._n = n + 1
        return _NONCE.pack(n)

    # (The AES-GCM object is fetched inline, not by a method: a call fewer per message.)

    def seal(self, flag: bytes, plain: bytes | bytearray) -> bytes:
        return (self._aead or _POOL.get(self._key)).encrypt(self._nonce(), plain, flag)

    def open(self, flag: bytes, sealed: memoryview) -> bytes:
        return (self._aead or _POOL.get(self._key)).decrypt(self._nonce(), sealed, flag)

    def seal_into(self, flag: bytes, plain: memoryview, out: memoryview) -> None:
        (self._aead or _POOL.get(self._key)).encrypt_into(self._nonce(), plain, flag, out)


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


class NoiseChannel:
    """Sans-IO: `receive_data` bytes in, `next_body` / `data_to_send` out."""

    __slots__ = (
        "_expected",
        "_frames",
        "_handshake",
        "_have",
        "_max_body",
        "_noise",
        "_outgoing",
        "_receiving",
        "_segments",
        "_sending",
        "_suite",
        "remote_key",
    )

    def __init__(
        self,
        key: StaticKey,
        *,
        initiator: bool,
        max_body: int,
        expected_remote: bytes | None = None,
        expected_fingerprint: str | None = None,
        suite: str = BULK,
    ) -> None:
        if suite not in (BULK, COMPACT):
            raise ValueError(f"unknown cipher suite {suite!r}")
        self._suite = suite
        self._max_body = max_body
        self._expected = (
            fingerprint(expected_remote) if expected_remote is not None else expected_fingerprint
        )
        self._frames = FrameDecoder(_SEGMENT_FRAME)
        self._outgoing = bytearray()
        #: The segments of a body received so far, and their bytes in all (no list until
        #: a body comes in several: the directory's thousands of channels never need one).
        self._segments: list[bytes] | tuple[()] = ()
        self._have = 0
        self._sending: _CipherState | None = None
        self._receiving: _CipherState | None = None
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
        return self._sending is not None

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
            if self._receiving is None:
                self._handshake_step(bytes(frames.buffer[start:end]))
                continue
            body = self._open(self._receiving, frames.buffer, start, end)
            if body is not None:
                return body
        return None

    def seal(self, body: bytes | bytearray) -> bytes | bytearray:
        sending = self._sending
        if sending is None:
            raise LocalProtocolError("cannot send before the secure channel is established")
        size = len(body)
        if size > self._max_body:
            raise LocalProtocolError(f"message of {size} bytes exceeds {self._max_body}")
        pending = self._outgoing  # a pending handshake message goes first
        if size <= SEGMENT and not pending:  # the common small message: one segment
            small = sending.seal(_FLAGS[_LAST], body)
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
                sending.seal_into(_FLAGS[last], chunk, sealed[pos : pos + frame - 1])
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
        self._sending = _CipherState.start(self._suite, encrypt.k, encrypt.n)
        self._receiving = _CipherState.start(self._suite, decrypt.k, decrypt.n)
        self._noise = None
        self._handshake = None

    def _open(
        self, receiving: _CipherState, buffer: bytearray, start: int, end: int
    ) -> bytes | None:
        size = end - start - 1 - _TAG
        flag = buffer[start] if size >= 0 else -1
        if flag not in (_MORE, _LAST):
            raise RemoteProtocolError("malformed secure segment")
        segments = self._segments
        have = self._have
        if have + size > self._max_body:
            raise RemoteProtocolError(f"message exceeds the {self._max_body}-byte cap")
        try:
            with memoryview(buffer) as sealed:
                plain = receiving.open(_FLAGS[flag], sealed[start + 1 : end])
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
