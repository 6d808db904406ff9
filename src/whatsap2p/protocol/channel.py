"""The layer between raw bytes and message bodies.

Connections speak to a Channel, never to the byte stream directly, so an authenticated
encrypted channel (a Noise handshake, then sealed frames) replaces `PlainChannel` without
touching the message layer or the app.
"""

from __future__ import annotations

from typing import Protocol

from whatsap2p.protocol.framing import FrameDecoder, encode_frame

__all__ = ["Channel", "PlainChannel"]


class Channel(Protocol):
    def receive_data(self, data: bytes) -> None:
        """Bytes from the network."""

    def next_body(self) -> bytes | None:
        """The next complete message body, or None until more bytes arrive."""

    def seal(self, body: bytes) -> bytes:
        """The bytes to put on the network for one message body."""


class PlainChannel:
    """Frames only: the message body is the frame body."""

    def __init__(self, max_body: int) -> None:
        self._max_body = max_body
        self._decoder = FrameDecoder(max_body)

    def receive_data(self, data: bytes) -> None:
        self._decoder.receive_data(data)

    def next_body(self) -> bytes | None:
        return self._decoder.next_frame()

    def seal(self, body: bytes) -> bytes:
        return encode_frame(body, self._max_body)
