"""Everything that crosses a WhatsAp2p connection, as frozen dataclasses.

Wire messages are nouns (they are sent by one side and received by the other, like h11's
`Request`); events that only the local state machine produces are past tense.
Each wire message has a `TYPE`, the value of the `t` key in its encoded form.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

__all__ = [
    "Ack",
    "Closing",
    "ConnectionTimedOut",
    "DirectoryMessage",
    "Failure",
    "Hello",
    "Lookup",
    "LookupResult",
    "Message",
    "Online",
    "PeerAddress",
    "PeerMessage",
    "PhotoChunk",
    "PhotoCompleted",
    "PhotoOffer",
    "Ping",
    "Pong",
    "Refused",
    "Register",
    "Registered",
    "Rejected",
    "Resume",
    "Text",
    "Unregister",
    "Unregistered",
    "Watch",
    "Watching",
]


@dataclass(frozen=True, slots=True)
class Message:
    """Base of every wire message."""

    TYPE: ClassVar[str] = ""


# --- directory: user module <-> central server -------------------------------------------


@dataclass(frozen=True, slots=True)
class DirectoryMessage(Message):
    """Requests carry a request id (`rid`) chosen by the client; the answer repeats it."""

    rid: int


@dataclass(frozen=True, slots=True)
class Register(DirectoryMessage):
    """Publish this number at `port`; at `host` if given, else at the IP the server sees."""

    TYPE: ClassVar[str] = "register"
    phone: str
    port: int
    host: str | None = None


@dataclass(frozen=True, slots=True)
class Registered(DirectoryMessage):
    """The address now published for `phone`."""

    TYPE: ClassVar[str] = "registered"
    phone: str
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class Lookup(DirectoryMessage):
    """Which of these numbers are online, and where (one round trip for a whole group)."""

    TYPE: ClassVar[str] = "lookup"
    phones: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PeerAddress:
    """Where an online user's module accepts peers, and the key bound to its number."""

    phone: str
    host: str
    port: int
    key: bytes


@dataclass(frozen=True, slots=True)
class LookupResult(DirectoryMessage):
    """The online ones among the numbers asked for; unknown and offline look the same."""

    TYPE: ClassVar[str] = "lookup_result"
    peers: tuple[PeerAddress, ...]


@dataclass(frozen=True, slots=True)
class Watch(DirectoryMessage):
    """Tell me when any of these numbers comes online (replaces the earlier watch list)."""

    TYPE: ClassVar[str] = "watch"
    phones: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Watching(DirectoryMessage):
    """The watch is in place; `peers` are the watched numbers online right now."""

    TYPE: ClassVar[str] = "watching"
    peers: tuple[PeerAddress, ...]


@dataclass(frozen=True, slots=True)
class Online(DirectoryMessage):
    """Pushed by the server (rid 0): a watched number has just registered."""

    TYPE: ClassVar[str] = "online"
    peer: PeerAddress


@dataclass(frozen=True, slots=True)
class Unregister(DirectoryMessage):
    TYPE: ClassVar[str] = "unregister"


@dataclass(frozen=True, slots=True)
class Unregistered(DirectoryMessage):
    TYPE: ClassVar[str] = "unregistered"


@dataclass(frozen=True, slots=True)
class Ping(DirectoryMessage):
    """Heartbeat: proves the module is alive."""

    TYPE: ClassVar[str] = "ping"


@dataclass(frozen=True, slots=True)
class Pong(DirectoryMessage):
    TYPE: ClassVar[str] = "pong"


@dataclass(frozen=True, slots=True)
class Failure(DirectoryMessage):
    """The server refuses request `rid` (0 when the request could not be read at all).

    Codes: `number-online`, `number-bound` (bound to another key), `rate-limited`,
    `protocol-error`.
    """

    TYPE: ClassVar[str] = "failure"
    code: str
    message: str


# --- peer: user module -> user module ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class PeerMessage(Message):
    """Base of the messages between two user modules."""


@dataclass(frozen=True, slots=True)
class Hello(PeerMessage):
    """First message of a sender: who is sending."""

    TYPE: ClassVar[str] = "hello"
    phone: str


@dataclass(frozen=True, slots=True)
class Text(PeerMessage):
    TYPE: ClassVar[str] = "text"
    id: str
    timestamp: str
    body: str
    group: str | None = None


@dataclass(frozen=True, slots=True)
class PhotoOffer(PeerMessage):
    """A photo of `size` bytes follows as PhotoChunks, then PhotoEnd with the SHA-256 of
    the whole file (the sender hashes while it sends). `key` names the photo for a
    resume: the SHA-256 of its size and of its first and last MiB (see photo_key)."""

    TYPE: ClassVar[str] = "photo"
    id: str
    timestamp: str
    filename: str
    size: int
    key: str
    mime: str
    group: str | None = None


@dataclass(frozen=True, slots=True)
class PhotoChunk(PeerMessage):
    TYPE: ClassVar[str] = "chunk"
    id: str
    data: bytes


@dataclass(frozen=True, slots=True)
class PhotoEnd(PeerMessage):
    """After the last chunk of photo `id`: the SHA-256 of the whole file, to verify."""

    TYPE: ClassVar[str] = "photo-end"
    id: str
    sha256: str


@dataclass(frozen=True, slots=True)
class Resume(PeerMessage):
    """The receiver takes photo `id`: send its bytes from `offset` on (0: all of them;
    more: the receiver kept that much of an earlier, interrupted transfer)."""

    TYPE: ClassVar[str] = "resume"
    id: str
    offset: int


@dataclass(frozen=True, slots=True)
class Ack(PeerMessage):
    """Message `id` is stored at the receiver (a photo: whole and verified)."""

    TYPE: ClassVar[str] = "ack"
    id: str


@dataclass(frozen=True, slots=True)
class Rejected(PeerMessage):
    """Message `id` was not stored, and why."""

    TYPE: ClassVar[str] = "rejected"
    id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Closing(PeerMessage):
    """The receiver refuses the whole connection (e.g. the sender's key is not the one
    bound to the number it claims), and closes it."""

    TYPE: ClassVar[str] = "closing"
    reason: str


# --- local events (never on the wire) ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class PhotoCompleted:
    """All of photo `id` and its digest have been received; the file can be verified."""

    id: str
    sha256: str


@dataclass(frozen=True, slots=True)
class Refused:
    """A peer's message breaks a limit; answer with Rejected (the connection goes on)."""

    id: str
    reason: str


@dataclass(frozen=True, slots=True)
class ConnectionTimedOut:
    """A deadline passed (no hello, no registration, or silence); close the connection."""

    reason: str
