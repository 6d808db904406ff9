"""The Noise channel, two ends pumped in memory."""

from __future__ import annotations

import base64
import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from whatsap2p.errors import LocalProtocolError, RemoteKeyMismatch, RemoteProtocolError
from whatsap2p.protocol import noise
from whatsap2p.protocol.framing import PROTOCOL_VERSION
from whatsap2p.protocol.keys import StaticKey, fingerprint, normalise_fingerprint
from whatsap2p.protocol.noise import COMPACT, SEGMENT, NoiseChannel

ALICE, BOB = StaticKey.generate(), StaticKey.generate()
CAP = 1 << 20


def handshake(
    initiator: NoiseChannel, responder: NoiseChannel
) -> tuple[NoiseChannel, NoiseChannel]:
    """Pump handshake bytes both ways until neither side has anything to say."""
    while (out := initiator.data_to_send()) or (back := responder.data_to_send()):
        if out:
            responder.receive_data(out)
            assert responder.next_body() is None
        else:
            initiator.receive_data(back)
            assert initiator.next_body() is None
    return initiator, responder


def pair(expected: bytes | None = None) -> tuple[NoiseChannel, NoiseChannel]:
    return handshake(
        NoiseChannel(ALICE, initiator=True, max_body=CAP, expected_remote=expected),
        NoiseChannel(BOB, initiator=False, max_body=CAP),
    )


def test_handshake_proves_both_keys() -> None:
    alice, bob = pair(expected=BOB.public)
    assert alice.established
    assert bob.established
    assert alice.remote_key == BOB.public
    assert bob.remote_key == ALICE.public


@pytest.mark.parametrize("size", [0, 1, SEGMENT - 1, SEGMENT, SEGMENT + 1, 3 * SEGMENT + 7, CAP])
def test_bodies_of_any_size_cross_in_segments(size: int) -> None:
    alice, bob = pair()
    body = bytes(i % 251 for i in range(size))
    bob.receive_data(alice.seal(body))
    assert bob.next_body() == body
    alice.receive_data(bob.seal(b"and back"))
    assert alice.next_body() == b"and back"


def test_compact_channels_share_a_bounded_pool_of_ciphers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The directory's channels keep no AES-GCM object of their own: a pool holds those of
    # the most recently used keys, and a channel whose object was dropped builds it again.
    # Bob's end keeps its own objects, so both ends must build them from the same keys.
    pool = noise._POOL  # (compiled, the module's own: a Final cannot be patched)
    monkeypatch.setattr(pool, "size", pool.size)  # put back after the test
    pool.resize(2)
    pairs = [
        handshake(
            NoiseChannel(ALICE, initiator=True, max_body=CAP, suite=COMPACT),
            NoiseChannel(BOB, initiator=False, max_body=CAP),
        )
        for _ in range(3)
    ]
    for round_ in range(3):
        for i, (alice, bob) in enumerate(pairs):
            body = f"round {round_} pair {i}".encode()
            bob.receive_data(alice.seal(body))
            assert bob.next_body() == body
            alice.receive_data(bob.seal(body[::-1]))
            assert alice.next_body() == body[::-1]
            assert len(pool) == 2  # the last pair's two keys: the others' were dropped
    big = bytes(range(256)) * 1000  # several segments, sealed and opened in place
    alice, bob = pairs[0]
    bob.receive_data(alice.seal(big))
    assert bob.next_body() == big


def test_ciphertext_hides_the_body() -> None:
    alice, _ = pair()
    assert b"+5511999990001" not in alice.seal(b"call +5511999990001 at noon")


def test_an_unexpected_key_stops_the_handshake_before_we_identify() -> None:
    other = StaticKey.generate()
    initiator = NoiseChannel(ALICE, initiator=True, max_body=CAP, expected_remote=other.public)
    responder = NoiseChannel(BOB, initiator=False, max_body=CAP)
    responder.receive_data(initiator.data_to_send())
    responder.next_body()
    initiator.receive_data(responder.data_to_send())
    with pytest.raises(RemoteKeyMismatch) as caught:
        initiator.next_body()
    assert caught.value.remote_key == BOB.public
    assert initiator.data_to_send() == b""  # our static key never went out
    assert not initiator.established


def test_fingerprints_are_accepted_as_typed() -> None:
    fp = fingerprint(BOB.public)
    assert normalise_fingerprint(fp.upper()) == fp
    assert normalise_fingerprint(" ".join(fp[i : i + 4] for i in range(0, 64, 4))) == fp
    assert normalise_fingerprint("abc") is None
    channel = NoiseChannel(ALICE, initiator=True, max_body=CAP, expected_fingerprint=fp)
    handshake(channel, NoiseChannel(BOB, initiator=False, max_body=CAP))
    assert channel.established


def test_tampering_is_detected() -> None:
    alice, bob = pair()
    sealed = bytearray(alice.seal(b"pay 10"))
    sealed[-3] ^= 1
    bob.receive_data(bytes(sealed))
    with pytest.raises(RemoteProtocolError, match="failed authentication"):
        bob.next_body()


def test_replayed_messages_fail() -> None:
    alice, bob = pair()
    sealed = alice.seal(b"once")
    bob.receive_data(sealed)
    assert bob.next_body() == b"once"
    bob.receive_data(sealed)
    with pytest.raises(RemoteProtocolError):
        bob.next_body()


def test_body_cap_holds_across_segments() -> None:
    alice = NoiseChannel(ALICE, initiator=True, max_body=CAP)
    bob = NoiseChannel(BOB, initiator=False, max_body=SEGMENT * 2)
    handshake(alice, bob)
    bob.receive_data(alice.seal(b"x" * (SEGMENT * 3)))
    with pytest.raises(RemoteProtocolError, match="exceeds"):
        bob.next_body()


def test_nothing_is_sealed_before_the_handshake() -> None:
    with pytest.raises(LocalProtocolError):
        NoiseChannel(BOB, initiator=False, max_body=CAP).seal(b"too early")


def test_a_plaintext_peer_cannot_talk_to_us() -> None:
    from whatsap2p.protocol.channel import PlainChannel

    bob = NoiseChannel(BOB, initiator=False, max_body=CAP)
    bob.receive_data(PlainChannel(CAP).seal(b"hello, in the clear"))
    with pytest.raises(RemoteProtocolError, match="handshake failed"):
        bob.next_body()


@settings(max_examples=300)
@given(st.binary(max_size=400), st.booleans())
def test_arbitrary_bytes_never_raise_anything_else(data: bytes, established: bool) -> None:
    if established:
        _, bob = pair()
    else:
        bob = NoiseChannel(BOB, initiator=False, max_body=CAP)
    framed = bytes([PROTOCOL_VERSION]) + len(data).to_bytes(4, "big") + data
    bob.receive_data(framed)
    with contextlib.suppress(RemoteProtocolError):
        bob.next_body()


# Found by the handshake fuzzer: an initiator whose ephemeral key is a low-order point
# (here all zeros) made the responder's DH fail while *writing* its answer.
LOW_ORDER_HELLO = (
    bytes([PROTOCOL_VERSION])
    + base64.b64decode(
        "AgAAACAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA///HcEMUowEAtGZvtEYMhPYAAAf+H2iO+HJQAgAAxxdyUAIAAAAAAAAAFw=="
    )[1:]
)  # re-framed for the current protocol version


def test_a_low_order_ephemeral_key_is_refused_cleanly() -> None:
    bob = NoiseChannel(BOB, initiator=False, max_body=CAP)
    bob.receive_data(LOW_ORDER_HELLO)
    with pytest.raises(RemoteProtocolError, match="handshake failed"):
        bob.next_body()
    zeros = NoiseChannel(BOB, initiator=False, max_body=CAP)
    zeros.receive_data(bytes([PROTOCOL_VERSION]) + b"\x00\x00\x00\x20" + bytes(32))
    with pytest.raises(RemoteProtocolError, match="handshake failed"):
        zeros.next_body()
