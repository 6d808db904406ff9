"""The peer protocol: a sender opens a connection to a receiver and hands it messages.

    sender                      receiver
    Hello(phone)         ->                      (must come first, within a deadline)
    Text(id, ...)        ->
                         <-     Ack(id) | Rejected(id, reason)
    PhotoOffer(id, size) ->
                         <-     Resume(id, offset) | Ack(id) (already stored) | Rejected
    PhotoChunk(id, data) ->     ... exactly `size - offset` bytes in all
    PhotoEnd(id, sha256) ->     the whole file's digest, hashed while sending
                         <-     Ack(id) once the file is stored and verified | Rejected

Several messages may travel on one connection; a photo's chunks are not interleaved
with anything else, and they only flow once the receiver has said from where.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
from collections import deque
from typing import Final

from whatsap2p.config import Limits, Timeouts
from whatsap2p.errors import LocalProtocolError, RemoteProtocolError
from whatsap2p.protocol import events as ev
from whatsap2p.protocol.channel import Buffer, Channel, OverChannel, PlainChannel
from whatsap2p.protocol.codec import decode_message, encode_message
from whatsap2p.protocol.directory import E164

__all__ = [
    "PHOTO_MIME_TYPES",
    "REVERSE_PREFACE",
    "PeerReceiver",
    "PeerSender",
    "ReceiverEvent",
    "ReceiverState",
    "SenderEvent",
    "SenderState",
]

#: What a module connecting back on a `dial` (docs/protocol.md §6.9) writes first: these
#: 8 bytes, then the `dial`'s 16-byte token; then it waits for the handshake, which the
#: module that asked (the sender) starts. A frame never starts with "W" (its version).
REVERSE_PREFACE: Final = b"WA2Prev\x05"

#: The image types we exchange.
PHOTO_MIME_TYPES: Final = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_SHA256: Final = re.compile(r"[0-9a-f]{64}")
_MESSAGE_ID: Final = re.compile(r"[0-9A-Za-z_-]{1,64}")
_GROUP_ID: Final = re.compile(r"[0-9a-f]{32}")
#: Largest group version a message may carry (JSON's safe integers: it is shown to programs).
_MAX_EPOCH: Final = 2**53 - 1

ReceiverEvent = (
    ev.Hello
    | ev.Text
    | ev.PhotoOffer
    | ev.PhotoChunk
    | ev.PhotoCompleted
    | ev.Refused
    | ev.ConnectionTimedOut
)


class ReceiverState(enum.Enum):
    AWAIT_HELLO = "awaiting hello"
    IDLE = "idle"
    DECIDING = "deciding on a photo"  # offered; we have not said Resume/Ack/Rejected yet
    RECEIVING_PHOTO = "receiving a photo"
    AWAIT_END = "awaiting a photo's digest"
    CLOSED = "closed"


# (state, message received) -> next state; missing pairs are protocol errors.
_RECEIVER_TRANSITIONS: Final[dict[tuple[ReceiverState, type[ev.Message]], ReceiverState]] = {
    (ReceiverState.AWAIT_HELLO, ev.Hello): ReceiverState.IDLE,
    (ReceiverState.IDLE, ev.Text): ReceiverState.IDLE,
    (ReceiverState.IDLE, ev.PhotoOffer): ReceiverState.DECIDING,
    (ReceiverState.RECEIVING_PHOTO, ev.PhotoChunk): ReceiverState.RECEIVING_PHOTO,
    (ReceiverState.AWAIT_END, ev.PhotoEnd): ReceiverState.IDLE,
}


class PeerReceiver(OverChannel):
    """The receiving side of one peer connection. Sans-IO; time is passed in."""

    def __init__(
        self,
        now: float,
        limits: Limits | None = None,
        timeouts: Timeouts | None = None,
        channel: Channel | None = None,
    ) -> None:
        self.limits = limits or Limits()
        self.timeouts = timeouts or Timeouts()
        self.state = ReceiverState.AWAIT_HELLO
        self.peer_phone: str | None = None
        self._channel = channel or PlainChannel(self.limits.max_peer_frame)
        self._events: deque[ReceiverEvent] = deque()
        self._deadline = now + (
            self.timeouts.hello_deadline if self._channel.established else self.timeouts.handshake
        )
        self._photo_id: str | None = None
        self._photo_size = 0
        self._photo_remaining = 0
        self._unanswered: set[str] = set()
        self._stalled_since: float | None = None

    @property
    def unanswered(self) -> int:
        """Messages received and not answered yet (only their ids are remembered)."""
        return len(self._unanswered)

    def writing_paused(self, now: float) -> None:
        """Our answers no longer drain (the transport's buffer is full)."""
        if self._stalled_since is None:
            self._stalled_since = now

    def writing_resumed(self) -> None:
        self._stalled_since = None

    def receive_data(self, data: Buffer, now: float) -> None:
        if self.state is ReceiverState.CLOSED:
            return
        was_established = self._channel.established
        self._channel.receive_data(data)
        while not self._closed() and (body := self._channel.next_body()) is not None:
            self._handle(decode_message(body))
            self._deadline = now + self.timeouts.peer_idle
        if (
            not was_established
            and self._channel.established
            and self.state is ReceiverState.AWAIT_HELLO
        ):  # (the hello may have come with the handshake's last message: then it is idle)
            self._deadline = now + self.timeouts.hello_deadline

    def _handle(self, message: ev.Message) -> None:
        next_state = _RECEIVER_TRANSITIONS.get((self.state, type(message)))
        if next_state is None:
            raise RemoteProtocolError(f"{message.TYPE!r} is not allowed while {self.state.value}")
        if isinstance(message, ev.Hello):
            if not E164.fullmatch(message.phone):
                raise RemoteProtocolError("hello: not an E.164 phone number")
            self.peer_phone = message.phone
        elif isinstance(message, ev.Text | ev.PhotoOffer):
            if not _MESSAGE_ID.fullmatch(message.id):
                raise RemoteProtocolError("invalid message id")
            # Only the ids awaiting our answer are remembered (a connection may carry any
            # number of messages): an answered one sent again is a retry, which the app
            # acknowledges without showing it twice.
            if message.id in self._unanswered:
                raise RemoteProtocolError(f"message id {message.id} used twice")
            self._unanswered.add(message.id)
            refusal = self._refusal(message)
            if refusal is not None:
                # No chunk flows before our decision, so a refusal leaves the connection usable.
                self._events.append(ev.Refused(message.id, refusal))
                return
            if isinstance(message, ev.PhotoOffer):
                self._photo_id, self._photo_size = message.id, message.size
        elif isinstance(message, ev.PhotoChunk):
            if message.id != self._photo_id:
                raise RemoteProtocolError("chunk of a photo that is not being sent")
            if not message.data or len(message.data) > self._photo_remaining:
                raise RemoteProtocolError("photo chunks exceed the announced size")
            self._photo_remaining -= len(message.data)
            self._events.append(message)
            if self._photo_remaining == 0:
                self.state = ReceiverState.AWAIT_END
            return
        elif isinstance(message, ev.PhotoEnd):
            if message.id != self._photo_id:
                raise RemoteProtocolError("digest of a photo that is not being sent")
            if not _SHA256.fullmatch(message.sha256):
                raise RemoteProtocolError("invalid SHA-256")
            self._photo_id = None
            self.state = next_state
            self._events.append(ev.PhotoCompleted(message.id, message.sha256))
            return
        assert isinstance(message, ev.Hello | ev.Text | ev.PhotoOffer)
        self.state = next_state
        self._events.append(message)

    def _closed(self) -> bool:
        # A refusal or a timeout closes the connection in the middle of a batch of frames.
        return self.state is ReceiverState.CLOSED

    def _refusal(self, message: ev.Text | ev.PhotoOffer) -> str | None:
        limits = self.limits
        if message.group is not None and not 0 < len(message.group) <= limits.max_name_chars:
            return "invalid group name"
        if message.grp is not None:
            refusal = _group_refusal(message.grp, message.group, limits)
            if refusal is not None:
                return refusal
        try:
            stamp = dt.datetime.fromisoformat(message.timestamp)
        except ValueError:
            return "invalid timestamp"
        if stamp.tzinfo is None:
            return "timestamp without a time zone"
        if isinstance(message, ev.Text):
            if len(message.body.encode("utf-8", "surrogatepass")) > limits.max_text_bytes:
                return f"text longer than {limits.max_text_bytes} bytes"
            return None
        if not 0 < message.size <= limits.max_photo_bytes:
            return f"photo size {message.size} outside 1..{limits.max_photo_bytes} bytes"
        if message.mime not in PHOTO_MIME_TYPES:
            return f"unsupported photo type {message.mime[:40]!r}"
        if not _SHA256.fullmatch(message.key):
            return "invalid photo key"
        if not 0 < len(message.filename) <= limits.max_name_chars:
            return "invalid file name"
        return None

    def next_event(self) -> ReceiverEvent | None:
        return self._events.popleft() if self._events else None

    def send(self, message: ev.Ack | ev.Rejected | ev.Resume | ev.Closing) -> Buffer:
        """Answer a message received on this connection, or refuse the whole connection."""
        if isinstance(message, ev.Closing):
            self.state = ReceiverState.CLOSED
            return self._channel.seal(encode_message(message))
        if message.id not in self._unanswered:
            raise LocalProtocolError(f"no message {message.id} to answer")
        deciding = self.state is ReceiverState.DECIDING and message.id == self._photo_id
        if isinstance(message, ev.Resume):
            if not deciding or not 0 <= message.offset < self._photo_size:
                raise LocalProtocolError("resume only a photo being decided, inside its size")
            self._photo_remaining = self._photo_size - message.offset
            self.state = ReceiverState.RECEIVING_PHOTO
            return self._channel.seal(encode_message(message))
        if deciding:  # taken without its bytes (already stored), or refused
            self.state, self._photo_id = ReceiverState.IDLE, None
        self._unanswered.discard(message.id)
        return self._channel.seal(encode_message(message))

    def get_timer(self) -> float | None:
        """The handshake, hello or idle deadline (`peer_idle` without a message), or the
        stalled answers' (`write_drain` without draining), whichever comes first."""
        if self.state is ReceiverState.CLOSED:
            return None
        if self._stalled_since is not None:
            return min(self._deadline, self._stalled_since + self.timeouts.write_drain)
        return self._deadline

    def handle_timer(self, now: float) -> None:
        timer = self.get_timer()
        if timer is None or now < timer:
            return
        if not self._channel.established:
            reason = "no secure handshake in time"
        elif now < self._deadline:
            reason = "the peer stopped reading"
        elif self.state is ReceiverState.AWAIT_HELLO:
            reason = "no hello"
        else:
            reason = "peer idle"
        self.state = ReceiverState.CLOSED
        self._events.append(ev.ConnectionTimedOut(reason))


def _group_refusal(info: ev.GroupInfo, name: str | None, limits: Limits) -> str | None:
    """Why a message's group is malformed (docs/protocol.md §6.12), or None."""
    if name is None:
        return "a group without a name"
    if not _GROUP_ID.fullmatch(info.id):
        return "invalid group id"
    most = limits.max_group_members
    if not 0 < len(info.members) <= most:
        return f"a group has 1 to {most} members"
    if not all(E164.fullmatch(phone) for phone in info.members):
        return "a group member that is not an E.164 number"
    if len(set(info.members)) != len(info.members):
        return "a group member listed twice"
    if not E164.fullmatch(info.creator):
        return "a group creator that is not an E.164 number"
    if len(info.salt) != 16:
        return "a group salt is 16 bytes"
    if not 0 <= info.epoch <= _MAX_EPOCH:
        return "invalid group version"
    change = info.change
    if change is not None:
        if change.op not in ev.GROUP_OPS:
            return f"unknown group change {change.op[:20]!r}"
        if len(change.phones) > most or not all(E164.fullmatch(p) for p in change.phones):
            return "invalid numbers in a group change"
    return None


class SenderState(enum.Enum):
    NEW = "new"
    READY = "ready"
    OFFERING = "waiting to hear from where to send a photo"
    SENDING_PHOTO = "sending a photo"
    ENDING = "sending a photo's digest"
    CLOSED = "closed"


_SENDER_TRANSITIONS: Final[dict[tuple[SenderState, type[ev.Message]], SenderState]] = {
    (SenderState.NEW, ev.Hello): SenderState.READY,
    (SenderState.READY, ev.Text): SenderState.READY,
    (SenderState.READY, ev.PhotoOffer): SenderState.OFFERING,
    (SenderState.SENDING_PHOTO, ev.PhotoChunk): SenderState.SENDING_PHOTO,
    (SenderState.ENDING, ev.PhotoEnd): SenderState.READY,
}


SenderEvent = (
    ev.Ack | ev.Rejected | ev.Resume | ev.Closing | ev.ConnectionTimedOut | ev.ConnectionIdle
)


class PeerSender(OverChannel):
    """The sending side of one peer connection: orders what we send, matches the answers,
    and owns the sender's deadlines (time passed in):

    - the secure handshake must complete within `Timeouts.handshake`;
    - every text must be answered within `peer_ack` of being sent; a photo's offer
      within `peer_ack`, and the photo itself within `peer_ack` after its last byte
      (while its bytes flow, a long transfer is fine as long as it moves);
    - writes that cannot drain (`writing_paused` without `writing_resumed`) for
      `write_drain` mean the peer stopped reading;
    any of these times the connection out (`ConnectionTimedOut`: close it, failing what
    waits); with nothing outstanding for `link_keep` (at most half the receiver's
    `peer_idle`), it is idle (`ConnectionIdle`: close it gracefully).
    """

    def __init__(
        self,
        now: float,
        limits: Limits | None = None,
        timeouts: Timeouts | None = None,
        channel: Channel | None = None,
    ) -> None:
        self.limits = limits or Limits()
        self.timeouts = timeouts or Timeouts()
        self.state = SenderState.NEW
        self._channel = channel or PlainChannel(self.limits.max_peer_frame)
        #: Texts awaiting their answer: id -> when it is due, oldest (so first due) first.
        self._texts: dict[str, float] = {}
        self._photo_id: str | None = None
        self._photo_size = 0
        self._photo_remaining = 0
        #: When the photo's answer is due (None: none awaited, or its bytes are flowing).
        self._photo_due: float | None = None
        #: The photo's last byte and digest went out (its ack alone is missing).
        self._photo_sent = False
        self._handshake_due = now + self.timeouts.handshake
        self._stalled_since: float | None = None
        self._keep = min(self.timeouts.link_keep, self.timeouts.peer_idle / 2)
        self._last_used = now
        self._events: deque[SenderEvent] = deque()

    def send(self, message: ev.PeerMessage, now: float) -> Buffer:
        next_state = _SENDER_TRANSITIONS.get((self.state, type(message)))
        if next_state is None:
            raise LocalProtocolError(f"cannot send {message.TYPE!r} while {self.state.value}")
        if isinstance(message, ev.Text):
            if message.id in self._texts or message.id == self._photo_id:
                raise LocalProtocolError(f"message id {message.id} is already outstanding")
            self._texts[message.id] = now + self.timeouts.peer_ack
        elif isinstance(message, ev.PhotoOffer):
            if message.id in self._texts:
                raise LocalProtocolError(f"message id {message.id} is already outstanding")
            self._photo_id, self._photo_size = message.id, message.size
            self._photo_due, self._photo_sent = now + self.timeouts.peer_ack, False
        elif isinstance(message, ev.PhotoChunk):
            if message.id != self._photo_id or not 0 < len(message.data) <= self._photo_remaining:
                raise LocalProtocolError("chunk does not fit the photo being sent")
            self._photo_remaining -= len(message.data)
            if self._photo_remaining == 0:
                next_state = SenderState.ENDING
        elif isinstance(message, ev.PhotoEnd):
            if message.id != self._photo_id:
                raise LocalProtocolError("digest of another photo than the one being sent")
            self._photo_due, self._photo_sent = now + self.timeouts.peer_ack, True
        self.state = next_state
        self._last_used = now
        return self._channel.seal(encode_message(message))

    def receive_data(self, data: Buffer, now: float) -> None:
        if self.state is SenderState.CLOSED:
            return
        self._channel.receive_data(data)
        while (body := self._channel.next_body()) is not None:
            message = decode_message(body)
            if isinstance(message, ev.Closing):
                self.state = SenderState.CLOSED
                self._events.append(message)
                return
            if not isinstance(message, ev.Ack | ev.Rejected | ev.Resume):
                raise RemoteProtocolError(f"a receiver may not send {message.TYPE!r}")
            self._answered(message)
            self._last_used = now
            self._events.append(message)

    def _answered(self, message: ev.Ack | ev.Rejected | ev.Resume) -> None:
        if message.id != self._photo_id:
            if isinstance(message, ev.Resume) or self._texts.pop(message.id, None) is None:
                raise RemoteProtocolError(f"answer for unknown message {message.id[:64]!r}")
            return
        if isinstance(message, ev.Resume):
            if self.state is not SenderState.OFFERING or not 0 <= message.offset < self._photo_size:
                raise RemoteProtocolError("resume of a photo not on offer, or past its end")
            self._photo_remaining = self._photo_size - message.offset
            self._photo_due = None  # its bytes flow now: their progress is the deadline
            self.state = SenderState.SENDING_PHOTO
            return
        if self.state is SenderState.SENDING_PHOTO or self.state is SenderState.ENDING:
            self.state = SenderState.CLOSED  # refused mid-photo: no more chunks
        elif self.state is SenderState.OFFERING:
            self.state = SenderState.READY  # taken as it is (already stored), or refused
        self._photo_id, self._photo_due, self._photo_sent = None, None, False

    def sent_whole(self, message_id: str) -> bool:
        """Whether all of a message awaiting its answer went out (a text, or a photo's
        last byte and digest): it may have arrived, whatever happens next."""
        return message_id in self._texts or (message_id == self._photo_id and self._photo_sent)

    def writing_paused(self, now: float) -> None:
        """Our writes no longer drain (the transport's buffer is full)."""
        if self._stalled_since is None:
            self._stalled_since = now

    def writing_resumed(self, now: float) -> None:
        self._stalled_since = None
        self._last_used = now

    def writing_progressed(self, now: float) -> None:
        """Our writes still wait, but some of them drained since the last look: a slow
        peer, not a stopped one (a transfer fails when it stops moving, not when it is
        long)."""
        if self._stalled_since is not None:
            self._stalled_since = now

    def next_event(self) -> SenderEvent | None:
        return self._events.popleft() if self._events else None

    def _outstanding(self) -> bool:
        return bool(self._texts) or self._photo_id is not None

    def get_timer(self) -> float | None:
        """When `handle_timer` has something to do next (None: nothing, ever)."""
        if self.state is SenderState.CLOSED:
            return None
        if not self._channel.established:
            return self._handshake_due
        timer: float | None = None
        if self._texts:
            timer = next(iter(self._texts.values()))
        if self._photo_due is not None and (timer is None or self._photo_due < timer):
            timer = self._photo_due
        if self._stalled_since is not None:
            stall = self._stalled_since + self.timeouts.write_drain
            if timer is None or stall < timer:
                timer = stall
        if not self._outstanding():
            idle = self._last_used + self._keep
            if timer is None or idle < timer:
                timer = idle
        return timer

    def handle_timer(self, now: float) -> None:
        if self.state is SenderState.CLOSED:
            return
        reason = None
        if not self._channel.established:
            if now >= self._handshake_due:
                reason = "no secure handshake in time"
        elif (
            self._stalled_since is not None
            and self._stalled_since + self.timeouts.write_drain <= now
        ):
            reason = "the peer stopped reading (timed out)"
        elif (self._texts and next(iter(self._texts.values())) <= now) or (
            self._photo_due is not None and self._photo_due <= now
        ):
            reason = "no answer from the peer (timed out)"
        elif not self._outstanding() and self._last_used + self._keep <= now:
            self.state = SenderState.CLOSED
            self._events.append(ev.ConnectionIdle())
            return
        if reason is not None:
            self.state = SenderState.CLOSED
            self._events.append(ev.ConnectionTimedOut(reason))
