"""End to end: groups with ids, through real `whatsap2p user --json` processes and a
real server on 127.0.0.1 (issue 25's scenario: three friends planning a trip)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.conftest import Cluster
from tests.e2e.procs import RpcError, UserProcess

ALICE, BOB, CAROL, DAVE = (f"+551199999000{i}" for i in range(1, 5))
INVALID_PARAMS = -32602


async def receives(user: UserProcess, text: str) -> dict[str, Any]:
    got = await user.notification("receive")
    assert got["text"] == text, got
    return got


async def texts_in(user: UserProcess, group_id: str) -> list[str]:
    """The texts in a group's history, newest first (a message we sent: an entry per
    recipient, once here)."""
    entries = await user.call("history", **{"with": group_id, "limit": 100})
    return list({(e["id"], e["from"]): e["text"] for e in entries}.values())


async def test_three_friends_plan_a_trip(cluster: Cluster) -> None:
    alice, bob, carol = [await cluster.user(p) for p in (ALICE, BOB, CAROL)]
    await alice.call("addContact", name="bob", phone=BOB)
    trip = await alice.call("createGroup", name="trip", members=["bob", CAROL])
    assert (trip["members"], trip["creator"]) == ([BOB, CAROL], ALICE)
    trip_id = trip["id"]
    for member, others in ((bob, [ALICE, CAROL]), (carol, [ALICE, BOB])):
        told = await member.notification("groupChanged")  # it is in their lists at once
        assert (told["id"], told["name"], told["creator"]) == (trip_id, "trip", ALICE)
        assert (told["members"], told["by"], told["change"]["op"]) == (others, ALICE, "create")

    # every member writes; the two others show it in the same group
    for writer, target in ((alice, "trip"), (bob, "trip"), (carol, trip_id)):
        sent = await writer.call("send", to=target, text=f"hello from {writer.phone}")
        readers = [u for u in (alice, bob, carol) if u is not writer]
        assert sorted(sent["delivered"]) == sorted(u.phone for u in readers)
        for other in readers:
            got = await receives(other, f"hello from {writer.phone}")
            assert (got["from"], got["group"], got["groupId"]) == (writer.phone, "trip", trip_id)

    # carol's own "trip", with alice only: another group, another conversation
    own = await carol.call("createGroup", name="trip", members=[ALICE])
    assert own["id"] != trip_id
    assert (await alice.notification("groupChanged"))["id"] == own["id"]
    await carol.call("send", to=own["id"], text="private: only alice should see this")
    got = await receives(alice, "private: only alice should see this")
    assert (got["group"], got["groupId"]) == ("trip", own["id"])
    with pytest.raises(RpcError, match=f"2 groups are named 'trip'.*{trip_id}.*{own['id']}") as e:
        await alice.call("send", to="trip", text="which trip?")
    assert e.value.code == INVALID_PARAMS
    reply = await alice.call("send", to=own["id"], text="only you and me")
    assert reply["delivered"] == [CAROL]
    assert (await receives(carol, "only you and me"))["groupId"] == own["id"]
    assert "private: only alice should see this" not in await texts_in(alice, trip_id)
    listed = {g["id"]: g for g in await alice.call("listGroups")}
    assert (listed[trip_id]["creator"], listed[own["id"]]["creator"]) == (ALICE, CAROL)

    # bob is removed while offline: back online, he gets nothing more and cannot post
    assert await bob.quit() == 0
    smaller = await alice.call("removeFromGroup", group=trip_id, member="bob")
    assert smaller["members"] == [CAROL]
    assert (await carol.notification("groupChanged"))["members"] == [ALICE]
    after = await alice.call("send", to=trip_id, text="bob is not here any more", queue=True)
    assert (after["delivered"], after["queued"]) == ([CAROL], [])
    await receives(carol, "bob is not here any more")
    bob = await cluster.user(BOB)
    removed = await bob.notification("groupChanged")
    assert (removed["id"], removed["left"], removed["change"]) == (
        trip_id,
        True,
        {"op": "remove", "phones": [BOB]},
    )
    with pytest.raises(RpcError, match="no longer a member of group 'trip'") as e:
        await bob.call("send", to="trip", text="let me back in")
    assert e.value.code == INVALID_PARAMS

    # dave is added, and sees the group from then on
    dave = await cluster.user(DAVE)
    bigger = await alice.call("addToGroup", name=trip_id, member=DAVE)
    assert bigger["members"] == [CAROL, DAVE]
    joined = await dave.notification("groupChanged")
    assert (joined["id"], joined["members"], joined["creator"]) == (trip_id, [ALICE, CAROL], ALICE)
    assert (await carol.notification("groupChanged"))["members"] == [ALICE, DAVE]
    hi = await dave.call("send", to="trip", text="hi, dave here")
    assert sorted(hi["delivered"]) == [ALICE, CAROL]
    for member in (alice, carol):
        assert (await receives(member, "hi, dave here"))["groupId"] == trip_id
    welcome = await carol.call("send", to=trip_id, text="welcome, dave")
    assert sorted(welcome["delivered"]) == [ALICE, DAVE]
    await receives(dave, "welcome, dave")
    await receives(alice, "welcome, dave")
    assert await texts_in(dave, trip_id) == ["welcome, dave", "hi, dave here"]

    # bob saw none of it; his history of the group ends where he was removed
    seen_by_bob = await texts_in(bob, trip_id)
    assert "bob is not here any more" not in seen_by_bob
    assert "hi, dave here" not in seen_by_bob
    (at_bob,) = await bob.call("listGroups")
    assert (at_bob["id"], at_bob["left"]) == (trip_id, True)
    # the news of the changes is in the history when asked for
    news = await alice.call("history", **{"with": trip_id, "changes": True})
    ops = {e["id"]: e["change"]["op"] for e in news if "change" in e}  # (one per message)
    assert list(ops.values()) == ["add", "remove", "create"]

    # leaving: carol leaves; alice and dave are told, and carol gets nothing more
    left = await carol.call("leaveGroup", group=trip_id)
    assert left["left"] is True
    for member in (alice, dave):
        assert (await member.notification("groupChanged"))["change"] == {
            "op": "leave",
            "phones": [],
        }
    last = await alice.call("send", to=trip_id, text="just the two of us")
    assert last["delivered"] == [DAVE]
    for user in (alice, bob, carol, dave):
        assert await user.quit() == 0
