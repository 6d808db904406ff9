"""Who waits for whom, and what each source may hold: the relay's pairing, sans-IO (the
halves are plain objects, time is passed in)."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from whatsap2p.protocol.relay import Status, Verified
from whatsap2p.relay.allowance import Allowance, Allowances
from whatsap2p.relay.limits import RelayLimits
from whatsap2p.relay.pairing import Admitted, Joined, Pairing, Refused, Waiting, source_of

NOW = 1_800_000_000.0
PAIR = b"p" * 32


class Half:
    """A connection, as the pairing sees it: any object."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


def token(nonce: bytes | None = None, expiry: float = NOW + 60, pair: bytes = PAIR) -> Verified:
    return Verified(int(expiry), nonce or os.urandom(16), pair)


def connect(pairing: Pairing[Half], name: str, source: str = "192.0.2.1") -> Half:
    half = Half(name)
    assert pairing.connected(half, source) == Admitted()
    return half


def test_the_second_half_with_the_nonce_joins_the_first() -> None:
    pairing: Pairing[Half] = Pairing(RelayLimits())
    first, second = connect(pairing, "first"), connect(pairing, "second", "198.51.100.7")
    assert pairing.prefacing == 2
    shared = token()
    assert pairing.presented(first, shared, NOW) == Waiting()
    assert (pairing.prefacing, pairing.waiting, pairing.sessions) == (1, 1, 0)
    assert pairing.presented(second, shared, NOW) == Joined(first)
    assert (pairing.prefacing, pairing.waiting, pairing.sessions) == (0, 0, 1)
    pairing.gone(first)
    assert pairing.sessions == 1  # until both halves are gone
    pairing.gone(second)
    assert pairing.sessions == 0


def test_a_third_presentation_of_a_nonce_is_a_replay() -> None:
    pairing: Pairing[Half] = Pairing(RelayLimits())
    shared = token()
    first, second, third = (connect(pairing, name) for name in ("1", "2", "3"))
    pairing.presented(first, shared, NOW)
    pairing.presented(second, shared, NOW)
    assert pairing.presented(third, shared, NOW) == Refused(Status.REPLAYED, "replayed")
    # ...and after the pair has ended, too (until the token expires).
    pairing.gone(first)
    pairing.gone(second)
    fourth = connect(pairing, "4")
    assert pairing.presented(fourth, shared, NOW + 80) == Refused(Status.REPLAYED, "replayed")


def test_a_nonce_whose_first_half_left_is_spent() -> None:
    """The half that gave up waiting (timed out, or its connection ended) took the session
    with it: the late one is told, and the modules ask for a new token."""
    pairing: Pairing[Half] = Pairing(RelayLimits())
    shared = token()
    first, late = connect(pairing, "first"), connect(pairing, "late")
    pairing.presented(first, shared, NOW)
    pairing.gone(first)
    assert pairing.waiting == 0
    assert pairing.presented(late, shared, NOW + 1) == Refused(Status.REPLAYED, "replayed")


def test_nonces_are_forgotten_once_their_tokens_expired() -> None:
    limits = RelayLimits(clock_skew=30)
    pairing: Pairing[Half] = Pairing(limits)
    for number in range(10):
        half = connect(pairing, f"h{number}")
        pairing.presented(half, token(expiry=NOW + 60), NOW)
        pairing.gone(half)
    assert pairing.nonces == 10
    later = connect(pairing, "later")
    pairing.presented(later, token(expiry=NOW + 200), NOW + 90)  # expiry + skew: not yet
    assert pairing.nonces == 11
    last = connect(pairing, "last")
    pairing.presented(last, token(expiry=NOW + 200), NOW + 90.5)
    assert pairing.nonces == 2


def test_new_tokens_beyond_the_nonces_remembered_are_refused_busy() -> None:
    pairing: Pairing[Half] = Pairing(RelayLimits(max_nonces=3))
    for number in range(3):
        half = connect(pairing, f"h{number}")
        assert pairing.presented(half, token(), NOW) == Waiting()
        pairing.gone(half)
    one_more = connect(pairing, "one more")
    assert pairing.presented(one_more, token(), NOW) == Refused(Status.BUSY, "busy")


def test_waiting_halves_are_limited_per_source_and_in_all() -> None:
    pairing: Pairing[Half] = Pairing(RelayLimits(max_waiting_per_ip=2, max_waiting=3))
    here = [connect(pairing, f"here{n}", "192.0.2.1") for n in range(3)]
    there = [connect(pairing, f"there{n}", "198.51.100.7") for n in range(2)]
    assert pairing.presented(here[0], token(), NOW) == Waiting()
    assert pairing.presented(here[1], token(), NOW) == Waiting()
    assert pairing.presented(here[2], token(), NOW) == Refused(Status.BUSY, "busy")
    assert pairing.presented(there[0], token(), NOW) == Waiting()
    assert pairing.presented(there[1], token(), NOW) == Refused(Status.BUSY, "busy")  # all 3


def test_the_second_half_of_a_pair_gets_in_however_many_wait() -> None:
    pairing: Pairing[Half] = Pairing(RelayLimits(max_waiting_per_ip=1, max_waiting=1))
    shared = token()
    first, second = connect(pairing, "first"), connect(pairing, "second")
    assert pairing.presented(first, shared, NOW) == Waiting()
    assert pairing.presented(second, shared, NOW) == Joined(first)


def test_a_pair_over_the_session_limits_is_refused_both_halves_busy() -> None:
    pairing: Pairing[Half] = Pairing(RelayLimits(max_sessions=1))
    one, two = connect(pairing, "1"), connect(pairing, "2")
    shared = token()
    pairing.presented(one, shared, NOW)
    assert pairing.presented(two, shared, NOW) == Joined(one)
    three, four = connect(pairing, "3"), connect(pairing, "4")
    other = token()
    pairing.presented(three, other, NOW)
    assert pairing.presented(four, other, NOW) == Refused(Status.BUSY, "busy", also=three)
    assert (pairing.waiting, pairing.sessions) == (0, 1)
    pairing.gone(three)  # (the adapter says so when it closes them: nothing to do)
    pairing.gone(four)
    five = connect(pairing, "5")
    assert pairing.presented(five, other, NOW) == Refused(Status.REPLAYED, "replayed")


def test_joined_connections_per_source_count_both_halves() -> None:
    pairing: Pairing[Half] = Pairing(RelayLimits(max_sessions_per_ip=3))
    first, second = token(), token()
    halves = [connect(pairing, f"h{n}") for n in range(4)]  # all from one source
    pairing.presented(halves[0], first, NOW)
    assert isinstance(pairing.presented(halves[1], first, NOW), Joined)  # 2 of 3
    pairing.presented(halves[2], second, NOW)
    assert pairing.presented(halves[3], second, NOW) == Refused(Status.BUSY, "busy", also=halves[2])
    # From another source, the second pair's other half fits (3 of 3 here).
    again, elsewhere = connect(pairing, "again"), connect(pairing, "elsewhere", "198.51.100.7")
    third = token()
    pairing.presented(again, third, NOW)
    assert pairing.presented(elsewhere, third, NOW) == Joined(again)


def test_sessions_of_one_pair_of_numbers_are_limited() -> None:
    pairing: Pairing[Half] = Pairing(RelayLimits(max_sessions_per_pair=1))
    a, b, c, d = (connect(pairing, name) for name in "abcd")
    first, second = token(), token()
    pairing.presented(a, first, NOW)
    pairing.presented(b, first, NOW)
    pairing.presented(c, second, NOW)
    assert pairing.presented(d, second, NOW) == Refused(Status.BUSY, "busy", also=c)
    e, f = connect(pairing, "e"), connect(pairing, "f")
    another_pair = token(pair=b"q" * 32)
    pairing.presented(e, another_pair, NOW)
    assert pairing.presented(f, another_pair, NOW) == Joined(e)


def test_connections_in_their_preface_are_limited_per_source_and_the_oldest_evicted() -> None:
    pairing: Pairing[Half] = Pairing(RelayLimits(max_prefacing_per_ip=2, max_prefacing=3))
    a, b = connect(pairing, "a"), connect(pairing, "b")
    assert pairing.connected(Half("c"), "192.0.2.1") == Refused(Status.BUSY, "busy")
    c = connect(pairing, "c", "198.51.100.7")
    d = Half("d")
    assert pairing.connected(d, "203.0.113.9") == Admitted(evicted=a)  # the oldest
    assert pairing.prefacing == 3
    pairing.gone(a)  # (closed by the adapter: nothing more)
    assert pairing.presented(b, token(), NOW) == Waiting()
    assert pairing.prefacing == 2
    # a's source has room again: one in its preface (b is waiting).
    connect(pairing, "e")
    del c


def test_every_count_is_back_to_nothing_once_every_half_is_gone() -> None:
    limits = RelayLimits(max_waiting_per_ip=1, max_prefacing_per_ip=1, max_sessions_per_ip=2)
    pairing: Pairing[Half] = Pairing(limits)
    for _ in range(3):  # at the per-source limits each round: they must be freed each time
        shared = token()
        first, second = connect(pairing, "first"), connect(pairing, "second", "198.51.100.7")
        pairing.presented(first, shared, NOW)
        assert pairing.presented(second, shared, NOW) == Joined(first)
        waiting = connect(pairing, "waiting")
        pairing.presented(waiting, token(), NOW)
        silent = connect(pairing, "silent")
        for half in (first, second, waiting, silent):
            pairing.gone(half)
        assert (pairing.prefacing, pairing.waiting, pairing.sessions) == (0, 0, 0)
    assert not pairing._prefacing_from
    assert not pairing._waiting_from
    assert not pairing._joined_from
    assert not pairing._pairs
    assert not pairing._halves


# Random sequences of connections, presentations and ends: the limits always hold, and
# nothing is left behind once every half is gone.
_SOURCES = ("192.0.2.1", "192.0.2.2", "198.51.100.7")
_steps = st.lists(
    st.one_of(
        st.tuples(st.just("connect"), st.sampled_from(_SOURCES)),
        st.tuples(st.just("present"), st.integers(0, 30), st.integers(0, 5)),
        st.tuples(st.just("gone"), st.integers(0, 30)),
    ),
    max_size=60,
)


@settings(max_examples=300)
@given(_steps)
def test_any_sequence_keeps_the_limits_and_leaves_nothing(steps: list[tuple[object, ...]]) -> None:
    limits = replace(
        RelayLimits(),
        max_prefacing=4,
        max_prefacing_per_ip=3,
        max_waiting=3,
        max_waiting_per_ip=2,
        max_sessions=2,
        max_sessions_per_ip=3,
        max_sessions_per_pair=2,
    )
    pairing: Pairing[Half] = Pairing(limits)
    nonces = [bytes([n]) * 16 for n in range(6)]
    halves: list[Half] = []
    for step in steps:
        if step[0] == "connect":
            half = Half(f"h{len(halves)}")
            outcome = pairing.connected(half, str(step[1]))
            if isinstance(outcome, Admitted):
                halves.append(half)
        elif step[0] == "present" and halves:
            half = halves[int(str(step[1])) % len(halves)]
            if half in pairing._prefacing:
                nonce = nonces[int(str(step[2]))]
                pairing.presented(half, Verified(int(NOW) + 60, nonce, PAIR), NOW)
        elif step[0] == "gone" and halves:
            pairing.gone(halves[int(str(step[1])) % len(halves)])
        assert pairing.prefacing <= limits.max_prefacing
        assert pairing.waiting <= limits.max_waiting
        assert pairing.sessions <= limits.max_sessions
        assert all(n <= limits.max_waiting_per_ip for n in pairing._waiting_from.values())
        assert all(n <= limits.max_sessions_per_ip for n in pairing._joined_from.values())
        assert all(n > 0 for n in pairing._joined_from.values())
    for half in halves:
        pairing.gone(half)
    assert (pairing.prefacing, pairing.waiting, pairing.sessions) == (0, 0, 0)
    assert not pairing._prefacing_from
    assert not pairing._waiting_from
    assert not pairing._joined_from
    assert not pairing._pairs
    assert not pairing._halves


def test_a_token_presented_twice_on_one_connection_is_a_bug() -> None:
    pairing: Pairing[Half] = Pairing(RelayLimits())
    half = connect(pairing, "half")
    pairing.presented(half, token(), NOW)
    with pytest.raises(AssertionError):
        pairing.presented(half, token(), NOW)


@pytest.mark.parametrize(
    ("ip", "source"),
    [
        ("192.0.2.1", "192.0.2.1"),
        ("::ffff:192.0.2.1", "192.0.2.1"),  # IPv4 on a dual-stack socket: the same source
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::7", "2001:db8:1:2::/64"),  # one subscriber's /64: one source
        ("memory-host", "memory-host"),
    ],
)
def test_sources_are_ipv4_addresses_and_ipv6_networks(ip: str, source: str) -> None:
    assert source_of(ip) == source


# --- byte allowances ------------------------------------------------------------------------


def test_an_allowance_lets_its_burst_through_then_makes_the_reader_wait() -> None:
    allowance = Allowance(rate=1000, burst=5000, now=0.0)
    assert allowance.spend(5000, 0.0) == 0.0
    assert allowance.spend(500, 0.0) == pytest.approx(0.5)  # the debt, at the rate
    assert allowance.spend(0, 0.5) == 0.0  # repaid
    assert allowance.spend(500, 1.0) == 0.0  # refilled meanwhile: 500 at 1.0
    assert allowance.spend(1000, 1.0) == pytest.approx(1.0)
    assert allowance.spend(0, 1000.0) == 0.0
    assert allowance.spend(5001, 1000.0) == pytest.approx(0.001)  # never more than the burst


def test_an_allowance_keeps_the_rate_on_average() -> None:
    allowance = Allowance(rate=1_000_000, burst=100_000, now=0.0)
    now, read = 0.0, 0
    while read < 10_000_000:  # reads of 64 KiB, each after the wait the last one asked
        now += allowance.spend(65536, now)
        read += 65536
    assert now == pytest.approx((read - 100_000) / 1_000_000, rel=0.01)


def test_allowances_per_source_forget_the_least_recently_used() -> None:
    allowances = Allowances(rate=1.0, burst=10.0, max_keys=2)
    first = allowances.of("a", 0.0)
    allowances.of("b", 0.0)
    assert allowances.of("a", 0.0) is first
    allowances.of("c", 0.0)  # b was the least recently used
    assert len(allowances) == 2
    assert allowances.of("a", 0.0) is first
