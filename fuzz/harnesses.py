"""Coverage-guided fuzz targets (atheris) for every parser of untrusted input.

Each target feeds arbitrary bytes to one parser, driven as the program drives it (the
state machines are answered as the app answers them, so the fuzzer can get past the
first message). Our own "this input is bad" errors (`EXPECTED`: RemoteProtocolError,
CorruptContactsFile, StoreError, PhotoRejected) are the expected outcome; anything else
escaping, or an assertion on what a parser returned, is a crash: atheris stops with the
input that caused it (fuzz/run.py saves it in fuzz/findings/, and
tests/test_fuzz_findings.py replays it from then on).

Some targets read a leading control byte that chooses how the input is delivered (all
at once or frame by frame) or what the connection has outstanding; `seeds(name)` gives
valid inputs for each, the corpora's starting points.

`fuzz/run.py` imports this module inside `atheris.instrument_imports`, on a copy of the
package's Python source (the mypyc-compiled modules give atheris nothing to instrument);
the tests import it on whatever build is installed.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import io
import json
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from noise.backends.default.diffie_hellmans import ED25519
from noise.backends.default.keypairs import KeyPair25519
from PIL import Image

from whatsap2p.app.contacts import AddressBook
from whatsap2p.app.photos import _identify, safe_file_name
from whatsap2p.app.trust import TrustStore
from whatsap2p.config import Limits
from whatsap2p.errors import (
    CorruptContactsFile,
    PhotoRejected,
    RemoteProtocolError,
    StoreError,
)
from whatsap2p.protocol import events as ev
from whatsap2p.protocol.channel import PlainChannel
from whatsap2p.protocol.codec import encode_message
from whatsap2p.protocol.directory import DirectoryClientConnection, DirectoryServerConnection
from whatsap2p.protocol.framing import PROTOCOL_VERSION, FrameDecoder, encode_frame
from whatsap2p.protocol.keys import StaticKey
from whatsap2p.protocol.noise import NoiseChannel
from whatsap2p.protocol.peer import PeerReceiver, PeerSender, SenderState
from whatsap2p.protocol.relay import PrefaceDecoder, Verified, encode_preface, mint, verify

__all__ = ["DICTIONARIES", "EXPECTED", "HARNESSES", "INSTRUMENT", "seeds"]

#: The errors that say "this input is bad" (CorruptContactsFile is a StoreError).
EXPECTED: tuple[type[Exception], ...] = (RemoteProtocolError, StoreError, PhotoRejected)

_KEY = StaticKey.from_private(bytes(range(32)))
_OTHER = StaticKey.from_private(bytes(range(32, 64)))
_PHONE = "+5511999990001"
_STAMP = "2026-11-27T10:00:00+00:00"
_LIMITS = Limits()
_RELAY = ev.RelayAddress("203.0.113.20", 5560)
_SECRET = bytes(range(32))
_TICKET = mint(_SECRET, _PHONE, "+5511999990002", 1_800_000_000, nonce=bytes(16))
_SCRATCH = Path(tempfile.mkdtemp(prefix="whatsap2p-fuzz-"))
atexit.register(shutil.rmtree, _SCRATCH, ignore_errors=True)
_HEADER = struct.Struct(">BI")
# Pillow imports its format plugins at the first Image.open: import them now, while
# atheris instruments what is imported (fuzz/run.py), so their branches count too.
Image.init()


def _pieces(data: bytes, max_body: int) -> Iterator[bytes]:
    """`data` cut where its frames end (as a network might deliver it): each whole frame,
    then the rest (a partial frame, or everything from a header the decoder refuses)."""
    pos = 0
    while len(data) - pos >= _HEADER.size:
        version, length = _HEADER.unpack_from(data, pos)
        end = pos + _HEADER.size + length
        if version != PROTOCOL_VERSION or length > max_body or end > len(data):
            break
        yield data[pos:end]
        pos = end
    if pos < len(data):
        yield data[pos:]


def _deliveries(data: bytes, max_body: int) -> Iterator[bytes]:
    """The control byte's bit 0: all at once (set), or frame by frame."""
    if not data:
        return
    if data[0] & 1:
        yield data[1:]
    else:
        yield from _pieces(data[1:], max_body)


# --- frames ------------------------------------------------------------------------------


def frames(data: bytes) -> None:
    """FrameDecoder on a byte stream: every frame it returns is exactly one frame of the
    input, re-encoded byte for byte."""
    decoder = FrameDecoder(4096)
    decoder.receive_data(data)
    pos = 0
    with contextlib.suppress(RemoteProtocolError):
        while (frame := decoder.next_frame()) is not None:
            encoded = encode_frame(frame, 4096)
            assert data[pos : pos + len(encoded)] == encoded, "frame is not the input's bytes"
            pos += len(encoded)
    assert decoder.buffered <= len(data) - pos


# --- the directory protocol ---------------------------------------------------------------


def _answer(message: ev.Message) -> ev.Message | None:
    """What the server answers a request it accepted."""
    if isinstance(message, ev.Register):
        return ev.Registered(message.rid, message.phone, message.host or "10.0.0.1", message.port)
    if isinstance(message, ev.Lookup):
        return ev.LookupResult(message.rid, ())
    if isinstance(message, ev.Watch):
        return ev.Watching(message.rid, ())
    if isinstance(message, ev.Ping):
        return ev.Pong(message.rid)
    if isinstance(message, ev.Reverse):
        return ev.Reversing(message.rid)
    if isinstance(message, ev.Relay):
        return ev.Relaying(message.rid, (_RELAY,), _TICKET)
    if isinstance(message, ev.Report):
        return ev.Reported(message.rid)
    if isinstance(message, ev.Unregister):
        return ev.Unregistered(message.rid)
    return None


def directory_server(data: bytes) -> None:
    """The server reading a client's requests, answering each as it comes (a request the
    state machine accepted must be answerable: LocalProtocolError there is a crash)."""
    server = DirectoryServerConnection(now=0, channel=PlainChannel(_LIMITS.max_directory_frame))
    now = 0.0
    with contextlib.suppress(RemoteProtocolError):
        for piece in _deliveries(data, _LIMITS.max_directory_frame):
            now += 1
            server.receive_data(piece, now=now)
            while (event := server.next_event()) is not None:
                answer = _answer(event) if isinstance(event, ev.Message) else None
                if answer is not None:
                    server.send(answer)
    server.handle_timer(now + 1e6)


def directory_client(data: bytes) -> None:
    """The client reading the server's answers and pushes. Control byte: bits 1-5 and 7
    choose the requests outstanding (register 1, lookup 2, watch 3, ping 4, unregister 5,
    relay 6); bit 6 lets 4 s pass after each delivery (heartbeats are due every 10 s once
    registered)."""
    client = DirectoryClientConnection(now=0, channel=PlainChannel(_LIMITS.max_directory_frame))
    control = data[0] if data else 0
    requests: list[ev.Message] = [
        ev.Register(1, _PHONE, 4000),
        ev.Lookup(2, (_PHONE,)),
        ev.Watch(3, (_PHONE,)),
        ev.Ping(4),
        ev.Unregister(5),
    ]
    for bit, request in enumerate(requests, 1):
        if control >> bit & 1:
            client.send(request, now=0)
    if control & 0x80:
        client.send(ev.Relay(6, _PHONE), now=0)
    now = 0.0
    with contextlib.suppress(RemoteProtocolError):
        for piece in _deliveries(data, _LIMITS.max_directory_frame):
            client.receive_data(piece, now=now)
            while client.next_event() is not None:
                pass
            if control & 0x40:
                now += 4
                client.handle_timer(now)
                client.data_to_send()
    client.get_timer()


# --- the peer protocol --------------------------------------------------------------------


def peer_receiver(data: bytes) -> None:
    """The receiver reading a sender's messages, answering each as the app does: a text
    acked, a refusal rejected, a photo offer resumed (from 0, or from half its size with
    control bit 1), a completed photo acked."""
    receiver = PeerReceiver(now=0, channel=PlainChannel(_LIMITS.max_peer_frame))
    control = data[0] if data else 0
    now = 0.0
    with contextlib.suppress(RemoteProtocolError):
        for piece in _deliveries(data, _LIMITS.max_peer_frame):
            now += 1
            receiver.receive_data(piece, now=now)
            while (event := receiver.next_event()) is not None:
                if isinstance(event, ev.Text | ev.PhotoCompleted):
                    receiver.send(ev.Ack(event.id))
                elif isinstance(event, ev.Refused):
                    receiver.send(ev.Rejected(event.id, event.reason))
                elif isinstance(event, ev.PhotoOffer):
                    offset = event.size // 2 if control & 2 else 0
                    receiver.send(ev.Resume(event.id, offset))
    receiver.handle_timer(now + 1e6)


_PHOTO_SIZE = 10


def peer_sender(data: bytes) -> None:
    """The sender reading a receiver's answers. It has said hello and sent texts t1 and
    t2, and (control bit 1) offered photo p1 of 10 bytes; a resume sends the rest of the
    photo and its digest, as the app does (net/link.py)."""
    sender = PeerSender(now=0, channel=PlainChannel(_LIMITS.max_peer_frame))
    control = data[0] if data else 0
    sender.send(ev.Hello(_PHONE), now=0)
    sender.send(ev.Text("t1", _STAMP, "hi"), now=0)
    sender.send(ev.Text("t2", _STAMP, "there", "g"), now=0)
    if control & 2:
        sender.send(_offer("p1"), now=0)
    now = 0.0
    with contextlib.suppress(RemoteProtocolError):
        for piece in _deliveries(data, _LIMITS.max_peer_frame):
            now += 1
            sender.receive_data(piece, now=now)
            while (event := sender.next_event()) is not None:
                # (the app streams only while the photo is still wanted: not once a
                # refusal or a closing came in the same batch)
                if isinstance(event, ev.Resume) and sender.state is SenderState.SENDING_PHOTO:
                    rest = memoryview(b"x" * (_PHOTO_SIZE - event.offset))
                    sender.send(ev.PhotoChunk(event.id, rest), now=now)
                    sender.send(ev.PhotoEnd(event.id, "0" * 64), now=now)
            sender.sent_whole("t1")
    sender.handle_timer(now + 1e6)


def _offer(photo_id: str, size: int = _PHOTO_SIZE) -> ev.PhotoOffer:
    return ev.PhotoOffer(photo_id, _STAMP, "a.png", size, "0" * 64, "image/png")


# --- the Noise handshake and transport ---------------------------------------------------


@contextlib.contextmanager
def _fixed_ephemerals() -> Iterator[None]:
    """Noise's ephemeral keys from a fixed sequence rather than random, so that the same
    input takes the same path (coverage feedback) and a seed can hold a whole handshake."""
    original = ED25519.generate_keypair
    counter = iter(range(1, 1 << 30))

    def generate(self: ED25519) -> KeyPair25519:
        return KeyPair25519.from_private_bytes(bytes([next(counter)]) * 32)

    ED25519.generate_keypair = generate
    try:
        yield
    finally:
        ED25519.generate_keypair = original


def _drain(channel: NoiseChannel) -> None:
    while channel.next_body() is not None:
        pass


def handshake_responder(data: bytes) -> None:
    """The side that accepts a connection (a receiver, the server) reading the initiator's
    handshake messages 1 and 3, then sealed bodies."""
    with _fixed_ephemerals(), contextlib.suppress(RemoteProtocolError):
        responder = NoiseChannel(_KEY, initiator=False, max_body=1 << 20)
        responder.receive_data(data)
        _drain(responder)
        responder.data_to_send()


def handshake_initiator(data: bytes) -> None:
    """The side that connects (a sender, a client) reading the responder's message 2 and
    then sealed bodies; it expects the responder's key (a different one is refused)."""
    with _fixed_ephemerals(), contextlib.suppress(RemoteProtocolError):
        initiator = NoiseChannel(
            _OTHER, initiator=True, max_body=1 << 20, expected_remote=_KEY.public
        )
        initiator.receive_data(data)
        _drain(initiator)
        if initiator.established:
            initiator.seal(b"hello")


_SEGMENT_HEADER = struct.Struct(">BH")


def noise_transport(data: bytes) -> None:
    """The established channel opening sealed segments, which the fuzzer shapes: each is
    a flag byte (0 more, 1 last, others invalid), a 2-byte length and that many plaintext
    bytes, sealed by the harness with the right key and nonce (bit 7 of the flag breaks
    its tag). Bodies reassembled from the segments must be exactly the plaintexts sent."""
    with _fixed_ephemerals():
        initiator = NoiseChannel(_OTHER, initiator=True, max_body=1 << 16)
        responder = NoiseChannel(_KEY, initiator=False, max_body=1 << 16)
        responder.receive_data(initiator.data_to_send())
        _drain(responder)
        initiator.receive_data(responder.data_to_send())
        _drain(initiator)
        responder.receive_data(initiator.data_to_send())
        _drain(responder)
    assert initiator.established
    assert responder.established
    key = _transport_key()
    aead, nonce = AESGCM(key), 0
    pos, wire, sent, current = 0, bytearray(), [], bytearray()
    while len(data) - pos >= _SEGMENT_HEADER.size:
        flag, size = _SEGMENT_HEADER.unpack_from(data, pos)
        pos += _SEGMENT_HEADER.size
        plain = data[pos : pos + size]
        pos += size
        sealed = bytearray(aead.encrypt(struct.pack(">4xQ", nonce), plain, bytes([flag & 0x7F])))
        nonce += 1
        if flag & 0x80:
            sealed[-1] ^= 1
        body = bytes([flag & 0x7F]) + sealed
        wire += struct.pack(">BI", PROTOCOL_VERSION, len(body)) + body
        current += plain
        if flag & 0x7F == 1:
            sent.append(bytes(current))
            current.clear()
    responder.receive_data(wire + data[pos:])
    received = []
    with contextlib.suppress(RemoteProtocolError):
        while (opened := responder.next_body()) is not None:
            received.append(bytes(opened))
    assert received == sent[: len(received)], "a body came out other than it went in"


@functools.cache
def _transport_key() -> bytes:
    """The key the initiator seals with (the channel keeps its keys to itself): the same
    deterministic handshake, run with the noise library alone."""
    from noise.connection import Keypair, NoiseConnection

    from whatsap2p.protocol.noise import NOISE_NAME, PROLOGUE

    with _fixed_ephemerals():
        sides = []
        for initiator, static in ((True, _OTHER), (False, _KEY)):
            noise = NoiseConnection.from_name(NOISE_NAME)
            if initiator:
                noise.set_as_initiator()
            else:
                noise.set_as_responder()
            noise.set_keypair_from_private_bytes(Keypair.STATIC, static.private)
            noise.set_prologue(PROLOGUE)
            noise.start_handshake()
            sides.append(noise)
        initiator_side, responder_side = sides
        responder_side.read_message(initiator_side.write_message())
        initiator_side.read_message(responder_side.write_message())
        responder_side.read_message(initiator_side.write_message())
    key: bytes = initiator_side.noise_protocol.cipher_state_encrypt.k
    return key


# --- local files ---------------------------------------------------------------------------


def contacts(data: bytes) -> None:
    """contacts.json as AddressBook.load reads it (a person may have edited it); what
    it loaded can be resolved."""
    path = _SCRATCH / "contacts.json"
    path.write_bytes(data)
    with contextlib.suppress(CorruptContactsFile):
        book = AddressBook.load(path)
        for contact in book.contacts():
            assert book.resolve(contact.name).phones == (contact.phone,)
        for group in book.groups():
            assert book.group(group.id) == group


def trust(data: bytes) -> None:
    """trust.json as TrustStore.load reads it: every number it pins has a 32-byte key."""
    path = _SCRATCH / "trust.json"
    path.write_bytes(data)
    with contextlib.suppress(StoreError):
        store = TrustStore.load(path)
        store.pinned(_PHONE)
        store.fingerprint_of(_PHONE)


_MIMES = ("image/jpeg", "image/png", "image/gif", "image/webp")


def photo(data: bytes) -> None:
    """A received photo's checks: its file name as the sender gave it (byte 0: the
    announced type; bytes 1-2: the name's length in bytes, UTF-8; the receiver takes up
    to 128 characters) made safe, which must be a plain file name we can create (and its
    "name (9999).ext" variant, for a taken name); the rest, the photo's bytes, identified
    as an image (Pillow) or refused."""
    if len(data) < 3:
        return
    mime = _MIMES[data[0] % len(_MIMES)]
    end = 3 + int.from_bytes(data[1:3], "big")
    name = data[3:end].decode("utf-8", "replace")[: _LIMITS.max_name_chars]
    safe = safe_file_name(name, mime)
    assert "/" not in safe, safe
    assert "\x00" not in safe, safe
    assert not safe.startswith("."), safe
    stem, suffix = Path(safe).stem, Path(safe).suffix
    for candidate in (safe, f"{stem} (9999){suffix}"):
        created = _SCRATCH / candidate
        created.unlink(missing_ok=True)  # (left by an input that crashed after making it)
        with created.open("xb"):  # a name the file system refuses is a crash
            pass
        created.unlink()
    image = _SCRATCH / "photo.part"
    image.write_bytes(data[end:])
    with contextlib.suppress(PhotoRejected):
        assert _identify(image, _LIMITS) in _MIMES


# --- a relay's preface ---------------------------------------------------------------------


def relay_preface(data: bytes) -> None:
    """A relay reading a module's preface as it comes (control byte: bit 0, all at once or
    a byte at a time), then verifying the token it holds: a token, or one of our
    refusals; a verified one is the one the directory minted."""
    decoder = PrefaceDecoder()
    pieces = (
        [data[1:]] if data[:1] and data[0] & 1 else [data[i : i + 1] for i in range(1, len(data))]
    )
    token = None
    with contextlib.suppress(RemoteProtocolError):
        for piece in pieces:
            token = decoder.receive_data(piece) or token
        if token is not None:
            assert 0 < len(token) <= 512
            verified = verify(_SECRET, token, 1_800_000_000 - 30)
            assert isinstance(verified, Verified)
            assert token == _TICKET


HARNESSES: dict[str, Callable[[bytes], None]] = {
    "frames": frames,
    "directory_server": directory_server,
    "directory_client": directory_client,
    "peer_receiver": peer_receiver,
    "peer_sender": peer_sender,
    "handshake_responder": handshake_responder,
    "handshake_initiator": handshake_initiator,
    "noise_transport": noise_transport,
    "contacts": contacts,
    "trust": trust,
    "photo": photo,
    "relay_preface": relay_preface,
}

#: The packages atheris instruments for each harness (besides whatsap2p): the pure-Python
#: libraries whose branches the input reaches.
INSTRUMENT: dict[str, tuple[str, ...]] = {
    "handshake_responder": ("noise",),
    "handshake_initiator": ("noise",),
    "contacts": ("phonenumbers",),
    "photo": ("PIL",),
}

#: libFuzzer dictionaries (fuzz/dicts/): tokens the mutations splice into inputs.
DICTIONARIES: dict[str, str] = {
    "directory_server": "directory.dict",
    "directory_client": "directory.dict",
    "peer_receiver": "peer.dict",
    "peer_sender": "peer.dict",
    "contacts": "json.dict",
    "trust": "json.dict",
    "photo": "photo.dict",
}


# --- seeds ---------------------------------------------------------------------------------


def _sealed(*messages: ev.Message) -> bytes:
    return b"".join(encode_frame(encode_message(m), 1 << 20) for m in messages)


def _image(fmt: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (4, 3), (200, 30, 90)).save(out, fmt)
    return out.getvalue()


def _handshake_messages() -> tuple[bytes, bytes, bytes, bytes]:
    """A whole deterministic handshake as the harnesses' peers see it: message 1, 2, 3
    (with a sealed "hello" after it), and a sealed body from the responder."""
    with _fixed_ephemerals():
        initiator = NoiseChannel(_OTHER, initiator=True, max_body=1 << 20)
        responder = NoiseChannel(_KEY, initiator=False, max_body=1 << 20)
        first = initiator.data_to_send()
        responder.receive_data(first)
        _drain(responder)
        second = responder.data_to_send()
        initiator.receive_data(second)
        _drain(initiator)
        third = initiator.data_to_send() + bytes(initiator.seal(b"hello"))
        responder.receive_data(third)
        assert responder.next_body() == b"hello"
        answer = bytes(responder.seal(b"welcome" * 10))
    return first, second, third, answer


def seeds(name: str) -> list[bytes]:
    """Valid inputs to start each corpus from, so the fuzzer begins deep in the parser.
    Deterministic: the same files every run."""
    if name == "frames":
        return [encode_frame(b"hello", 4096) * 2, encode_frame(b"", 4096)]
    if name == "relay_preface":
        preface = encode_preface(_TICKET)
        return [b"\x01" + preface, b"\x00" + preface, b"\x01" + preface[:9] + bytes(89)]
    if name == "directory_server":
        session = _sealed(
            ev.Ping(1),
            ev.Register(2, _PHONE, 4000, "10.0.0.1"),
            ev.Lookup(3, (_PHONE, "+5511999990002")),
            ev.Watch(4, (_PHONE,)),
            ev.Ping(5),
            ev.Reverse(6, "+5511999990002", bytes(16)),
            ev.Report(7, "punched", bytes(16)),
            ev.Relay(8, "+5511999990002"),
            ev.Unregister(9),
        )
        behind = ev.Register(1, _PHONE, 4000, None, "10.1.0.2")
        return [
            b"\x00" + session,
            b"\x01" + _sealed(ev.Register(1, _PHONE, 4000)),
            b"\x00" + _sealed(behind),
        ]
    if name == "directory_client":
        peer = ev.PeerAddress(_PHONE, "10.0.0.1", 4000, _KEY.public)
        answers = _sealed(
            ev.Registered(1, _PHONE, "10.0.0.1", 4000),
            ev.LookupResult(2, (peer,)),
            ev.Online(0, peer),
            ev.Watching(3, (peer,)),
            ev.Pong(4),
            ev.Failure(0, "rate-limited", "slow down"),
            ev.Dial(
                0, ev.PeerAddress(_PHONE, "203.0.113.7", 4000, _KEY.public, "10.1.0.2"), bytes(16)
            ),
            ev.Relayed(0, peer, (_RELAY,), _TICKET),
        )
        heartbeat = _sealed(ev.Registered(1, _PHONE, "10.0.0.1", 4000), ev.Pong(2), ev.Pong(2))
        return [
            bytes([0b0011110]) + answers,
            bytes([0b0100010]) + _sealed(ev.Unregistered(5)),
            bytes([0b1000010]) + heartbeat,
            bytes([0b0000011]) + _sealed(ev.Failure(1, "number-online", "taken")),
            bytes([0b10000010])
            + _sealed(
                ev.Registered(1, _PHONE, "10.0.0.1", 4000), ev.Relaying(6, (_RELAY,), _TICKET)
            ),
        ]
    if name == "peer_receiver":
        photo = _offer("p1", 6)
        session = _sealed(
            ev.Hello(_PHONE),
            ev.Text("m1", _STAMP, "hi", "g"),
            photo,
            ev.PhotoChunk("p1", memoryview(b"abc")),
            ev.PhotoChunk("p1", memoryview(b"def")),
            ev.PhotoEnd("p1", hashlib.sha256(b"abcdef").hexdigest()),
            ev.Text("m2", "yesterday", "bad stamp"),
        )
        resumed = _sealed(
            ev.Hello(_PHONE),
            photo,
            ev.PhotoChunk("p1", memoryview(b"def")),
            ev.PhotoEnd("p1", "0" * 64),
        )
        return [b"\x00" + session, b"\x02" + resumed, b"\x01" + session]
    if name == "peer_sender":
        return [
            b"\x00" + _sealed(ev.Ack("t1"), ev.Rejected("t2", "no")),
            b"\x02" + _sealed(ev.Resume("p1", 4), ev.Ack("t1"), ev.Ack("p1")),
            b"\x02" + _sealed(ev.Ack("p1"), ev.Closing("bye")),
            b"\x03" + _sealed(ev.Resume("p1", 0), ev.Rejected("p1", "bad photo")),
        ]
    first, second, third, answer = _handshake_messages()
    if name == "handshake_responder":
        return [first, first + third]
    if name == "handshake_initiator":
        return [second, second + answer]
    if name == "noise_transport":
        return [
            _SEGMENT_HEADER.pack(1, 5) + b"hello",
            _SEGMENT_HEADER.pack(0, 3) + b"abc" + _SEGMENT_HEADER.pack(1, 3) + b"def",
            _SEGMENT_HEADER.pack(0x81, 2) + b"hi",
        ]
    if name == "contacts":
        book = {
            "version": 1,
            "contacts": {"alice": _PHONE, "bob": "(11) 99999-0002"},
            "groups": {"g": [_PHONE, "+5511999990002"]},
        }
        return [json.dumps(book).encode(), b'{"version": 1}']
    if name == "trust":
        store = {"version": 1, "keys": {_PHONE: _KEY.public.hex()}}
        return [json.dumps(store).encode()]
    if name == "photo":
        return [
            bytes([mime]) + len(label).to_bytes(2, "big") + label + _image(fmt)
            for mime, (label, fmt) in enumerate(
                [(b"a.jpg", "JPEG"), (b"../b.PNG", "PNG"), (b"c d", "GIF"), (b"\xc3\xa9", "WEBP")]
            )
        ]
    raise KeyError(name)
