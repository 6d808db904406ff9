"""The secure channel under every connection: Noise_XX_25519_ChaChaPoly_SHA256.

The handshake (three messages) authenticates both sides' long-term keys and agrees
transport keys; after it, every message body is encrypted and authenticated. Noise
limits a transport message to 65,535 bytes, so a body is carried in segments, each
one frame: a 1-byte flag (more / last) and up to 65,518 bytes, sealed.

The initiator may name the key it expects the responder to have (`expected_remote`, or
its `expected_fingerprint`): a different key stops the handshake before the initiator
reveals its own identity or sends anything.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from noise.connection import Keypair, NoiseConnection
from noise.exceptions import (
    NoiseHandshakeError,
    NoiseInvalidMessage,
    NoiseMaxNonceError,
    NoiseValidationError,
    NoiseValueError,
)

from whatsap2p.errors import LocalProtocolError, RemoteKeyMismatch, RemoteProtocolError
from whatsap2p.protocol.framing import FrameDecoder, encode_frame
from whatsap2p.protocol.keys import StaticKey, fingerprint

__all__ = ["NOISE_NAME", "NoiseChannel"]

NOISE_NAME = b"Noise_XX_25519_ChaChaPoly_SHA256"
#: Binds the handshake to this protocol and version: a peer speaking anything else fails.
PROLOGUE = b"WhatsAp2p/3"
MAX_NOISE_MESSAGE = 65535
_TAG = 16
_MORE, _LAST = b"\x00", b"\x01"
SEGMENT = MAX_NOISE_MESSAGE - _TAG - 1

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

    def __init__(
        self,
        key: StaticKey,
        *,
        initiator: bool,
        max_body: int,
        expected_remote: bytes | None = None,
        expected_fingerprint: str | None = None,
    ) -> None:
        self._max_body = max_body
        self._initiator = initiator
        self._expected = (
            fingerprint(expected_remote) if expected_remote is not None else expected_fingerprint
        )
        self._frames = FrameDecoder(MAX_NOISE_MESSAGE)
        self._outgoing = bytearray()
        self._partial = bytearray()
        self.remote_key: bytes | None = None
        self._noise = NoiseConnection.from_name(NOISE_NAME)
        if initiator:
            self._noise.set_as_initiator()
        else:
            self._noise.set_as_responder()
        self._noise.set_keypair_from_private_bytes(Keypair.STATIC, key.private)
        self._noise.set_prologue(PROLOGUE)
        self._noise.start_handshake()
        # The library drops its handshake state when the handshake ends; keep a handle
        # to read the remote static key from.
        self._handshake = self._noise.noise_protocol.handshake_state
        if initiator:
            self._send_handshake()

    @property
    def established(self) -> bool:
        return bool(self._noise.handshake_finished)

    def data_to_send(self) -> bytes:
        """Handshake bytes the channel wants sent (empty when there are none)."""
        data = bytes(self._outgoing)
        self._outgoing.clear()
        return data

    def receive_data(self, data: bytes) -> None:
        self._frames.receive_data(data)

    def next_body(self) -> bytes | None:
        while (frame := self._frames.next_frame()) is not None:
            if not self.established:
                self._handshake_step(frame)
                continue
            body = self._open(frame)
            if body is not None:
                return body
        return None

    def seal(self, body: bytes) -> bytes:
        if not self.established:
            raise LocalProtocolError("cannot send before the secure channel is established")
        if len(body) > self._max_body:
            raise LocalProtocolError(f"message of {len(body)} bytes exceeds {self._max_body}")
        out = bytearray(self._outgoing)  # a pending handshake message goes first
        self._outgoing.clear()
        view = memoryview(body)
        for start in range(0, max(len(body), 1), SEGMENT):
            flag = _LAST if start + SEGMENT >= len(body) else _MORE
            sealed = self._noise.encrypt(flag + bytes(view[start : start + SEGMENT]))
            out += encode_frame(sealed, MAX_NOISE_MESSAGE)
        return bytes(out)

    # --- internals ------------------------------------------------------------------------

    def _send_handshake(self) -> None:
        try:
            message = self._noise.write_message()
        except _NOISE_ERRORS as exc:
            # Answering needs a DH with what the other side sent: a low-order point (an
            # all-zero key, say) fails here, not while reading it. Found by fuzzing.
            raise RemoteProtocolError(f"secure handshake failed: {exc}") from exc
        self._outgoing += encode_frame(bytes(message), MAX_NOISE_MESSAGE)

    def _handshake_step(self, frame: bytes) -> None:
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
        if not self.established:
            self._send_handshake()

    def _open(self, frame: bytes) -> bytes | None:
        try:
            plain = self._noise.decrypt(frame)
        except _NOISE_ERRORS as exc:
            raise RemoteProtocolError("a message failed authentication") from exc
        if not plain or plain[:1] not in (_MORE, _LAST):
            raise RemoteProtocolError("malformed secure segment")
        if len(self._partial) + len(plain) - 1 > self._max_body:
            raise RemoteProtocolError(f"message exceeds the {self._max_body}-byte cap")
        self._partial += plain[1:]
        if plain[:1] == _MORE:
            return None
        body = bytes(self._partial)
        self._partial.clear()
        return body
