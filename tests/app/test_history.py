from __future__ import annotations

import asyncio
from pathlib import Path

from whatsap2p.app.history import History
from whatsap2p.errors import StoreError

ME, BOB, CAROL = "+5511999990001", "+5511999990002", "+5511999990003"
T = "2026-11-27T10:00:00.000+00:00"


async def test_a_received_message_is_stored_once(tmp_path: Path) -> None:
    history = History(tmp_path / "h.sqlite3", ME)
    assert await history.store_received("m1", BOB, None, T, text="hi")
    assert not await history.store_received("m1", BOB, None, T, text="hi")  # a retry
    assert await history.store_received("m1", CAROL, None, T, text="same id, other sender")
    assert history.was_received("m1", BOB)
    assert not history.was_received("m2", BOB)
    assert [(e.id, e.sender, e.recipient, e.text, e.state) for e in history.entries(BOB)] == [
        ("m1", BOB, ME, "hi", "received")
    ]


async def test_sent_messages_keep_a_state_per_recipient(tmp_path: Path) -> None:
    history = History(tmp_path / "h.sqlite3", ME)
    await history.store_sent(
        "g1",
        {BOB: ("delivered", None), CAROL: ("failed", "refused")},
        "pals",
        T,
        photo={"filename": "a.png"},
    )
    entries = history.entries(group="pals")
    assert sorted((e.recipient, e.state, e.error) for e in entries) == [
        (BOB, "delivered", None),
        (CAROL, "failed", "refused"),
    ]
    assert all(e.photo == {"filename": "a.png"} and e.text is None for e in entries)
    assert history.entries(BOB) == []  # group messages are not in the direct conversation
    history.set_state("g1", CAROL, "delivered", None)
    assert {e.recipient: e.state for e in history.entries(group="pals")}[CAROL] == "delivered"


async def test_history_is_newest_first_limited_and_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"
    history = History(path, ME)
    for i in range(5):
        await history.store_sent(f"s{i}", {BOB: ("delivered", None)}, None, T, text=f"out {i}")
        await history.store_received(f"r{i}", BOB, None, T, text=f"in {i}")
    history.close()
    again = History(path, ME)
    assert [e.text for e in again.entries(BOB, limit=3)] == ["in 4", "out 4", "in 3"]
    assert len(again.entries(BOB, limit=100)) == 10


async def test_a_history_from_before_the_shown_column_is_migrated(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as old:
        old.execute(
            "CREATE TABLE messages (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL,"
            " direction TEXT NOT NULL, peer TEXT NOT NULL, grp TEXT, timestamp TEXT NOT NULL,"
            " text TEXT, photo TEXT, state TEXT NOT NULL, error TEXT,"
            " UNIQUE (id, direction, peer))"
        )
        old.execute(
            "INSERT INTO messages (id, direction, peer, timestamp, text, state)"
            " VALUES ('m0', 'in', ?, ?, 'old', 'received')",
            (BOB, T),
        )
    old.close()
    history = History(path, ME)
    assert [e.text for e in history.entries(BOB)] == ["old"]
    assert history.unshown() == []  # what an earlier version received was shown then
    assert await history.store_received("m1", BOB, None, T, text="new")
    assert [e.id for e in history.unshown()] == ["m1"]


async def test_the_history_is_bounded_but_keeps_what_still_matters(tmp_path: Path) -> None:
    history = History(tmp_path / "h.sqlite3", ME, keep=5)
    await history.store_sent("q", {CAROL: ("queued", None)}, None, T, text="waiting")
    await history.store_received("unshown", CAROL, None, T, text="not shown yet")
    for i in range(10):
        await history.store_received(f"r{i}", BOB, None, T, text=str(i))
        history.mark_shown(f"r{i}", BOB)
    await history.settled()  # marks are group-committed
    assert history.prune() == 5  # the oldest shown rows beyond the newest five
    assert [e.id for e in history.entries(BOB, limit=100)] == ["r9", "r8", "r7", "r6", "r5"]
    assert [e.id for e in history.queued()] == ["q"]  # the outbox is never dropped
    assert [e.id for e in history.unshown()] == ["unshown"]  # nor what is still to show


async def test_writes_of_one_moment_share_a_commit_and_each_caller_waits_for_it(
    tmp_path: Path,
) -> None:
    history = History(tmp_path / "h.sqlite3", ME)
    stored = await asyncio.gather(
        *(history.store_received(f"m{i}", BOB, None, T, text=str(i)) for i in range(50)),
        history.store_received("m0", BOB, None, T, text="a retry"),
        history.store_sent("s1", {BOB: ("delivered", None)}, None, T, text="out"),
    )
    assert stored[:50] == [True] * 50
    assert stored[50] is False  # the same id from the same sender: stored once
    history.close()
    again = History(tmp_path / "h.sqlite3", ME)  # committed, not just buffered
    assert len(again.entries(BOB, limit=100)) == 51
    again.close()


async def test_indexes_of_every_row_from_earlier_versions_are_replaced(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"
    History(path, ME).close()
    import sqlite3

    with sqlite3.connect(path) as old:  # what an earlier version left
        old.execute("CREATE INDEX messages_state ON messages (state, direction, peer, seq)")
        old.execute("CREATE INDEX messages_unshown ON messages (shown, seq)")
    old.close()
    history = History(path, ME)
    await history.store_sent("q", {CAROL: ("queued", None)}, None, T, text="waiting")
    await history.store_received("u", BOB, None, T, text="to show")
    assert [e.id for e in history.queued()] == ["q"]
    assert [e.id for e in history.unshown()] == ["u"]
    history.close()
    with sqlite3.connect(path) as db:
        names = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    db.close()
    assert {"messages_queued", "messages_to_show"} <= names
    assert not names & {"messages_state", "messages_unshown"}


async def test_sent_messages_of_one_moment_share_an_insert_and_a_failed_group_keeps_none(
    tmp_path: Path,
) -> None:
    history = History(tmp_path / "h.sqlite3", ME)
    await asyncio.gather(
        *(
            history.store_sent(f"s{i}", {BOB: ("delivered", None)}, None, T, text=str(i))
            for i in range(20)
        )
    )
    assert sorted(str(e.text) for e in history.entries(BOB, limit=100)) == sorted(
        map(str, range(20))
    )

    # A write SQLite refuses fails its whole group: the sends in it are told so, and
    # their rows are not inserted later with another group either.
    async def refused() -> bool:  # a coroutine, so that it joins the group in turn
        return await history.store_received("bad", BOB, None, T, text=["not", "text"])  # type: ignore[arg-type]

    results = await asyncio.gather(
        refused(),
        history.store_sent("lost1", {BOB: ("delivered", None)}, None, T, text="lost"),
        history.store_sent("lost2", {CAROL: ("delivered", None)}, None, T, text="lost"),
        return_exceptions=True,
    )
    assert all(isinstance(result, StoreError) for result in results)
    await history.store_sent("kept", {CAROL: ("delivered", None)}, None, T, text="kept")
    assert [e.id for e in history.entries(CAROL)] == ["kept"]
    assert "lost1" not in {e.id for e in history.entries(BOB, limit=100)}
    history.close()


async def test_a_failure_keeps_its_code(
    tmp_path: Path,
) -> None:
    history = History(tmp_path / "h.sqlite3", ME)
    await history.store_sent(
        "f1",
        {BOB: ("failed", "refused by the peer: no"), CAROL: ("delivered", None)},
        None,
        T,
        text="x",
        codes={BOB: "rejected"},
    )
    history.set_state("f1", CAROL, "failed", "identity changed: ...", "identity-changed")
    got = {e.recipient: (e.state, e.code) for e in history.entries(group=None, phone=BOB)}
    assert got == {BOB: ("failed", "rejected")}
    (carol,) = history.entries(phone=CAROL)
    assert (carol.state, carol.code) == ("failed", "identity-changed")
    history.close()
