"""Coverage-guided fuzz targets (atheris) for every parser of untrusted input.

Each target feeds arbitrary bytes to one parser. Our own "this input is bad" errors
(RemoteProtocolError, CorruptContactsFile) are the expected outcome; anything else
escaping is a crash, and atheris stops with the input that caused it.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Callable
from pathlib import Path

from whatsap2p.app.contacts import AddressBook
from whatsap2p.errors import CorruptContactsFile, RemoteProtocolError
from whatsap2p.protocol import events as ev
from whatsap2p.protocol.channel import PlainChannel
from whatsap2p.protocol.codec import encode_message
from whatsap2p.protocol.directory import DirectoryServerConnection
from whatsap2p.protocol.framing import FrameDecoder, encode_frame
from whatsap2p.protocol.keys import StaticKey
from whatsap2p.protocol.noise import NoiseChannel
from whatsap2p.protocol.peer import PeerReceiver

__all__ = ["HARNESSES", "seeds"]

_KEY = StaticKey.from_private(bytes(range(32)))
_PHONE = "+5511999990001"
_SCRATCH = Path(tempfile.mkdtemp(prefix="whatsap2p-fuzz-"))


def frames(data: bytes) -> None:
    decoder = FrameDecoder(4096)
    decoder.receive_data(data)
    with contextlib.suppress(RemoteProtocolError):
        while decoder.next_frame() is not None:
            pass


def directory(data: bytes) -> None:
    server = DirectoryServerConnection(now=0, channel=PlainChannel(65536))
    with contextlib.suppress(RemoteProtocolError):
        server.receive_data(data, now=0)
        while server.next_event() is not None:
            pass


def peer(data: bytes) -> None:
    receiver = PeerReceiver(now=0, channel=PlainChannel(1 << 20))
    with contextlib.suppress(RemoteProtocolError):
        receiver.receive_data(data, now=0)
        while receiver.next_event() is not None:
            pass


def handshake(data: bytes) -> None:
    responder = NoiseChannel(_KEY, initiator=False, max_body=1 << 20)
    responder.receive_data(data)
    with contextlib.suppress(RemoteProtocolError):
        while responder.next_body() is not None:
            pass


def contacts(data: bytes) -> None:
    path = _SCRATCH / "contacts.json"
    path.write_bytes(data)
    with contextlib.suppress(CorruptContactsFile):
        AddressBook.load(path)


HARNESSES: dict[str, Callable[[bytes], None]] = {
    "frames": frames,
    "directory": directory,
    "peer": peer,
    "handshake": handshake,
    "contacts": contacts,
}


def seeds(name: str) -> list[bytes]:
    """Valid inputs to start each corpus from, so the fuzzer begins deep in the parser."""
    channel = PlainChannel(1 << 20)

    def seal(body: bytes) -> bytes:
        return bytes(channel.seal(body))

    if name == "frames":
        return [encode_frame(b"hello", 4096) * 2, encode_frame(b"", 4096)]
    if name == "directory":
        return [
            seal(encode_message(ev.Register(1, _PHONE, 4000, "10.0.0.1")))
            + seal(encode_message(ev.Ping(2))),
            seal(encode_message(ev.Register(1, _PHONE, 4000))),
        ]
    if name == "peer":
        return [
            seal(encode_message(ev.Hello(_PHONE)))
            + seal(encode_message(ev.Text("m1", "2026-11-27T10:00:00+00:00", "hi", "g")))
            + seal(
                encode_message(
                    ev.PhotoOffer(
                        "p1", "2026-11-27T10:00:00+00:00", "a.png", 3, "0" * 64, "image/png"
                    )
                )
            )
            + seal(encode_message(ev.PhotoChunk("p1", memoryview(b"abc"))))
            + seal(encode_message(ev.PhotoEnd("p1", "ba7816bf" * 8)))
        ]
    if name == "handshake":
        initiator = NoiseChannel(StaticKey.generate(), initiator=True, max_body=1 << 20)
        return [initiator.data_to_send()]
    if name == "contacts":
        book = {"version": 1, "contacts": {"alice": _PHONE}, "groups": {"g": [_PHONE]}}
        return [json.dumps(book).encode()]
    raise KeyError(name)
