"""The JSON-RPC mode in-process, on a real Session and server (127.0.0.1 port 0)."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.servers import World, world_at
from whatsap2p.app.events import DeliveryReport
from whatsap2p.app.history import State
from whatsap2p.app.session import Session
from whatsap2p.ui.jsonrpc import INVALID_PARAMS, JsonRpc
from whatsap2p.ui.stdin import LineReader

ALICE, BOB, CAROL = "+5511999990001", "+5511999990002", "+5511999990003"
T = "2026-11-27T10:00:00.000+00:00"


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with world_at(tmp_path) as world:
        yield world


def requests_from(lines: list[str]) -> LineReader:
    """A reader of these request lines, then end of input."""
    read, write = os.pipe()
    os.write(write, "".join(line + "\n" for line in lines).encode())
    os.close(write)
    return LineReader(fd=read)


async def test_a_client_pipelining_more_than_the_cap_waits_for_answers(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = await world.user(ALICE)
    cap, count = 8, 30
    running, most = 0, 0
    full, release = asyncio.Event(), asyncio.Event()

    async def stuck_send(
        target: str, text: str, queue: bool = False, message_id: str | None = None
    ) -> DeliveryReport:
        nonlocal running, most
        running += 1
        most = max(most, running)
        if running == cap:
            full.set()
        await release.wait()  # a peer that does not answer yet
        running -= 1
        return DeliveryReport(text, delivered=[target])

    monkeypatch.setattr(alice, "send_text", stuck_send)
    out = io.StringIO()
    rpc = JsonRpc(alice, out, max_in_flight=cap)
    lines = [
        json.dumps(
            {"jsonrpc": "2.0", "id": n, "method": "send", "params": {"to": BOB, "text": str(n)}}
        )
        for n in range(count)
    ]
    serving = asyncio.create_task(rpc.run(asyncio.Event(), requests_from(lines)))
    await asyncio.wait_for(full.wait(), 10)
    release.set()
    await asyncio.wait_for(serving, 10)
    assert most == cap  # all the lines were there to read: only `cap` ran at once
    answers = [json.loads(line) for line in out.getvalue().splitlines()]
    results = {a["id"]: a["result"] for a in answers if "id" in a}
    assert sorted(results) == list(range(count))  # and every request was answered
    assert all(results[n]["id"] == str(n) for n in range(count))


class Broken:
    """Stands for a Session whose send fails with a bug (not a WhatsAp2pError)."""

    phone = ALICE
    listen_address = ("127.0.0.1", 1)
    server = "127.0.0.1:2"
    events: asyncio.Queue[object]

    def __init__(self) -> None:
        self.events = asyncio.Queue()

    async def send_text(
        self, target: str, text: str, queue: bool = False, message_id: str | None = None
    ) -> DeliveryReport:
        raise KeyError("a bug")


async def test_a_request_that_fails_unexpectedly_is_answered_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    out = io.StringIO()
    rpc = JsonRpc(Broken(), out)  # type: ignore[arg-type]
    line = '{"jsonrpc":"2.0","id":3,"method":"send","params":{"to":"bob","text":"hi"}}'
    await rpc.run(asyncio.Event(), requests_from([line]))
    answers = [json.loads(text) for text in out.getvalue().splitlines()][1:]  # after ready
    assert answers == [
        {
            "jsonrpc": "2.0",
            "id": 3,
            "error": {"code": -32603, "message": "internal error: KeyError: 'a bug'"},
        }
    ]
    assert "request failed unexpectedly" in caplog.text


class Answers(io.StringIO):
    """The module's standard output, waking whoever waits for the next line."""

    def __init__(self) -> None:
        super().__init__()
        self.wrote = asyncio.Event()

    def write(self, text: str) -> int:
        self.wrote.set()
        return super().write(text)


class Client:
    """A program at the module's JSON-RPC: one request at a time, its answer awaited."""

    def __init__(self, session: Session) -> None:
        self._read, self._write = os.pipe()
        self.out = Answers()
        self._rpc = JsonRpc(session, self.out)
        self._serving: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)

    async def __aenter__(self) -> Client:
        self._serving = asyncio.create_task(
            self._rpc.run(asyncio.Event(), LineReader(fd=self._read))
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        os.close(self._write)
        assert self._serving is not None
        await asyncio.wait_for(self._serving, 10)

    async def answer(self, method: str, **params: object) -> dict[str, Any]:
        """The whole response to a request (with `result` or `error`)."""
        request_id = next(self._ids)
        request = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
        os.write(self._write, json.dumps(request).encode() + b"\n")
        async with asyncio.timeout(10):
            while True:
                for line in self.out.getvalue().splitlines():
                    answer = json.loads(line)
                    if answer.get("id") == request_id:
                        return answer  # type: ignore[no-any-return]
                self.out.wrote.clear()
                await self.out.wrote.wait()

    async def call(self, method: str, **params: object) -> Any:
        answer = await self.answer(method, **params)
        assert "result" in answer, answer
        return answer["result"]


async def test_history_is_read_a_page_at_a_time_with_before(world: World) -> None:
    alice = await world.user(ALICE)
    history = alice.history
    assert history is not None
    alice.book.add_contact("bob", BOB)
    pals = alice.book.create_group("pals", ["bob", CAROL])
    for i in range(130):  # stored as they would be: bob writes, alice answers him and a group
        await history.store_received(f"{2 * i:032x}", BOB, None, T, text=f"from bob {i}")
        outcomes: dict[str, tuple[State, str | None]] = {
            BOB: ("delivered", None),
            CAROL: ("queued", None),
        }
        await history.store_sent(
            f"{2 * i + 1:032x}", outcomes, "pals", T, text=f"to pals {i}", group_id=pals.id
        )
    async with Client(alice) as client:
        for target, limit, sizes in [
            ("bob", 50, [50, 50, 30]),
            ("pals", 45, [44, 44, 44, 44, 44, 40]),
        ]:
            everything = await client.call("history", **{"with": target, "limit": 1000})
            pages = []
            before = None
            while page := await client.call(
                "history", **{"with": target, "limit": limit, "before": before}
            ):
                pages.append(page)
                before = page[-1]["id"]
            assert [
                len(page) for page in pages
            ] == sizes  # (a group send's 2 entries stay together)
            assert [entry for page in pages for entry in page] == everything
        assert everything[:2] == [
            {"id": f"{259:032x}", "from": ALICE, "to": CAROL, "group": "pals",
             "groupId": pals.id, "timestamp": T, "text": "to pals 129", "state": "queued"},
            {"id": f"{259:032x}", "from": ALICE, "to": BOB, "group": "pals",
             "groupId": pals.id, "timestamp": T, "text": "to pals 129", "state": "delivered"},
        ]  # fmt: skip

        async def refused(params: dict[str, object]) -> str:
            answer = await client.answer("history", **params)
            assert answer["error"]["code"] == INVALID_PARAMS, answer
            return str(answer["error"]["message"])

        unknown = "0" * 31 + "f"
        assert await refused({"with": "bob", "before": unknown}) == (
            f"no message {unknown} in the history with bob"
        )
        assert await refused({"with": "bob", "before": f"{1:032x}"}) == (
            f"no message {1:032x} in the history with bob"  # a message of the group
        )
        for wrong in [5, "", "not an id", "a" * 65, ["x"]]:
            assert await refused({"with": "bob", "before": wrong}) == (
                "param 'before' must be a message id"
            )
        for bad in [0, 1001, "10", 2.0, True]:
            assert await refused({"with": "bob", "limit": bad}) == (
                "param 'limit' must be an integer 1..1000"
            )
        assert len(await client.call("history", **{"with": "bob", "limit": 1000})) == 130
        oldest = f"{0:032x}"
        assert await client.call("history", **{"with": "bob", "before": oldest}) == []
