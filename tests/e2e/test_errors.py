"""End to end: bad requests, bad start-ups and hostile bytes never win."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import socket
from pathlib import Path

import pytest

from tests.conftest import image_bytes
from tests.e2e.conftest import Cluster
from tests.e2e.procs import RpcError, ServerProcess, UserProcess, run

ALICE, BOB = "+5511999990001", "+5511999990002"


async def test_json_rpc_errors_never_end_the_module(cluster: Cluster, tmp_path: Path) -> None:
    alice = await cluster.user(ALICE, "--max-photo-mb", "0.01")
    await cluster.user(BOB)

    async def error_of(line: str) -> tuple[object, int]:
        future = alice.expect(None)
        alice.write(line)
        answer = await asyncio.wait_for(future, 10)
        return answer["id"], answer["error"]["code"]

    assert await error_of("{not json") == (None, -32700)
    assert await error_of("[1, 2") == (None, -32700)
    assert await error_of('"just a string"') == (None, -32600)
    assert await error_of('{"jsonrpc": "1.0", "id": null, "method": "listContacts"}') == (
        None,
        -32600,
    )
    assert await error_of("x" * (2 * 1024 * 1024)) == (None, -32600)  # an over-long line

    async def code_of(method: str, **params: object) -> int:
        with pytest.raises(RpcError) as caught:
            await alice.call(method, **params)
        assert caught.value.message  # a clear message, never empty
        return caught.value.code

    assert await code_of("launchRockets") == -32601
    assert await code_of("send", to="nobody", text="hi") == -32602
    assert await code_of("send", to=BOB) == -32602
    assert await code_of("send", to=BOB, text="a", photo="b") == -32602
    assert await code_of("send", to=BOB, text=5) == -32602
    assert await code_of("addContact", name="bob", phone="12") == -32602
    assert await code_of("addContact", name="bob") == -32602
    assert await code_of("removeContact", name="ghost") == -32602
    assert await code_of("createGroup", name="g", members="bob") == -32602
    assert await code_of("addToGroup", name="nogroup", member=BOB) == -32602
    assert await code_of("status", target="nobody") == -32602
    assert await code_of("send", to=BOB, photo=str(tmp_path / "missing.png")) == -32602
    (tmp_path / "notes.png").write_text("hello")
    assert await code_of("send", to=BOB, photo=str(tmp_path / "notes.png")) == -32602
    (tmp_path / "large.png").write_bytes(image_bytes(marker=b"\0" * 20_000))
    assert await code_of("send", to=BOB, photo=str(tmp_path / "large.png")) == -32602
    answer = await alice.response({"jsonrpc": "2.0", "id": "p", "method": "send", "params": [1]})
    assert answer["error"]["code"] == -32602

    # still alive, and pipelined requests all come back with their own ids
    for i in range(20):
        alice.write(json.dumps({"jsonrpc": "2.0", "id": f"n{i}", "method": "listContacts"}))
    answers = [alice.expect(f"n{i}") for i in range(20)]
    assert [a["result"] for a in await asyncio.gather(*answers)] == [[]] * 20
    # a batch is answered as a batch; a notification (no id) gets no answer
    batch = alice.expect("batch")
    alice.write(
        json.dumps(
            [
                {"jsonrpc": "2.0", "id": 1, "method": "listGroups"},
                {"jsonrpc": "2.0", "method": "listGroups"},
                {"jsonrpc": "2.0", "id": 2, "method": "nope"},
            ]
        )
    )
    got: list[dict[str, object]] = await asyncio.wait_for(batch, 10)
    assert [(a["id"], "result" in a) for a in got] == [(1, True), (2, False)]
    assert (await alice.call("send", to=BOB, text="fine"))["delivered"] == [BOB]
    assert await alice.quit() == 0
    assert all(line.endswith("\n") for line in alice.stdout_lines)


async def expect_startup_error(*args: str, stdin: bytes = b"") -> str:
    code, out, err = await run(*args, stdin=stdin)
    assert code != 0
    assert out == ""
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    return err


async def test_startup_errors_are_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port with nothing behind it
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    err = await expect_startup_error(
        "user", f"127.0.0.1:{free}", "--phone", ALICE, "--json", "--data-dir", str(tmp_path / "u")
    )
    assert "cannot reach the server" in err
    err = await expect_startup_error("user", "127.0.0.1:5555", "--phone", "123")
    assert "invalid phone number" in err
    err = await expect_startup_error("user", "nonsense", "--phone", ALICE)
    assert "HOST:PORT" in err

    server = await ServerProcess.start(tmp_path / "bindings.sqlite3")
    try:
        first = await UserProcess.start(server.address, ALICE, tmp_path / "a1")
        twin = tmp_path / "a2"  # alice's key, in another data dir
        twin.mkdir()
        shutil.copy(tmp_path / "a1" / "identity.key", twin / "identity.key")
        err = await expect_startup_error(
            "user", server.address, "--phone", ALICE, "--data-dir", str(twin)
        )
        assert "already online" in err
        err = await expect_startup_error(
            "user", server.address, "--phone", ALICE, "--data-dir", str(tmp_path / "a3")
        )
        assert "bound to another key" in err

        corrupt = tmp_path / "b"
        corrupt.mkdir()
        (corrupt / "contacts.json").write_text('{"version": 1, "contacts": ')
        err = await expect_startup_error(
            "user", server.address, "--phone", BOB, "--data-dir", str(corrupt)
        )
        assert "corrupt" in err
        assert (corrupt / "contacts.json").read_text() == '{"version": 1, "contacts": '

        busy = first.ready["listen"]
        err = await expect_startup_error(
            "user",
            server.address,
            "--phone",
            BOB,
            "--data-dir",
            str(tmp_path / "c"),
            "--listen",
            busy,
        )
        assert "cannot listen" in err
        assert await first.quit() == 0
    finally:
        assert await server.stop() == 0

    err = await expect_startup_error(
        "server", "--port", "0", "--host", "256.0.0.1", "--db", str(tmp_path / "x.sqlite3")
    )
    assert "cannot listen" in err


async def test_server_port_in_use_and_sigint(tmp_path: Path) -> None:
    server = await ServerProcess.start(tmp_path / "bindings.sqlite3")
    try:
        err = await expect_startup_error(
            "server", "--port", str(server.port), "--db", str(tmp_path / "other.sqlite3")
        )
        assert "cannot listen" in err
    finally:
        assert await server.stop(__import__("signal").SIGINT) == 0


async def test_garbage_at_the_server_while_others_keep_working(cluster: Cluster) -> None:
    alice, bob = await cluster.user(ALICE), await cluster.user(BOB)
    for garbage in (
        b"\x00" * 10_000,
        b"GET / HTTP/1.0\r\n\r\n",
        b"\x01\xff\xff\xff\xff" + b"A" * 999,
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", cluster.server.port)
        writer.write(garbage)
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 10) == b""  # refused, no secure channel
        writer.close()
        await writer.wait_closed()
    assert (await alice.call("send", to=BOB, text="still here"))["delivered"] == [BOB]
    assert (await bob.notification("receive"))["text"] == "still here"


async def test_garbage_at_a_peer_while_others_keep_working(cluster: Cluster) -> None:
    alice, bob = await cluster.user(ALICE), await cluster.user(BOB)
    _, port = bob.ready["listen"].rsplit(":", 1)
    reader, writer = await asyncio.open_connection("127.0.0.1", int(port))
    writer.write(b"\x01\x00\x00\x00\x05hello" * 100)
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 10) == b""  # bob hung up on it
    writer.close()
    await writer.wait_closed()
    assert (await alice.call("send", to=BOB, text="ok?"))["delivered"] == [BOB]


async def test_modules_survive_a_server_restart_and_say_so(tmp_path: Path) -> None:
    db = tmp_path / "bindings.sqlite3"
    server = await ServerProcess.start(db)
    alice = await UserProcess.start(server.address, ALICE, tmp_path / "a")
    bob = await UserProcess.start(server.address, BOB, tmp_path / "b")
    try:
        assert await server.stop() == 0
        for user in (alice, bob):
            assert (await user.notification("serverConnection"))["state"] == "lost"
        with pytest.raises(RpcError) as caught:
            await alice.call("send", to=BOB, text="anyone?")
        assert caught.value.code == -32000
        assert "not connected to the server" in caught.value.message
        assert await alice.call("addContact", name="bob", phone=BOB) == {
            "name": "bob",
            "phone": BOB,
        }

        server = await ServerProcess.start(db, port=server.port)  # back, same address
        back = asyncio.get_running_loop().time()
        for user in (alice, bob):
            assert (await user.notification("serverConnection"))["state"] == "restored"
        assert asyncio.get_running_loop().time() - back < 5
        assert (await alice.call("send", to="bob", text="you there?"))["delivered"] == [BOB]
        assert (await bob.notification("receive"))["text"] == "you there?"
        assert await alice.quit() == 0
        assert await bob.quit() == 0
    finally:
        await alice.close()
        await bob.close()
        assert await server.stop() == 0


async def test_a_frozen_server_is_noticed_and_rejoined_when_it_thaws(tmp_path: Path) -> None:
    server = await ServerProcess.start(tmp_path / "bindings.sqlite3")
    alice = await UserProcess.start(server.address, ALICE, tmp_path / "a", "--heartbeat", "0.5")
    try:
        server.proc.send_signal(signal.SIGSTOP)  # the connection stays up; nobody answers
        frozen_at = asyncio.get_running_loop().time()
        assert (await alice.notification("serverConnection"))["state"] == "lost"
        assert asyncio.get_running_loop().time() - frozen_at < 3  # two heartbeats
        server.proc.send_signal(signal.SIGCONT)
        assert (await alice.notification("serverConnection", timeout=30))["state"] == "restored"
        assert await alice.call("status", target=ALICE) == {ALICE: {"online": True}}
        assert await alice.quit() == 0
    finally:
        server.proc.send_signal(signal.SIGCONT)
        await alice.close()
        assert await server.stop() == 0


async def test_a_lone_surrogate_is_refused_and_the_module_still_ends_at_eof(
    cluster: Cluster,
) -> None:
    # (a text holding "\ud800" crashed its request's task: never answered, and with stdin
    # closed the module never exited, deaf to SIGTERM)
    alice = await cluster.user(ALICE)
    answer = alice.expect(7)
    alice.write('{"jsonrpc":"2.0","id":7,"method":"send","params":{"to":"+5511999990009",'
                '"text":"a\\ud800b","queue":true}}')  # fmt: skip
    error = (await asyncio.wait_for(answer, 10))["error"]
    assert (error["code"], "lone surrogate" in error["message"]) == (-32602, True)
    photo = alice.expect(8)
    alice.write('{"jsonrpc":"2.0","id":8,"method":"send","params":{"to":"+5511999990009",'
                '"photo":"/tmp/\\ud800.png"}}')  # fmt: skip
    assert (await asyncio.wait_for(photo, 10))["error"]["code"] == -32602
    assert alice.proc.stdin is not None
    alice.proc.stdin.close()  # end of input: it unregisters and ends
    assert await asyncio.wait_for(alice.proc.wait(), 10) == 0


async def test_sigterm_ends_a_module_promptly_whatever_it_is_doing(
    cluster: Cluster, tmp_path: Path
) -> None:
    alice = await cluster.user(ALICE, "--peer-timeout", "60")
    frozen = await cluster.user(BOB)
    await alice.call("addContact", name="bob", phone=BOB)
    frozen.proc.send_signal(signal.SIGSTOP)  # a peer that takes the connection and stalls
    try:
        sending = alice.expect(99)
        alice.write(json.dumps({"jsonrpc": "2.0", "id": 99, "method": "send",
                                "params": {"to": "bob", "text": "hello?"}}))  # fmt: skip
        await asyncio.sleep(0.5)  # (the send is under way, waiting on the frozen peer)
        loop = asyncio.get_running_loop()
        began = loop.time()
        alice.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(alice.proc.wait(), 10) == 0
        assert loop.time() - began < 3  # not the minute the peer would be given
        answer = await asyncio.wait_for(sending, 5)  # the request was answered on the way out
        assert answer["error"]["code"] == -32603
        assert "stopping" in answer["error"]["message"]
    finally:
        frozen.proc.send_signal(signal.SIGCONT)
