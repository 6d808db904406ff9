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
from whatsap2p.protocol.channel import PlainChannel
from whatsap2p.protocol.codec import encode_message
from whatsap2p.protocol.directory import (
    DirectoryClientConnection,
    DirectoryServerConnection,
    ServerState,
)
from whatsap2p.protocol.keys import StaticKey
from whatsap2p.protocol.noise import COMPACT, NoiseChannel

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
    client = DirectoryClientConnection(now=0)
    if state is ServerState.REGISTERED:
        server.receive_data(client.send(ev.Register(100, PHONE, 4000), now=0), now=0)
        assert isinstance(server.next_event(), ev.Register)
        client.receive_data(server.send(ev.Registered(100, PHONE, "127.0.0.1", 4000)), now=0)
    assert server.state is state
    return server


@pytest.mark.parametrize("state", [ServerState.NEW, ServerState.REGISTERED])
@pytest.mark.parametrize("index", range(4))
def test_every_state_and_request_pair(state: ServerState, index: int) -> None:
    server = server_in(state)
    request = requests(1)[index]
    data = DirectoryClientConnection(now=0).send(request, now=0)
    if (state, type(request)) in ALLOWED:
        server.receive_data(data, now=1)
        assert server.next_event() == request
    else:
        with pytest.raises(RemoteProtocolError, match="not allowed"):
            server.receive_data(data, now=1)


def test_answers_a_client_may_not_send_are_refused() -> None:
    server = server_in(ServerState.NEW)
    sneaky = PlainChannel(Limits().max_directory_frame).seal(encode_message(ev.Pong(1)))
    with pytest.raises(RemoteProtocolError, match="may not send"):
        server.receive_data(sneaky, now=0)


def test_full_life_register_lookup_unregister() -> None:
    server = DirectoryServerConnection(now=0, timeouts=TIMEOUTS)
    client = DirectoryClientConnection(now=0)
    server.receive_data(client.send(ev.Register(1, PHONE, 4000, "10.0.0.5"), now=0), now=0)
    assert server.next_event() == ev.Register(1, PHONE, 4000, "10.0.0.5")
    client.receive_data(server.send(ev.Registered(1, PHONE, "10.0.0.5", 4000)), now=0)
    assert client.next_event() == ev.Registered(1, PHONE, "10.0.0.5", 4000)
    server.receive_data(client.send(ev.Lookup(2, ("+5511999990002",)), now=0), now=1)
    assert isinstance(server.next_event(), ev.Lookup)
    found = ev.PeerAddress("+5511999990002", "127.0.0.1", 5000, b"k" * 32)
    client.receive_data(server.send(ev.LookupResult(2, (found,))), now=0)
    assert client.next_event() == ev.LookupResult(2, (found,))
    server.receive_data(client.send(ev.Unregister(3), now=0), now=2)
    assert isinstance(server.next_event(), ev.Unregister)
    client.receive_data(server.send(ev.Unregistered(3)), now=0)
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
    client = DirectoryClientConnection(now=0)
    for rid, now in zip(itertools.count(1), range(20, 200, 20), strict=False):
        server.receive_data(client.send(ev.Ping(rid), now=0), now=now)
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
    client = DirectoryClientConnection(now=0)
    server.receive_data(client.send(ev.Register(1, PHONE, 4000), now=0), now=105)
    assert server.next_event() == ev.Register(1, PHONE, 4000)
    server.send(ev.Registered(1, PHONE, "127.0.0.1", 4000))
    assert server.get_timer() == 105 + TIMEOUTS.server_idle
    server.handle_timer(105 + TIMEOUTS.heartbeat_interval + 1)
    assert server.next_event() is None
    server.receive_data(client.send(ev.Ping(2), now=0), now=105 + TIMEOUTS.heartbeat_interval + 1)
    assert server.next_event() == ev.Ping(2)


def test_server_refuses_bad_registrations() -> None:
    client = DirectoryClientConnection(now=0)
    for bad in (ev.Register(1, "5511999", 4000), ev.Register(1, PHONE, 0)):
        with pytest.raises(RemoteProtocolError):
            DirectoryServerConnection(now=0).receive_data(client.send(bad, now=0), now=0)
        client = DirectoryClientConnection(now=0)


def test_lookup_size_is_capped() -> None:
    server = server_in(ServerState.REGISTERED)
    limits = Limits(max_lookup_phones=3)
    server.limits = limits
    with pytest.raises(RemoteProtocolError, match="at most 3"):
        server.receive_data(
            DirectoryClientConnection(now=0).send(ev.Lookup(1, (PHONE,) * 4), now=0), now=0
        )


def test_reused_request_id_is_refused_both_sides() -> None:
    server = server_in(ServerState.REGISTERED)
    client = DirectoryClientConnection(now=0)
    server.receive_data(client.send(ev.Ping(7), now=0), now=0)
    with pytest.raises(LocalProtocolError):
        client.send(ev.Ping(7), now=0)
    with pytest.raises(RemoteProtocolError, match="already in use"):
        server.receive_data(DirectoryClientConnection(now=0).send(ev.Ping(7), now=0), now=0)


def test_client_refuses_answers_it_did_not_ask_for() -> None:
    server = server_in(ServerState.REGISTERED)
    server.receive_data(DirectoryClientConnection(now=0).send(ev.Ping(5), now=0), now=0)
    client = DirectoryClientConnection(now=0)
    with pytest.raises(RemoteProtocolError, match="unknown request 5"):
        client.receive_data(server.send(ev.Pong(5)), now=0)
    client = DirectoryClientConnection(now=0)
    client.send(ev.Lookup(5, ()), now=0)
    with pytest.raises(RemoteProtocolError, match="does not answer"):
        client.receive_data(
            PlainChannel(Limits().max_directory_frame).seal(encode_message(ev.Pong(5))), now=0
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


# --- the client's deadlines (time passed in) -----------------------------------------

CLIENT_TIMEOUTS = Timeouts(handshake=5, server_reply=3, heartbeat_interval=10)


class ClientPair:
    """A client and a server joined in memory: what one side writes, the other reads."""

    def __init__(self, now: float = 0) -> None:
        self.client = DirectoryClientConnection(now, timeouts=CLIENT_TIMEOUTS)
        self.server = DirectoryServerConnection(now, timeouts=TIMEOUTS)

    def ask(
        self, request: ev.DirectoryMessage, now: float
    ) -> ev.Message | ev.ConnectionTimedOut | None:
        """Send `request` to the server at `now`; the server's event for it."""
        self.server.receive_data(self.client.send(request, now), now)
        return self.server.next_event()

    def answer(self, answer: ev.DirectoryMessage, now: float) -> object:
        """The server answers at `now`; the client's event for it."""
        self.client.receive_data(self.server.send(answer), now)
        return self.client.next_event()

    def pump(self, now: float) -> list[ev.Message | ev.ConnectionTimedOut]:
        """What the client wrote on its own (heartbeats) reaches the server; its events."""
        self.server.receive_data(self.client.data_to_send(), now)
        events = []
        while (event := self.server.next_event()) is not None:
            events.append(event)
        return events

    def register(self, now: float) -> None:
        assert self.ask(ev.Register(self.client.next_rid(), PHONE, 4000), now) is not None
        answer = self.answer(ev.Registered(1, PHONE, "127.0.0.1", 4000), now)
        assert isinstance(answer, ev.Registered)


def test_an_unanswered_request_times_the_client_out_after_the_reply_timeout() -> None:
    pair = ClientPair()
    pair.register(now=1)
    assert pair.ask(ev.Lookup(pair.client.next_rid(), (PHONE,)), now=2) is not None
    assert pair.client.get_timer() == 2 + CLIENT_TIMEOUTS.server_reply
    pair.client.handle_timer(4.9)
    assert pair.client.next_event() is None
    pair.client.handle_timer(5)
    assert pair.client.next_event() == ev.ConnectionTimedOut("the server does not answer")
    assert pair.client.get_timer() is None
    with pytest.raises(LocalProtocolError, match="closed"):
        pair.client.send(ev.Ping(pair.client.next_rid()), now=6)


def test_an_answered_request_leaves_the_next_deadline_to_the_heartbeat() -> None:
    pair = ClientPair()
    pair.register(now=1)
    assert pair.client.get_timer() == 1 + CLIENT_TIMEOUTS.heartbeat_interval
    rid = pair.client.next_rid()
    assert pair.ask(ev.Lookup(rid, (PHONE,)), now=2) is not None
    assert pair.answer(ev.LookupResult(rid, ()), now=3) == ev.LookupResult(rid, ())
    assert pair.client.get_timer() == 11


def test_a_registered_client_heartbeats_every_interval_and_takes_its_pongs() -> None:
    pair = ClientPair()
    pair.register(now=0)
    pings = []
    for beat in range(1, 4):
        now = beat * CLIENT_TIMEOUTS.heartbeat_interval
        assert pair.client.get_timer() == now
        pair.client.handle_timer(now)
        (ping,) = pair.pump(now)  # the heartbeat went out on its own
        assert isinstance(ping, ev.Ping)
        pings.append(ping.rid)
        assert pair.answer(ev.Pong(ping.rid), now + 0.1) is None  # taken, not an event
    assert len(set(pings)) == 3
    assert pair.server.get_timer() == 30 + TIMEOUTS.server_idle  # the server renewed it


def test_a_heartbeat_unanswered_for_an_interval_times_the_client_out() -> None:
    pair = ClientPair()
    pair.register(now=0)
    pair.client.handle_timer(10)
    assert len(pair.pump(10)) == 1
    assert pair.client.get_timer() == 20
    pair.client.handle_timer(20)
    assert pair.client.next_event() == ev.ConnectionTimedOut(
        "the server does not answer heartbeats"
    )
    assert pair.client.data_to_send() == b""  # no second ping


def test_a_client_does_not_heartbeat_before_it_is_registered() -> None:
    pair = ClientPair()
    assert pair.client.get_timer() is None  # (a plain channel is up at once)
    rid = pair.client.next_rid()
    assert pair.ask(ev.Register(rid, PHONE, 4000), now=0) is not None
    assert pair.answer(ev.Failure(rid, "number-online", "taken"), now=1) is not None
    assert pair.client.get_timer() is None


def test_an_explicit_ping_is_answered_as_an_event() -> None:
    pair = ClientPair()
    pair.register(now=0)
    rid = pair.client.next_rid()
    assert pair.ask(ev.Ping(rid), now=1) == ev.Ping(rid)
    assert pair.answer(ev.Pong(rid), now=1) == ev.Pong(rid)


def test_request_id_zero_is_the_servers_pushes_only() -> None:
    client = DirectoryClientConnection(now=0)
    with pytest.raises(LocalProtocolError, match="start at 1"):
        client.send(ev.Ping(0), now=0)
    forged = PlainChannel(Limits().max_directory_frame).seal(encode_message(ev.Ping(0)))
    with pytest.raises(RemoteProtocolError, match="start at 1"):
        DirectoryServerConnection(now=0).receive_data(forged, now=0)


def test_the_answer_to_the_largest_lookup_fits_whatever_the_hosts() -> None:
    # Found by reading the spec against the code: an answer listing more than ~700 online
    # numbers was larger than the 64 KiB cap, and the server closed the connection.
    limits = Limits()
    server_key, client_key = StaticKey.generate(), StaticKey.generate()
    server = DirectoryServerConnection(
        0,
        limits,
        channel=NoiseChannel(
            server_key,
            initiator=False,
            max_body=limits.max_directory_frame,
            max_send=limits.max_directory_answer,
            suite=COMPACT,
        ),
    )
    client = DirectoryClientConnection(
        0,
        limits,
        channel=NoiseChannel(
            client_key, initiator=True, max_body=limits.max_directory_answer, suite=COMPACT
        ),
    )
    while not (client.established and server.established):
        server.receive_data(client.data_to_send(), now=0)
        client.receive_data(server.data_to_send(), now=0)
    server.receive_data(client.send(ev.Register(1, PHONE, 4000), now=0), now=0)
    assert isinstance(server.next_event(), ev.Register)
    client.receive_data(server.send(ev.Registered(1, PHONE, "h", 4000)), now=0)
    assert isinstance(client.next_event(), ev.Registered)
    phones = tuple(f"+55119{i:09d}" for i in range(limits.max_lookup_phones))
    server.receive_data(client.send(ev.Lookup(2, phones), now=0), now=0)
    assert isinstance(server.next_event(), ev.Lookup)
    longest_host = "h" * 255  # (what a register may advertise)
    peers = tuple(ev.PeerAddress(phone, longest_host, 65535, b"k" * 32) for phone in phones)
    client.receive_data(server.send(ev.LookupResult(2, peers)), now=0)
    answer = client.next_event()
    assert isinstance(answer, ev.LookupResult)
    assert len(answer.peers) == limits.max_lookup_phones


def test_a_client_that_stops_reading_the_answers_is_timed_out() -> None:
    server = server_in(ServerState.REGISTERED)
    server.timeouts = Timeouts(server_idle=25, write_drain=20)
    server.receive_data(DirectoryClientConnection(0).send(ev.Ping(1), now=100), now=100)
    assert server.get_timer() == 125
    server.writing_paused(now=101)
    assert server.get_timer() == 121
    server.writing_resumed()  # it caught up
    assert server.get_timer() == 125
    server.writing_paused(now=104)
    server.handle_timer(123.9)
    assert server.next_event() == ev.Ping(1)  # (the request, then the deadline)
    server.handle_timer(124)
    assert server.next_event() == ev.ConnectionTimedOut("it stopped reading")
