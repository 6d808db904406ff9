"""Relay tokens and the preface, sans-IO: what the directory mints, the relay verifies, and
nothing else does (docs/protocol.md §11)."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from whatsap2p.errors import RemoteProtocolError
from whatsap2p.protocol.relay import (
    MAGIC,
    MAX_TOKEN,
    TOKEN_SIZE,
    PrefaceDecoder,
    Status,
    TokenExpired,
    TokenForged,
    TokenRefused,
    encode_preface,
    mint,
    pair_of,
    verify,
)

SECRET = bytes(range(32))
ALICE, BOB = "+5511999990001", "+5511999990002"
NOW = 1_800_000_000.0
NONCE = bytes(range(100, 116))
CAROL = "+5511999990003"


def test_a_token_verifies_and_says_its_expiry_nonce_and_pair() -> None:
    token = mint(SECRET, ALICE, BOB, NOW, ttl=60, nonce=NONCE)
    assert len(token) == TOKEN_SIZE == 89
    verified = verify(SECRET, token, NOW + 59)
    assert verified.expiry == NOW + 60
    assert verified.nonce == NONCE
    assert verified.pair == pair_of(SECRET, ALICE, BOB) == pair_of(SECRET, BOB, ALICE)


def test_a_token_built_by_hand_from_the_documented_layout_verifies() -> None:
    """docs/protocol.md §11.1, step by step: what a directory written from the document
    alone would mint."""
    k_pair = hmac.digest(SECRET, b"whatsap2p relay pair v1", hashlib.sha256)
    k_mac = hmac.digest(SECRET, b"whatsap2p relay token v1", hashlib.sha256)
    numbers = sorted([BOB.encode(), ALICE.encode()])
    pair = hmac.digest(
        k_pair, b"".join(struct.pack(">H", len(n)) + n for n in numbers), hashlib.sha256
    )
    fields = bytes([1]) + struct.pack(">Q", int(NOW) + 60) + NONCE + pair
    token = fields + hmac.digest(k_mac, fields, hashlib.sha256)
    assert token == mint(SECRET, BOB, ALICE, NOW, ttl=60, nonce=NONCE)
    assert verify(SECRET, token, NOW).pair == pair


def test_a_token_shows_no_number_and_only_its_pair_depends_on_them() -> None:
    one = mint(SECRET, ALICE, BOB, NOW, nonce=NONCE)
    other = mint(SECRET, ALICE, CAROL, NOW, nonce=NONCE)
    assert one[:25] == other[:25]  # version, expiry, nonce: the same
    assert one[25:57] != other[25:57]  # the pair's keyed hash: not
    for phone in (ALICE, BOB):
        for shown in (phone, phone[1:], phone[-8:]):
            assert shown.encode() not in one
        assert int(phone[1:]).to_bytes(8, "big").lstrip(b"\0") not in one
    # Without the secret, the pair cannot be computed from the numbers.
    assert pair_of(bytes(32), ALICE, BOB) != pair_of(SECRET, ALICE, BOB)


def test_a_token_of_another_secret_is_forged() -> None:
    token = mint(bytes(32), ALICE, BOB, NOW)
    with pytest.raises(TokenForged, match="MAC"):
        verify(SECRET, token, NOW)


def test_any_changed_bit_makes_a_token_forged() -> None:
    token = mint(SECRET, ALICE, BOB, NOW)
    for index, bit in itertools.product(range(len(token)), range(8)):
        changed = bytearray(token)
        changed[index] ^= 1 << bit
        with pytest.raises(TokenForged):
            verify(SECRET, bytes(changed), NOW)


@pytest.mark.parametrize("size", [0, 1, TOKEN_SIZE - 1, TOKEN_SIZE + 1, MAX_TOKEN])
def test_a_token_of_another_size_is_forged(size: int) -> None:
    token = (mint(SECRET, ALICE, BOB, NOW) * 10)[:size]
    with pytest.raises(TokenForged, match="bytes"):
        verify(SECRET, token, NOW)


def test_a_genuine_token_of_an_unknown_version_is_forged() -> None:
    k_mac = hmac.digest(SECRET, b"whatsap2p relay token v1", hashlib.sha256)
    fields = bytes([2]) + mint(SECRET, ALICE, BOB, NOW)[1:57]
    token = fields + hmac.digest(k_mac, fields, hashlib.sha256)
    with pytest.raises(TokenForged, match="version 2"):
        verify(SECRET, token, NOW)


def test_a_token_expires_after_its_expiry_plus_the_clock_skew() -> None:
    token = mint(SECRET, ALICE, BOB, NOW, ttl=60)
    assert verify(SECRET, token, NOW + 90, skew=30)  # the last second it is taken
    with pytest.raises(TokenExpired) as refused:
        verify(SECRET, token, NOW + 90.5, skew=30)
    assert refused.value.status == Status.EXPIRED
    with pytest.raises(TokenExpired):
        verify(SECRET, token, NOW + 61, skew=0)


def test_a_token_expiring_too_far_ahead_is_refused() -> None:
    """A directory's clock far ahead, or a long ttl: the relay would have to remember the
    nonce that long."""
    token = mint(SECRET, ALICE, BOB, NOW, ttl=3600)
    with pytest.raises(TokenForged, match="too far ahead"):
        verify(SECRET, token, NOW, skew=30, ahead=600)
    assert verify(SECRET, token, NOW + 3000, skew=30, ahead=600)


def test_refusals_carry_their_status_byte() -> None:
    assert TokenForged("x").status == Status.FORGED
    assert TokenExpired("x").status == Status.EXPIRED
    assert [int(s) for s in Status] == [0, 1, 2, 3, 4, 5]


def test_a_short_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        mint(bytes(31), ALICE, BOB, NOW)
    with pytest.raises(ValueError, match="at least 32 bytes"):
        verify(bytes(16), mint(SECRET, ALICE, BOB, NOW), NOW)


def test_nonces_are_random() -> None:
    tokens = {verify(SECRET, mint(SECRET, ALICE, BOB, NOW), NOW).nonce for _ in range(100)}
    assert len(tokens) == 100


@given(st.binary(max_size=2 * TOKEN_SIZE))
def test_arbitrary_bytes_are_refused_as_tokens_never_crash(data: bytes) -> None:
    with pytest.raises(TokenRefused):
        verify(SECRET, data, NOW)


# --- the preface ----------------------------------------------------------------------------


@given(
    token=st.binary(min_size=1, max_size=MAX_TOKEN),
    cuts=st.lists(st.integers(min_value=0), max_size=10),
)
def test_a_preface_is_read_however_it_is_cut(token: bytes, cuts: list[int]) -> None:
    preface = encode_preface(token)
    points = sorted({c % (len(preface) + 1) for c in cuts} | {0, len(preface)})
    decoder = PrefaceDecoder()
    results = [decoder.receive_data(preface[a:b]) for a, b in itertools.pairwise(points)]
    assert results[-1] == token
    assert all(result is None for result in results[:-1])


def test_the_preface_is_the_magic_a_length_and_the_token() -> None:
    token = mint(SECRET, ALICE, BOB, NOW)
    assert encode_preface(token) == b"WA2Rly\x01\x00\x59" + token
    assert MAGIC == b"WA2Rly\x01"


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n",
        b"\x05\x00\x00\x00\x30",  # a peer frame: a module that meant to reach a module
        b"WA2Prev\x05",  # a connection-back preface
        b"WA2Rly\x02",  # another relay version
        b"W",
    ],
)
def test_anything_but_a_preface_is_refused_at_its_first_wrong_byte(data: bytes) -> None:
    decoder = PrefaceDecoder()
    if data == b"W":
        assert decoder.receive_data(data) is None  # a prefix of the magic: wait for more
        with pytest.raises(RemoteProtocolError, match="not a relay preface"):
            decoder.receive_data(b"X")
        return
    with pytest.raises(RemoteProtocolError, match="not a relay preface"):
        decoder.receive_data(data)


@pytest.mark.parametrize("length", [0, MAX_TOKEN + 1, 65535])
def test_a_token_length_out_of_range_is_refused(length: int) -> None:
    with pytest.raises(RemoteProtocolError, match="relay token of"):
        PrefaceDecoder().receive_data(MAGIC + struct.pack(">H", length))


def test_bytes_after_the_preface_are_refused_in_the_same_read_or_a_later_one() -> None:
    preface = encode_preface(mint(SECRET, ALICE, BOB, NOW))
    with pytest.raises(RemoteProtocolError, match="after the relay preface"):
        PrefaceDecoder().receive_data(preface + b"\x05")
    decoder = PrefaceDecoder()
    assert decoder.receive_data(preface) is not None
    with pytest.raises(RemoteProtocolError, match="after the relay preface"):
        decoder.receive_data(b"\x05")


def test_the_decoder_never_holds_more_than_a_preface() -> None:
    decoder = PrefaceDecoder()
    decoder.receive_data(MAGIC + struct.pack(">H", MAX_TOKEN))
    with pytest.raises(RemoteProtocolError):
        decoder.receive_data(bytes(10 * 1024 * 1024))
    assert len(decoder._buffer) == len(MAGIC) + 2 + MAX_TOKEN


@given(st.lists(st.binary(max_size=600), max_size=5))
def test_arbitrary_bytes_never_crash_the_decoder(pieces: list[bytes]) -> None:
    decoder = PrefaceDecoder()
    try:
        for piece in pieces:
            decoder.receive_data(piece)
    except RemoteProtocolError:
        pass
    assert len(decoder._buffer) <= len(MAGIC) + 2 + MAX_TOKEN
