"""`send`'s `id` and `cancel`, through JSON-RPC on real processes: a retry under a
message's id is shown once; a queued message can be taken out of the outbox."""

from __future__ import annotations

import os

import pytest

from tests.e2e.conftest import Cluster
from tests.e2e.procs import RpcError

ALICE, BOB, CAROL = (f"+551199999000{i}" for i in range(1, 4))
INVALID_PARAMS = -32602


async def test_a_send_under_an_earlier_id_is_a_retry_shown_once(cluster: Cluster) -> None:
    alice, bob = await cluster.user(ALICE), await cluster.user(BOB)
    message_id = os.urandom(16).hex()
    sent = await alice.call("send", to=BOB, text="once", id=message_id)
    assert (sent["id"], sent["delivered"]) == (message_id, [BOB])
    again = await alice.call("send", to=BOB, text="once", id=message_id)
    assert (again["id"], again["delivered"], again["failed"]) == (message_id, [BOB], [])
    with pytest.raises(RpcError, match="sent before with other content") as refused:
        await alice.call("send", to=BOB, text="twice", id=message_id)
    assert refused.value.code == INVALID_PARAMS
    for bad in (message_id.upper(), message_id[:-1], 12, f"{message_id}0"):
        with pytest.raises(RpcError, match="32") as refused:
            await alice.call("send", to=BOB, text="x", id=bad)
        assert refused.value.code == INVALID_PARAMS
    after = await alice.call("send", to=BOB, text="after")
    got = [await bob.notification("receive") for _ in range(2)]
    assert [(r["id"], r["text"]) for r in got] == [(message_id, "once"), (after["id"], "after")]


async def test_cancel_takes_a_queued_message_out_of_the_outbox(cluster: Cluster) -> None:
    alice, bob = await cluster.user(ALICE), await cluster.user(BOB)
    await alice.call("createGroup", name="pals", members=[BOB, CAROL])
    sent = await alice.call("send", to="pals", text="never mind", queue=True)
    assert (sent["delivered"], sent["queued"]) == ([BOB], [CAROL])
    assert await alice.call("cancel", id=sent["id"]) == {"cancelled": [CAROL]}
    assert await alice.call("outbox") == []
    states = {e["to"]: e["state"] for e in await alice.call("history", **{"with": "pals"})}
    assert states == {BOB: "delivered", CAROL: "cancelled"}
    for unknown in (sent["id"], os.urandom(16).hex()):
        with pytest.raises(RpcError, match="no queued message") as refused:
            await alice.call("cancel", id=unknown)
        assert refused.value.code == INVALID_PARAMS
    carol = await cluster.user(CAROL)  # online now: nothing comes
    kept = await alice.call("send", to=CAROL, text="this one", queue=True)
    assert kept["delivered"] == [CAROL]
    assert (await carol.notification("receive"))["id"] == kept["id"]  # the first it gets
    assert (await bob.notification("receive"))["id"] == sent["id"]
