"""Everything that crosses a WhatsAp2p connection, as frozen value types.

Wire messages are nouns (they are sent by one side and received by the other, like h11's
`Request`); events that only the local state machine produces are past tense.
Wire messages are msgspec Structs (frozen, slotted, compared by value, like a frozen
dataclass) because msgspec encodes and validates them in C: MessagePack maps whose `t`
key names the type (its `TYPE`, the Struct's tag), decoded straight into the right class
with every field's type checked, in C rather than in Python.
They hold only strings, numbers, bytes and tuples of each other, so they can form no
reference cycle: the garbage collector does not track them (`gc=False`), which keeps
its passes over a server's many connections short. Local events are frozen dataclasses.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import ClassVar

import msgspec

__all__ = [
    "GROUP_OPS",
    "ROUTES",
    "Ack",
    "Closing",
    "ConnectionIdle",
    "ConnectionTimedOut",
    "DirectoryMessage",
    "Failure",
    "GroupChange",
    "GroupInfo",
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
    "Relay",
    "RelayAddress",
    "Relayed",
    "Relaying",
    "Report",
    "Reported",
    "Resume",
    "Text",
    "Unregister",
    "Unregistered",
    "Watch",
    "Watching",
    "WireMessage",
]


class Message(msgspec.Struct, frozen=True, gc=False, tag_field="t"):
    """Base of every wire message."""

    #: The value of its `t` key on the wire: its msgspec tag (set below for each type).
    TYPE: ClassVar[str] = ""


# --- directory: user module <-> central server -------------------------------------------


class DirectoryMessage(Message, frozen=True):
    """Requests carry a request id (`rid`) chosen by the client; the answer repeats it."""

    rid: int


class Register(DirectoryMessage, frozen=True, tag="register"):
    """Publish this number at `port`; at `host` if given, else at the IP the server sees.
    `local`: the module's own LAN address (behind a router), where peers behind the same
    router reach it, at `port`."""

    phone: str
    port: int
    host: str | None = None
    local: str | None = None


class Registered(DirectoryMessage, frozen=True, tag="registered"):
    """The address now published for `phone`."""

    phone: str
    host: str
    port: int


class Lookup(DirectoryMessage, frozen=True, tag="lookup"):
    """Which of these numbers are online, and where (one round trip for a whole group)."""

    phones: tuple[str, ...]


class PeerAddress(msgspec.Struct, frozen=True, gc=False):
    """Where an online user's module accepts peers, and the key bound to its number;
    `local`: its LAN address (at `port`), given only to a module the server sees behind
    the same public address (the same router), which tries it first; `nat`: given to
    others instead, it says the module sits behind a router at `host` (a dial there
    most likely gets nowhere: ask it to connect back at once)."""

    phone: str
    host: str
    port: int
    key: bytes
    local: str | None = None
    nat: bool = False


class LookupResult(DirectoryMessage, frozen=True, tag="lookup_result"):
    """The online ones among the numbers asked for; unknown and offline look the same."""

    peers: tuple[PeerAddress, ...]


class Watch(DirectoryMessage, frozen=True, tag="watch"):
    """Tell me when any of these numbers comes online (replaces the earlier watch list)."""

    phones: tuple[str, ...]


class Watching(DirectoryMessage, frozen=True, tag="watching"):
    """The watch is in place; `peers` are the watched numbers online right now."""

    peers: tuple[PeerAddress, ...]


class Online(DirectoryMessage, frozen=True, tag="online"):
    """Pushed by the server (rid 0): a watched number has just registered."""

    peer: PeerAddress


class Reverse(DirectoryMessage, frozen=True, tag="reverse"):
    """Ask `phone`'s module to connect to us (we cannot reach it: a router keeps it
    out), opening with `token` so that we know the connection for ours; `punch`: the
    port we connect to it from meanwhile, to punch a hole through both routers."""

    phone: str
    token: bytes
    punch: int | None = None


class Reversing(DirectoryMessage, frozen=True, tag="reversing"):
    """The request to connect was passed on to the module; `host` and `port`: where the
    server sees that module's connection come from (its router's mapping of its port),
    to punch a hole towards at the same moment as it does towards us."""

    host: str | None = None
    port: int | None = None


class Dial(DirectoryMessage, frozen=True, tag="dial"):
    """Pushed by the server (rid 0): `peer` asks to be connected to (it cannot reach us);
    open the connection with `token`. `peer.host` is the address the server sees `peer`
    at, never one it merely claims; `punch`: the port `peer` punches from, to connect to
    at the same moment (from the port we listen on)."""

    peer: PeerAddress
    token: bytes
    punch: int | None = None


class RelayAddress(msgspec.Struct, frozen=True, gc=False):
    """Where a relay (`whatsap2p relay`) accepts modules."""

    host: str
    port: int


class Relay(DirectoryMessage, frozen=True, tag="relay"):
    """No direct way to `phone`'s module works: introduce the two of us at a relay. The
    server gives both (it pushes `relayed`, and answers `relaying`) the same relays and a
    ticket that they accept for this pair, for a short while."""

    phone: str


class Relaying(DirectoryMessage, frozen=True, tag="relaying"):
    """`phone`'s module was told: meet it at one of `relays`, with `ticket`."""

    relays: tuple[RelayAddress, ...]
    ticket: bytes


class Relayed(DirectoryMessage, frozen=True, tag="relayed"):
    """Pushed by the server (rid 0): `peer` cannot reach us by any direct way; meet it at
    one of `relays`, with `ticket`, and take its messages there."""

    peer: PeerAddress
    relays: tuple[RelayAddress, ...]
    ticket: bytes


#: How a module came to be connected to a peer (`Report.route`): at its LAN address,
#: at its published one, on a connection it opened back, through a punched hole, through
#: a relay; or not at all.
ROUTES = ("lan", "direct", "reverse", "punched", "relay", "none")


class Report(DirectoryMessage, frozen=True, tag="report"):
    """How a connection to a peer was made (`route`, one of ROUTES), for the operator's
    counters; `token`: that of the `reverse` this attempt asked for, if any."""

    route: str
    token: bytes | None = None


class Reported(DirectoryMessage, frozen=True, tag="reported"):
    """Counted."""


class Unregister(DirectoryMessage, frozen=True, tag="unregister"):
    """Take this connection's number offline (the connection is done)."""


class Unregistered(DirectoryMessage, frozen=True, tag="unregistered"):
    """The number is offline."""


class Ping(DirectoryMessage, frozen=True, tag="ping"):
    """Heartbeat: proves the module is alive."""


class Pong(DirectoryMessage, frozen=True, tag="pong"):
    """The server is alive too."""


class Failure(DirectoryMessage, frozen=True, tag="failure"):
    """The server refuses request `rid` (0 when the request could not be read at all).

    Codes: `number-online`, `number-bound` (bound to another key), `rate-limited`,
    `protocol-error`.
    """

    code: str
    message: str


# --- peer: user module -> user module ---------------------------------------------------


class PeerMessage(Message, frozen=True):
    """Base of the messages between two user modules."""


class Hello(PeerMessage, frozen=True, tag="hello"):
    """First message of a sender: who is sending."""

    phone: str


#: What a membership change does (`GroupChange.op`): the creator makes the group (with
#: `phones` its first members), adds or removes `phones`, or confirms that `phones` left;
#: any member leaves it (its sender).
GROUP_OPS = ("create", "add", "remove", "leave", "left")


class GroupChange(msgspec.Struct, frozen=True, gc=False):
    """A change of a group's members, carried by the text that tells its members of it."""

    op: str
    phones: tuple[str, ...] = ()


class GroupInfo(msgspec.Struct, frozen=True, gc=False):
    """The shared group a message belongs to (docs/protocol.md §6.12): its id (the hash
    of its creator's number and `salt`, 16 random bytes), its creator, and its members
    and their version (`epoch`, which only the creator's changes raise) as the sender
    knows them; `change`: the message tells of a membership change. The group's name is
    the message's `group`, a label only."""

    id: str
    creator: str
    members: tuple[str, ...]
    epoch: int
    change: GroupChange | None = None
    salt: bytes = b""


class Text(PeerMessage, frozen=True, tag="text"):
    id: str
    timestamp: str
    body: str
    group: str | None = None
    grp: GroupInfo | None = None


class PhotoOffer(PeerMessage, frozen=True, tag="photo"):
    """A photo of `size` bytes follows as PhotoChunks, then PhotoEnd with the SHA-256 of
    the whole file (the sender hashes while it sends). `key` names the photo for a
    resume: the SHA-256 of its size and of its first and last MiB (see photo_key)."""

    id: str
    timestamp: str
    filename: str
    size: int
    key: str
    mime: str
    group: str | None = None
    grp: GroupInfo | None = None


class PhotoChunk(PeerMessage, frozen=True, tag="chunk"):
    id: str
    #: Decoded as a view into the message body received, not a copy of it (a photo moves
    #: in chunks of 1 MiB, and each copy is an allocation the size of the chunk).
    data: memoryview


class PhotoEnd(PeerMessage, frozen=True, tag="photo-end"):
    """After the last chunk of photo `id`: the SHA-256 of the whole file, to verify."""

    id: str
    sha256: str


class Resume(PeerMessage, frozen=True, tag="resume"):
    """The receiver takes photo `id`: send its bytes from `offset` on (0: all of them;
    more: the receiver kept that much of an earlier, interrupted transfer)."""

    id: str
    offset: int


class Ack(PeerMessage, frozen=True, tag="ack"):
    """Message `id` is stored at the receiver (a photo: whole and verified)."""

    id: str


class Rejected(PeerMessage, frozen=True, tag="rejected"):
    """Message `id` was not stored, and why: `reason` for people, `code` (optional) for
    the sender's program: "rate-limited" or "no-room" (try again later)."""

    id: str
    reason: str
    code: str | None = None


class Closing(PeerMessage, frozen=True, tag="closing"):
    """The receiver refuses the whole connection (e.g. the sender's key is not the one
    bound to the number it claims), and closes it."""

    reason: str


WireMessage = (
    Register
    | Registered
    | Lookup
    | LookupResult
    | Watch
    | Watching
    | Online
    | Reverse
    | Reversing
    | Dial
    | Report
    | Reported
    | Relay
    | Relaying
    | Relayed
    | Unregister
    | Unregistered
    | Ping
    | Pong
    | Failure
    | Hello
    | Text
    | PhotoOffer
    | PhotoChunk
    | PhotoEnd
    | Resume
    | Ack
    | Rejected
    | Closing
)
for _type in typing.get_args(WireMessage):
    _type.TYPE = _type.__struct_config__.tag


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


@dataclass(frozen=True, slots=True)
class ConnectionIdle:
    """Nothing was outstanding on a sender's connection for the time it is kept: close
    it (gracefully: it failed nothing)."""
