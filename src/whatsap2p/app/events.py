"""What the Session tells its UI: messages that arrived, key changes, how a send went."""

from __future__ import annotations

from dataclasses import dataclass, field

from whatsap2p.app.groups import Group
from whatsap2p.app.photos import PhotoFile
from whatsap2p.errors import DeliveryFailed

__all__ = [
    "DeliveryReport",
    "FailedDelivery",
    "GroupChanged",
    "IdentityChanged",
    "PhotoReceived",
    "PresenceChanged",
    "QueuedDelivered",
    "Received",
    "ServerConnectionChanged",
    "SessionEvent",
    "TextReceived",
]


@dataclass(frozen=True, slots=True)
class TextReceived:
    id: str
    sender: str
    name: str | None  # the sender's name in our contacts
    group: str | None  # the group's name (its creator's label)
    timestamp: str  # ISO-8601, as the sender stamped it
    text: str
    group_id: str | None = None  # the group's id (None: a direct message)
    #: The membership change it tells of ({"op", "phones"}); `text` says it in words.
    change: dict[str, object] | None = None


@dataclass(frozen=True, slots=True)
class PhotoReceived:
    id: str
    sender: str
    name: str | None
    group: str | None
    timestamp: str
    photo: PhotoFile
    group_id: str | None = None


Received = TextReceived | PhotoReceived


@dataclass(frozen=True, slots=True)
class IdentityChanged:
    """`phone` proved a key other than the one pinned for it; nothing goes to or comes
    from it until the user trusts the new key."""

    phone: str
    fingerprint: str


@dataclass(frozen=True, slots=True)
class ServerConnectionChanged:
    """The connection to the server was `lost` (we keep trying) or is `restored`
    (registered again)."""

    state: str


@dataclass(frozen=True, slots=True)
class QueuedDelivered:
    """A queued message `id` has now been acknowledged by `phone`; `news`: it was the
    news of a change of a group's members (no message the person wrote)."""

    id: str
    phone: str
    news: bool = False


@dataclass(frozen=True, slots=True)
class PresenceChanged:
    """A number given to `Session.watch_presence` came online (pushed by the server).
    Going offline is not pushed: a UI looks again now and then (`Session.presence`)."""

    phone: str
    online: bool


@dataclass(frozen=True, slots=True)
class GroupChanged:
    """What we know of a group changed: we were added to it (it is new to us), its
    members changed, or we left or were removed (`group` no longer lists us)."""

    group: Group
    #: Who changed it, and how (`{"op", "phones"}`; None: it came with a message of
    #: its creator's that had a newer list of members).
    by: str | None = None
    change: dict[str, object] | None = None


SessionEvent = (
    TextReceived
    | PhotoReceived
    | IdentityChanged
    | ServerConnectionChanged
    | QueuedDelivered
    | PresenceChanged
    | GroupChanged
)


@dataclass(frozen=True, slots=True)
class FailedDelivery:
    """One recipient that was not given a message: `code` is one of
    `errors.DELIVERY_CODES` (stable, for programs), `error` says why in words."""

    phone: str
    code: str
    error: str

    @classmethod
    def of(cls, phone: str, failure: DeliveryFailed) -> FailedDelivery:
        return cls(phone, failure.code, str(failure))


@dataclass(slots=True)
class DeliveryReport:
    """Per recipient: delivered (acknowledged as stored), offline, or failed and why."""

    id: str
    delivered: list[str] = field(default_factory=list)
    offline: list[str] = field(default_factory=list)
    failed: list[FailedDelivery] = field(default_factory=list)
    #: Offline recipients whose copy waits in the outbox (a send with queue=True).
    queued: list[str] = field(default_factory=list)
    #: How the content travelled to each delivered recipient: "direct" (we dialled an
    #: address it published: its LAN address behind the same router, or its public one),
    #: "reverse" (it dialled us, asked through the server); "punched" and "relay" are
    #: kept for the paths still to come.
    routes: dict[str, str] = field(default_factory=dict)
