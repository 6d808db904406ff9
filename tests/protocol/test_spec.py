"""Conformance: byte-exact statements of docs/protocol.md, checked against the program.

Each test does what a third party would, from the document alone: the photo key from
its formula with hashlib, messages written by hand with msgpack, frames packed with
struct, and the secure channel from a Noise library and AES-GCM. Only the other end is
the implementation. A section number in a test's name points at what it checks.
"""

from __future__ import annotations

import hashlib
import math
import random
import struct
import typing
from pathlib import Path
from typing import Any

import msgpack
import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from noise.connection import Keypair, NoiseConnection
from noise.exceptions import NoiseInvalidMessage

from whatsap2p.app.photos import photo_key
from whatsap2p.config import Limits, RateLimits, Timeouts
from whatsap2p.errors import FrameTooLarge, RemoteProtocolError
from whatsap2p.protocol import events as ev
from whatsap2p.protocol.codec import decode_message, encode_message
from whatsap2p.protocol.directory import DirectoryServerConnection
from whatsap2p.protocol.framing import FrameDecoder, encode_frame
from whatsap2p.protocol.keys import StaticKey
from whatsap2p.protocol.noise import NoiseChannel

MiB = 1_048_576
KEY = bytes(range(32))  # a 32-byte public key, as the directory sends it (§5.2)


# --- §6.6 the photo key ------------------------------------------------------------------


def documented_key(data: bytes) -> str:
    """SHA-256(u64be(size) || file[0 : min(size, M)] || tail), tail = file[max(M, size - M)
    : size] when size > M, else empty; lowercase hex."""
    size = len(data)
    tail = data[max(MiB, size - MiB) :] if size > MiB else b""
    return hashlib.sha256(struct.pack(">Q", size) + data[: min(size, MiB)] + tail).hexdigest()


@pytest.mark.parametrize(
    "size",
    [1, 100, MiB - 1, MiB, MiB + 1, 1_500_000, 2 * MiB - 1, 2 * MiB, 2 * MiB + 1, 3_000_000],
)
def test_6_6_photo_key_is_the_documented_formula(tmp_path: Path, size: int) -> None:
    data = random.Random(size).randbytes(size)
    path = tmp_path / "photo.bin"
    path.write_bytes(data)
    assert photo_key(path, size) == documented_key(data)
    if MiB < size < 2 * MiB:
        # "without overlap": taking the last MiB of a file under 2 MiB would hash some
        # of its bytes twice, and give another key
        overlapping = data[:MiB] + data[size - MiB :]
        wrong = hashlib.sha256(struct.pack(">Q", size) + overlapping).hexdigest()
        assert photo_key(path, size) != wrong


@pytest.mark.parametrize(
    ("size", "key"),
    [
        (100, "1a7e01bd1960af9dc35f4cb66b5e254f9d34e952981ead639af179c141a7d731"),
        (1_500_000, "8c52592989d59edd6b8b5c01ed89ffbf9dd75818eb42ccfcc5cd0d0d96e6791a"),
        (3_000_000, "0aa5212c4523ffba074a2fb9e709ca86574ff68a61019ab9949dbcf7ca12db58"),
    ],
)
def test_6_6_photo_key_test_vectors(tmp_path: Path, size: int, key: str) -> None:
    data = bytes(i % 251 for i in range(size))
    path = tmp_path / "photo.bin"
    path.write_bytes(data)
    assert documented_key(data) == key
    assert photo_key(path, size) == key


# --- §4, §5.1, §6.1 messages as MessagePack maps ---------------------------------------

ADDRESS = {"phone": "+5511999990002", "host": "192.0.2.10", "port": 41233, "key": KEY}

#: A valid value of each type the tables name.
SAMPLE: dict[str, Any] = {
    "str": "+5511999990002",
    "int": 7,
    "bin": b"\xff\xd8\xff",
    "[str]": ["+5511999990002", "+5511999990003"],
    "PeerAddress": ADDRESS,
    "[PeerAddress]": [ADDRESS],
    "[RelayAddress]": [{"host": "192.0.2.20", "port": 3478}],
    "GroupInfo": {
        "id": "0123456789abcdef0123456789abcdef",
        "creator": "+5511999990002",
        "members": ["+5511999990002", "+5511999990003"],
        "epoch": 3,
        "change": {"op": "add", "phones": ["+5511999990003"]},
        "salt": b"0123456789abcdef",
    },
}
#: A value of another MessagePack type, which a receiver must refuse.
WRONG: dict[str, Any] = {
    "str": b"not a str",
    "int": True,
    "bin": "not bin",
    "[str]": "+5511999990002",
    "PeerAddress": ["+5511999990002", "192.0.2.10", 41233, KEY],
    "[PeerAddress]": [["+5511999990002", "192.0.2.10", 41233, KEY]],
    "[RelayAddress]": [["192.0.2.20", 3478]],
    "GroupInfo": ["0123456789abcdef0123456789abcdef", "+5511999990002", [], 3],
}

#: The tables of §5.1 and §6.1: every `t`, and its fields with their types; a type
#: ending in "?" is `X | nil` (optional).
DOCUMENTED: dict[str, dict[str, str]] = {
    "register": {"rid": "int", "phone": "str", "port": "int", "host": "str?", "local": "str?"},
    "registered": {"rid": "int", "phone": "str", "host": "str", "port": "int"},
    "lookup": {"rid": "int", "phones": "[str]"},
    "lookup_result": {"rid": "int", "peers": "[PeerAddress]"},
    "watch": {"rid": "int", "phones": "[str]"},
    "watching": {"rid": "int", "peers": "[PeerAddress]"},
    "online": {"rid": "int", "peer": "PeerAddress"},
    "reverse": {"rid": "int", "phone": "str", "token": "bin", "punch": "int?"},
    "reversing": {"rid": "int", "host": "str?", "port": "int?"},
    "dial": {"rid": "int", "peer": "PeerAddress", "token": "bin", "punch": "int?"},
    "relay": {"rid": "int", "phone": "str"},
    "relaying": {"rid": "int", "relays": "[RelayAddress]", "ticket": "bin"},
    "relayed": {"rid": "int", "peer": "PeerAddress", "relays": "[RelayAddress]", "ticket": "bin"},
    "report": {"rid": "int", "route": "str", "token": "bin?"},
    "reported": {"rid": "int"},
    "unregister": {"rid": "int"},
    "unregistered": {"rid": "int"},
    "ping": {"rid": "int"},
    "pong": {"rid": "int"},
    "failure": {"rid": "int", "code": "str", "message": "str"},
    "hello": {"phone": "str"},
    "text": {
        "id": "str",
        "timestamp": "str",
        "body": "str",
        "group": "str?",
        "grp": "GroupInfo?",
    },
    "photo": {
        "id": "str",
        "timestamp": "str",
        "filename": "str",
        "size": "int",
        "key": "str",
        "mime": "str",
        "group": "str?",
        "grp": "GroupInfo?",
    },
    "resume": {"id": "str", "offset": "int"},
    "chunk": {"id": "str", "data": "bin"},
    "photo-end": {"id": "str", "sha256": "str"},
    "ack": {"id": "str"},
    "rejected": {"id": "str", "reason": "str", "code": "str?"},
    "closing": {"reason": "str"},
}


def by_hand(t: str, fields: dict[str, Any]) -> bytes:
    """A body as the document describes it: one map, `t` and the fields, strings as
    str and binary data as bin."""
    packed: bytes = msgpack.packb({"t": t, **fields}, use_bin_type=True)
    return packed


def sample_fields(t: str) -> dict[str, Any]:
    return {name: SAMPLE[kind.rstrip("?")] for name, kind in DOCUMENTED[t].items()}


def test_4_the_tables_name_every_message_type() -> None:
    assert set(DOCUMENTED) == {kind.TYPE for kind in typing.get_args(ev.WireMessage)}


@pytest.mark.parametrize("t", DOCUMENTED)
def test_4_a_message_written_from_its_table_is_read(t: str) -> None:
    message = decode_message(by_hand(t, sample_fields(t)))
    assert t == message.TYPE
    # ... and the program writes the same keys (optional ones too, as nil or a value)
    written = msgpack.unpackb(encode_message(message), raw=False)
    assert set(written) == {"t", *DOCUMENTED[t]}


@pytest.mark.parametrize(
    ("t", "field"),
    [(t, name) for t, fields in DOCUMENTED.items() for name in fields],
)
def test_4_a_field_missing_or_of_another_type_is_a_protocol_error(t: str, field: str) -> None:
    kind = DOCUMENTED[t][field]
    fields = sample_fields(t)
    fields[field] = WRONG[kind.rstrip("?")]
    with pytest.raises(RemoteProtocolError):
        decode_message(by_hand(t, fields))
    del fields[field]
    if kind.endswith("?"):  # optional: absent and nil both mean "none"
        assert decode_message(by_hand(t, fields)) == decode_message(
            by_hand(t, {**fields, field: None})
        )
    else:
        with pytest.raises(RemoteProtocolError):
            decode_message(by_hand(t, fields))


def test_4_unknown_keys_are_ignored_and_order_does_not_matter() -> None:
    fields = {"rid": 3, "future": [1, 2], "phones": ["+5511999990002"]}
    assert decode_message(by_hand("lookup", fields)) == ev.Lookup(3, ("+5511999990002",))
    reordered = msgpack.packb({"phones": [], "rid": 4, "t": "lookup"})
    assert decode_message(reordered) == ev.Lookup(4, ())


def test_4_trailing_bytes_and_unknown_types_are_protocol_errors() -> None:
    with pytest.raises(RemoteProtocolError):
        decode_message(by_hand("ping", {"rid": 1}) + b"\x00")
    with pytest.raises(RemoteProtocolError):
        decode_message(by_hand("launch", {"rid": 1}))


def test_4_the_ping_example_bytes() -> None:
    example = bytes.fromhex("82 a1 74 a4 70 69 6e 67 a3 72 69 64 01")
    assert decode_message(example) == ev.Ping(1)
    assert encode_message(ev.Ping(1)) == example  # (the Note: `t` first, then the fields)


def test_5_2_lookup_result_key_is_32_raw_bytes_in_bin() -> None:
    body = by_hand("lookup_result", {"rid": 7, "peers": [ADDRESS]})
    assert decode_message(body) == ev.LookupResult(
        7, (ev.PeerAddress("+5511999990002", "192.0.2.10", 41233, KEY),)
    )
    watching = decode_message(by_hand("watching", {"rid": 8, "peers": [ADDRESS, ADDRESS]}))
    assert isinstance(watching, ev.Watching)
    assert [peer.key for peer in watching.peers] == [KEY, KEY]
    online = decode_message(by_hand("online", {"rid": 0, "peer": ADDRESS}))
    assert isinstance(online, ev.Online)
    assert online.peer.key == KEY
    for other in (KEY.hex(), list(KEY)):  # not hex, not an array of numbers
        with pytest.raises(RemoteProtocolError):
            decode_message(by_hand("online", {"rid": 0, "peer": {**ADDRESS, "key": other}}))
    # the program writes bin too
    written = msgpack.unpackb(encode_message(ev.Online(0, ev.PeerAddress("+1", "h", 1, KEY))))
    assert written["peer"]["key"] == KEY


def test_5_3_a_request_with_rid_0_or_less_is_a_protocol_error() -> None:
    for rid in (0, -1):
        server = DirectoryServerConnection(now=0)
        with pytest.raises(RemoteProtocolError):
            server.receive_data(encode_frame(by_hand("ping", {"rid": rid}), 65536), now=0)


# --- §2 frames ----------------------------------------------------------------------------


def test_2_frame_header_is_version_5_and_a_u32be_length() -> None:
    assert encode_frame(b"abc", 100) == bytes.fromhex("05 00000003 616263")
    decoder = FrameDecoder(65_536)
    decoder.receive_data(struct.pack(">BI", 5, 65_536))
    assert decoder.next_frame() is None  # a full-size body is waited for
    decoder.receive_data(bytes(65_536) + bytes.fromhex("05 00000000"))
    assert decoder.next_frame() == bytes(65_536)
    assert decoder.next_frame() == b""


def test_2_a_larger_length_is_refused_from_the_header_alone() -> None:
    decoder = FrameDecoder(65_536)
    decoder.receive_data(struct.pack(">BI", 5, 65_537))  # the 5 header bytes, no body
    with pytest.raises(FrameTooLarge):
        decoder.next_frame()


@pytest.mark.parametrize("version", [0, 1, 4, 6, 255])
def test_2_any_other_version_is_refused(version: int) -> None:
    decoder = FrameDecoder(65_536)
    decoder.receive_data(struct.pack(">BI", version, 1) + b"x")
    with pytest.raises(RemoteProtocolError):
        decoder.next_frame()


# --- §3 the secure channel, one end built by hand -----------------------------------------


def frame(body: bytes) -> bytes:
    return struct.pack(">BI", 5, len(body)) + body


def unframe(data: bytes) -> list[bytes]:
    bodies = []
    while data:
        version, length = struct.unpack_from(">BI", data)
        assert version == 5
        bodies.append(data[5 : 5 + length])
        data = data[5 + length :]
    return bodies


class HandInitiator:
    """An initiator as §3 describes it: the Noise library for the handshake, then
    segments sealed and opened with AES-GCM by hand."""

    def __init__(self, prologue: bytes = b"WhatsAp2p/5") -> None:
        private = X25519PrivateKey.generate()
        self.public = private.public_key().public_bytes_raw()
        self.noise = NoiseConnection.from_name(b"Noise_XX_25519_AESGCM_SHA256")
        self.noise.set_as_initiator()
        self.noise.set_keypair_from_private_bytes(
            Keypair.STATIC,
            private.private_bytes(
                serialization.Encoding.Raw,
                serialization.PrivateFormat.Raw,
                serialization.NoEncryption(),
            ),
        )
        self.noise.set_prologue(prologue)
        self.noise.start_handshake()
        # (the library drops its handshake state at the end: kept to read the remote key)
        self.handshake_state = self.noise.noise_protocol.handshake_state
        self.sent = self.received = 0  # the two nonce counters

    def keys(self) -> tuple[bytes, bytes]:
        """k1 (the initiator seals with it) and k2, from Split()."""
        protocol = self.noise.noise_protocol
        return protocol.cipher_state_encrypt.k, protocol.cipher_state_decrypt.k

    def seal(self, body: bytes) -> bytes:
        k1, _ = self.keys()
        count = max(1, math.ceil(len(body) / 65_519))
        out = b""
        for i in range(count):
            segment = body[65_519 * i : 65_519 * (i + 1)]
            flag = b"\x01" if i == count - 1 else b"\x00"
            nonce = bytes(4) + struct.pack(">Q", self.sent)
            self.sent += 1
            out += frame(flag + AESGCM(k1).encrypt(nonce, segment, flag))
        return out

    def open(self, data: bytes) -> bytes:
        _, k2 = self.keys()
        body = b""
        for sealed in unframe(data):
            flag, rest = sealed[:1], sealed[1:]
            assert flag in (b"\x00", b"\x01")
            nonce = bytes(4) + struct.pack(">Q", self.received)
            self.received += 1
            body += AESGCM(k2).decrypt(nonce, rest, flag)
        assert flag == b"\x01"
        return body


def handshake(hand: HandInitiator, responder: NoiseChannel) -> list[int]:
    """The three handshake frames; returns their body sizes."""
    first = frame(hand.noise.write_message())
    responder.receive_data(first)
    assert responder.next_body() is None
    (second,) = unframe(responder.data_to_send())
    hand.noise.read_message(second)
    third = hand.noise.write_message()
    assert hand.noise.handshake_finished
    responder.receive_data(frame(third))
    assert responder.next_body() is None
    return [len(first) - 5, len(second), len(third)]


def responder() -> tuple[StaticKey, NoiseChannel]:
    key = StaticKey.generate()
    return key, NoiseChannel(key, initiator=False, max_body=MiB)


def test_3_2_handshake_with_a_noise_library() -> None:
    hand = HandInitiator()
    key, peer = responder()
    assert handshake(hand, peer) == [32, 96, 64]
    assert peer.established
    assert peer.remote_key == hand.public  # the initiator's static key, proven
    assert bytes(hand.handshake_state.rs.public_bytes) == key.public  # and the responder's


def test_3_2_another_prologue_fails_the_handshake() -> None:
    hand = HandInitiator(prologue=b"WhatsAp2p/4")
    _, peer = responder()
    peer.receive_data(frame(hand.noise.write_message()))
    peer.next_body()
    (second,) = unframe(peer.data_to_send())
    with pytest.raises((InvalidTag, NoiseInvalidMessage)):
        hand.noise.read_message(second)  # the responder's static key does not open


@pytest.mark.parametrize("size", [13, 65_519, 65_520, 70_000, MiB])
def test_3_3_segments_sealed_by_hand_are_opened(size: int) -> None:
    hand = HandInitiator()
    _, peer = responder()
    handshake(hand, peer)
    body = random.Random(size).randbytes(size)
    data = hand.seal(body)
    frames = unframe(data)
    assert len(frames) == max(1, math.ceil(size / 65_519))
    assert all(len(f) == 65_536 for f in frames[:-1])  # every segment but the last is full
    assert [f[0] for f in frames] == [0] * (len(frames) - 1) + [1]
    peer.receive_data(data)
    assert peer.next_body() == body
    peer.receive_data(hand.seal(b"second"))  # the counter went on, one per segment
    assert peer.next_body() == b"second"


def test_3_3_segments_sealed_by_the_program_are_opened_by_hand() -> None:
    hand = HandInitiator()
    _, peer = responder()
    handshake(hand, peer)
    small = peer.seal(b"hi")
    assert small[:6] == bytes.fromhex("05 00000013 01")  # 1 + 2 + 16 bytes, last segment
    assert len(small) == 22 + 2
    assert hand.open(bytes(small)) == b"hi"
    large = random.Random(1).randbytes(100_000)
    assert hand.open(bytes(peer.seal(large))) == large


def test_3_3_the_flag_is_the_associated_data() -> None:
    hand = HandInitiator()
    _, peer = responder()
    handshake(hand, peer)
    k1, _ = hand.keys()
    nonce = bytes(12)
    plain_noise = AESGCM(k1).encrypt(nonce, b"hi", b"")  # Noise's usual empty AD
    peer.receive_data(frame(b"\x01" + plain_noise))
    with pytest.raises(RemoteProtocolError):
        peer.next_body()


# --- §6.6 and §8 numbers --------------------------------------------------------------


def test_6_6_a_full_chunk_fits_the_peer_body_cap_in_16_segments() -> None:
    chunk = Limits().photo_chunk
    assert chunk == 1_047_552
    body = by_hand("chunk", {"id": "x" * 64, "data": bytes(chunk)})  # the longest id
    assert len(body) <= 1_048_576
    assert math.ceil(len(body) / 65_519) == 16


def test_8_documented_defaults() -> None:
    limits, timeouts, rates = Limits(), Timeouts(), RateLimits()
    assert (limits.max_directory_frame, limits.max_peer_frame) == (65_536, 1_048_576)
    assert (limits.max_text_bytes, limits.max_photo_bytes) == (65_536, 67_108_864)
    assert (limits.max_photo_pixels, limits.max_name_chars) == (89_478_485, 128)
    assert (limits.max_lookup_phones, limits.max_phone_chars) == (1024, 32)
    assert (limits.max_peer_connections, limits.max_peer_connections_per_ip) == (512, 64)
    assert (limits.max_links_per_peer, limits.max_photos_writing) == (32, 32)
    assert (limits.max_outbox, limits.max_history) == (100_000, 1_000_000)
    assert (limits.max_group_members, limits.max_groups) == (256, 1000)
    assert (timeouts.connect, timeouts.handshake, timeouts.server_reply) == (5, 5, 10)
    assert (timeouts.heartbeat_interval, timeouts.server_idle) == (10, 25)
    assert (timeouts.register_deadline, timeouts.hello_deadline) == (10, 10)
    assert (timeouts.peer_idle, timeouts.peer_ack, timeouts.write_drain) == (25, 20, 20)
    assert (timeouts.reconnect_first, timeouts.reconnect_max) == (0.1, 2)
    assert (timeouts.outbox_retry_first, timeouts.outbox_retry_max) == (2, 60)
    assert timeouts.partial_keep == 24 * 3600
    assert (rates.lookup_rate, rates.lookup_burst) == (200, 2000)
    assert (rates.ip_lookup_rate, rates.ip_lookup_burst) == (5000, 20_000)
    assert (rates.ip_register_rate, rates.ip_register_burst) == (50, 500)
    assert rates.max_unauthenticated_per_ip == 256
