"""Messages: every type round-trips, and bad input is only ever a RemoteProtocolError."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from whatsap2p.errors import RemoteProtocolError
from whatsap2p.protocol import events as ev
from whatsap2p.protocol.codec import decode_message, encode_message

texts = st.text(max_size=50)
ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)
optional = st.none() | texts
addresses = st.builds(ev.PeerAddress, texts, texts, ints, st.binary(max_size=32))

messages = st.one_of(
    st.builds(ev.Register, ints, texts, ints, optional),
    st.builds(ev.Registered, ints, texts, texts, ints),
    st.builds(ev.Lookup, ints, st.lists(texts, max_size=5).map(tuple)),
    st.builds(ev.LookupResult, ints, st.lists(addresses, max_size=5).map(tuple)),
    st.builds(ev.Watch, ints, st.lists(texts, max_size=5).map(tuple)),
    st.builds(ev.Watching, ints, st.lists(addresses, max_size=3).map(tuple)),
    st.builds(ev.Online, ints, addresses),
    st.builds(ev.Unregister, ints),
    st.builds(ev.Unregistered, ints),
    st.builds(ev.Ping, ints),
    st.builds(ev.Pong, ints),
    st.builds(ev.Failure, ints, texts, texts),
    st.builds(ev.Hello, texts),
    st.builds(ev.Text, texts, texts, texts, optional),
    st.builds(ev.PhotoOffer, texts, texts, texts, ints, texts, texts, optional),
    st.builds(ev.PhotoChunk, texts, st.binary(max_size=100)),
    st.builds(ev.Ack, texts),
    st.builds(ev.Rejected, texts, texts),
    st.builds(ev.Closing, texts),
)


@given(messages)
def test_every_message_round_trips(message: ev.Message) -> None:
    assert decode_message(encode_message(message)) == message


@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_raise_anything_else(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        decode_message(data)


json_like = st.recursive(
    st.none() | st.booleans() | ints | st.floats() | texts | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=20,
)


@given(
    st.sampled_from(["register", "lookup", "lookup_result", "text", "photo", "chunk"]), json_like
)
def test_well_formed_maps_with_wrong_fields_are_refused_cleanly(kind: str, junk: object) -> None:
    body = msgpack.packb({"t": kind, "rid": junk, "id": junk, "phones": junk, "peers": junk})
    with contextlib.suppress(RemoteProtocolError):
        decode_message(body)


def test_missing_and_mistyped_fields_say_which() -> None:
    with pytest.raises(RemoteProtocolError, match=r"missing required field `phone`"):
        decode_message(msgpack.packb({"t": "register", "rid": 1, "port": 5}))
    with pytest.raises(RemoteProtocolError, match=r"Expected `int`, got `bool` - at `\$.port`"):
        decode_message(msgpack.packb({"t": "register", "rid": 1, "phone": "+1", "port": True}))
    peer = {"phone": "+1", "host": "h", "port": 1, "key": "not bytes"}
    with pytest.raises(RemoteProtocolError, match=r"got `str` - at `\$.peer.key`"):
        decode_message(msgpack.packb({"t": "online", "rid": 0, "peer": peer}))
    with pytest.raises(RemoteProtocolError, match=r"Invalid value 'launch' - at `\$.t`"):
        decode_message(msgpack.packb({"t": "launch"}))
    with pytest.raises(RemoteProtocolError, match="undecodable message: 'utf-8' codec"):
        decode_message(b"\x82\xa1t\xa3ack\xa2id\xa1\xff")  # a string that is not UTF-8
    nested = b"\x91" * 100_000 + b"\xc0"  # an unknown field nested too deep
    with pytest.raises(RemoteProtocolError, match="undecodable message"):
        decode_message(b"\x83\xa1t\xa3ack\xa2id\xa1x\xa1z" + nested)


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    body = msgpack.packb({"t": "ack", "id": "m1", "added_later": [1, 2]})
    assert decode_message(body) == ev.Ack("m1")


def test_messages_and_what_a_server_holds_per_user_are_not_tracked_by_the_gc() -> None:
    # A server holds a registration (with its address) per user, by the ten thousand:
    # left tracked, they lengthen every full collection. (The channel's cipher states are
    # fields of the channel, no objects of their own.)
    import gc

    from whatsap2p.server.directory import Registration

    address = ev.PeerAddress("+5511999990001", "127.0.0.1", 4000, bytes(32))
    untracked = [
        ev.LookupResult(1, (address,)),
        ev.Text("m1", "2026-11-27T10:00:00+00:00", "hi"),
        Registration(address, 1),
    ]
    assert not any(gc.is_tracked(value) for value in untracked)
