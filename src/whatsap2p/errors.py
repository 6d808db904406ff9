"""The exceptions of WhatsAp2p, written for the person who will read them.

    WhatsAp2pError
    ├── ProtocolError                 a party broke the wire protocol
    │   ├── LocalProtocolError        we were about to (a bug on our side)
    │   └── RemoteProtocolError       the other side did (bad bytes, wrong order)
    │       ├── FrameTooLarge
    │       ├── RemoteKeyMismatch     its key is not the one we expected
    │       └── TokenRefused          a relay's token it will not take (protocol/relay.py):
    │           ├── TokenForged       not minted with its secret, or malformed
    │           └── TokenExpired      past its expiry
    ├── InvalidInput                  a request we refuse; JSON-RPC -32602
    │   ├── InvalidPhoneNumber
    │   ├── UnknownTarget             no such contact or group
    │   ├── UnknownMessage            no such message in that conversation
    │   ├── NameConflict              the name is already a contact or a group
    │   ├── AmbiguousTarget           a name that several groups share
    │   └── PhotoRejected             missing, unreadable, not an image, too large
    ├── StoreError                    a local file we cannot use
    │   └── CorruptContactsFile
    ├── IncomingRefused               we refuse a peer's message for now; `code` tells it
    │   ├── SenderThrottled           "rate-limited": over its sender's limits
    │   ├── NoRoom                    "no-room": no room for it on our disk
    │   └── NotMember                 "not-member": not a member of that group, as we know it
    ├── MessageRefused                we will never store a peer's message (e.g. a group
    │                                 change that only the group's creator may make)
    ├── CannotListen                  the address to accept peers on is taken or invalid
    ├── DirectoryError                the central server said no or went away
    │   ├── ServerUnreachable
    │   ├── NumberAlreadyOnline
    │   ├── NumberBound               the number belongs to another key
    │   ├── ServerKeyMismatch         the server is not the one we were told to trust
    │   ├── RateLimited
    │   └── ServerRefused
    │       ├── StoreUnavailable      its directory store fails, for now
    │       └── NoRelay               it names no relay (none configured)
    └── DeliveryFailed                one peer was not given a message; `code` says why:
        ├── PeerUnreachable           "unreachable": no connection to its module
        │   └── LinkClosed            a kept connection was found closed (sent again)
        ├── PeerTimedOut              "timeout": it did not connect, answer or read in time
        ├── PeerRefused               "refused": it refused the whole connection (`closing`)
        ├── PeerIdentityChanged       "identity-changed": not the key pinned for the number
        ├── DeliveryRejected          "rejected": it read the message and will not store it
        ├── PeerThrottled             "rate-limited": over the receiver's limits for us
        ├── PeerFull                  "no-room": the receiver has no room for it now
        ├── PeerNotMember             "not-member": the receiver does not count us (or the
        │                             recipient) as a member of the message's group
        ├── PeerProtocolError         "protocol": it broke the peer protocol
        ├── Unconfirmed               "unconfirmed": it was sent, no answer came back
        └── RecipientOffline          "offline": not online at the server

A DeliveryFailed's `code` is stable (scripts read it in a `send` result's `failed`
entries, the UIs choose what to show by it); its text is for people and may change.
Retrying helps with "unreachable", "timeout", "refused" and "unconfirmed" (the receiver
recognises a message it already has by its id), and later with "rate-limited",
"no-room" and "not-member" (a new member hears of its group from the creator); it
cannot with "identity-changed" (the user must `trust` the new key first)
or "rejected".
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "DELIVERY_CODES",
    "REJECTIONS",
    "AmbiguousTarget",
    "CannotListen",
    "CorruptContactsFile",
    "DeliveryFailed",
    "DeliveryRejected",
    "DirectoryError",
    "FrameTooLarge",
    "IncomingRefused",
    "InvalidInput",
    "InvalidPhoneNumber",
    "LinkClosed",
    "LocalProtocolError",
    "MessageRefused",
    "NameConflict",
    "NoRelay",
    "NoRoom",
    "NotMember",
    "NumberAlreadyOnline",
    "NumberBound",
    "PeerFull",
    "PeerIdentityChanged",
    "PeerNotMember",
    "PeerProtocolError",
    "PeerRefused",
    "PeerThrottled",
    "PeerTimedOut",
    "PeerUnreachable",
    "PhotoRejected",
    "ProtocolError",
    "RateLimited",
    "RecipientOffline",
    "RemoteKeyMismatch",
    "RemoteProtocolError",
    "SenderThrottled",
    "ServerKeyMismatch",
    "ServerRefused",
    "ServerUnreachable",
    "StoreError",
    "StoreUnavailable",
    "Unconfirmed",
    "UnknownMessage",
    "UnknownTarget",
    "WhatsAp2pError",
]


class WhatsAp2pError(Exception):
    """Base of every error this program raises on purpose."""


class ProtocolError(WhatsAp2pError):
    """A party broke the wire protocol."""


class LocalProtocolError(ProtocolError):
    """We tried to send something the protocol does not allow in this state."""


class RemoteProtocolError(ProtocolError):
    """The other side sent bytes or messages the protocol does not allow."""


class FrameTooLarge(RemoteProtocolError):
    """A frame header announced more bytes than we accept."""


class RemoteKeyMismatch(RemoteProtocolError):
    """The other side proved a key, but not the one we expected of it."""

    def __init__(self, message: str, remote_key: bytes) -> None:
        super().__init__(message)
        self.remote_key = remote_key


class InvalidInput(WhatsAp2pError):
    """A request that cannot be carried out as given."""


class InvalidPhoneNumber(InvalidInput):
    """Not a phone number we can normalise to E.164."""


class UnknownTarget(InvalidInput):
    """Not a contact, a group, or a phone number."""


class UnknownMessage(InvalidInput):
    """No message with that id in the conversation asked about (for a page before it)."""


class NameConflict(InvalidInput):
    """A contact and a group may not share a name."""


class AmbiguousTarget(UnknownTarget):
    """A name that several groups share: give the group's id (the message lists them)."""


class PhotoRejected(InvalidInput):
    """The photo cannot be sent (or was not accepted)."""


class StoreError(WhatsAp2pError):
    """A file in the data dir cannot be read or written."""


class CorruptContactsFile(StoreError):
    """The contacts file exists but is not one we wrote; it is left untouched."""


class IncomingRefused(WhatsAp2pError):
    """We will not store a peer's message now; `code` goes to its sender with `rejected`
    (docs/protocol.md §6.7), who may try again later."""

    code: ClassVar[str]


class SenderThrottled(IncomingRefused):
    """The sender is over its limits (incoming messages or photo bytes per second)."""

    code = "rate-limited"


class NoRoom(IncomingRefused):
    """No room for the message: the sender's or everyone's share of arriving photos is
    taken, or the disk would be (too) full."""

    code = "no-room"


class NotMember(IncomingRefused):
    """The message claims a group whose members, as we know them, do not include its
    sender (or a group we do not know, from someone other than its creator: a new
    member hears of its group from the creator first, so the sender may try later)."""

    code = "not-member"


class MessageRefused(WhatsAp2pError):
    """A peer's message we will never store (answered `rejected` without a code)."""


class CannotListen(WhatsAp2pError):
    """The module cannot accept peers on the address it was given."""


class DirectoryError(WhatsAp2pError):
    """The central server refused a request or cannot be reached."""


class ServerUnreachable(DirectoryError):
    """No connection to the central server."""


class NumberAlreadyOnline(DirectoryError):
    """Another module is already registered with this number."""


class NumberBound(DirectoryError):
    """The number is bound to another key at the server."""


class ServerKeyMismatch(DirectoryError):
    """The server proved a key other than the one given with --server-key."""


class RateLimited(DirectoryError):
    """The server refuses because we asked too much too fast."""


class ServerRefused(DirectoryError):
    """The server answered a request with an error."""


class StoreUnavailable(ServerRefused):
    """The server cannot use its directory store for now (a shared store failing over):
    a module waits it out."""


class NoRelay(ServerRefused):
    """The server names no relay to meet a peer at (none is configured)."""


class DeliveryFailed(WhatsAp2pError):
    """A message could not be handed to one peer; `code` says why, the text in words."""

    code: ClassVar[str] = "unreachable"


class PeerUnreachable(DeliveryFailed):
    """No connection to the peer's module: refused, reset, no route, or another module at
    the address the server gave."""

    code = "unreachable"


class LinkClosed(PeerUnreachable):
    """A connection kept from an earlier send was found closed before this message went
    out on it (the sender tries once more on a new one)."""


class PeerTimedOut(DeliveryFailed):
    """The peer did not connect, complete the handshake, answer or read in time, before
    the message could have reached it. `late`: how long after it was due the deadline
    was seen (much later: our own process or machine was frozen or suspended)."""

    code = "timeout"
    late: float = 0.0


class PeerRefused(DeliveryFailed):
    """The peer refused the whole connection (e.g. it could not check our key)."""

    code = "refused"


class PeerIdentityChanged(DeliveryFailed):
    """The number proved a key other than the one pinned for it: nothing was sent."""

    code = "identity-changed"


class DeliveryRejected(DeliveryFailed):
    """The peer received the message and refused to store it (retrying will not help)."""

    code = "rejected"


class PeerThrottled(DeliveryFailed):
    """The peer refused the message for now: we sent it more than its limits for us
    (stricter when we are not its contact). Retrying later helps."""

    code = "rate-limited"


class PeerFull(DeliveryFailed):
    """The peer has no room for the message now (its disk, or its share for arriving
    photos). Retrying later may help."""

    code = "no-room"


class PeerNotMember(DeliveryFailed):
    """The recipient does not count us as a member of the message's group (yet: it may
    not have heard of the change that added us), or no longer counts itself as one."""

    code = "not-member"


class PeerProtocolError(DeliveryFailed):
    """The peer broke the peer protocol."""

    code = "protocol"


class Unconfirmed(DeliveryFailed):
    """The message went out, but no acknowledgement came back: it may have arrived."""

    code = "unconfirmed"


class RecipientOffline(DeliveryFailed):
    """The recipient is not online at the server."""

    code = "offline"


#: Every code a DeliveryFailed may carry (documented in the README and docs/jsonrpc.md).
DELIVERY_CODES: tuple[str, ...] = (
    "unreachable",
    "timeout",
    "refused",
    "identity-changed",
    "rejected",
    "rate-limited",
    "no-room",
    "not-member",
    "protocol",
    "unconfirmed",
    "offline",
)

#: What a `rejected` answer's `code` means to its sender (an unknown or absent code:
#: DeliveryRejected, final).
REJECTIONS: dict[str, type[DeliveryFailed]] = {
    PeerThrottled.code: PeerThrottled,
    PeerFull.code: PeerFull,
    PeerNotMember.code: PeerNotMember,
}
