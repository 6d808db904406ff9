"""The peer protocol with a sender and a receiver joined by an in-memory pump."""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import replace

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from whatsap2p.config import Limits, Timeouts
from whatsap2p.errors import LocalProtocolError, RemoteProtocolError
from whatsap2p.protocol import events as ev
from whatsap2p.protocol.channel import PlainChannel
from whatsap2p.protocol.codec import encode_message
from whatsap2p.protocol.keys import StaticKey
from whatsap2p.protocol.noise import NoiseChannel
from whatsap2p.protocol.peer import (
    PeerReceiver,
    PeerSender,
    ReceiverEvent,
    ReceiverState,
    SenderEvent,
    SenderState,
)

ALICE = "+5511999990001"
STAMP = "2026-11-27T10:00:00.000+00:00"
LIMITS = Limits(max_photo_bytes=1000, max_text_bytes=100, max_peer_frame=4096)


class Pair:
    """A sender and a receiver; `send` moves the bytes across and returns the receiver events."""

    def __init__(self, limits: Limits = LIMITS) -> None:
        self.sender = PeerSender(0, limits)
        self.receiver = PeerReceiver(now=0, limits=limits, timeouts=Timeouts(hello_deadline=5))

    def send(self, message: ev.PeerMessage, now: float = 0) -> list[ReceiverEvent]:
        self.receiver.receive_data(self.sender.send(message, 0), now)
        events = []
        while (event := self.receiver.next_event()) is not None:
            events.append(event)
        return events

    def answer(self, answer: ev.Ack | ev.Rejected | ev.Resume) -> SenderEvent | None:
        self.sender.receive_data(self.receiver.send(answer), 0)
        return self.sender.next_event()


def state_of(receiver: PeerReceiver) -> ReceiverState:
    """The state now (a function, so the type checker does not pin an earlier one)."""
    return receiver.state


def sender_state_of(sender: PeerSender) -> SenderState:
    return sender.state


def offer(size: int, data: bytes = b"", mid: str = "p1", **kw: str) -> ev.PhotoOffer:
    fields = {"filename": "cat.png", "mime": "image/png", "timestamp": STAMP} | kw
    return ev.PhotoOffer(
        mid,
        fields["timestamp"],
        fields["filename"],
        size,
        hashlib.sha256(data).hexdigest(),
        fields["mime"],
    )


def test_text_is_delivered_and_acknowledged() -> None:
    pair = Pair()
    assert pair.send(ev.Hello(ALICE)) == [ev.Hello(ALICE)]
    assert pair.receiver.peer_phone == ALICE
    text = ev.Text("m1", STAMP, "olá", "family")
    assert pair.send(text) == [text]
    assert pair.answer(ev.Ack("m1")) == ev.Ack("m1")


def test_photo_streams_in_chunks_then_completes() -> None:
    pair = Pair()
    pair.send(ev.Hello(ALICE))
    data = bytes(range(256)) * 3
    assert pair.send(offer(len(data), data)) == [offer(len(data), data)]
    assert pair.receiver.state.value == ReceiverState.DECIDING.value
    assert pair.answer(ev.Resume("p1", 0)) == ev.Resume("p1", 0)
    assert pair.receiver.state.value == ReceiverState.RECEIVING_PHOTO.value
    received = b""
    for start in range(0, len(data), 100):
        for event in pair.send(ev.PhotoChunk("p1", memoryview(data[start : start + 100]))):
            assert isinstance(event, ev.PhotoChunk)
            received += event.data
    assert received == data
    assert pair.receiver.state is ReceiverState.AWAIT_END  # the bytes, then the digest
    assert pair.sender.state is SenderState.ENDING
    with pytest.raises(LocalProtocolError):
        pair.sender.send(ev.Text("m9", STAMP, "not before the digest"), 0)
    digest = hashlib.sha256(data).hexdigest()
    assert pair.send(ev.PhotoEnd("p1", digest)) == [ev.PhotoCompleted("p1", digest)]
    assert state_of(pair.receiver) is ReceiverState.IDLE
    assert sender_state_of(pair.sender) is SenderState.READY
    assert pair.answer(ev.Ack("p1")) == ev.Ack("p1")
    # and the connection carries the next message
    assert pair.send(ev.Text("m2", STAMP, "next")) == [ev.Text("m2", STAMP, "next")]


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (offer(1001), "outside 1..1000"),
        (offer(0), "outside"),
        (offer(10, mime="application/x-sh"), "unsupported photo type"),
        (offer(10, filename=""), "invalid file name"),
        (offer(10, timestamp="yesterday"), "invalid timestamp"),
        (offer(10, timestamp="2026-11-27T10:00:00"), "without a time zone"),
        (msgspec.structs.replace(offer(10), key="not a digest"), "invalid photo key"),
    ],
)
def test_bad_photo_offers_are_refused_and_the_connection_goes_on(
    bad: ev.PhotoOffer, reason: str
) -> None:
    pair = Pair()
    pair.send(ev.Hello(ALICE))
    (event,) = pair.send(bad)
    assert isinstance(event, ev.Refused)
    assert reason in event.reason
    assert isinstance(pair.answer(ev.Rejected("p1", event.reason)), ev.Rejected)
    assert pair.sender.state is SenderState.READY
    assert pair.send(ev.Text("m2", STAMP, "next")) == [ev.Text("m2", STAMP, "next")]


def test_too_long_text_is_refused_but_the_connection_goes_on() -> None:
    pair = Pair()
    pair.send(ev.Hello(ALICE))
    (event,) = pair.send(ev.Text("m1", STAMP, "x" * 101))
    assert event == ev.Refused("m1", "text longer than 100 bytes")
    assert pair.send(ev.Text("m2", STAMP, "ok")) == [ev.Text("m2", STAMP, "ok")]


@pytest.mark.parametrize(
    "first",
    [ev.Text("m1", STAMP, "hi"), ev.PhotoChunk("p1", memoryview(b"x")), ev.Ack("m1"), ev.Ping(1)],
)
def test_anything_before_hello_is_a_protocol_error(first: ev.Message) -> None:
    receiver = PeerReceiver(now=0)
    with pytest.raises(RemoteProtocolError):
        receiver.receive_data(PlainChannel(1 << 20).seal(encode_message(first)), now=0)


def test_chunks_must_fit_the_offer() -> None:
    from whatsap2p.protocol.channel import PlainChannel
    from whatsap2p.protocol.codec import encode_message

    seal = PlainChannel(4096).seal
    pair = Pair()
    pair.send(ev.Hello(ALICE))
    pair.send(offer(3, b"abc"))
    with pytest.raises(RemoteProtocolError, match="not allowed while deciding"):
        pair.receiver.receive_data(seal(encode_message(ev.PhotoChunk("p1", memoryview(b"a")))), 0)
    pair = Pair()
    pair.send(ev.Hello(ALICE))
    pair.send(offer(3, b"abc"))
    pair.answer(ev.Resume("p1", 1))  # the receiver kept one byte: two more are due
    with pytest.raises(RemoteProtocolError, match="exceed the announced size"):
        pair.receiver.receive_data(seal(encode_message(ev.PhotoChunk("p1", memoryview(b"abc")))), 0)
    pair = Pair()
    pair.send(ev.Hello(ALICE))
    pair.send(offer(3, b"abc"))
    pair.answer(ev.Resume("p1", 0))
    other = ev.PhotoChunk("other", memoryview(b"a"))
    with pytest.raises(RemoteProtocolError, match="not being sent"):
        pair.receiver.receive_data(seal(encode_message(other)), 0)


def test_a_resumed_photo_needs_only_its_missing_bytes() -> None:
    pair = Pair()
    pair.send(ev.Hello(ALICE))
    pair.send(offer(10, b"0123456789"))
    pair.answer(ev.Resume("p1", 6))
    with pytest.raises(LocalProtocolError):
        pair.sender.send(ev.PhotoChunk("p1", memoryview(b"6789!")), 0)  # more than 4 bytes missing
    last = ev.PhotoChunk("p1", memoryview(b"6789"))
    assert pair.send(last) == [last]
    end = ev.PhotoEnd("p1", hashlib.sha256(b"0123456789").hexdigest())
    assert pair.send(end) == [ev.PhotoCompleted("p1", end.sha256)]
    other = Pair()
    other.send(ev.Hello(ALICE))
    other.send(offer(10, b"0123456789"))
    with pytest.raises(LocalProtocolError):  # a resume must fall inside the photo
        other.receiver.send(ev.Resume("p1", 10))


def test_an_offer_answered_with_ack_needs_no_bytes() -> None:
    pair = Pair()
    pair.send(ev.Hello(ALICE))
    pair.send(offer(3, b"abc"))
    assert pair.answer(ev.Ack("p1")) == ev.Ack("p1")  # already stored
    assert pair.sender.state is SenderState.READY
    assert pair.receiver.state is ReceiverState.IDLE


def test_sender_refuses_to_break_the_protocol() -> None:
    sender = PeerSender(0, LIMITS)
    with pytest.raises(LocalProtocolError):
        sender.send(ev.Text("m1", STAMP, "before hello"), 0)
    sender.send(ev.Hello(ALICE), 0)
    sender.send(offer(3, b"abc"), 0)
    with pytest.raises(LocalProtocolError):
        sender.send(ev.Text("m1", STAMP, "in the middle of a photo"), 0)
    with pytest.raises(LocalProtocolError):
        # not before the receiver said from where
        sender.send(ev.PhotoChunk("p1", memoryview(b"a")), 0)


def test_an_id_awaiting_its_answer_may_not_be_used_again() -> None:
    pair = Pair()
    pair.send(ev.Hello(ALICE))
    pair.sender.send(ev.Text("m1", STAMP, "a"), 0)
    with pytest.raises(LocalProtocolError, match="already outstanding"):
        pair.sender.send(ev.Text("m1", STAMP, "b"), 0)
    seal = PlainChannel(4096).seal  # a sender that does not check itself
    pair.receiver.receive_data(seal(encode_message(ev.Text("m2", STAMP, "a"))), 0)
    with pytest.raises(RemoteProtocolError, match="used twice"):
        pair.receiver.receive_data(seal(encode_message(ev.Text("m2", STAMP, "b"))), 0)


def test_an_answered_id_sent_again_is_a_retry_and_remembers_nothing() -> None:
    pair = Pair()
    pair.send(ev.Hello(ALICE))
    for _ in range(3):  # the app acknowledges a stored copy again, without showing it
        assert pair.send(ev.Text("m1", STAMP, "a")) == [ev.Text("m1", STAMP, "a")]
        pair.answer(ev.Ack("m1"))
    for n in range(1000):  # a long-lived connection keeps no trace of answered messages
        pair.send(ev.Text(f"n{n}", STAMP, "b"))
        pair.answer(ev.Ack(f"n{n}"))
    assert pair.receiver.unanswered == 0


def test_answers_for_unknown_messages_are_refused() -> None:
    pair = Pair()
    pair.send(ev.Hello(ALICE))
    with pytest.raises(LocalProtocolError):
        pair.receiver.send(ev.Ack("never-sent"))


def test_hello_deadline_and_idle_timeout() -> None:
    receiver = PeerReceiver(now=100, timeouts=Timeouts(hello_deadline=5, peer_idle=30))
    assert receiver.get_timer() == 105
    receiver.handle_timer(104)
    assert receiver.next_event() is None
    receiver.handle_timer(105)
    assert receiver.next_event() == ev.ConnectionTimedOut("no hello")
    pair = Pair()
    pair.receiver.timeouts = Timeouts(peer_idle=30)
    pair.send(ev.Hello(ALICE), now=1)
    assert pair.receiver.get_timer() == 31
    pair.receiver.handle_timer(31)
    assert pair.receiver.next_event() == ev.ConnectionTimedOut("peer idle")


@given(st.binary(max_size=3000))
def test_arbitrary_bytes_at_the_receiver_only_raise_remote_protocol_errors(data: bytes) -> None:
    receiver = PeerReceiver(now=0)
    with contextlib.suppress(RemoteProtocolError):
        receiver.receive_data(data, now=0)


wire_messages = st.one_of(
    st.builds(ev.Hello, st.sampled_from([ALICE, "bogus", "+1"])),
    st.builds(
        ev.Text,
        st.sampled_from(["m1", "m2", "bad id!"]),
        st.sampled_from([STAMP, "garbage"]),
        st.text(max_size=120),
        st.none() | st.text(max_size=3),
    ),
    st.builds(
        offer,
        st.integers(min_value=-1, max_value=1100),
        st.just(b""),
        st.sampled_from(["p1", "p2"]),
        mime=st.sampled_from(["image/png", "text/html"]),
    ),
    st.builds(ev.PhotoChunk, st.sampled_from(["p1", "p2"]), st.binary(max_size=300)),
    st.builds(ev.PhotoEnd, st.sampled_from(["p1", "p2"]), st.sampled_from(["ab" * 32, "x"])),
    st.builds(ev.Ack, st.just("m1")),
    st.builds(ev.Ping, st.integers(0, 3)),
)


@given(st.lists(wire_messages, max_size=25))
def test_any_sequence_of_messages_keeps_the_receiver_consistent(
    messages: list[ev.Message],
) -> None:
    """Every (state, message) pair either advances the state machine or is refused cleanly."""
    from whatsap2p.protocol.channel import PlainChannel
    from whatsap2p.protocol.codec import encode_message

    seal = PlainChannel(LIMITS.max_peer_frame).seal
    receiver = PeerReceiver(now=0, limits=LIMITS)
    photo_bytes = 0
    for message in messages:
        before = receiver.state
        try:
            receiver.receive_data(seal(encode_message(message)), now=0)
        except RemoteProtocolError:
            return  # the adapter closes the connection here
        while (event := receiver.next_event()) is not None:
            if isinstance(event, ev.PhotoChunk):
                photo_bytes += len(event.data)
            if isinstance(event, ev.PhotoOffer):
                assert 0 < event.size <= LIMITS.max_photo_bytes
                assert event.mime == "image/png"
                photo_bytes = 0
            if isinstance(event, ev.PhotoCompleted):
                assert receiver.state is ReceiverState.IDLE
        if before is ReceiverState.AWAIT_HELLO:
            assert isinstance(message, ev.Hello)
        if receiver.state is ReceiverState.CLOSED:
            return
    assert photo_bytes <= LIMITS.max_photo_bytes


def test_deadlines_cover_the_secure_handshake_then_the_hello() -> None:

    timeouts = Timeouts(handshake=3, hello_deadline=7)
    responder = NoiseChannel(StaticKey.generate(), initiator=False, max_body=1 << 20)
    receiver = PeerReceiver(now=100, timeouts=timeouts, channel=responder)
    assert receiver.get_timer() == 103
    receiver.handle_timer(103)
    assert receiver.next_event() == ev.ConnectionTimedOut("no secure handshake in time")

    responder = NoiseChannel(StaticKey.generate(), initiator=False, max_body=1 << 20)
    receiver = PeerReceiver(now=100, timeouts=timeouts, channel=responder)
    sender_key = StaticKey.generate()
    sender = PeerSender(0, channel=NoiseChannel(sender_key, initiator=True, max_body=1 << 20))
    receiver.receive_data(sender.data_to_send(), now=101)
    sender.receive_data(receiver.data_to_send(), 0)
    receiver.receive_data(sender.data_to_send(), now=102)
    assert receiver.established
    assert receiver.get_timer() == 102 + 7  # now the hello deadline
    receiver.receive_data(sender.send(ev.Hello(ALICE), 0), now=103)
    assert receiver.next_event() == ev.Hello(ALICE)
    assert receiver.remote_key == sender_key.public


def test_a_photo_digest_must_follow_its_bytes_and_be_a_digest() -> None:
    early = Pair()
    early.send(ev.Hello(ALICE))
    early.send(offer(4, b"0123"))
    early.answer(ev.Resume("p1", 0))
    with pytest.raises(RemoteProtocolError):  # before the last byte
        early.receiver.receive_data(
            PlainChannel(1 << 20).seal(encode_message(ev.PhotoEnd("p1", "ab" * 32))), now=0
        )
    bad = Pair()
    bad.send(ev.Hello(ALICE))
    bad.send(offer(4, b"0123"))
    bad.answer(ev.Resume("p1", 0))
    bad.send(ev.PhotoChunk("p1", memoryview(b"0123")))
    with pytest.raises(RemoteProtocolError, match="SHA-256"):
        bad.receiver.receive_data(
            PlainChannel(1 << 20).seal(encode_message(ev.PhotoEnd("p1", "not hex"))), now=0
        )


def test_a_hello_in_the_same_bytes_as_the_handshake_starts_the_idle_timeout() -> None:
    # Found when links began to be kept: the hello deadline replaced the idle one when
    # the handshake's last message, the hello and a text came in one read.

    timeouts = Timeouts(hello_deadline=2, peer_idle=0.2)
    initiator = NoiseChannel(StaticKey.generate(), initiator=True, max_body=1 << 20)
    responder = NoiseChannel(StaticKey.generate(), initiator=False, max_body=1 << 20)
    receiver = PeerReceiver(now=0, timeouts=timeouts, channel=responder)
    receiver.receive_data(initiator.data_to_send(), now=0)
    initiator.receive_data(receiver.data_to_send())
    assert initiator.next_body() is None
    assert initiator.established
    sender = PeerSender(0, channel=initiator)
    burst = initiator.data_to_send() + bytes(sender.send(ev.Hello(ALICE), 0))
    receiver.receive_data(burst + bytes(sender.send(ev.Text("m1", STAMP, "hi"), 0)), now=10)
    assert receiver.get_timer() == 10 + timeouts.peer_idle


# --- the sender's deadlines (time passed in) -------------------------------------------

SENDER_TIMEOUTS = Timeouts(handshake=5, peer_ack=20, write_drain=20, link_keep=10, peer_idle=25)


class TimedPair:
    """A sender and a receiver, with the time of each step given."""

    def __init__(self) -> None:
        self.sender = PeerSender(0, LIMITS, SENDER_TIMEOUTS)
        self.receiver = PeerReceiver(now=0, limits=LIMITS, timeouts=SENDER_TIMEOUTS)
        self.send(ev.Hello(ALICE), now=0)

    def send(self, message: ev.PeerMessage, now: float) -> None:
        self.receiver.receive_data(self.sender.send(message, now), now)
        while self.receiver.next_event() is not None:
            pass

    def answer(self, answer: ev.Ack | ev.Rejected | ev.Resume, now: float) -> SenderEvent | None:
        self.sender.receive_data(self.receiver.send(answer), now)
        return self.sender.next_event()

    def timer(self, now: float) -> SenderEvent | None:
        self.sender.handle_timer(now)
        return self.sender.next_event()


def test_a_text_unanswered_for_the_ack_timeout_times_the_sender_out() -> None:
    pair = TimedPair()
    pair.send(ev.Text("m1", STAMP, "a"), now=1)
    pair.send(ev.Text("m2", STAMP, "b"), now=2)
    assert pair.sender.get_timer() == 21  # the oldest text's
    assert pair.answer(ev.Ack("m1"), now=3) == ev.Ack("m1")
    assert pair.sender.get_timer() == 22
    assert pair.timer(21.9) is None
    assert pair.sender.sent_whole("m2")
    assert pair.timer(22) == ev.ConnectionTimedOut("no answer from the peer (timed out)")
    assert pair.sender.get_timer() is None


def test_a_photo_is_given_as_long_as_its_bytes_take_and_its_answer_after_the_last() -> None:
    pair = TimedPair()
    data = b"x" * 600
    pair.send(offer(len(data), data), now=1)
    assert pair.sender.get_timer() == 21  # the decision is due
    assert not pair.sender.sent_whole("p1")
    assert pair.answer(ev.Resume("p1", 0), now=2) == ev.Resume("p1", 0)
    for i, start in enumerate(range(0, 600, 100)):  # a chunk every 15 s: slow, but moving
        now = 3 + 15 * i
        pair.send(ev.PhotoChunk("p1", memoryview(data[start : start + 100])), now=now)
        assert pair.sender.get_timer() is None  # no deadline while the bytes flow
        assert pair.timer(now + 14) is None
    assert not pair.sender.sent_whole("p1")
    pair.send(ev.PhotoEnd("p1", hashlib.sha256(data).hexdigest()), now=100)
    assert pair.sender.sent_whole("p1")  # it may have arrived from now on
    assert pair.sender.get_timer() == 120
    assert pair.timer(120) == ev.ConnectionTimedOut("no answer from the peer (timed out)")


def test_writes_that_do_not_drain_time_the_sender_out_and_draining_ones_do_not() -> None:
    pair = TimedPair()
    data = b"y" * 300
    pair.send(offer(len(data), data), now=1)
    pair.answer(ev.Resume("p1", 0), now=1)
    pair.sender.writing_paused(now=5)
    assert pair.sender.get_timer() == 25
    pair.sender.writing_resumed(now=24)
    assert pair.timer(25) is None
    pair.sender.writing_paused(now=30)
    assert pair.timer(50) == ev.ConnectionTimedOut("the peer stopped reading (timed out)")


def test_a_sender_with_nothing_outstanding_goes_idle_after_the_keep_time() -> None:
    pair = TimedPair()
    assert pair.sender.get_timer() == 10  # link_keep (under half of peer_idle), from 0
    pair.send(ev.Text("m1", STAMP, "a"), now=4)
    pair.answer(ev.Ack("m1"), now=5)
    assert pair.sender.get_timer() == 15
    assert pair.timer(15) == ev.ConnectionIdle()
    quick = PeerSender(0, LIMITS, replace(SENDER_TIMEOUTS, peer_idle=6))
    assert quick.get_timer() == 3  # half the receiver's peer_idle, when that is less


def test_a_sender_whose_handshake_does_not_complete_times_out() -> None:
    initiator = NoiseChannel(StaticKey.generate(), initiator=True, max_body=1 << 20)
    sender = PeerSender(100, LIMITS, SENDER_TIMEOUTS, initiator)
    assert sender.get_timer() == 105
    sender.handle_timer(105)
    assert sender.next_event() == ev.ConnectionTimedOut("no secure handshake in time")


def test_a_receiver_whose_answers_do_not_drain_times_out() -> None:
    pair = TimedPair()
    pair.send(ev.Text("m1", STAMP, "a"), now=1)
    pair.receiver.writing_paused(now=2)
    assert pair.receiver.get_timer() == 22  # before the idle deadline (26)
    pair.receiver.handle_timer(22)
    assert pair.receiver.next_event() == ev.ConnectionTimedOut("the peer stopped reading")


def test_writes_that_drain_slowly_are_progress_not_a_stall() -> None:
    pair = TimedPair()
    data = b"z" * 300
    pair.send(offer(len(data), data), now=1)
    pair.answer(ev.Resume("p1", 0), now=1)
    pair.sender.writing_paused(now=5)
    pair.sender.writing_progressed(now=24)  # some bytes drained: slow, not stopped
    assert pair.sender.get_timer() == 44
    assert pair.timer(25) is None
    assert pair.timer(44) == ev.ConnectionTimedOut("the peer stopped reading (timed out)")
