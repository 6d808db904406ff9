"""End to end: a real server and real `whatsap2p user --json` processes on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import image_bytes
from tests.e2e.conftest import Cluster
from tests.e2e.procs import RpcError, UserProcess

ALICE, BOB, CAROL, DAVE, ERIN = (f"+551199999000{i}" for i in range(1, 6))


async def wait_offline(asker: UserProcess, phone: str) -> None:
    """Until the server reports `phone` offline: the event happens in another process,
    so there is nothing to await but the answers themselves."""
    while (await asker.call("status", target=phone))[phone]["online"]:  # noqa: ASYNC110
        await asyncio.sleep(0.05)


async def test_text_both_ways(cluster: Cluster) -> None:
    alice, bob = await cluster.user(ALICE), await cluster.user(BOB)
    assert await bob.call("addContact", name="alice", phone="11 99999-0001") == {
        "name": "alice",
        "phone": ALICE,
    }
    await alice.call("addContact", name="bob", phone=BOB)
    sent = await alice.call("send", to="bob", text="olá, bob \u202e!")
    assert sent["delivered"] == [BOB]
    assert (sent["offline"], sent["failed"]) == ([], [])
    got = await bob.notification("receive")
    assert got["id"] == sent["id"]
    assert (got["from"], got["name"], got["group"], got["text"]) == (
        ALICE,
        "alice",
        None,
        "olá, bob \u202e!",
    )
    assert got["timestamp"].endswith("+00:00")
    back = await bob.call("send", to=ALICE, text="hi alice")
    assert back["delivered"] == [ALICE]
    got = await alice.notification("receive")
    assert (got["from"], got["name"], got["text"]) == (BOB, "bob", "hi alice")
    assert await alice.quit() == 0
    assert await bob.quit() == 0


async def test_photo_to_a_group_then_members_quit_and_die(cluster: Cluster, tmp_path: Path) -> None:
    alice = await cluster.user(ALICE)
    bob, carol, dave = [await cluster.user(p) for p in (BOB, CAROL, DAVE)]
    photo = tmp_path / "beach.jpg"
    photo.write_bytes(image_bytes("JPEG", (320, 240)))
    digest = hashlib.sha256(photo.read_bytes()).hexdigest()
    group = await alice.call("createGroup", name="trip", members=[BOB, CAROL, DAVE, ERIN])
    assert group == {
        "id": group["id"],
        "name": "trip",
        "members": [BOB, CAROL, DAVE, ERIN],
        "creator": ALICE,
    }

    sent = await alice.call("send", to="trip", photo=str(photo))
    assert sorted(sent["delivered"]) == [BOB, CAROL, DAVE]
    assert sent["offline"] == [ERIN]
    assert sent["failed"] == []
    for member in (bob, carol, dave):
        got = await member.notification("receive")
        assert (got["id"], got["from"], got["group"]) == (sent["id"], ALICE, "trip")
        received = got["photo"]
        assert received["sha256"] == digest
        assert received["bytes"] == photo.stat().st_size
        assert received["mime"] == "image/jpeg"
        assert received["filename"] == "beach.jpg"
        path = Path(received["path"])
        assert path.is_absolute()
        assert path.parent == member.data_dir / "photos"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest

    assert await carol.quit() == 0  # quits: unregisters
    dave.kill()  # dies: the server notices the dropped connection
    assert await dave.wait() != 0
    await asyncio.wait_for(wait_offline(alice, DAVE), 5)
    status = await alice.call("status", target="trip")
    assert status == {
        BOB: {"online": True},
        CAROL: {"online": False},
        DAVE: {"online": False},
        ERIN: {"online": False},
    }
    again = await alice.call("send", to="trip", text="still there?")
    assert again["delivered"] == [BOB]
    assert sorted(again["offline"]) == [CAROL, DAVE, ERIN]
    assert (await bob.notification("receive"))["text"] == "still there?"


async def test_a_restarted_user_on_a_new_port_is_still_reached(cluster: Cluster) -> None:
    alice, bob = await cluster.user(ALICE), await cluster.user(BOB)
    first_port = bob.ready["listen"]
    assert (await alice.call("send", to=BOB, text="one"))["delivered"] == [BOB]
    assert await bob.quit() == 0
    bob = await cluster.user(BOB)
    assert bob.ready["listen"] != first_port
    assert (await alice.call("send", to=BOB, text="two"))["delivered"] == [BOB]
    assert (await bob.notification("receive"))["text"] == "two"


async def test_contacts_and_groups_survive_a_restart(cluster: Cluster) -> None:
    alice = await cluster.user(ALICE)
    await alice.call("addContact", name="bob", phone=BOB)
    await alice.call("addContact", name="carol", phone=CAROL)
    await alice.call("createGroup", name="pals", members=["bob", CAROL])
    await alice.call("addToGroup", name="pals", member=DAVE)
    await alice.call("removeFromGroup", name="pals", member="bob")
    await alice.call("removeContact", name="carol")
    assert await alice.quit() == 0
    alice = await cluster.user(ALICE)
    assert await alice.call("listContacts") == [
        {"name": "bob", "phone": BOB, "fingerprint": None}  # never talked to: no key yet
    ]
    (pals,) = await alice.call("listGroups")
    assert pals == {"id": pals["id"], "name": "pals", "members": [CAROL, DAVE], "creator": ALICE}


async def test_end_of_input_and_signals_unregister_cleanly(cluster: Cluster) -> None:
    watcher = await cluster.user(ALICE)
    bob = await cluster.user(BOB)
    assert bob.proc.stdin is not None
    bob.proc.stdin.close()  # end of input
    assert await bob.wait() == 0
    assert (await watcher.call("status", target=BOB))[BOB] == {"online": False}
    for signum in ("SIGTERM", "SIGINT"):
        carol = await cluster.user(CAROL)
        carol.proc.send_signal(getattr(__import__("signal"), signum))
        assert await carol.wait() == 0
        assert (await watcher.call("status", target=CAROL))[CAROL] == {"online": False}


async def test_history_through_json_rpc(cluster: Cluster, tmp_path: Path) -> None:
    alice, bob = await cluster.user(ALICE), await cluster.user(BOB)
    await alice.call("addContact", name="bob", phone=BOB)
    first = await alice.call("send", to="bob", text="one")
    await bob.notification("receive")
    reply = await bob.call("send", to=ALICE, text="two")
    await alice.notification("receive")
    photo = tmp_path / "p.png"
    photo.write_bytes(image_bytes())
    await alice.call("createGroup", name="g", members=[BOB, CAROL])
    group_send = await alice.call("send", to="g", photo=str(photo))
    await bob.notification("receive")

    assert await alice.call("history", **{"with": "bob", "limit": 10}) == [
        {
            "id": reply["id"],
            "from": BOB,
            "to": ALICE,
            "group": None,
            "groupId": None,
            "timestamp": (await bob.call("history", **{"with": ALICE}))[0]["timestamp"],
            "text": "two",
            "state": "received",
        },
        {
            "id": first["id"],
            "from": ALICE,
            "to": BOB,
            "group": None,
            "groupId": None,
            "timestamp": (await bob.call("history", **{"with": ALICE}))[1]["timestamp"],
            "text": "one",
            "state": "delivered",
        },
    ]
    assert len(await alice.call("history", **{"with": "bob", "limit": 1})) == 1
    group = await alice.call("history", **{"with": "g"})
    assert sorted((e["to"], e["state"]) for e in group) == [(BOB, "delivered"), (CAROL, "offline")]
    assert all(e["id"] == group_send["id"] and e["photo"]["filename"] == "p.png" for e in group)
    (received,) = await bob.call("history", **{"with": "g"})
    assert received["state"] == "received"
    assert Path(received["photo"]["path"]).parent == bob.data_dir / "photos"
    with pytest.raises(RpcError) as caught:
        await alice.call("history", **{"with": "bob", "limit": 0})
    assert caught.value.code == -32602
    assert await alice.quit() == 0
    alice = await cluster.user(ALICE)  # the history survives a restart
    assert [e["text"] for e in await alice.call("history", **{"with": "bob"})] == ["two", "one"]


async def test_queued_messages_survive_a_killed_sender_and_arrive(
    cluster: Cluster, tmp_path: Path
) -> None:
    alice = await cluster.user(ALICE)
    photo = tmp_path / "later.gif"
    photo.write_bytes(image_bytes("GIF"))
    ids = []
    for params in ({"text": "first"}, {"text": "second"}, {"photo": str(photo)}):
        sent = await alice.call("send", to=BOB, queue=True, **params)
        assert (sent["queued"], sent["offline"], sent["delivered"]) == ([BOB], [], [])
        ids.append(sent["id"])
    plain = await alice.call("send", to=BOB, text="not queued")
    assert (plain["offline"], plain["queued"]) == ([BOB], [])
    alice.kill()  # kill -9 right after queueing
    assert await alice.wait() != 0

    alice = await cluster.user(ALICE)
    pending = await alice.call("outbox")
    assert [(p["id"], p["to"]) for p in pending] == [(i, BOB) for i in ids]
    assert pending[0]["text"] == "first"
    assert pending[2]["photo"]["filename"] == "later.gif"

    bob = await cluster.user(BOB)
    delivered = [await alice.notification("delivered") for _ in ids]
    assert delivered == [{"id": i, "phone": BOB} for i in ids]
    received = [await bob.notification("receive") for _ in ids]
    assert [r["id"] for r in received] == ids
    assert [r.get("text") for r in received[:2]] == ["first", "second"]
    assert received[2]["photo"]["sha256"] == hashlib.sha256(photo.read_bytes()).hexdigest()
    assert await alice.call("outbox") == []
    states = {e["id"]: e["state"] for e in await alice.call("history", **{"with": BOB})}
    assert [states[i] for i in ids] == ["delivered"] * 3
    assert states[plain["id"]] == "offline"


async def photo_under_way(
    sender: UserProcess, receiver: UserProcess, photo: Path, min_bytes: int
) -> asyncio.Task[Any]:
    """Start sending `photo` and return once the receiver holds more than `min_bytes` of
    it (polled: the event is in the receiver's process)."""
    sending = asyncio.create_task(sender.call("send", to=receiver.phone, photo=str(photo)))
    partial = receiver.data_dir / "partial"
    while not any(p.stat().st_size > min_bytes for p in partial.glob("*.part")):  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    return sending


def big_photo(folder: Path, mib: int) -> Path:
    """A real PNG padded with random bytes: larger than the socket buffers in between."""
    path = folder / "big.png"
    path.write_bytes(image_bytes(marker=os.urandom(mib * 1024 * 1024)))
    return path


async def test_a_receiver_killed_mid_photo_is_answered_in_time_and_recorded(
    cluster: Cluster, tmp_path: Path
) -> None:
    # (uvloop raised RuntimeError writing to the closed transport: the send was never
    # answered, and the attempt was missing from the history)
    alice = await cluster.user(ALICE, "--peer-timeout", "5")
    bob = await cluster.user(BOB)
    big = big_photo(tmp_path, 48)
    sending = asyncio.create_task(alice.call("send", to=BOB, photo=str(big)))
    partial = bob.data_dir / "partial"
    while not any(p.stat().st_size > 0 for p in partial.glob("*.part")):  # noqa: ASYNC110
        await asyncio.sleep(0.01)  # until bob is receiving: the event is in bob's process
    bob.kill()
    started = asyncio.get_running_loop().time()
    sent = await asyncio.wait_for(sending, 30)
    assert asyncio.get_running_loop().time() - started < 5  # within the peer timeout
    assert sent["delivered"] == []
    assert [(f["phone"], f["code"]) for f in sent["failed"]] == [(BOB, "unreachable")]
    (row,) = await alice.call("history", **{"with": BOB, "limit": 5})
    assert (row["id"], row["state"], row["code"]) == (sent["id"], "failed", "unreachable")


async def test_a_receiver_frozen_mid_photo_fails_alone_and_keeps_nothing(
    cluster: Cluster, tmp_path: Path
) -> None:
    alice = await cluster.user(ALICE, "--peer-timeout", "2")
    bob, carol = await cluster.user(BOB), await cluster.user(CAROL)
    await alice.call("createGroup", name="pals", members=[BOB, CAROL])
    big = big_photo(tmp_path, 48)
    sending = asyncio.create_task(alice.call("send", to="pals", photo=str(big)))
    partial = bob.data_dir / "partial"
    while not any(p.stat().st_size > 0 for p in partial.glob("*.part")):  # noqa: ASYNC110
        await asyncio.sleep(0.01)  # until bob is receiving: the event is in bob's process
    bob.proc.send_signal(signal.SIGSTOP)  # frozen in the middle of the photo
    started = asyncio.get_running_loop().time()
    try:
        sent = await asyncio.wait_for(sending, 30)
        assert asyncio.get_running_loop().time() - started < 10
        assert sent["delivered"] == [CAROL]  # the others are not held up
        assert [(f["phone"], f["code"]) for f in sent["failed"]] == [(BOB, "timeout")]
        assert "timed out" in sent["failed"][0]["error"]
        assert (await carol.notification("receive"))["photo"]["bytes"] == big.stat().st_size
    finally:
        bob.proc.send_signal(signal.SIGCONT)
    # bob wakes up to a closed connection: nothing is stored or shown...
    assert await bob.call("status", target=ALICE) == {ALICE: {"online": True}}
    assert list((bob.data_dir / "photos").iterdir()) == []
    assert bob.notifications["receive"].empty()
    # ...and sending the photo again resumes from what bob kept
    again = await alice.call("send", to=BOB, photo=str(big))
    assert again["delivered"] == [BOB], again
    got = (await bob.notification("receive"))["photo"]
    assert got["sha256"] == hashlib.sha256(big.read_bytes()).hexdigest()
    assert list(partial.iterdir()) == []


async def test_a_sender_killed_mid_photo_resends_and_the_photo_resumes(
    cluster: Cluster, tmp_path: Path
) -> None:
    alice, bob = await cluster.user(ALICE), await cluster.user(BOB)
    big = big_photo(tmp_path, 32)
    sending = await photo_under_way(alice, bob, big, 1_000_000)
    partial = bob.data_dir / "partial"
    alice.kill()  # kill -9 of the sender in the middle of the photo
    assert await alice.wait() != 0
    sending.cancel()
    with contextlib.suppress(asyncio.CancelledError, RpcError):
        await sending
    # bob notices the dead connection, keeps what came, shows nothing
    assert await bob.call("status", target=BOB) == {BOB: {"online": True}}
    kept = sum(p.stat().st_size for p in partial.glob("*.part"))
    assert 1_000_000 < kept < big.stat().st_size
    assert list((bob.data_dir / "photos").iterdir()) == []
    assert bob.notifications["receive"].empty()

    alice = await cluster.user(ALICE)  # back again: the same photo, sent anew
    assert (await alice.call("send", to=BOB, photo=str(big)))["delivered"] == [BOB]
    got = (await bob.notification("receive"))["photo"]
    assert Path(got["path"]).read_bytes() == big.read_bytes()
    assert list(partial.iterdir()) == []  # the kept part was used, then cleared


async def test_a_slow_loris_at_a_peer_is_closed_while_messages_flow(cluster: Cluster) -> None:
    alice, bob = await cluster.user(ALICE), await cluster.user(BOB)
    _, port = bob.ready["listen"].rsplit(":", 1)
    reader, writer = await asyncio.open_connection("127.0.0.1", int(port))
    writer.write(b"\x03\x00")  # the start of a frame header, then nothing more
    await writer.drain()
    for i in range(3):
        assert (await alice.call("send", to=BOB, text=f"meanwhile {i}"))["delivered"] == [BOB]
    assert await asyncio.wait_for(reader.read(), 15) == b""  # closed at the handshake deadline
    writer.close()


def established_to(port: int, server_port: int) -> int:
    """Established IPv4 TCP connections whose local port is `port` (from /proc/net/tcp),
    but the one to the server (a module connects to it from the port it listens on)."""
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    fields = (line.split() for line in lines)
    return sum(
        1
        for f in fields
        if int(f[1].split(":")[1], 16) == port
        and int(f[2].split(":")[1], 16) != server_port
        and f[3] == "01"
    )


async def test_a_sender_frozen_mid_photo_is_given_up_and_the_photo_resumes_on_a_new_link(
    cluster: Cluster, tmp_path: Path
) -> None:
    alice = await cluster.user(ALICE, "--peer-timeout", "2")
    bob = await cluster.user(BOB, "--peer-timeout", "2")
    bob_port = int(bob.ready["listen"].rsplit(":", 1)[1])
    big = big_photo(tmp_path, 32)
    sending = await photo_under_way(alice, bob, big, 1_000_000)
    partial = bob.data_dir / "partial"
    alice.proc.send_signal(signal.SIGSTOP)  # the sender freezes mid-photo
    try:
        while established_to(bob_port, cluster.server.port):  # noqa: ASYNC110 -- until bob hangs up
            await asyncio.sleep(0.05)
        assert list((bob.data_dir / "photos").iterdir()) == []  # nothing stored or shown
        assert bob.notifications["receive"].empty()
        assert list(partial.glob("*.part"))  # but the part that came is kept
        # frozen a while longer (as a laptop asleep): alice sees her deadline long past
        # when she wakes (what tells her that she, not bob, was frozen)
        await asyncio.sleep(1.5)
    finally:
        alice.proc.send_signal(signal.SIGCONT)
    # alice learns the link is gone, opens another and resumes where bob has it
    first = await asyncio.wait_for(sending, 30)
    assert first["delivered"] == [BOB], first
    got = (await bob.notification("receive"))["photo"]
    assert Path(got["path"]).read_bytes() == big.read_bytes()
    assert list(partial.iterdir()) == []


async def test_a_receiver_killed_in_a_pipelined_burst_loses_nothing_reported_delivered(
    cluster: Cluster,
) -> None:
    alice, bob = await cluster.user(ALICE), await cluster.user(BOB)
    await bob.call("addContact", name="alice", phone=ALICE)  # (a stranger's burst is cut short)
    count = 3_000
    answers = [alice.expect(f"burst-{n}") for n in range(count)]
    alice.write(
        "\n".join(
            json.dumps(
                {
                    "jsonrpc": "2.0",
                    "id": f"burst-{n}",
                    "method": "send",
                    "params": {"to": BOB, "text": f"burst {n}"},
                }
            )
            for n in range(count)
        )
    )
    for _ in range(100):  # well into the burst, bob dies (kill -9)
        await bob.notification("receive")
    bob.kill()
    await bob.wait()
    reports = [answer["result"] for answer in await asyncio.wait_for(asyncio.gather(*answers), 60)]
    delivered = {report["id"] for report in reports if report["delivered"] == [BOB]}
    for report in reports:  # every text has its outcome: delivered, or why not
        outcomes = [report["delivered"], report["offline"], report["failed"]]
        assert sorted(map(len, outcomes)) == [0, 0, 1], report
    with contextlib.closing(sqlite3.connect(bob.data_dir / "history.sqlite3")) as db:
        stored = {row[0] for row in db.execute("SELECT id FROM messages WHERE direction = 'in'")}
    assert delivered <= stored  # "delivered" means stored at bob, kill -9 or not
    assert 0 < len(delivered) < count  # some were cut off by the kill, and said so
    bob = await cluster.user(BOB)  # back: what was cut off can be sent again, and arrives
    assert (await alice.call("send", to=BOB, text="again"))["delivered"] == [BOB]
    # First, any stored text the killed life printed but had not yet marked shown (at
    # least once on screen); none of them twice.
    shown_again: list[str] = []
    while (got := await bob.notification("receive"))["text"] != "again":
        shown_again.append(got["id"])
    assert set(shown_again) <= stored
    assert len(set(shown_again)) == len(shown_again)
