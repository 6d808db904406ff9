"""The registry of online users and the storage it lives in.

`Directory` is what the service needs from a store; `MemoryDirectory` keeps it in this
process. A registration belongs to the connection that made it (`owner`), so a
connection can only ever remove its own. A shared store also carries requests to connect
back to the server whose connection can push them (`pass_on`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import ClassVar, Literal

import msgspec
from mypy_extensions import mypyc_attr

from whatsap2p.protocol.events import Dial, Failure, PeerAddress, Relayed, Reversing
from whatsap2p.ratelimit import BucketsByKey

__all__ = [
    "Bind",
    "Dialled",
    "Directory",
    "Found",
    "MemoryDirectory",
    "PushDial",
    "Refused",
    "Registration",
    "Spend",
]


class Spend(msgspec.Struct, frozen=True, gc=False):
    """`cost` tokens of token bucket `bucket` of `key` (a source IP), which holds `burst`
    and refills at `rate`/s, spent at `now` (a shared store may use its own clock).
    A msgspec Struct: one is made per request, built in C (cheaper than a named tuple)."""

    bucket: str
    key: str
    rate: float
    burst: float
    cost: float
    now: float


class Registration(msgspec.Struct, frozen=True, gc=False):
    """Holds no container, so it can be in no reference cycle: not tracked by the garbage
    collector (gc=False), whose passes a server's thousands of registrations would lengthen."""

    address: PeerAddress
    owner: int  # the id of the connection that registered


#: What a limited lookup finds: the online ones among the numbers; None if refused.
Found = list[PeerAddress] | None
#: Why a registration was refused (the failure code of its answer); None if published.
Refused = Literal["rate-limited", "number-bound", "number-online"] | None
#: Binds a number to a key on first use; False if another key holds it (the server's
#: `Bindings`, for a directory that does not bind keys itself).
Bind = Callable[[str, bytes], bool]
#: What came of a request to connect back: `Reversing` (rid 0) once the `dial` (or the
#: `relayed`) was pushed to the module asked, with where its server connection comes
#: from; or the `Failure` (rid 0) saying why not (offline, rate-limited, invalid-host).
Dialled = Reversing | Failure
#: Pushes a `dial` (or a `relayed`) to a number's module through its connection to this
#: server, after the checks that need that connection (the server's `push_dial`).
PushDial = Callable[[str, Dial | Relayed], Dialled]


@mypyc_attr(allow_interpreted_subclasses=True)  # (RedisDirectory is not compiled)
class Directory(ABC):
    """What the server needs from a store.

    Each request makes at most one call here (renew, lookup_limited, register_limited,
    unregister), which returns its result, or an awaitable of it when the store answers
    later (it is in another process). The server answers at once what it can and awaits
    only what it must: the in-process directory answers by plain calls, because a
    coroutine each would cost more than the lookup. Any of these calls may return an
    awaitable, whatever the directory.

    A base class, not a Protocol: compiled, the server calls a directory through its
    class's table (a Protocol's methods are looked up by name on every call)."""

    #: register_limited() checks and makes the number-to-key binding itself (a shared
    #: store); otherwise it is given the server's `Bindings` to call.
    binds_keys: ClassVar[bool]

    @abstractmethod
    async def start(self, on_online: Callable[[PeerAddress], None], push_dial: PushDial) -> None:
        """Call `on_online` for every registration from now on, made through this
        server or any other sharing the directory; and `push_dial` for every request to
        connect back that another server passes on to this one (`pass_on`)."""

    @abstractmethod
    async def close(self) -> None:
        """Stop: what is still asked of it fails."""

    @abstractmethod
    def renew(self, phone: str, owner: int, taken: Callable[[], None]) -> Awaitable[None] | None:
        """A heartbeat of `owner`'s registration (now or soon); `taken()` is called if
        another connection took the number over (the server then drops `owner`)."""

    @abstractmethod
    def lookup_limited(self, phones: list[str], spend: Spend) -> Found | Awaitable[Found]:
        """Spend the tokens, then the online ones among `phones`, in one step (one round
        trip to a shared store); None, and nothing looked up, when the bucket has too few.
        The buckets are shared by every server of the directory, so spreading over them
        gains nothing."""

    @abstractmethod
    def register_limited(
        self, address: PeerAddress, owner: int, spend: Spend, bind: Bind | None
    ) -> Refused | Awaitable[Refused]:
        """Spend the tokens, then bind the number (`bind`, unless the directory binds
        keys itself) and publish `address`; None once published, or why not (nothing
        published, nothing bound past the step that refused): the bucket has too few
        tokens, another key holds the number, or another live owner has it online."""

    @abstractmethod
    def unregister(self, phone: str, owner: int) -> bool | Awaitable[bool]:
        """Remove the number if `owner` registered it; True if something was removed."""

    @abstractmethod
    def pass_on(self, phone: str, dial: Dial | Relayed) -> Dialled | Awaitable[Dialled]:
        """Push `dial` to `phone`'s module, which is not connected to this server, through
        the server it is connected to (whose `push_dial` makes the checks that need its
        connection); what came of it, `offline` when no server has it."""

    @abstractmethod
    async def lookup(self, phones: list[str]) -> list[PeerAddress]:
        """The online ones among `phones` (for tests and tools: requests go through
        lookup_limited)."""

    @abstractmethod
    async def count(self) -> int:
        """How many users are online."""


@mypyc_attr(allow_interpreted_subclasses=True)  # (tests make directories of their own)
class MemoryDirectory(Directory):
    """The directory in this process: the calls a request makes are plain calls (a
    subclass may still make any of them a coroutine: the server awaits what it is given)."""

    binds_keys: ClassVar[bool] = False

    def __init__(self) -> None:
        self._online: dict[str, Registration] = {}
        self._buckets: dict[str, BucketsByKey] = {}
        self._on_online: Callable[[PeerAddress], None] | None = None

    def _take(self, spend: Spend) -> bool:
        buckets = self._buckets.get(spend.bucket)
        if buckets is None:
            buckets = self._buckets[spend.bucket] = BucketsByKey(spend.rate, spend.burst)
        return buckets.take(spend.key, spend.now, spend.cost)

    async def start(self, on_online: Callable[[PeerAddress], None], push_dial: PushDial) -> None:
        self._on_online = on_online  # (every module is connected here: nothing to pass on)

    async def close(self) -> None:
        return None

    def renew(self, phone: str, owner: int, taken: Callable[[], None]) -> None:
        current = self._online.get(phone)
        if current is None or current.owner != owner:
            taken()

    def lookup_limited(self, phones: list[str], spend: Spend) -> Found:
        if not self._take(spend):
            return None
        return self._lookup(phones)

    def register_limited(
        self, address: PeerAddress, owner: int, spend: Spend, bind: Bind | None
    ) -> Refused:
        if not self._take(spend):
            return "rate-limited"
        if bind is not None and not bind(address.phone, address.key):
            return "number-bound"
        current = self._online.get(address.phone)
        if current is not None and current.owner != owner:
            return "number-online"
        self._online[address.phone] = Registration(address, owner)
        if self._on_online is not None:
            self._on_online(address)
        return None

    async def unregister(self, phone: str, owner: int) -> bool:
        # A coroutine still: called once a session, so a plain call would gain nothing,
        # and subclasses (the tests') extend it by awaiting it.
        current = self._online.get(phone)
        if current is None or current.owner != owner:
            return False
        del self._online[phone]
        return True

    def pass_on(self, phone: str, dial: Dial | Relayed) -> Dialled:
        return Failure(0, "offline", f"{phone} is not online at this server")

    async def lookup(self, phones: list[str]) -> list[PeerAddress]:
        return self._lookup(phones)

    def _lookup(self, phones: list[str]) -> list[PeerAddress]:
        online, found = self._online, []
        for phone in dict.fromkeys(phones):  # a loop: cheaper than two comprehensions
            registration = online.get(phone)
            if registration is not None:
                found.append(registration.address)
        return found

    async def count(self) -> int:
        return len(self._online)
