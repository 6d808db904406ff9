"""Every limit and timeout in one place, passed to the objects that enforce them."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Limits", "MiB", "Timeouts"]

KiB = 1024
MiB = 1024 * KiB


@dataclass(frozen=True, slots=True)
class Limits:
    """Sizes that bound what a peer or a client can make us hold in memory or on disk."""

    #: Largest frame body accepted from the server connection (checked before allocating).
    max_directory_frame: int = 64 * KiB
    #: Largest frame body accepted from a peer; photo chunks are smaller than this.
    max_peer_frame: int = 1 * MiB
    #: Size of the photo chunks we send.
    photo_chunk: int = 256 * KiB
    #: Largest photo accepted or sent.
    max_photo_bytes: int = 64 * MiB
    #: Largest decoded image (width x height); guards viewers against decompression bombs.
    max_photo_pixels: int = 89_478_485  # Pillow's own decompression-bomb threshold
    #: Longest text message, in UTF-8 bytes.
    max_text_bytes: int = 64 * KiB
    #: Longest group name, contact name or photo file name, in characters.
    max_name_chars: int = 128
    #: Most phone numbers in one lookup.
    max_lookup_phones: int = 1024
    #: Longest phone number string accepted on the wire (E.164 is at most 16).
    max_phone_chars: int = 32


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds. Each one stops a dead or frozen party from holding anything forever."""

    #: Opening a TCP connection (to the server or to a peer).
    connect: float = 5.0
    #: Waiting for the server to answer a request.
    server_reply: float = 10.0
    #: Interval between heartbeats sent to the server.
    heartbeat_interval: float = 10.0
    #: Server side: a connection that sends nothing for this long is dropped (and unregistered).
    server_idle: float = 25.0
    #: Server side: a connection must register within this time.
    register_deadline: float = 10.0
    #: Peer side: the sender must say hello within this time.
    hello_deadline: float = 10.0
    #: Peer side: a connection silent for this long is closed.
    peer_idle: float = 30.0
    #: A write that cannot drain for this long means the other side is frozen.
    write_drain: float = 15.0
    #: Sender side: waiting for the acknowledgement after the last byte was sent.
    peer_ack: float = 30.0
