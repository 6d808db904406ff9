"""Review of issue 26, item 2 (modules wait out transient refusals): the registration
state machine, time and chance passed in."""

from __future__ import annotations

import random

from whatsap2p.app.registration import Connect, GaveUp, Registration, WaitingOut
from whatsap2p.config import Timeouts

TIMEOUTS = Timeouts(reconnect_first=0.1, reconnect_max=2.0)


class First(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return (a + b) / 2

    def randrange(self, *args: object, **kwargs: object) -> int:
        return 0


def test_a_module_waiting_out_its_store_does_not_end_when_its_server_restarts() -> None:
    """At start, the server answered `unavailable` (its store fails over): the module
    waits it out. Its next try finds the server restarting (unreachable for a moment,
    the operator mending its store): `_for_now` was reset with the round, so the module
    gives up and exits, although it knows the server exists and the outage is transient."""
    reg = Registration(1, TIMEOUTS, First())
    assert reg.start() == [Connect(0)]
    [waiting] = reg.failed(0.0, transient=True)
    assert isinstance(waiting, WaitingOut)
    assert reg.handle_timer(10.0) == [Connect(0)]
    actions = reg.failed(10.0)  # unreachable: the server restarting
    assert not any(isinstance(action, GaveUp) for action in actions)
