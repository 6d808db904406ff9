"""Every limit and timeout in one place, passed to the objects that enforce them."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["IncomingLimits", "Limits", "MiB", "RateLimits", "Timeouts"]

KiB = 1024
MiB = 1024 * KiB


@dataclass(frozen=True, slots=True)
class Limits:
    """Sizes that bound what a peer or a client can make us hold in memory or on disk."""

    #: Largest message body a directory server accepts from a module (checked as it
    #: arrives, before more is held).
    max_directory_frame: int = 64 * KiB
    #: Largest message body a server sends and a module accepts: a lookup's answer may
    #: list all of its (at most `max_lookup_phones`) numbers, each with its address.
    max_directory_answer: int = 512 * KiB
    #: Largest frame body accepted from a peer; photo chunks are smaller than this.
    max_peer_frame: int = 1 * MiB
    #: Size of the photo chunks we send: as large as the peer frame cap allows (with room
    #: for the message around it), since each chunk costs two thread hand-offs on either
    #: side.
    photo_chunk: int = 1 * MiB - 1 * KiB
    #: Largest photo accepted or sent.
    max_photo_bytes: int = 64 * MiB
    #: Largest decoded image (width x height); guards viewers against decompression bombs.
    max_photo_pixels: int = 89_478_485  # Pillow's own decompression-bomb threshold
    #: Longest text message, in UTF-8 bytes.
    max_text_bytes: int = 64 * KiB
    #: Longest group name, contact name or photo file name, in characters.
    max_name_chars: int = 128
    #: Most members of a group (its messages carry them all; a send looks them all up).
    max_group_members: int = 256
    #: Most groups a module keeps (others can add us to groups: this bounds them).
    max_groups: int = 1000
    #: Most phone numbers in one lookup.
    max_lookup_phones: int = 1024
    #: Longest phone number string accepted on the wire (E.164 is at most 16).
    max_phone_chars: int = 32
    #: Most messages (one per recipient) waiting in the outbox.
    max_outbox: int = 100_000
    #: History rows kept (each message, once per peer); older ones are dropped, never
    #: ones still queued or not yet shown. The ids of what is kept are how a retried
    #: delivery is recognised, so this also bounds that memory of seen messages.
    max_history: int = 1_000_000
    #: Incoming peer connections (each may carry a photo transfer) held at once, in all
    #: and from one source IP; more are closed as they arrive.
    max_peer_connections: int = 512
    max_peer_connections_per_ip: int = 64
    #: Connections a module opens to one peer for photos at once (its texts share one
    #: more); fewer than a receiver takes from one IP, so a second sender there gets in.
    max_links_per_peer: int = 32
    #: Incoming photos written at once, each through a 1 MiB buffer (about 3.5 MiB each in
    #: all); more wait for their turn before their offer is answered, their senders
    #: sending nothing meanwhile, so a crowd of any size costs this many photos' memory.
    max_photos_writing: int = 32


@dataclass(frozen=True, slots=True)
class IncomingLimits:
    """Receiver side: how much one sender may make us store, and how much disk arriving
    photos may take. Contacts (numbers in the address book or one of its groups) get more
    than strangers: a stranger can say hello and send a photo, not flood a person or a
    disk. A message over a limit is answered `rejected` with a code the sender sees
    (`rate-limited`, `no-room`: try later); nothing over a limit is stored or shown."""

    #: Messages (texts and photo offers) per second from one contact, and the burst it may
    #: save up (a contact's outbox, flushed when we come online, arrives as one burst).
    contact_messages_rate: float = 200.0
    contact_messages_burst: float = 20_000.0
    #: The same for a stranger: a conversation's opening, then one a second.
    stranger_messages_rate: float = 1.0
    stranger_messages_burst: float = 30.0
    #: Photo bytes per second from one sender, and the burst (at least `max_photo_bytes`,
    #: or the largest photo could never arrive).
    contact_photo_rate: float = 64 * MiB
    contact_photo_burst: float = 1024 * MiB
    stranger_photo_rate: float = 256 * KiB
    stranger_photo_burst: float = 64 * MiB
    #: Bytes of photos arriving (or interrupted, kept for a resume, `partial/`) from one
    #: sender, and from everyone together; an offer that does not fit after the sender's
    #: own older interrupted transfers are dropped is refused before any byte flows.
    contact_partial_bytes: int = 256 * MiB
    stranger_partial_bytes: int = 64 * MiB
    partial_bytes: int = 1024 * MiB
    #: ...of which strangers together may take this much (contacts always find room).
    strangers_partial_bytes: int = 256 * MiB
    #: Photos arriving at once from one contact, from one stranger, and from strangers
    #: together (of the `Limits.max_photos_writing` written at once: contacts always
    #: find a turn).
    contact_photos_at_once: int = 8
    stranger_photos_at_once: int = 2
    strangers_photos_at_once: int = 8
    #: Free space an arriving photo must leave on the data dir's disk, for the history
    #: and everything else the module writes.
    disk_reserve: int = 64 * MiB
    #: Senders remembered (least recently heard from forgotten first).
    max_senders: int = 65536
    #: Requests to connect back (a module that cannot reach us asks, through the
    #: server) answered per second, and the burst: from one stranger; from contacts
    #: together (a photo each may ask), and strangers together.
    dials_each_rate: float = 1.0
    dials_each_burst: float = 5.0
    contact_dials_rate: float = 20.0
    contact_dials_burst: float = 50.0
    stranger_dials_rate: float = 5.0
    stranger_dials_burst: float = 20.0


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds. Each one stops a dead or frozen party from holding anything forever."""

    #: Opening a TCP connection (to the server or to a peer).
    connect: float = 5.0
    #: Opening one to a peer's LAN address (behind the same router: tried first). One
    #: that does not answer this fast is not on our LAN.
    lan_connect: float = 1.0
    #: A peer not connected within this time (or refused) is also asked, through the
    #: server, to connect to us (it may be behind a router that keeps us out); the first
    #: connection to come is taken.
    reverse_after: float = 1.0
    #: Meeting a peer at a relay when no direct way connected: reaching a relay that
    #: joins us to the peer (all the relays named tried at once) within this time.
    relay_meet: float = 6.0
    #: A peer last reached through a relay is met there at once for this long (its
    #: direct ways are tried again after, or as soon as its address changes).
    relay_keep: float = 600.0
    #: Completing the secure handshake: how long a connection may stay unauthenticated.
    handshake: float = 5.0
    #: Waiting for the server to answer a request.
    server_reply: float = 10.0
    #: Interval between heartbeats sent to the server.
    heartbeat_interval: float = 10.0
    #: Reconnecting to the server: the first retry, and the longest pause between retries
    #: (each pause is doubled, capped, then jittered down by up to half).
    reconnect_first: float = 0.1
    reconnect_max: float = 2.0
    #: Retrying queued messages to a recipient that is online but failed: first and
    #: longest pause (doubling in between).
    outbox_retry_first: float = 2.0
    outbox_retry_max: float = 60.0
    #: How long a queued group message a member refuses `not-member` keeps being tried
    #: (it may not have heard yet that we were added), from when it was sent.
    not_member_wait: float = 3600.0
    #: How long the start of an interrupted incoming photo is kept for a resume.
    partial_keep: float = 24 * 3600.0
    #: Server side: a connection that sends nothing for this long is dropped (and unregistered).
    server_idle: float = 25.0
    #: Server side, with a shared directory (Redis): a registration its server stops
    #: renewing (crashed) expires this long after its last heartbeat; a frozen server's
    #: users stay online this long less a heartbeat and a batch of renewals (34.5 s),
    #: past the 20 s their modules wait before registering through another server.
    presence_ttl: float = 45.0
    #: Server side: a connection must register within this time.
    register_deadline: float = 10.0
    #: Peer side: the sender must say hello within this time.
    hello_deadline: float = 10.0
    #: Peer side: a connection silent for this long is closed.
    peer_idle: float = 25.0
    #: A write that cannot drain for this long means the other side is frozen.
    write_drain: float = 20.0
    #: Sender side: waiting for the answer to a message (a photo's: to its offer, and
    #: after its last byte; while its bytes flow, `write_drain` measures the progress).
    peer_ack: float = 20.0
    #: Sender side: a connection to a peer is kept this long after its last answer, for
    #: the next message (at most half of `peer_idle`, so that the receiver, which times
    #: a quiet connection out after `peer_idle`, never closes it first).
    link_keep: float = 10.0
    #: Receiver side: after refusing a connection, how long its sender's bytes are still
    #: read (closing with unread bytes sends a TCP reset, which can destroy the refusal
    #: before the sender reads it).
    refusal_grace: float = 2.0
    #: Receiver side: a photo offered again while an earlier transfer of it is under way
    #: waits this long for that one to end (its sender most likely gave up on it), so
    #: that it resumes from what that one kept.
    supersede: float = 5.0
    #: Receiver side: a photo waits this long for its turn to be written
    #: (`Limits.max_photos_writing`), then is refused for now (`no-room`), well before
    #: its sender would give up on the answer (`peer_ack`).
    turn_wait: float = 10.0


@dataclass(frozen=True, slots=True)
class RateLimits:
    """Server side: how much one connection and one source IP may ask.

    Lookups cost one token per phone number asked, so enumerating numbers is slow while
    a group send is one cheap request. The per-IP defaults leave room for many user
    modules on one computer; an operator running a load test from one host raises them.
    """

    #: Numbers looked up per second by one connection, and the burst it may save up.
    lookup_rate: float = 200.0
    lookup_burst: float = 2000.0
    #: The same, for all connections from one source IP together.
    ip_lookup_rate: float = 5000.0
    ip_lookup_burst: float = 20000.0
    #: Registrations per second from one source IP (each connection registers once).
    ip_register_rate: float = 50.0
    ip_register_burst: float = 500.0
    #: Connections from one IP that have not completed the secure handshake yet.
    max_unauthenticated_per_ip: int = 256
    #: Requests to have a module connect back (`reverse`) per second by one connection,
    #: and by one source IP, with their bursts: each makes another module dial out.
    reverse_rate: float = 5.0
    reverse_burst: float = 20.0
    ip_reverse_rate: float = 50.0
    ip_reverse_burst: float = 200.0
    #: ...and asking one number, from anyone (its module answers a few a second).
    reverse_to_rate: float = 5.0
    reverse_to_burst: float = 20.0
    #: Reports of how a connection was made (`report`, counted for the operator) per
    #: second by one connection, and its burst: one per connection a module opens.
    report_rate: float = 20.0
    report_burst: float = 100.0
