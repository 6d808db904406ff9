"""End to end: the plain line mode, as a person at a shell would use it."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from tests.conftest import image_bytes
from tests.e2e.conftest import Cluster
from tests.e2e.procs import spawn_user

ALICE, BOB = "+5511999990001", "+5511999990002"


async def test_line_mode_sends_receives_and_escapes(cluster: Cluster, tmp_path: Path) -> None:
    bob = await cluster.user(BOB)
    await bob.call("addContact", name="pal", phone=ALICE)
    photo = tmp_path / "p.gif"
    photo.write_bytes(image_bytes("GIF"))
    proc = await spawn_user(cluster.server.address, ALICE, tmp_path / "alice", "--plain")
    assert proc.stdin is not None
    stdout = proc.stdout
    assert stdout is not None

    async def line() -> str:
        raw: bytes = await asyncio.wait_for(stdout.readline(), 10)
        return raw.decode().rstrip("\n")

    assert (await line()).startswith(f"online as {ALICE}")
    proc.stdin.write(b"/add bob +55 11 99999-0002\n")
    assert await line() == f"contact bob: {BOB}"
    proc.stdin.write(b"/msg bob hello there\n")
    assert await line() == f"delivered to {BOB}"
    assert (await bob.notification("receive"))["text"] == "hello there"
    proc.stdin.write(f"/photo bob {photo}\n".encode())
    assert await line() == f"delivered to {BOB}"
    assert (await bob.notification("receive"))["photo"]["mime"] == "image/gif"

    await bob.call("send", to="pal", text="hi\x1b[2J\u202eevil\x07")
    assert re.fullmatch(r"\[\d\d:\d\d\] bob: hi\\x1b\[2J\\u202eevil\\x07", await line())
    await bob.call("send", to="pal", photo=str(photo))
    shown = await line()
    assert re.fullmatch(rf"\[\d\d:\d\d\] bob: photo saved to {tmp_path}/alice/photos/p\.gif", shown)

    proc.stdin.write(b"/who bob\n")
    assert await line() == f"{BOB} online"
    bob_fp = (await bob.call("identity"))["fingerprint"]
    proc.stdin.write(b"/contacts\n")
    assert await line() == f"bob: {BOB} key {bob_fp}"
    proc.stdin.write(b"/identity\n")
    assert re.fullmatch(rf"\{ALICE} key [0-9a-f]{{64}}", await line())
    proc.stdin.write(b"/trust bob-is-not-a-number\n")
    assert (await line()).startswith("error: invalid phone number")
    proc.stdin.write(f"/trust {BOB}\n".encode())
    assert await line() == f"trusting {BOB} with key {bob_fp}"
    proc.stdin.write(b"/msg nobody hi\n")
    assert (await line()).startswith("error: no contact or group named 'nobody'")
    proc.stdin.write(b"/bogus\n")
    assert (await line()).startswith("error: unknown command /bogus")
    proc.stdin.write(b"/queue +5511999990007 see you later\n")
    assert await line() == "queued for: +5511999990007"
    proc.stdin.write(b"/outbox\n")
    assert re.fullmatch(r"[0-9a-f]{32} to \+5511999990007: see you later", await line())
    proc.stdin.write(b"/history +5511999990007\n")
    assert re.fullmatch(
        rf"\[\d\d:\d\d\] \{ALICE} -> \+5511999990007: see you later \(queued\)", await line()
    )
    proc.stdin.write(b"/quit\n")
    assert await asyncio.wait_for(proc.wait(), 10) == 0
    assert (await bob.call("status", target=ALICE))[ALICE] == {"online": False}


async def test_without_a_terminal_the_line_mode_is_used(cluster: Cluster, tmp_path: Path) -> None:
    """The terminal UI needs a TTY; piped standard streams get the plain mode."""
    proc = await spawn_user(cluster.server.address, ALICE, tmp_path / "alice")
    assert proc.stdin is not None
    assert proc.stdout is not None
    first = await asyncio.wait_for(proc.stdout.readline(), 10)
    assert first.decode().startswith(f"online as {ALICE}")
    proc.stdin.write(b"/quit\n")
    assert await asyncio.wait_for(proc.wait(), 10) == 0
