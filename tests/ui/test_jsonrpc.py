"""The JSON-RPC mode in-process, on a real Session and server (127.0.0.1 port 0)."""

from __future__ import annotations

import asyncio
import io
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.servers import World, world_at
from whatsap2p.app.events import DeliveryReport
from whatsap2p.ui.jsonrpc import JsonRpc
from whatsap2p.ui.stdin import LineReader

ALICE, BOB = "+5511999990001", "+5511999990002"


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
