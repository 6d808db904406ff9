"""Frames: round trips at any split, and a hostile header never makes us allocate."""

from __future__ import annotations

import contextlib
import itertools
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from whatsap2p.errors import FrameTooLarge, LocalProtocolError, RemoteProtocolError
from whatsap2p.protocol.framing import HEADER_SIZE, PROTOCOL_VERSION, FrameDecoder, encode_frame

CAP = 4096


@given(
    bodies=st.lists(st.binary(max_size=CAP), max_size=20),
    cuts=st.lists(st.integers(min_value=0), max_size=30),
    mutable=st.lists(st.booleans(), max_size=30),
)
def test_frames_round_trip_however_the_stream_is_cut(
    bodies: list[bytes], cuts: list[int], mutable: list[bool]
) -> None:
    """Any split, pieces as bytes (kept as they are) or as a bytearray the caller
    overwrites right after handing it over (so it must have been copied)."""
    stream = b"".join(encode_frame(b, CAP) for b in bodies)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    decoder = FrameDecoder(CAP)
    out = []
    for i, (start, end) in enumerate(itertools.pairwise(points)):
        if i < len(mutable) and mutable[i]:
            piece = bytearray(stream[start:end])
            decoder.receive_data(piece)
            piece[:] = bytes(len(piece))
        else:
            decoder.receive_data(stream[start:end])
        while (frame := decoder.next_frame()) is not None:
            out.append(frame)
    assert out == bodies
    assert decoder.buffered == 0


@given(st.binary(max_size=10_000))
def test_arbitrary_bytes_only_ever_raise_remote_protocol_errors(data: bytes) -> None:
    decoder = FrameDecoder(CAP)
    decoder.receive_data(data)
    with contextlib.suppress(RemoteProtocolError):
        while decoder.next_frame() is not None:
            pass


def test_oversized_header_is_refused_before_the_body_arrives() -> None:
    decoder = FrameDecoder(CAP)
    decoder.receive_data(struct.pack(">BI", PROTOCOL_VERSION, 2**32 - 1))
    with pytest.raises(FrameTooLarge, match="exceeds"):
        decoder.next_frame()
    assert decoder.buffered == HEADER_SIZE  # nothing was allocated for the body


def test_frame_at_the_cap_passes_and_one_byte_more_does_not() -> None:
    decoder = FrameDecoder(CAP)
    decoder.receive_data(encode_frame(b"x" * CAP, CAP))
    assert decoder.next_frame() == b"x" * CAP
    with pytest.raises(LocalProtocolError):
        encode_frame(b"x" * (CAP + 1), CAP)


def test_unknown_version_is_refused() -> None:
    decoder = FrameDecoder(CAP)
    decoder.receive_data(struct.pack(">BI", 99, 1) + b"x")
    with pytest.raises(RemoteProtocolError, match="version 99"):
        decoder.next_frame()
