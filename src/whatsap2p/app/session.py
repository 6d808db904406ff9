"""The Session: one user module's life, composed of collaborators with one job each.

    Registrar   stays registered at a server of the list (app/registration.py)
    Trust       which key each number may use (app/trust.py)
    Sender      lookup, fan-out, reports, history of what we send (app/sending.py)
    Outbox      queued messages, delivered when their recipient comes online (app/outbox.py)
    Inbox       what arrives: senders checked, stored, then shown once (app/inbox.py)

Every UI (JSON-RPC, plain lines, terminal UI) drives a Session and reads its `events`
queue; none of them touches a socket.

Who is who: the module proves its own key (identity.key) to the server and to peers.
A send only completes a handshake with the key the server returned for the number and,
once a number's key is pinned (trust.json, trust on first use), only with that key. A
receiver checks that the key a sender proved is the one bound to the number it claims.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from whatsap2p.app.contacts import FILE_NAME as CONTACTS_FILE
from whatsap2p.app.contacts import AddressBook
from whatsap2p.app.events import (
    DeliveryReport,
    GroupChanged,
    IdentityChanged,
    PhotoReceived,
    PresenceChanged,
    ServerConnectionChanged,
    SessionEvent,
    TextReceived,
)
from whatsap2p.app.groups import Group
from whatsap2p.app.history import FILE_NAME as HISTORY_FILE
from whatsap2p.app.history import History, HistoryEntry
from whatsap2p.app.inbox import Inbox
from whatsap2p.app.outbox import Outbox
from whatsap2p.app.photos import PhotoStore
from whatsap2p.app.registration import Registrar
from whatsap2p.app.sending import Sender, check_message_id
from whatsap2p.app.storage import DataDirLock, remove_leftovers
from whatsap2p.app.trust import FILE_NAME as TRUST_FILE
from whatsap2p.app.trust import Trust, TrustStore
from whatsap2p.background import Background
from whatsap2p.config import IncomingLimits, Limits, Timeouts
from whatsap2p.errors import (
    CannotListen,
    InvalidInput,
    ServerUnreachable,
    StoreError,
    UnknownMessage,
)
from whatsap2p.keyfile import load_or_create_key
from whatsap2p.net.directory_client import DirectoryClient
from whatsap2p.net.listener import PeerListener
from whatsap2p.net.network import Network, TcpNetwork, host_port
from whatsap2p.net.pool import LinkPool
from whatsap2p.net.rendezvous import Rendezvous
from whatsap2p.phone import DEFAULT_REGION, normalise_phone
from whatsap2p.protocol import events as ev
from whatsap2p.protocol.keys import StaticKey, fingerprint

__all__ = ["IDENTITY_FILE", "Session", "SessionConfig"]

IDENTITY_FILE = "identity.key"

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SessionConfig:
    phone: str  # E.164
    server_host: str
    server_port: int
    data_dir: Path
    listen_host: str = "0.0.0.0"
    listen_port: int = 0
    advertise: str | None = None
    region: str = DEFAULT_REGION
    #: Refuse any server whose key does not have this fingerprint.
    server_fingerprint: str | None = None
    limits: Limits = field(default_factory=Limits)
    #: How much one sender may make us store (contacts more than strangers).
    incoming: IncomingLimits = field(default_factory=IncomingLimits)
    timeouts: Timeouts = field(default_factory=Timeouts)
    #: More servers of the same deployment (sharing one directory and one key), tried in
    #: turn after (server_host, server_port) when it does not answer or is lost.
    more_servers: tuple[tuple[str, int], ...] = ()
    #: Where connections come from (TCP; tests give an in-memory network).
    network: Network = field(default_factory=TcpNetwork)

    @property
    def servers(self) -> tuple[tuple[str, int], ...]:
        return ((self.server_host, self.server_port), *self.more_servers)


class Session:
    """Use as `async with Session(config) as session:`; it is registered inside."""

    def __init__(self, config: SessionConfig) -> None:
        self.config = config
        self.phone = config.phone
        limits = config.limits
        self.book = AddressBook.load(
            config.data_dir / CONTACTS_FILE,
            config.region,
            max_name_chars=limits.max_name_chars,
            me=config.phone,
            max_groups=limits.max_groups,
            max_members=limits.max_group_members,
        )
        self.trust = TrustStore.load(config.data_dir / TRUST_FILE)
        self._keys = Trust(self.trust, self._key_changed)
        self.photos = PhotoStore(
            config.data_dir / "photos",
            config.limits,
            incoming=config.incoming,
            known=self.book.knows,
        )
        self.events: asyncio.Queue[SessionEvent] = asyncio.Queue()
        self.listen_address: tuple[str, int] | None = None
        self.identity: StaticKey | None = None
        self.history: History | None = None
        self._lock = DataDirLock(config.data_dir)
        self._listener: PeerListener | None = None
        self._pool: LinkPool | None = None
        self._registrar: Registrar | None = None
        self._outbox: Outbox | None = None
        self._sender: Sender | None = None
        self._inbox: Inbox | None = None
        self._rendezvous: Rendezvous | None = None
        #: Numbers whose coming online the UI wants to hear of (PresenceChanged).
        self._presence: frozenset[str] = frozenset()
        #: Confirmations under way that a member left a group of ours.
        self._confirming = Background(log)

    # --- what the UIs read -----------------------------------------------------------------

    @property
    def published(self) -> ev.Registered | None:
        """The address the server published for us at the last registration."""
        return None if self._registrar is None else self._registrar.published

    @property
    def server(self) -> str | None:
        """`HOST:PORT` of the server of the list we are registered at (None: none now)."""
        where = None if self._registrar is None else self._registrar.server
        return None if where is None else host_port(*where)

    @property
    def server_connected(self) -> bool:
        return self._registrar is not None and self._registrar.connected

    @property
    def changed_keys(self) -> frozenset[str]:
        """Numbers that proved a key other than the pinned one, waiting for `trust_key`."""
        return self._keys.changed

    @property
    def fingerprint(self) -> str:
        assert self.identity is not None, "start() the session first"
        return self.identity.fingerprint

    # --- life ------------------------------------------------------------------------------

    async def __aenter__(self) -> Session:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Take the data dir, listen for peers, then register (reachable once listed)."""
        config = self.config
        try:
            config.data_dir.mkdir(parents=True, exist_ok=True)
            if not self._lock.acquire():
                raise StoreError(
                    f"data dir {config.data_dir} is in use by another whatsap2p module"
                )
            # Only with the lock held: this clears half-received photos of earlier runs,
            # and the temporary files of saves that a killed module never finished.
            for leftover in remove_leftovers(config.data_dir):
                log.info("removed %s, left by an unfinished save", leftover)
            self.photos.open(time.time(), config.timeouts.partial_keep)
            self.identity = identity = load_or_create_key(config.data_dir / IDENTITY_FILE)
            self.history = history = History(
                config.data_dir / HISTORY_FILE, self.phone, config.limits.max_history
            )
            for group in self.book.migrated:  # (groups that had no id: their history too)
                history.adopt_group(group.id, group.name, group.members)
            self.book.finish_migration()  # (written only now: adopted, under the lock)
        except OSError as exc:
            self._lock.release()
            raise StoreError(f"cannot use data dir {config.data_dir}: {exc.strerror}") from exc
        except BaseException:
            self._lock.release()
            raise
        limits, timeouts, network = config.limits, config.timeouts, config.network
        self._pool = pool = LinkPool(self.phone, identity, limits, timeouts, network)
        self._outbox = outbox = Outbox(
            config.data_dir / "outbox",
            history,
            self._keys,
            pool,
            self.lookup,
            self._publish,
            limits,
            timeouts,
            connected=lambda: self.server_connected,
            member=self._still_member,
        )
        outbox.rewatch = self._watch
        self._sender = Sender(
            self.phone,
            self.book,
            self._keys,
            pool,
            history,
            outbox,
            self.lookup,
            self._watch,
            limits,
        )
        self._inbox = inbox = Inbox(
            history,
            self.book,
            self.photos,
            self._keys,
            self.lookup,
            self._publish,
            config.incoming,
            group_changed=self._group_changed,
        )
        self._listener = PeerListener(inbox, identity, limits, timeouts, network)
        try:
            self.listen_address = await self._listener.start(config.listen_host, config.listen_port)
        except OSError as exc:
            await self.close()
            raise CannotListen(
                f"cannot listen on {config.listen_host}:{config.listen_port}: {exc.strerror}"
            ) from exc
        self._registrar = registrar = Registrar(
            config.servers,
            self.phone,
            identity,
            self.listen_address[1],
            advertise=config.advertise,
            listen_host=config.listen_host,
            server_fingerprint=config.server_fingerprint,
            limits=limits,
            timeouts=timeouts,
            network=network,
        )
        self._rendezvous = rendezvous = Rendezvous(
            self._listener,
            network,
            timeouts,
            config.incoming,
            self.book.knows,
            lambda: registrar.directory,
        )
        pool.reverse = rendezvous.reach
        pool.relay = rendezvous.relay
        pool.reported = rendezvous.report
        registrar.on_registered = self._registered
        registrar.on_lost = self._lost
        registrar.on_restored = lambda: self._publish(ServerConnectionChanged("restored"))
        try:
            await registrar.start()
        except BaseException:
            await self.close()
            raise
        inbox.show_again()

    async def close(self) -> None:
        """Unregister (if the server is still there) and stop listening."""
        await self._confirming.close()
        if self._outbox is not None:
            await self._outbox.close()
        if self._rendezvous is not None:
            await self._rendezvous.close()
        if self._registrar is not None:
            await self._registrar.close()
        if self._pool is not None:
            await self._pool.close()
        if self._listener is not None:
            await self._listener.close()
        if self.history is not None:
            self.history.close()
            self.history = None
        self._lock.release()

    # --- the directory and trust -----------------------------------------------------------

    async def lookup(self, phones: list[str]) -> dict[str, ev.PeerAddress]:
        registrar = self._registrar
        assert registrar is not None, "start() the session first"
        directory = registrar.directory
        if directory is None or directory.closed.is_set():
            raise ServerUnreachable("not connected to the server (reconnecting)")
        return await directory.lookup(phones)

    async def status(self, target: str) -> dict[str, bool]:
        """Online or not, for every phone `target` stands for."""
        recipients = self.book.resolve(target)
        online = await self.lookup(list(recipients.phones))
        return {phone: phone in online for phone in recipients.phones}

    async def trust_key(self, phone_text: str) -> tuple[str, str]:
        """Accept the key `phone` now has (the changed one we saw, or the one the server
        holds for it now); returns (phone, fingerprint)."""
        phone = normalise_phone(phone_text, self.config.region)
        key = self._keys.waiting(phone)
        if key is None:
            online = await self.lookup([phone])
            key = online[phone].key if phone in online else self.trust.pinned(phone)
        if key is None:
            raise InvalidInput(f"no key known for {phone}: it has not been seen online")
        self._keys.accept(phone, key)
        assert self.history is not None
        assert self._outbox is not None
        if phone in self.history.queued_phones():  # its outbox waited for this
            self._outbox.retry(phone)
        return phone, fingerprint(key)

    def _key_changed(self, phone: str, key: bytes) -> None:
        self._publish(IdentityChanged(phone, fingerprint(key)))

    # --- sending ---------------------------------------------------------------------------

    async def send_text(
        self, target: str, text: str, queue: bool = False, message_id: str | None = None
    ) -> DeliveryReport:
        """Send a text; with `queue`, what cannot be delivered now (the recipient
        offline or out of reach, the server unreachable) waits in the outbox. Under
        `message_id` if given: a retry of the message sent under that id before."""
        assert self._sender is not None, "start() the session first"
        return await self._sender.send_text(target, text, queue, message_id)

    async def send_photo(
        self,
        target: str,
        path: str | Path,
        queue: bool = False,
        progress: Callable[[int, int], None] | None = None,
        message_id: str | None = None,
    ) -> DeliveryReport:
        """Send a photo; `progress(sent, total)` follows the transfer, in bytes summed
        over the recipients being sent to (a resumed transfer starts part way)."""
        assert self._sender is not None, "start() the session first"
        return await self._sender.send_photo(target, path, queue, progress, message_id)

    async def resend(self, message_id: str, queue: bool = False) -> DeliveryReport:
        """Send a message we sent before again, under its id, to the recipients it did
        not reach (failed, offline, cancelled): they show it once, whatever came of the
        first try. Its target is the one it was sent to (its group, or its recipient)."""
        assert self.history is not None, "start() the session first"
        rows = self.history.sent(check_message_id(message_id))
        if not rows:
            raise InvalidInput(f"no message {message_id} was sent from here")
        first = rows[0]
        if first.change is not None:
            raise InvalidInput(
                f"message {message_id} is the news of a change of the group's members: the"
                " outbox delivers it to whoever it waits for; it is not sent again"
            )
        target = first.group_id if first.group_id is not None else first.recipient
        if first.photo is None:
            return await self.send_text(target, first.text or "", queue, message_id)
        path = str(first.photo["path"])
        if not await asyncio.to_thread(Path(path).is_file):  # (a queued copy goes once done)
            raise InvalidInput(
                f"photo {first.photo.get('filename', '')!r} of message {message_id} is no"
                " longer kept here: attach it again to send it"
            )
        return await self.send_photo(target, path, queue, message_id=message_id)

    # --- groups --------------------------------------------------------------------------

    async def create_group(self, name: str, members: list[str], private: bool = False) -> Group:
        """A new group of ours, its members told at once (queued for those who cannot be
        reached now); `private`: a list of ours alone, sent to as direct messages."""
        group = self.book.create_group(name, members, private)
        if not private:
            await self._tell(group, ev.GroupChange("create", group.others(self.phone)), group)
        return group

    async def add_to_group(self, target: str, member: str) -> Group:
        """Add `member` to a group of ours; all members (the new one too) are told."""
        before = self.book.group(target)
        group = self.book.add_to_group(target, member)
        added = tuple(p for p in group.members if p not in before.members)
        if added and not group.private:
            await self._tell(group, ev.GroupChange("add", added), group)
        return group

    async def remove_from_group(self, target: str, member: str) -> Group:
        """Remove `member` from a group of ours; the members it had (it too) are told."""
        before = self.book.group(target)
        group = self.book.remove_from_group(target, member)
        gone = tuple(p for p in before.members if p not in group.members)
        if not group.private:
            await self._tell(group, ev.GroupChange("remove", gone), before)
        return group

    async def leave_group(self, target: str) -> Group:
        """Leave a group: its members are told (a group whose creator left keeps its
        members, and nobody adds or removes any more)."""
        before = self.book.group(target)
        group = self.book.leave_group(target)
        await self._tell(group, ev.GroupChange("leave"), before)
        self._publish(GroupChanged(group, self.phone, {"op": "leave", "phones": []}))
        return group

    async def _tell(self, group: Group, change: ev.GroupChange, told: Group) -> None:
        """Tell the members of `told` of `change` (after which the group is `group`)."""
        assert self._sender is not None, "start() the session first"
        await self._sender.send_change(group, change, told.others(self.phone), _words(change))

    def _still_member(self, group_id: str, phone: str) -> bool:
        group = self.book.group_by_id(group_id)
        return group is None or group.private or phone in group.members

    def _group_changed(self, event: GroupChanged) -> None:
        """A peer's message changed what we know of a group (it may have removed us; a
        member of ours may have left it, which we confirm to the others)."""
        group = event.group
        removed = self.phone not in group.members and not group.quit
        if removed and self._outbox is not None:
            self._outbox.drop_group(group.id, "you are no longer a member of the group")
        self._publish(event)
        left = event.change is not None and event.change.get("op") == "leave"
        if left and group.creator == self.phone and event.by is not None:
            self._confirming.start(
                self._confirm_left(group, event.by), "confirming a member's leave"
            )

    async def _confirm_left(self, group: Group, phone: str) -> None:
        """Tell the members of our group that `phone` left (a new epoch): every view
        converges, also one that missed the leave."""
        confirmed = self.book.confirm_left(group.id, phone)
        await self._tell(confirmed, ev.GroupChange("left", (phone,)), confirmed)

    def cancel(self, message_id: str) -> list[str]:
        """Take a queued message out of the outbox, for the recipients it still waits
        for; those recipients (their history state becomes `cancelled`)."""
        assert self._outbox is not None, "start() the session first"
        return self._outbox.cancel(check_message_id(message_id))

    def outbox(self) -> list[HistoryEntry]:
        assert self._outbox is not None, "start() the session first"
        return self._outbox.entries()

    # --- the history -----------------------------------------------------------------------

    def conversation(
        self, target: str, limit: int, before: str | None = None
    ) -> list[HistoryEntry]:
        """Newest first: a page of the messages with a contact or number, or of a group
        (by its id, or its name when one group has it); the newest, or those older than
        message `before` (`History.entries`)."""
        history = self.history
        assert history is not None
        phone: str | None = None
        recipients = self.book.resolve(target)
        group = recipients.group
        if group is None:
            (phone,) = recipients.phones
        try:
            return history.entries(phone, None if group is None else group.id, limit, before)
        except UnknownMessage:
            raise UnknownMessage(f"no message {before} in the history with {target}") from None

    def shown(self, event: TextReceived | PhotoReceived) -> None:
        """The UI has shown `event`: it will not be shown again after a restart."""
        if self._inbox is not None and self.history is not None:
            self._inbox.shown(event)

    async def settled(self) -> None:
        """Once every incoming connection that has ended has been handled to its end (a
        photo cut off is kept for a resume) and what arrived is committed to the history."""
        if self._listener is not None:
            await self._listener.settled()
        if self.history is not None:
            await self.history.settled()

    # --- presence --------------------------------------------------------------------------

    async def watch_presence(self, phones: Iterable[str]) -> dict[str, bool]:
        """Be told (PresenceChanged) when any of `phones` comes online, instead of the
        numbers given before; returns which of them are online now."""
        wanted = frozenset(normalise_phone(p, self.config.region) for p in phones)
        self._presence = wanted
        online = await self._watch()
        return {phone: phone in online for phone in sorted(wanted)}

    async def presence(self, phones: Iterable[str]) -> dict[str, bool]:
        """Which of `phones` are online now (one lookup)."""
        wanted = sorted({normalise_phone(p, self.config.region) for p in phones})
        online = await self.lookup(wanted) if wanted else {}
        return {phone: phone in online for phone in wanted}

    # --- the rest --------------------------------------------------------------------------

    async def _registered(self, directory: DirectoryClient) -> None:
        """A new registration (at start, or after a loss): the watches go out on it."""
        directory.on_online = self._came_online
        assert self._rendezvous is not None
        directory.on_dial = functools.partial(self._rendezvous.asked, directory)
        directory.on_relayed = functools.partial(self._rendezvous.relayed, directory)
        assert self._outbox is not None
        await self._outbox.watch(directory, self._presence)

    async def _watch(self) -> dict[str, ev.PeerAddress]:
        assert self._outbox is not None
        assert self._registrar is not None
        return await self._outbox.watch(self._registrar.directory, self._presence)

    def _lost(self) -> None:
        assert self._outbox is not None
        self._outbox.unwatched()
        self._publish(ServerConnectionChanged("lost"))

    def _came_online(self, address: ev.PeerAddress) -> None:
        """The server's push: a watched number came online."""
        if address.phone in self._presence:
            self._publish(PresenceChanged(address.phone, True))
        assert self._outbox is not None
        self._outbox.came_online(address)

    def _publish(self, event: SessionEvent) -> None:
        self.events.put_nowait(event)


def _words(change: ev.GroupChange) -> str:
    """A change of a group's members, said in words (what a module that does not know
    changes shows: the message's text)."""
    phones = ", ".join(change.phones)
    match change.op:
        case "create":
            return f"created the group with {phones}"
        case "add":
            return f"added {phones}"
        case "remove":
            return f"removed {phones}"
        case "left":
            return f"{phones} left the group"
        case _:
            return "left the group"
