"""The directory state machines, driven in memory with time passed in."""

from __future__ import annotations

import contextlib
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from whatsap2p.config import Limits, Timeouts
from whatsap2p.errors import LocalProtocolError, RemoteProtocolError
from whatsap2p.protocol import events as ev
from whatsap2p.protocol.codec import encode_message
from whatsap2p.protocol.directory import (
    DirectoryClientConnection,
    DirectoryServerConnection,
    ServerState,
)

PHONE = "+5511999990001"
TIMEOUTS = Timeouts(register_deadline=10, server_idle=25)


def requests(rid: int) -> list[ev.Message]:
    return [
        ev.Register(rid, PHONE, 4000),
        ev.Lookup(rid, (PHONE,)),
        ev.Unregister(rid),
        ev.Ping(rid),
    ]


ALLOWED = {
    (ServerState.NEW, ev.Register),
    (ServerState.NEW, ev.Ping),
    (ServerState.REGISTERED, ev.Lookup),
    (ServerState.REGISTERED, ev.Ping),
    (ServerState.REGISTERED, ev.Unregister),
}


def server_in(state: ServerState) -> DirectoryServerConnection:
    server = DirectoryServerConnection(now=0, timeouts=TIMEOUTS)
    client = DirectoryClientConnection()
    if state is ServerState.REGISTERED:
        server.receive_data(client.send(ev.Register(100, PHONE, 4000)), now=0)
        assert isinstance(server.next_event(), ev.Register)
        client.receive_data(server.send(ev.Registered(100, PHONE, "127.0.0.1", 4000)))
    assert server.state is state
    return server


@pytest.mark.parametrize("state", [ServerState.NEW, ServerState.REGISTERED])
@pytest.mark.parametrize("index", range(4))
def test_every_state_and_request_pair(state: ServerState, index: int) -> None:
    server = server_in(state)
    request = requests(1)[index]
    data = DirectoryClientConnection().send(request)
    if (state, type(request)) in ALLOWED:
        server.receive_data(data, now=1)
        assert server.next_event() == request
    else:
        with pytest.raises(RemoteProtocolError, match="not allowed"):
            server.receive_data(data, now=1)


def test_answers_a_client_may_not_send_are_refused() -> None:
    server = server_in(ServerState.NEW)
    sneaky = DirectoryServerConnection(now=0)._channel.seal(encode_message(ev.Pong(1)))
    with pytest.raises(RemoteProtocolError, match="may not send"):
        server.receive_data(sneaky, now=0)


def test_full_life_register_lookup_unregister() -> None:
    server = DirectoryServerConnection(now=0, timeouts=TIMEOUTS)
    client = DirectoryClientConnection()
    server.receive_data(client.send(ev.Register(1, PHONE, 4000, "10.0.0.5")), now=0)
    assert server.next_event() == ev.Register(1, PHONE, 4000, "10.0.0.5")
    client.receive_data(server.send(ev.Registered(1, PHONE, "10.0.0.5", 4000)))
    assert client.next_event() == ev.Registered(1, PHONE, "10.0.0.5", 4000)
    server.receive_data(client.send(ev.Lookup(2, ("+5511999990002",))), now=1)
    assert isinstance(server.next_event(), ev.Lookup)
    found = ev.PeerAddress("+5511999990002", "127.0.0.1", 5000, b"k" * 32)
    client.receive_data(server.send(ev.LookupResult(2, (found,))))
    assert client.next_event() == ev.LookupResult(2, (found,))
    server.receive_data(client.send(ev.Unregister(3)), now=2)
    assert isinstance(server.next_event(), ev.Unregister)
    client.receive_data(server.send(ev.Unregistered(3)))
    assert server.state is ServerState.CLOSED
    assert server.get_timer() is None


def test_a_connection_that_does_not_register_in_time_is_timed_out() -> None:
    server = DirectoryServerConnection(now=100, timeouts=TIMEOUTS)
    assert server.get_timer() == 110
    server.handle_timer(109.9)
    assert server.next_event() is None
    server.handle_timer(110)
    assert server.next_event() == ev.ConnectionTimedOut("no registration in time")
    assert server.state is ServerState.CLOSED


def test_heartbeats_keep_a_registration_alive_and_silence_ends_it() -> None:
    server = server_in(ServerState.REGISTERED)
    client = DirectoryClientConnection()
    for rid, now in zip(itertools.count(1), range(20, 200, 20), strict=False):
        server.receive_data(client.send(ev.Ping(rid)), now=now)
        assert server.next_event() == ev.Ping(rid)
        server.send(ev.Pong(rid))
        server.handle_timer(now + 24)
        assert server.next_event() is None
    assert server.get_timer() == 180 + 25
    server.handle_timer(205)
    assert server.next_event() == ev.ConnectionTimedOut("heartbeats stopped")


def test_a_registration_that_only_heartbeats_outlives_the_registration_deadline() -> None:
    # Found by loadgen: the register deadline (10 s) stayed in force after registering,
    # so a module whose first heartbeat came 10 s after registering was dropped.
    server = DirectoryServerConnection(now=100, timeouts=TIMEOUTS)
    client = DirectoryClientConnection()
    server.receive_data(client.send(ev.Register(1, PHONE, 4000)), now=105)
    assert server.next_event() == ev.Register(1, PHONE, 4000)
    server.send(ev.Registered(1, PHONE, "127.0.0.1", 4000))
    assert server.get_timer() == 105 + TIMEOUTS.server_idle
    server.handle_timer(105 + TIMEOUTS.heartbeat_interval + 1)
    assert server.next_event() is None
    server.receive_data(client.send(ev.Ping(2)), now=105 + TIMEOUTS.heartbeat_interval + 1)
    assert server.next_event() == ev.Ping(2)


def test_server_refuses_bad_registrations() -> None:
    client = DirectoryClientConnection()
    for bad in (ev.Register(1, "5511999", 4000), ev.Register(1, PHONE, 0)):
        with pytest.raises(RemoteProtocolError):
            DirectoryServerConnection(now=0).receive_data(client.send(bad), now=0)
        client = DirectoryClientConnection()


def test_lookup_size_is_capped() -> None:
    server = server_in(ServerState.REGISTERED)
    limits = Limits(max_lookup_phones=3)
    server.limits = limits
    with pytest.raises(RemoteProtocolError, match="at most 3"):
        server.receive_data(DirectoryClientConnection().send(ev.Lookup(1, (PHONE,) * 4)), now=0)


def test_reused_request_id_is_refused_both_sides() -> None:
    server = server_in(ServerState.REGISTERED)
    client = DirectoryClientConnection()
    server.receive_data(client.send(ev.Ping(7)), now=0)
    with pytest.raises(LocalProtocolError):
        client.send(ev.Ping(7))
    with pytest.raises(RemoteProtocolError, match="already in use"):
        server.receive_data(DirectoryClientConnection().send(ev.Ping(7)), now=0)


def test_client_refuses_answers_it_did_not_ask_for() -> None:
    server = server_in(ServerState.REGISTERED)
    server.receive_data(DirectoryClientConnection().send(ev.Ping(5)), now=0)
    client = DirectoryClientConnection()
    with pytest.raises(RemoteProtocolError, match="unknown request 5"):
        client.receive_data(server.send(ev.Pong(5)))
    client = DirectoryClientConnection()
    client.send(ev.Lookup(5, ()))
    with pytest.raises(RemoteProtocolError, match="does not answer"):
        client.receive_data(
            DirectoryServerConnection(now=0)._channel.seal(encode_message(ev.Pong(5)))
        )


def test_server_cannot_answer_a_request_it_never_got() -> None:
    server = server_in(ServerState.REGISTERED)
    with pytest.raises(LocalProtocolError):
        server.send(ev.Pong(42))
    with pytest.raises(LocalProtocolError):
        server.send(ev.Registered(42, PHONE, "h", 1))


@given(st.binary(max_size=3000))
def test_arbitrary_bytes_at_the_server_only_raise_remote_protocol_errors(data: bytes) -> None:
    server = DirectoryServerConnection(now=0)
    with contextlib.suppress(RemoteProtocolError):
        server.receive_data(data, now=0)
