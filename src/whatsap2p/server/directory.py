"""The registry of online users and the storage it lives in.

`Directory` is what the service needs from a store; `MemoryDirectory` keeps it in this
process. A registration belongs to the connection that made it (`owner`), so a
connection can only ever remove its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, Protocol

import msgspec
from mypy_extensions import mypyc_attr

from whatsap2p.errors import NumberAlreadyOnline
from whatsap2p.protocol.events import PeerAddress
from whatsap2p.server.ratelimit import BucketsByKey

__all__ = ["Directory", "MemoryDirectory", "Registration", "Spend"]


class Spend(msgspec.Struct, frozen=True, gc=False):
    """`cost` tokens of token bucket `bucket` of `key` (a source IP), which holds `burst`
    and refills at `rate`/s, spent at `now` (a shared store may use its own clock).
    A msgspec Struct: one is made per request, built in C (0.15 us; a named tuple 0.42)."""

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


class Directory(Protocol):
    #: Its coroutines never suspend (the directory is in this process): the server then
    #: answers inside the callback that received the request, without a task per request.
    immediate: ClassVar[bool]
    #: register() checks and makes the number-to-key binding itself (a shared store);
    #: otherwise the server's own `Bindings` do.
    binds_keys: ClassVar[bool]

    async def start(self, on_online: Callable[[PeerAddress], None]) -> None:
        """Call `on_online` for every registration from now on, made through this
        server or any other sharing the directory."""

    async def close(self) -> None: ...

    def renew(self, phone: str, owner: int, taken: Callable[[], None]) -> None:
        """A heartbeat of `owner`'s registration (now or soon); `taken()` is called if
        another connection took the number over (the server then drops `owner`)."""

    async def take(self, spend: Spend) -> bool:
        """Spend the tokens; False (spending nothing) if the bucket has too few. Shared
        by every server of the directory, so spreading over them gains nothing."""

    async def lookup_limited(self, phones: list[str], spend: Spend) -> list[PeerAddress] | None:
        """`take` then `lookup` in one step (one round trip to a shared store); None,
        and nothing looked up, when the bucket refuses."""

    async def register(self, address: PeerAddress, owner: int) -> None:
        """Publish `address`; NumberAlreadyOnline if another live owner has the number."""

    async def unregister(self, phone: str, owner: int) -> bool:
        """Remove the number if `owner` registered it; True if something was removed."""

    async def lookup(self, phones: list[str]) -> list[PeerAddress]:
        """The online ones among `phones`."""

    async def count(self) -> int:
        """How many users are online."""


@mypyc_attr(allow_interpreted_subclasses=True)  # (tests make directories of their own)
class MemoryDirectory:
    immediate: ClassVar[bool] = True
    binds_keys: ClassVar[bool] = False

    def __init__(self) -> None:
        self._online: dict[str, Registration] = {}
        self._buckets: dict[str, BucketsByKey] = {}
        self._on_online: Callable[[PeerAddress], None] | None = None

    async def take(self, spend: Spend) -> bool:
        return self._take(spend)

    def _take(self, spend: Spend) -> bool:
        buckets = self._buckets.get(spend.bucket)
        if buckets is None:
            buckets = self._buckets[spend.bucket] = BucketsByKey(spend.rate, spend.burst)
        return buckets.take(spend.key, spend.now, spend.cost)

    async def start(self, on_online: Callable[[PeerAddress], None]) -> None:
        self._on_online = on_online

    async def close(self) -> None:
        return None

    def renew(self, phone: str, owner: int, taken: Callable[[], None]) -> None:
        current = self._online.get(phone)
        if current is None or current.owner != owner:
            taken()

    async def register(self, address: PeerAddress, owner: int) -> None:
        current = self._online.get(address.phone)
        if current is not None and current.owner != owner:
            raise NumberAlreadyOnline(f"{address.phone} is already online")
        self._online[address.phone] = Registration(address, owner)
        if self._on_online is not None:
            self._on_online(address)

    async def unregister(self, phone: str, owner: int) -> bool:
        current = self._online.get(phone)
        if current is None or current.owner != owner:
            return False
        del self._online[phone]
        return True

    async def lookup_limited(self, phones: list[str], spend: Spend) -> list[PeerAddress] | None:
        return self.lookup_limited_now(phones, spend)

    def lookup_limited_now(self, phones: list[str], spend: Spend) -> list[PeerAddress] | None:
        """`lookup_limited` as a plain call: the server calls this one for every lookup
        (a coroutine each cost more than the work). Sync helpers too, for the same reason."""
        if not self._take(spend):
            return None
        return self._lookup(phones)

    async def lookup(self, phones: list[str]) -> list[PeerAddress]:
        return self._lookup(phones)

    def _lookup(self, phones: list[str]) -> list[PeerAddress]:
        online, found = self._online, []
        for phone in dict.fromkeys(phones):  # a loop: two comprehensions cost twice as much
            registration = online.get(phone)
            if registration is not None:
                found.append(registration.address)
        return found

    async def count(self) -> int:
        return len(self._online)
