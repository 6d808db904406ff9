"""MessagePack encoding of the wire messages, with strict validation of what is received.

A message is a map whose `t` key names its type; the other keys are its fields. Unknown
keys are ignored (newer peers may add optional fields); missing or mistyped fields make
the message invalid (a bool is not an integer, a string is not bytes). msgspec does the
encoding and the checking, in C, from the types declared in events.py. Arbitrary bytes
never raise anything but RemoteProtocolError.
"""

from __future__ import annotations

import msgspec

from whatsap2p.errors import RemoteProtocolError
from whatsap2p.protocol import events as ev

__all__ = ["decode_message", "encode_message"]

_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(ev.WireMessage)


def encode_message(message: ev.Message) -> bytes:
    return _ENCODER.encode(message)


def decode_message(body: bytes | bytearray) -> ev.Message:
    try:
        message: ev.Message = _DECODER.decode(body)
    except msgspec.ValidationError as exc:
        raise RemoteProtocolError(f"invalid message: {exc}") from exc
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        # msgspec lets a string that is not UTF-8, or nesting too deep, raise Python's own
        raise RemoteProtocolError(f"undecodable message: {exc}") from exc
    return message
