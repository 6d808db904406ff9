"""The exceptions of WhatsAp2p, written for the person who will read them.

    WhatsAp2pError
    ├── ProtocolError                 a party broke the wire protocol
    │   ├── LocalProtocolError        we were about to (a bug on our side)
    │   └── RemoteProtocolError       the other side did (bad bytes, wrong order)
    │       ├── FrameTooLarge
    │       └── RemoteKeyMismatch     its key is not the one we expected
    ├── InvalidInput                  a request we refuse; JSON-RPC -32602
    │   ├── InvalidPhoneNumber
    │   ├── UnknownTarget             no such contact or group
    │   ├── NameConflict              the name is already a contact or a group
    │   └── PhotoRejected             missing, unreadable, not an image, too large
    ├── StoreError                    a local file we cannot use
    │   └── CorruptContactsFile
    ├── CannotListen                  the address to accept peers on is taken or invalid
    ├── DirectoryError                the central server said no or went away
    │   ├── ServerUnreachable
    │   ├── NumberAlreadyOnline
    │   ├── NumberBound               the number belongs to another key
    │   ├── ServerKeyMismatch         the server is not the one we were told to trust
    │   ├── RateLimited
    │   └── ServerRefused
    └── DeliveryFailed                one peer could not be given a message
        └── DeliveryRefused           the peer answered that it will not store it

Lower-layer exceptions (OSError, msgpack, Pillow) are re-raised as these with `from exc`,
and `ui/cli.py` is the one place where they become exit codes.
"""

from __future__ import annotations

__all__ = [
    "CannotListen",
    "CorruptContactsFile",
    "DeliveryFailed",
    "DeliveryRefused",
    "DirectoryError",
    "FrameTooLarge",
    "InvalidInput",
    "InvalidPhoneNumber",
    "LocalProtocolError",
    "NameConflict",
    "NumberAlreadyOnline",
    "NumberBound",
    "PhotoRejected",
    "ProtocolError",
    "RateLimited",
    "RemoteKeyMismatch",
    "RemoteProtocolError",
    "ServerKeyMismatch",
    "ServerRefused",
    "ServerUnreachable",
    "StoreError",
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


class NameConflict(InvalidInput):
    """A contact and a group may not share a name."""


class PhotoRejected(InvalidInput):
    """The photo cannot be sent (or was not accepted)."""


class StoreError(WhatsAp2pError):
    """A file in the data dir cannot be read or written."""


class CorruptContactsFile(StoreError):
    """The contacts file exists but is not one we wrote; it is left untouched."""


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


class DeliveryFailed(WhatsAp2pError):
    """A message could not be handed to one peer; the text says why."""


class LinkClosed(DeliveryFailed):
    """The connection to the peer was found closed (reset, or ended before an answer)."""


class DeliveryRefused(DeliveryFailed):
    """The peer received the message and refused to store it (retrying will not help)."""
