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
        ev.Resume,
        ev.Ack,
        ev.Rejected,
        ev.Closing,
    )
}


_PACKER = msgpack.Packer(use_bin_type=True)


def encode_message(message: ev.Message) -> bytes:
    fields: dict[str, Any] = {"t": message.TYPE}
    for name in _names(type(message)):
        fields[name] = _to_wire(getattr(message, name))
    packed: bytes = _PACKER.pack(fields)
    return packed


def _to_wire(value: object) -> object:
    if isinstance(value, (str, bytes, int)) or value is None:
        return value
    if isinstance(value, tuple):
        return [_to_wire(item) for item in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {name: _to_wire(getattr(value, name)) for name in _names(type(value))}
    return value


_NAMES: dict[type[Any], tuple[str, ...]] = {}


def _names(cls: type[Any]) -> tuple[str, ...]:
    """The field names of a message class, worked out once per class."""
    names = _NAMES.get(cls)
    if names is None:
        names = _NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


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
    return typing.cast(ev.Message, _from_wire(cls, raw, kind))


def _from_wire(cls: type[Any], raw: dict[str, Any], where: object) -> object:
    values: dict[str, object] = {}
    for name, (annotation, required) in _schema(cls).items():
        if name not in raw:
            if required:
                raise RemoteProtocolError(f"{where}: missing field {name!r}")
            continue
        values[name] = _check(raw[name], annotation, f"{where}.{name}")
    return cls(**values)


_SCHEMAS: dict[type[Any], dict[str, tuple[object, bool]]] = {}


def _schema(cls: type[Any]) -> dict[str, tuple[object, bool]]:
    """Field name -> (annotation, required), worked out once per class."""
    schema = _SCHEMAS.get(cls)
    if schema is None:
        hints = typing.get_type_hints(cls)
        schema = {
            f.name: (hints[f.name], f.default is dataclasses.MISSING)
            for f in dataclasses.fields(cls)
        }
        _SCHEMAS[cls] = schema
    return schema


def _check(value: object, annotation: object, where: str) -> object:
    if annotation in (str, bytes):
        if type(value) is not annotation:
            raise RemoteProtocolError(f"{where}: expected {annotation.__name__}")
        return value
    if annotation is int:
        if type(value) is not int:
            raise RemoteProtocolError(f"{where}: expected an integer")
        return value
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is types.UnionType:  # X | None
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _check(value, inner, where)
    if origin is tuple:  # tuple[X, ...]
        if not isinstance(value, list):
            raise RemoteProtocolError(f"{where}: expected a list")
        return tuple(_check(item, args[0], f"{where}[]") for item in value)
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise RemoteProtocolError(f"{where}: expected a map")
        return _from_wire(annotation, value, where)
    raise TypeError(f"no wire form for {annotation!r}")  # a bug in events.py, not bad input
