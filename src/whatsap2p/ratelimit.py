"""Token buckets, time passed in: how the server keeps one client (or one host) from
drowning the rest, and how a module keeps one sender from flooding its person."""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["BucketsByKey", "TokenBucket"]


class TokenBucket:
    """Holds up to `burst` tokens, refilled at `rate` per second. Time is passed in."""

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._last = now

    def take(self, now: float, tokens: float = 1.0) -> bool:
        """Spend `tokens` if there are enough; False (spending nothing) if not."""
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if tokens > self._tokens:
            return False
        self._tokens -= tokens
        return True

    def give(self, tokens: float) -> None:
        """Give back `tokens` taken for what did not happen after all (up to `burst`)."""
        self._tokens = min(self.burst, self._tokens + tokens)


class BucketsByKey:
    """One bucket per key (a source IP), at most `max_keys` remembered: the least
    recently used is forgotten first, so a spray of addresses cannot exhaust memory."""

    def __init__(self, rate: float, burst: float, max_keys: int = 65536) -> None:
        self.rate = rate
        self.burst = burst
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def take(self, key: str, now: float, tokens: float = 1.0) -> bool:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
            if len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket.take(now, tokens)

    def give(self, key: str, tokens: float) -> None:
        """Give back to `key`'s bucket (if it is still remembered)."""
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.give(tokens)
