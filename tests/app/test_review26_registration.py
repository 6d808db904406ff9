"""Review of issue 26, item 2 (modules wait out transient refusals): the registration
state machine, time and chance passed in."""

from __future__ import annotations

from tests.app.test_registration import machine
from whatsap2p.app.registration import Connect, GaveUp, WaitingOut


def test_a_module_waiting_out_its_store_does_not_end_when_its_server_restarts() -> None:
    """At start, the server answered `unavailable` (its store fails over): the module
    waits it out. Its next try finds the server restarting (unreachable for a moment,
    the operator mending its store): `_for_now` was reset with the round, so the module
    gave up and exited, although it knew the server exists and the outage is transient."""
    reg = machine(1)
    assert reg.start() == [Connect(0)]
    [waiting] = reg.failed(0.0, transient=True)
    assert isinstance(waiting, WaitingOut)
    assert reg.handle_timer(10.0) == [Connect(0)]
    actions = reg.failed(10.0)  # unreachable: the server restarting
    assert not any(isinstance(action, GaveUp) for action in actions)
