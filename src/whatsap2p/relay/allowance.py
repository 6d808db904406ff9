"""Bytes per second, time passed in: how a relay keeps one pair, or one source, from
taking all of its bandwidth, by not reading what they send (never by holding it)."""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["Allowance", "Allowances"]


class Allowance:
    """A token bucket charged after the fact: bytes already read are spent in full (the
    balance may go below zero), and the reader waits until it is back at zero. So what
    is held is never more than one read, and the rate is kept on average."""

    __slots__ = ("_balance", "_last", "burst", "rate")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._balance = burst
        self._last = now

    def spend(self, amount: float, now: float) -> float:
        """Charge `amount`; returns the seconds to wait before reading more (0: none)."""
        balance = min(self.burst, self._balance + (now - self._last) * self.rate) - amount
        self._balance = balance
        self._last = now
        return 0.0 if balance >= 0 else -balance / self.rate


class Allowances:
    """One allowance per source, at most `max_keys` remembered: the least recently used
    is forgotten first, so a spray of addresses cannot exhaust memory (one forgotten
    starts again with a full burst)."""

    def __init__(self, rate: float, burst: float, max_keys: int) -> None:
        self.rate = rate
        self.burst = burst
        self._max_keys = max_keys
        self._allowances: OrderedDict[str, Allowance] = OrderedDict()

    def __len__(self) -> int:
        return len(self._allowances)

    def of(self, key: str, now: float) -> Allowance:
        allowance = self._allowances.get(key)
        if allowance is None:
            allowance = self._allowances[key] = Allowance(self.rate, self.burst, now)
            if len(self._allowances) > self._max_keys:
                self._allowances.popitem(last=False)
        else:
            self._allowances.move_to_end(key)
        return allowance
