from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from whatsap2p.app.history import History, HistoryEntry, State
from whatsap2p.errors import StoreError, UnknownMessage

ME, BOB, CAROL, DAVE = (f"+551199999000{i}" for i in range(1, 5))
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
        group_id="pals",
        photo={"filename": "a.png"},
    )
    entries = history.entries(group_id="pals")
    assert sorted((e.recipient, e.state, e.error) for e in entries) == [
        (BOB, "delivered", None),
        (CAROL, "failed", "refused"),
    ]
    assert all(e.photo == {"filename": "a.png"} and e.text is None for e in entries)
    assert history.entries(BOB) == []  # group messages are not in the direct conversation
    history.set_state("g1", CAROL, "delivered", None)
    assert {e.recipient: e.state for e in history.entries(group_id="pals")}[CAROL] == "delivered"


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
    got = {e.recipient: (e.state, e.code) for e in history.entries(group_id=None, phone=BOB)}
    assert got == {BOB: ("failed", "rejected")}
    (carol,) = history.entries(phone=CAROL)
    assert (carol.state, carol.code) == ("failed", "identity-changed")
    history.close()


def pages_of(history: History, limit: int, **conversation: str) -> list[list[HistoryEntry]]:
    """Every page of a conversation, newest first, each `before` the last one's oldest."""
    pages: list[list[HistoryEntry]] = []
    before = None
    while page := history.entries(limit=limit, before=before, **conversation):
        pages.append(page)
        before = page[-1].id
    return pages


def entry_key(entry: HistoryEntry) -> tuple[str, str, str]:
    return entry.id, entry.sender, entry.recipient


async def test_paging_visits_every_entry_once_and_never_splits_a_message(
    tmp_path: Path,
) -> None:
    history = History(tmp_path / "h.sqlite3", ME)
    stored: list[tuple[str, str, str]] = []  # oldest first, as stored
    for i in range(700):
        await history.store_received(
            f"in{i}", BOB if i % 2 else CAROL, "pals", T, group_id="pals", text=str(i)
        )
        stored.append((f"in{i}", BOB if i % 2 else CAROL, ME))
        members = [BOB, CAROL, DAVE] if i % 3 else [BOB, CAROL]
        await history.store_sent(
            f"out{i}",
            dict.fromkeys(members, ("delivered", None)),
            "pals",
            T,
            group_id="pals",
            text=str(i),
        )
        stored += [(f"out{i}", ME, phone) for phone in members]
        await history.store_sent(f"direct{i}", {BOB: ("delivered", None)}, None, T, text="d")
    assert len(stored) > 2500
    newest_first = stored[::-1]
    assert [entry_key(e) for e in history.entries(group_id="pals", limit=10**6)] == newest_first

    for limit in (1000, 999, 7, 2, 1):
        pages = pages_of(history, limit, group_id="pals")
        assert [entry_key(e) for page in pages for e in page] == newest_first, limit
        for page in pages:
            # a page holds `limit` entries or fewer, but never part of a message: here
            # only a message with more recipients than `limit` makes it longer
            assert len(page) <= max(limit, 3)
            ids = {e.id for e in page}
            assert sum(1 for key in stored if key[0] in ids) == len(page)
        assert all(len(page) >= limit - 2 for page in pages[:-1])  # no needless short page

    direct = [e.id for page in pages_of(history, 64, phone=BOB) for e in page]
    assert direct == [f"direct{i}" for i in reversed(range(700))]
    history.close()


async def test_entries_stored_while_paging_are_newer_than_every_page(tmp_path: Path) -> None:
    history = History(tmp_path / "h.sqlite3", ME)
    for i in range(300):
        await history.store_received(f"old{i}", BOB, None, T, text=str(i))
    seen: list[str] = []
    before = None
    while page := history.entries(BOB, limit=50, before=before):
        seen += [e.id for e in page]
        before = page[-1].id
        # messages keep coming (one from the same sender, ours to a group it is in)
        await history.store_received(f"new{len(seen)}", BOB, None, T, text="new")
        await history.store_sent(
            f"grp{len(seen)}", {BOB: ("delivered", None)}, "g", T, group_id="g"
        )
    assert seen == [f"old{i}" for i in reversed(range(300))]
    assert history.entries(BOB, limit=1)[0].id == "new300"
    history.close()


async def test_a_message_stored_again_keeps_its_place_and_is_paged_once(
    tmp_path: Path,
) -> None:
    """A row stored again (a retry, for one recipient) keeps its place in the order: only
    its state changes; pages still hold each message whole, once."""
    history = History(tmp_path / "h.sqlite3", ME)
    both: dict[str, tuple[State, str | None]] = {BOB: ("queued", None), CAROL: ("queued", None)}
    await history.store_sent("a", both, "pals", T, group_id="pals", text="a")
    await history.store_sent("b", both, "pals", T, group_id="pals", text="b")
    await history.store_sent(
        "a", {CAROL: ("delivered", None)}, "pals", T, group_id="pals", text="a"
    )
    entries = history.entries(group_id="pals", limit=100)
    everything = [entry_key(e) for e in entries]
    assert everything == [("b", ME, CAROL), ("b", ME, BOB), ("a", ME, CAROL), ("a", ME, BOB)]
    assert [e.state for e in entries if e.id == "a"] == ["delivered", "queued"]
    for limit in (1, 2):  # a page per message
        assert [
            [entry_key(e) for e in page] for page in pages_of(history, limit, group_id="pals")
        ] == [everything[:2], everything[2:]]
    assert len(pages_of(history, 4, group_id="pals")) == 1
    history.close()


async def test_a_page_before_a_message_not_in_the_conversation_is_refused(
    tmp_path: Path,
) -> None:
    history = History(tmp_path / "h.sqlite3", ME)
    await history.store_received("bob1", BOB, None, T, text="hi")
    await history.store_received("carol1", CAROL, None, T, text="hi")
    await history.store_received("grp1", BOB, "pals", T, group_id="pals", text="hi")
    assert history.entries(BOB, before="bob1") == []
    for conversation, before in [
        ({"phone": BOB}, "carol1"),  # another number's
        ({"phone": BOB}, "grp1"),  # his, but in a group
        ({"group_id": "pals"}, "bob1"),
        ({"phone": BOB}, "f" * 32),  # none at all
    ]:
        with pytest.raises(UnknownMessage, match="no message"):
            history.entries(before=before, **conversation)  # type: ignore[arg-type]
    history.close()


async def test_ids_two_senders_share_are_paged_once_without_long_pages(tmp_path: Path) -> None:
    """Ids are the senders' choice: another implementation may number its messages, so
    two members of a group send a "1" each (or one reuses an id of ours). `before` such
    an id is older than all of its entries; a page ends only where that is right."""
    history = History(tmp_path / "h.sqlite3", ME)
    both: dict[str, tuple[State, str | None]] = {BOB: ("delivered", None), CAROL: ("queued", None)}
    for i in range(40):
        await history.store_received(str(i), BOB, "pals", T, group_id="pals", text=f"bob {i}")
    for i in range(40):  # carol numbers hers too; ours come between
        await history.store_received(str(i), CAROL, "pals", T, group_id="pals", text=f"carol {i}")
        await history.store_sent(f"ours{i}", both, "pals", T, group_id="pals", text=f"ours {i}")
    await history.store_received(
        "ours3", DAVE, "pals", T, group_id="pals", text="dave reuses an id of ours"
    )
    everything = [entry_key(e) for e in history.entries(group_id="pals", limit=10**6)]
    assert len(everything) == 40 + 40 * 3 + 1
    for limit in (3, 4, 10, 1000):
        pages = pages_of(history, limit, group_id="pals")
        assert [entry_key(e) for page in pages for e in page] == everything, limit
        assert max(len(page) for page in pages) <= limit, limit
    # `before` an id two senders used: older than both
    assert [e.text for e in history.entries(group_id="pals", before="0", limit=1)] == []
    assert [e.text for e in history.entries(group_id="pals", before="39", limit=1)] == ["bob 38"]

    # the same in a direct conversation: bob's "x" after ours
    await history.store_sent("x", {BOB: ("delivered", None)}, None, T, text="ours")
    await history.store_received("y", BOB, None, T, text="between")
    await history.store_received("x", BOB, None, T, text="his")
    assert [[e.text for e in page] for page in pages_of(history, 1, phone=BOB)] == [
        ["his", "between"],  # (a page cannot end on his "x": it would skip "between")
        ["ours"],
    ]
    history.close()
