"""Every message sent and received, with its delivery state, in `history.sqlite3`.

One row per message and peer: a received message is one row (peer = its sender); a
sent message has one row per recipient, so a group send shows each member's state.
The primary key (id, direction, peer) is also how a retried delivery is recognised:
the receiver stores a message before acknowledging it, and a second copy with the same
id from the same sender is acknowledged but not shown again.

A message of a group carries the group's id (`gid`; its name, `grp`, is a label kept
for display): a group's conversation is its id's rows, and a direct conversation the
rows with no id. What a sent group message said of its group (its members then, and the
change it announced) is kept once per message (`sent_groups`), for the outbox.

A received message is `shown` once the UI has written it out. One the module stored
but had not shown when it died is shown at the next start: nothing is silently lost,
and a crash between showing and marking repeats at most that one message (same id).

A conversation is read newest first, a page at a time (`entries`, `before`). Its order
is the store's own, `seq` (when each row was stored), not the timestamps, which are the
senders' clocks: total, fixed once stored, and a row stored later is always newer, so
paging back while messages arrive visits each older row once. A page never splits the
rows of one message (a group send's, one per recipient) between two pages. `before` an
id means older than every row with that id in the conversation (two senders may use
one id: ids are theirs to choose), and a page ends only where the next one, before
its last row's id, starts right below it.

SQLite in WAL mode: a transaction is either in the file or not, also after kill -9.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from whatsap2p.errors import StoreError, UnknownMessage

__all__ = ["FILE_NAME", "History", "HistoryEntry", "State"]

FILE_NAME = "history.sqlite3"

State = Literal["received", "delivered", "queued", "offline", "failed", "cancelled"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq       INTEGER PRIMARY KEY,
    id        TEXT NOT NULL,
    direction TEXT NOT NULL CHECK (direction IN ('in', 'out')),
    peer      TEXT NOT NULL,
    grp       TEXT,
    gid       TEXT,
    change    TEXT,
    timestamp TEXT NOT NULL,
    text      TEXT,
    photo     TEXT,
    state     TEXT NOT NULL,
    error     TEXT,
    code      TEXT,
    shown     INTEGER NOT NULL DEFAULT 1,
    UNIQUE (id, direction, peer)
);
CREATE INDEX IF NOT EXISTS messages_chat ON messages (peer, seq) WHERE gid IS NULL;
CREATE INDEX IF NOT EXISTS messages_gid ON messages (gid, seq) WHERE gid IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_queued ON messages (peer, seq) WHERE state = 'queued';
CREATE INDEX IF NOT EXISTS messages_to_show ON messages (seq) WHERE shown = 0;
CREATE TABLE IF NOT EXISTS sent_groups (
    id   TEXT PRIMARY KEY,
    info TEXT NOT NULL
);
"""


# A conversation is the direct messages with a number, or a group's. Its rows below a
# seq, newest first, each with its seq, where its message starts (the seq of its oldest
# row: only a group send has several) and where its id first appears in the
# conversation (ids are the senders' choice: two senders may use one, and `before` an
# id is older than all its rows). Both found by the id (the unary + keeps SQLite off the
# conversation's index, with which it would scan the conversation for them).
_DIRECT_PAGE = (
    "SELECT id, direction, peer, grp, gid, change, timestamp, text, photo, state, error, code,"
    " seq, seq,"
    " (SELECT MIN(seq) FROM messages AS o WHERE o.id = m.id AND +o.peer = m.peer"
    " AND o.gid IS NULL) FROM messages AS m WHERE peer = ? AND gid IS NULL AND seq < ?"
    " ORDER BY seq DESC"
)
_GROUP_PAGE = (
    "SELECT id, direction, peer, grp, gid, change, timestamp, text, photo, state, error, code, seq,"
    " CASE direction WHEN 'out' THEN (SELECT MIN(seq) FROM messages AS o WHERE o.id = m.id"
    " AND o.direction = 'out' AND +o.gid = m.gid) ELSE seq END,"
    " (SELECT MIN(seq) FROM messages AS o WHERE o.id = m.id AND +o.gid = m.gid)"
    " FROM messages AS m WHERE gid = ? AND seq < ? ORDER BY seq DESC"
)
_DIRECT_FIRST = "SELECT MIN(seq) FROM messages WHERE id = ? AND +peer = ? AND gid IS NULL"
_GROUP_FIRST = "SELECT MIN(seq) FROM messages WHERE id = ? AND +gid = ?"
#: Above every seq: the page of the newest rows.
_TOP = 2**63 - 1


_QUEUED_QUERY = (
    "SELECT id, direction, peer, grp, gid, change, timestamp, text, photo, state, error, code"
    " FROM messages WHERE direction = 'out' AND state = 'queued' ORDER BY seq"
)
_QUEUED_FOR_QUERY = (
    "SELECT id, direction, peer, grp, gid, change, timestamp, text, photo, state, error, code"
    " FROM messages WHERE direction = 'out' AND state = 'queued' AND peer = ? ORDER BY seq"
)


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    id: str
    sender: str
    recipient: str
    group: str | None
    #: The group's id (None: a direct message).
    group_id: str | None
    #: The membership change it tells of ({"op", "phones"}; `text` says it in words).
    change: dict[str, object] | None
    timestamp: str
    text: str | None
    photo: dict[str, object] | None
    state: str
    error: str | None
    #: Why a recipient failed, for programs (`errors.DELIVERY_CODES`); None otherwise
    #: (and for rows stored before codes were kept).
    code: str | None = None


_T = TypeVar("_T")
log = logging.getLogger(__name__)

_INSERT_RECEIVED = (
    "INSERT OR IGNORE INTO messages (id, direction, peer, grp, gid, change, timestamp, text,"
    " photo, state, shown) VALUES (?, 'in', ?, ?, ?, ?, ?, ?, ?, 'received', 0)"
)
#: A message sent again (a retry under its id) keeps its row, and so its place (`seq`)
#: in the history's order: only what became of it changes.
_INSERT_SENT = (
    "INSERT INTO messages (id, direction, peer, grp, gid, change, timestamp, text,"
    " photo, state, error, code) VALUES (?, 'out', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (id, direction, peer) DO UPDATE SET grp = excluded.grp, gid = excluded.gid,"
    " timestamp = excluded.timestamp, text = excluded.text, photo = excluded.photo,"
    " state = excluded.state, error = excluded.error, code = excluded.code"
)
_MARK_SHOWN = "UPDATE messages SET shown = 1 WHERE id = ? AND direction = 'in' AND peer = ?"


class History:
    """The history, in SQLite. The writes of the message path (`store_received`,
    `store_sent`, `mark_shown`) are group-committed: those made in one turn of the event
    loop share one transaction, so a burst of messages costs a few commits, not one (and
    a WAL write) each; each caller still resumes only once its write is committed."""

    def __init__(self, path: Path, me: str, keep: int = 1_000_000) -> None:
        self.path = path
        self._me = me
        self._keep = keep
        self._since_prune = 0
        self._batch: list[tuple[Callable[[sqlite3.Connection], object], asyncio.Future[object]]]
        self._batch = []
        #: The rows of the sent messages of the coming group: it inserts them at once.
        self._sent_rows: list[tuple[object, ...]] = []
        try:
            self._db = sqlite3.connect(path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a commit survives the process being killed; only a
            # power cut can lose the last transactions, never corrupt the file.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the history {path}: {exc}") from exc
        self.prune(groups=True)

    def prune(self, groups: bool = False) -> int:
        """Drop the oldest rows beyond `keep`, except queued or unshown ones; how many.
        `groups`: the group records of sent messages no longer kept too (a scan: at start)."""
        self._since_prune = 0
        cursor = self._execute(
            "DELETE FROM messages WHERE seq <= (SELECT MAX(seq) FROM messages) - ?"
            " AND state != 'queued' AND shown = 1",
            (self._keep,),
        )
        if groups:
            self._execute(
                "DELETE FROM sent_groups WHERE id NOT IN"
                " (SELECT id FROM messages WHERE direction = 'out')",
                (),
            )
        return cursor.rowcount

    def _migrate(self) -> None:
        """Bring a history written by an earlier version up to this schema."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(messages)")}
        if columns and "shown" not in columns:  # before 'shown': all were shown
            self._db.execute("ALTER TABLE messages ADD COLUMN shown INTEGER NOT NULL DEFAULT 1")
        if columns and "code" not in columns:  # before failures had codes
            self._db.execute("ALTER TABLE messages ADD COLUMN code TEXT")
        if columns and "gid" not in columns:  # before groups had ids (`adopt_group`)
            self._db.execute("ALTER TABLE messages ADD COLUMN gid TEXT")
            self._db.execute("ALTER TABLE messages ADD COLUMN change TEXT")
        # Conversations by group name, now by group id.
        self._db.execute("DROP INDEX IF EXISTS messages_direct")
        self._db.execute("DROP INDEX IF EXISTS messages_grp")
        # Indexes of every row, replaced by partial ones of the few rows they serve (queued,
        # not yet shown): an insert then writes two fewer index pages. (Tables made before
        # keep AUTOINCREMENT on seq, which orders rows just the same.)
        self._db.execute("DROP INDEX IF EXISTS messages_state")
        self._db.execute("DROP INDEX IF EXISTS messages_unshown")
        # The direct messages' index, which held the group rows too: a page of a number's
        # direct messages stepped over every group row it was in (22 ms for 100 messages
        # beside 100,000 group rows; now under 1 ms).
        self._db.execute("DROP INDEX IF EXISTS messages_peer")

    def close(self) -> None:
        if self._batch:
            self._commit_batch()
        self._db.close()

    def store_received(
        self,
        message_id: str,
        sender: str,
        group: str | None,
        timestamp: str,
        text: str | None = None,
        photo: dict[str, object] | None = None,
        group_id: str | None = None,
        change: dict[str, object] | None = None,
    ) -> asyncio.Future[bool]:
        """Store a received message (of group `group_id`, named `group`, if any),
        group-committed: the write joins the current group at once (messages that came
        together share a commit); the future says, once committed, True, or False if
        this sender's message id was already stored. `change`: the membership change
        it tells of (then `text` says it in words)."""
        args = (message_id, sender, group, group_id, _json(change), timestamp, text, _json(photo))
        self._counted_insert()
        return self._soon(lambda db: db.execute(_INSERT_RECEIVED, args).rowcount == 1)

    async def store_sent(
        self,
        message_id: str,
        outcomes: dict[str, tuple[State, str | None]],
        group: str | None,
        timestamp: str,
        text: str | None = None,
        photo: dict[str, object] | None = None,
        codes: dict[str, str] | None = None,
        group_id: str | None = None,
        group_info: str | None = None,
        change: dict[str, object] | None = None,
    ) -> None:
        """Store a sent message, one row per recipient with its state (and error, and
        the failure's code from `codes`); of group `group_id` (named `group`), and
        what it said of its group (`group_info`, kept for the outbox); group-committed."""
        # The group inserts the rows of all its sent messages at once (one executemany,
        # not one each: a tenth of a pipelining sender's work); each still awaits the commit.
        self._sent_rows += _sent_rows(
            message_id,
            outcomes,
            (group, group_id, _json(change)),
            timestamp,
            text,
            photo,
            codes or {},
        )
        if group_info is None:
            await self._soon(_nothing)
            return
        await self._soon(
            lambda db: db.execute(
                "INSERT OR REPLACE INTO sent_groups (id, info) VALUES (?, ?)",
                (message_id, group_info),
            )
        )

    def sent_group(self, message_id: str) -> str | None:
        """What sent message `message_id` said of its group (`store_sent`'s group_info)."""
        row = self._execute("SELECT info FROM sent_groups WHERE id = ?", (message_id,)).fetchone()
        return None if row is None else str(row[0])

    def mark_shown(self, message_id: str, sender: str) -> None:
        """The UI showed it: committed with the next group (a crash before that shows it
        again at the next start, with its id, rather than never)."""
        self._soon(lambda db: db.execute(_MARK_SHOWN, (message_id, sender)))

    async def settled(self) -> None:
        """Returns once every write asked for so far is committed (or failed)."""
        if self._batch:
            await asyncio.wait([self._batch[-1][1]])

    def _soon(self, work: Callable[[sqlite3.Connection], _T]) -> asyncio.Future[_T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_T] = loop.create_future()
        future.add_done_callback(_log_failure)
        self._batch.append((work, future))  # type: ignore[arg-type]
        if len(self._batch) == 1:
            loop.call_soon(self._commit_batch)
        return future

    def _commit_batch(self) -> None:
        batch, self._batch = self._batch, []
        sent, self._sent_rows = self._sent_rows, []
        try:
            with self._db:
                self._db.execute("BEGIN")
                if sent:
                    self._db.executemany(_INSERT_SENT, sent)
                results = [work(self._db) for work, _ in batch]
        except Exception as exc:  # (not only sqlite3.Error: no writer may wait for ever)
            if not isinstance(exc, sqlite3.Error):
                log.exception("a history write failed unexpectedly")
            error = StoreError(f"history: {exc}")
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    def _counted_insert(self) -> None:
        self._since_prune += 1
        if self._since_prune >= 4096:  # cheap (by primary key), so now and then is enough
            self.prune()

    def was_received(self, message_id: str, sender: str) -> bool:
        row = self._execute(
            "SELECT 1 FROM messages WHERE id = ? AND direction = 'in' AND peer = ?",
            (message_id, sender),
        ).fetchone()
        return row is not None

    def set_state(
        self,
        message_id: str,
        phone: str,
        state: State,
        error: str | None,
        code: str | None = None,
    ) -> None:
        self._execute(
            "UPDATE messages SET state = ?, error = ?, code = ? WHERE id = ?"
            " AND direction = 'out' AND peer = ?",
            (state, error, code, message_id, phone),
        )

    def entries(
        self,
        phone: str | None = None,
        group_id: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> list[HistoryEntry]:
        """A page of a conversation, newest first: the direct messages with `phone`, or
        the messages of group `group_id`; the newest, or those older than message `before` (than
        all of its rows; UnknownMessage if the conversation has none).

        At most `limit` rows, fewer where the next would split a message's rows (they
        come whole on the next page) or where the page would end on an id used before;
        more only when there is no place to end among the first `limit` (a message with
        more rows than that). An empty page: nothing older. Paging with `before` = the
        id of each page's last (oldest) row visits every row once."""
        if limit < 1:
            return []
        if group_id is not None:
            page, first, key = _GROUP_PAGE, _GROUP_FIRST, group_id
        else:
            assert phone is not None
            page, first, key = _DIRECT_PAGE, _DIRECT_FIRST, phone
        below = _TOP
        if before is not None:
            (below,) = self._execute(first, (before, key)).fetchone()
            if below is None:
                raise UnknownMessage(f"no message {before} in this conversation")
        try:  # (read lazily: the page ends where the first `limit` rows allow)
            with contextlib.closing(self._db.execute(page, (key, below))) as rows:
                found = _whole_messages(rows, limit)
        except sqlite3.Error as exc:
            raise StoreError(f"history: {exc}") from exc
        return [self._entry(row[:-3]) for row in found]

    def unshown(self) -> list[HistoryEntry]:
        """Received messages the UI never showed (the module died first), oldest first."""
        rows = self._execute(
            "SELECT id, direction, peer, grp, gid, change, timestamp, text, photo, state,"
            " error, code FROM messages WHERE shown = 0 ORDER BY seq",
            (),
        ).fetchall()
        return [self._entry(row) for row in rows]

    def queued(self, phone: str | None = None) -> list[HistoryEntry]:
        """The outbox, oldest first: sent messages still waiting for a recipient."""
        if phone is None:
            rows = self._execute(_QUEUED_QUERY, ()).fetchall()
        else:
            rows = self._execute(_QUEUED_FOR_QUERY, (phone,)).fetchall()
        return [self._entry(row) for row in rows]

    def queued_phones(self) -> list[str]:
        rows = self._execute(
            "SELECT DISTINCT peer FROM messages WHERE direction = 'out' AND state = 'queued'", ()
        ).fetchall()
        return [str(row[0]) for row in rows]

    def count_queued(self) -> int:
        row = self._execute(
            "SELECT COUNT(*) FROM messages WHERE direction = 'out' AND state = 'queued'", ()
        ).fetchone()
        return int(row[0])

    def still_queued(self, message_id: str) -> bool:
        row = self._execute(
            "SELECT 1 FROM messages WHERE id = ? AND direction = 'out' AND state = 'queued'",
            (message_id,),
        ).fetchone()
        return row is not None

    def is_queued(self, message_id: str, phone: str) -> bool:
        """Whether message `message_id` still waits in the outbox for `phone`."""
        row = self._execute(
            "SELECT 1 FROM messages WHERE id = ? AND direction = 'out' AND peer = ?"
            " AND state = 'queued'",
            (message_id, phone),
        ).fetchone()
        return row is not None

    def sent(self, message_id: str) -> list[HistoryEntry]:
        """The rows of a message we sent, one per recipient, in the order they were stored
        (none if no message of ours has that id)."""
        rows = self._execute(
            "SELECT id, direction, peer, grp, gid, change, timestamp, text, photo, state,"
            " error, code FROM messages WHERE id = ? AND direction = 'out' ORDER BY seq",
            (message_id,),
        ).fetchall()
        return [self._entry(row) for row in rows]

    def cancel(self, message_id: str, phones: list[str]) -> None:
        """The copies of `message_id` queued for `phones` will not be sent: `cancelled`
        (code `unconfirmed` kept, and said, for one that went out unacknowledged)."""
        self._executemany(
            "UPDATE messages SET state = 'cancelled',"
            " error = CASE WHEN code = 'unconfirmed'"
            " THEN 'it may have arrived before it was cancelled' END,"
            " code = CASE WHEN code = 'unconfirmed' THEN code END"
            " WHERE id = ? AND direction = 'out' AND peer = ? AND state = 'queued'",
            [(message_id, phone) for phone in phones],
        )

    def fail_group(self, group_id: str, error: str, code: str) -> int:
        """Every copy of a message to group `group_id` still queued fails (we are no
        longer in the group); how many."""
        cursor = self._execute(
            "UPDATE messages SET state = 'failed', error = ?, code = ? WHERE gid = ?"
            " AND direction = 'out' AND state = 'queued'",
            (error, code, group_id),
        )
        return cursor.rowcount

    def adopt_group(self, group_id: str, name: str, members: Iterable[str]) -> None:
        """Rows written before groups had ids, of a group now given `group_id`: what we
        sent to it, and what its members sent under its name (the rest stay direct)."""
        self._executemany(
            "UPDATE messages SET gid = ? WHERE gid IS NULL AND grp = ?"
            " AND (direction = 'out' OR peer = ?)",
            [(group_id, name, phone) for phone in members],
        )

    def _entry(self, row: tuple[object, ...]) -> HistoryEntry:
        (
            message_id,
            direction,
            peer,
            group,
            group_id,
            change,
            timestamp,
            text,
            photo,
            state,
            error,
            code,
        ) = row
        sender, recipient = (peer, self._me) if direction == "in" else (self._me, peer)
        return HistoryEntry(
            str(message_id),
            str(sender),
            str(recipient),
            None if group is None else str(group),
            None if group_id is None else str(group_id),
            None if change is None else json.loads(str(change)),
            str(timestamp),
            None if text is None else str(text),
            None if photo is None else json.loads(str(photo)),
            str(state),
            None if error is None else str(error),
            None if code is None else str(code),
        )

    def _execute(self, sql: str, args: tuple[object, ...]) -> sqlite3.Cursor:
        try:
            return self._db.execute(sql, args)
        except sqlite3.Error as exc:
            raise StoreError(f"history: {exc}") from exc

    def _executemany(self, sql: str, args: list[tuple[object, ...]]) -> None:
        try:
            with self._db:
                self._db.execute("BEGIN")
                self._db.executemany(sql, args)
        except sqlite3.Error as exc:
            raise StoreError(f"history: {exc}") from exc


def _whole_messages(rows: Iterable[tuple[Any, ...]], limit: int) -> list[tuple[Any, ...]]:
    """The first rows of a conversation's `rows` (newest first, each ending with its
    seq, where its message starts and where its id first appears), at most `limit` of
    them, up to a row where the next page can start: below which no message on the page
    has a row (no message is split between two pages), and the first with its id (the
    next page is the one `before` it). More than `limit` only when there is no such row
    among the first `limit` (a message with more rows than that, or a run of ids used
    before): then up to the first one."""
    page: list[tuple[Any, ...]] = []
    end = 0  # the next page can start below page[end - 1]
    lowest = _TOP  # where the oldest message seen so far starts
    for row in rows:
        if len(page) >= limit and end:
            break
        page.append(row)
        seq, start, first = row[-3:]
        lowest = min(lowest, start)
        if lowest == seq == first:
            end = len(page)
    return page[:end]


def _sent_rows(
    message_id: str,
    outcomes: dict[str, tuple[State, str | None]],
    group: tuple[str | None, str | None, str | None],
    timestamp: str,
    text: str | None,
    photo: dict[str, object] | None,
    codes: dict[str, str],
) -> list[tuple[object, ...]]:
    """One row per recipient of a sent message, with its state (and error, and code);
    `group`: the group's name and id, and the change the message tells of (JSON)."""
    stored_photo = _json(photo)
    name, group_id, change = group
    return [
        (message_id, phone, name, group_id, change, timestamp, text, stored_photo, *outcome)
        for phone, outcome in ((p, (*o, codes.get(p))) for p, o in outcomes.items())
    ]


def _nothing(db: sqlite3.Connection) -> None:
    """The write of a store_sent: its group inserts the rows (`_commit_batch`)."""


def _log_failure(future: asyncio.Future[Any]) -> None:
    # A mark_shown nobody awaits must not fail silently (and asyncio must not complain
    # that the error was never retrieved).
    if not future.cancelled() and (exc := future.exception()) is not None:
        log.error("%s", exc)


def _json(value: dict[str, object] | None) -> str | None:
    return None if value is None else json.dumps(value)
