"""The registration state machine, driven with time and chance passed in."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from whatsap2p.app.registration import (
    Connect,
    GaveUp,
    Lost,
    Registration,
    RegistrationState,
    Restored,
    WaitingOut,
)
from whatsap2p.config import Timeouts
from whatsap2p.errors import LocalProtocolError

TIMEOUTS = Timeouts(reconnect_first=0.1, reconnect_max=2.0)


class Halfway(random.Random):
    """Chance that always picks the middle: jitter * 0.75; and the first server."""

    def uniform(self, a: float, b: float) -> float:
        return (a + b) / 2

    def randrange(self, *args: object, **kwargs: object) -> int:
        return 0


def machine(servers: int = 1) -> Registration:
    return Registration(servers, TIMEOUTS, Halfway())


def registered(servers: int = 1) -> Registration:
    reg = machine(servers)
    reg.start()
    reg.registered()
    return reg


def test_the_first_server_tried_is_one_of_the_list_at_random() -> None:
    """When a server comes back, modules that start get their share of it again."""
    firsts = {Registration(4, TIMEOUTS, random.Random(seed)).start()[0] for seed in range(40)}
    assert firsts == {Connect(0), Connect(1), Connect(2), Connect(3)}


def test_a_refusal_for_now_at_start_is_waited_out() -> None:
    """A server whose store fails over (or a rate limit) at start: the module waits and
    tries again, saying so; a refusal for good (or no server at all) still ends it."""
    reg = machine(2)
    reg.start()
    assert reg.failed(now=0, transient=True) == [Connect(1)]
    assert reg.failed(now=0) == [WaitingOut(0.1 * 0.75)]  # one of the round was for now
    assert reg.get_timer() is not None  # waiting
    assert reg.handle_timer(0.08) == [Connect(0)]  # a new round, from the next server
    assert reg.failed(now=1) == [Connect(1)]
    # a round with no refusal for now (the server restarting, say): still waited out,
    # since a server answered for now before; only a start with none ends the module
    assert reg.failed(now=1) == [WaitingOut(0.2 * 0.75)]
    assert machine(1).start() == [Connect(0)]
    never = machine(1)
    never.start()
    assert never.failed(now=0) == [GaveUp()]
    assert never.state is RegistrationState.CLOSED


def test_start_tries_every_server_in_turn_then_gives_up() -> None:
    reg = machine(3)
    assert reg.start() == [Connect(0)]
    assert reg.failed(now=0) == [Connect(1)]
    assert reg.failed(now=0) == [Connect(2)]
    assert reg.failed(now=0) == [GaveUp()]  # at start: the module cannot run
    assert reg.state is RegistrationState.CLOSED


def test_start_stops_at_the_first_server_that_registers_us() -> None:
    reg = machine(3)
    reg.start()
    assert reg.failed(now=0) == [Connect(1)]
    assert reg.registered() == []  # the first registration says nothing
    assert (reg.state, reg.server) == (RegistrationState.REGISTERED, 1)


def test_a_lost_registration_waits_then_tries_the_next_server_first() -> None:
    reg = registered(3)
    assert reg.lost(now=10) == [Lost()]
    assert reg.get_timer() == pytest.approx(10 + 0.1 * 0.75)
    assert reg.handle_timer(10.01) == []  # not yet
    assert reg.handle_timer(10.075) == [Connect(1)]  # the one lost may be down for good
    assert reg.registered() == [Restored()]


def test_rounds_that_fail_wait_longer_and_longer_up_to_the_cap() -> None:
    reg = registered(2)
    reg.lost(now=0)
    waits = []
    now = 0.0
    for _ in range(8):
        timer = reg.get_timer()
        assert timer is not None
        waits.append(round(timer - now, 4))
        now = timer
        assert reg.handle_timer(now)  # a round: both servers in turn
        assert reg.failed(now)
        assert reg.state is RegistrationState.CONNECTING
        assert reg.failed(now) == []  # the round failed: wait
    assert waits == [0.075, 0.15, 0.3, 0.6, 1.2, 1.5, 1.5, 1.5]  # (0.75 of 0.1 doubling to 2)
    reg.handle_timer(reg.get_timer() or 0)
    assert reg.registered() == [Restored()]
    reg.lost(now=100)
    assert reg.get_timer() == pytest.approx(100.075)  # a new loss starts small again


@pytest.mark.parametrize("state", list(RegistrationState))
@pytest.mark.parametrize("event", ["start", "registered", "failed", "lost"])
def test_every_state_and_input_pair(state: RegistrationState, event: str) -> None:
    reg = machine(2)
    allowed = {
        (RegistrationState.IDLE, "start"),
        (RegistrationState.CONNECTING, "registered"),
        (RegistrationState.CONNECTING, "failed"),
        (RegistrationState.REGISTERED, "lost"),
    }
    reg.state = state
    calls: dict[str, Callable[[], object]] = {
        "start": reg.start,
        "registered": reg.registered,
        "failed": lambda: reg.failed(0),
        "lost": lambda: reg.lost(0),
    }
    call = calls[event]
    if (state, event) in allowed:
        call()
    else:
        with pytest.raises(LocalProtocolError, match="registration"):
            call()


def test_a_closed_registration_does_nothing_more() -> None:
    reg = registered()
    reg.lost(now=0)
    reg.close()
    assert reg.get_timer() is None
    assert reg.handle_timer(100) == []
