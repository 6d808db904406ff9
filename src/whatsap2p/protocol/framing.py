"""Length-prefixed frames: a 1-byte protocol version and a 4-byte big-endian body length.

The length is checked against the cap as soon as the 5 header bytes are in, before the
body is buffered, so a hostile header cannot make us allocate.
"""

from __future__ import annotations

import struct
from typing import Final

from whatsap2p.errors import FrameTooLarge, LocalProtocolError, RemoteProtocolError

__all__ = ["HEADER_SIZE", "PROTOCOL_VERSION", "FrameDecoder", "encode_frame"]

# 2: Noise; 3: the receiver decides before a photo flows; 4: AES-GCM in place; 5: the
# directory on AES-GCM too.
PROTOCOL_VERSION: Final = 5
_HEADER: Final = struct.Struct(">BI")
HEADER_SIZE: Final = _HEADER.size


def encode_frame(body: bytes | bytearray, max_body: int) -> bytes:
    """One frame around `body`; refuses (locally) to build a frame the peer must reject."""
    if len(body) > max_body:
        raise LocalProtocolError(f"frame of {len(body)} bytes exceeds the {max_body}-byte cap")
    return _HEADER.pack(PROTOCOL_VERSION, len(body)) + body


class FrameDecoder:
    """Cuts a byte stream into frame bodies, incrementally."""

    def __init__(self, max_body: int) -> None:
        self._max_body = max_body
        self._buffer = bytearray()
        self._pos = 0

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a frame."""
        return len(self._buffer) - self._pos

    def receive_data(self, data: bytes | bytearray) -> None:
        self._buffer += data

    @property
    def buffer(self) -> bytearray:
        """Where the spans `next_span` returns point (valid until the next call)."""
        return self._buffer

    def next_frame(self) -> bytes | None:
        """The next complete frame body, or None until more data arrives."""
        span = self.next_span()
        if span is None:
            return None
        return bytes(self._buffer[span[0] : span[1]])

    def next_span(self) -> tuple[int, int] | None:
        """Where in `buffer` the next complete frame body is, without copying it."""
        if self.buffered < HEADER_SIZE:
            self._compact()
            return None
        version, length = _HEADER.unpack_from(self._buffer, self._pos)
        if version != PROTOCOL_VERSION:
            raise RemoteProtocolError(
                f"unsupported protocol version {version} (this program speaks {PROTOCOL_VERSION})"
            )
        if length > self._max_body:
            raise FrameTooLarge(f"frame of {length} bytes exceeds the {self._max_body}-byte cap")
        end = self._pos + HEADER_SIZE + length
        if len(self._buffer) < end:
            self._compact()
            return None
        start = self._pos + HEADER_SIZE
        self._pos = end
        return start, end

    def _compact(self) -> None:
        # Drop consumed bytes only when waiting, so a burst of small frames is not O(n^2).
        if self._pos:
            del self._buffer[: self._pos]
            self._pos = 0
