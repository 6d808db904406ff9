"""The layer between raw bytes and message bodies.

Connections speak to a Channel, never to the byte stream directly. The product always
uses `NoiseChannel` (protocol/noise.py: a handshake, then sealed frames); `PlainChannel`
(frames only) serves the protocol tests that look at messages alone.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from whatsap2p.protocol.framing import FrameDecoder, encode_frame

__all__ = ["Buffer", "Channel", "OverChannel", "PlainChannel"]

#: Bytes as the channels pass them around (a bytearray saves a copy of large bodies).
Buffer = bytes | bytearray


class Channel(ABC):
    """A base class, not a Protocol: compiled, the connections above call a channel's
    methods through its class's table (a Protocol's are looked up by name on every call,
    several times per message)."""

    __slots__ = ("remote_key",)

    #: The other side's authenticated long-term key, once the handshake has shown it.
    remote_key: bytes | None

    @property
    @abstractmethod
    def established(self) -> bool:
        """True once messages may be sealed (the handshake, if any, is done)."""

    @abstractmethod
    def data_to_send(self) -> bytes:
        """Bytes the channel itself wants sent (handshake messages)."""

    @abstractmethod
    def receive_data(self, data: Buffer) -> None:
        """Bytes from the network."""

    @abstractmethod
    def next_body(self) -> Buffer | None:
        """The next complete message body, or None until more bytes arrive."""

    @abstractmethod
    def seal(self, body: Buffer) -> Buffer:
        """The bytes to put on the network for one message body."""


class PlainChannel(Channel):
    """Frames only: the message body is the frame body."""

    __slots__ = ("_decoder", "_max_body")

    def __init__(self, max_body: int) -> None:
        self.remote_key = None
        self._max_body = max_body
        self._decoder = FrameDecoder(max_body)

    @property
    def established(self) -> bool:
        return True

    def data_to_send(self) -> bytes:
        return b""

    def receive_data(self, data: Buffer) -> None:
        self._decoder.receive_data(data)

    def next_body(self) -> bytes | None:
        return self._decoder.next_frame()

    def seal(self, body: Buffer) -> Buffer:
        return encode_frame(body, self._max_body)


class OverChannel:
    """Base of the connection objects: what they show of the channel beneath them."""

    _channel: Channel

    @property
    def established(self) -> bool:
        """The secure channel is up: messages may flow."""
        return self._channel.established

    @property
    def remote_key(self) -> bytes | None:
        """The other side's authenticated long-term key (None before the handshake)."""
        return self._channel.remote_key

    def data_to_send(self) -> bytes:
        """Bytes to write that no `send` asked for: the secure handshake's messages."""
        return self._channel.data_to_send()
