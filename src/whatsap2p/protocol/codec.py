"""MessagePack encoding of the wire messages, with strict validation of what is received.

A message is a map whose `t` key names its type; the other keys are the dataclass fields.
Unknown keys are ignored (newer peers may add optional fields); missing or mistyped
fields make the message invalid. Arbitrary bytes never raise anything but
RemoteProtocolError.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any

import msgpack

from whatsap2p.errors import RemoteProtocolError
from whatsap2p.protocol import events as ev

__all__ = ["decode_message", "encode_message"]

_WIRE_TYPES: dict[str, type[ev.Message]] = {
    cls.TYPE: cls
    for cls in (
        ev.Register,
        ev.Registered,
        ev.Lookup,
        ev.LookupResult,
        ev.Unregister,
        ev.Unregistered,
        ev.Watch,
        ev.Watching,
        ev.Online,
        ev.Ping,
        ev.Pong,
        ev.Failure,
        ev.Hello,
        ev.Text,
        ev.PhotoOffer,
        ev.PhotoChunk,
        ev.PhotoEnd,
        ev.Resume,
        ev.Ack,
        ev.Rejected,
        ev.Closing,
    )
}


_PACKER = msgpack.Packer(use_bin_type=True)


def encode_message(message: ev.Message) -> bytes:
    cls = type(message)
    encode = _ENCODERS.get(cls) or _encoder(cls)
    packed: bytes = _PACKER.pack(encode(message))
    return packed


_Encode = Callable[[Any], Any]
_ENCODERS: dict[type[Any], Callable[[Any], dict[str, Any]]] = {}


def _encoder(cls: type[Any]) -> Callable[[Any], dict[str, Any]]:
    """A function turning a `cls` into its wire map, compiled once per class from its
    type hints: plain fields are copied, nested messages and tuples of them converted.
    A message's map starts with its type (`t`); a nested value's has none."""
    tag = getattr(cls, "TYPE", None)
    hints = typing.get_type_hints(cls)
    plain: list[str] = []
    converted: list[tuple[str, _Encode]] = []
    for f in dataclasses.fields(cls):
        convert = _wire_form(hints[f.name])
        if convert is None:
            plain.append(f.name)
        else:
            converted.append((f.name, convert))

    def encode(message: Any) -> dict[str, Any]:
        wire = {} if tag is None else {"t": tag}
        for name in plain:
            wire[name] = getattr(message, name)
        for name, convert in converted:
            wire[name] = convert(getattr(message, name))
        return wire

    _ENCODERS[cls] = encode
    return encode


def _wire_form(annotation: object) -> _Encode | None:
    """How a field of this type is converted for the wire; None when it goes as it is."""
    if annotation in (str, bytes, int):
        return None
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is types.UnionType:  # X | None
        (inner,) = [a for a in args if a is not type(None)]
        convert_inner = _wire_form(inner)
        if convert_inner is None:
            return None
        return lambda value: None if value is None else convert_inner(value)
    if origin is tuple:  # tuple[X, ...]
        convert_item = _wire_form(args[0])
        if convert_item is None:
            return None  # msgpack packs a tuple as an array
        return lambda value: [convert_item(item) for item in value]
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        return _ENCODERS.get(annotation) or _encoder(annotation)
    raise TypeError(f"no wire form for {annotation!r}")  # a bug in events.py, not bad input


def decode_message(body: bytes | bytearray) -> ev.Message:
    try:
        raw = msgpack.unpackb(body, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises a zoo of types for malformed input
        raise RemoteProtocolError(f"undecodable message: {exc}") from exc
    if not isinstance(raw, dict):
        raise RemoteProtocolError("a message must be a map")
    kind = raw.get("t")
    cls = _WIRE_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise RemoteProtocolError(f"unknown message type {kind!r}")
    assert isinstance(kind, str)
    return typing.cast(ev.Message, _decoder(cls, kind)(raw))


_Check = Callable[[object], object]
_DECODERS: dict[tuple[type[Any], str], Callable[[dict[str, Any]], object]] = {}


def _decoder(cls: type[Any], where: str) -> Callable[[dict[str, Any]], object]:
    """A function checking a wire map against `cls` and building it, compiled once per
    class and position (so error messages name the field without building strings for
    every message)."""
    decoder = _DECODERS.get((cls, where))
    if decoder is not None:
        return decoder
    hints = typing.get_type_hints(cls)
    fields = [
        (f.name, _checker(hints[f.name], f"{where}.{f.name}"), f.default is dataclasses.MISSING)
        for f in dataclasses.fields(cls)
    ]

    def decode(raw: dict[str, Any]) -> object:
        values: dict[str, object] = {}
        for name, check, required in fields:
            if name in raw:
                values[name] = check(raw[name])
            elif required:
                raise RemoteProtocolError(f"{where}: missing field {name!r}")
        return cls(**values)

    _DECODERS[(cls, where)] = decode
    return decode


def _checker(annotation: object, where: str) -> _Check:
    if annotation in (str, bytes, int):
        expected = typing.cast(type, annotation)
        what = "an integer" if expected is int else expected.__name__

        def exactly(value: object) -> object:
            # type(), not isinstance(): a bool is not an integer here.
            if type(value) is not expected:
                raise RemoteProtocolError(f"{where}: expected {what}")
            return value

        return exactly
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is types.UnionType:  # X | None
        (inner,) = [a for a in args if a is not type(None)]
        check_inner = _checker(inner, where)

        def optional(value: object) -> object:
            return None if value is None else check_inner(value)

        return optional
    if origin is tuple:  # tuple[X, ...]
        check_item = _checker(args[0], f"{where}[]")

        def items(value: object) -> object:
            if not isinstance(value, list):
                raise RemoteProtocolError(f"{where}: expected a list")
            return tuple([check_item(item) for item in value])  # a list: no generator

        return items
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        decode = _decoder(annotation, where)

        def nested(value: object) -> object:
            if not isinstance(value, dict):
                raise RemoteProtocolError(f"{where}: expected a map")
            return decode(value)

        return nested
    raise TypeError(f"no wire form for {annotation!r}")  # a bug in events.py, not bad input
