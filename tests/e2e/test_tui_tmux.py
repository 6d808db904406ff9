"""The terminal UI driven as a person would: `whatsap2p user` on a real terminal (a tmux
pane), keys typed with send-keys, the screen read with capture-pane, against a real
server and real peers (JSON-RPC modules). `make test` installs tmux when it is missing.

The screen is read again each time the pane prints something (tmux's control mode
reports every output as `%output`), for at most 15 s per step.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from tests.conftest import image_bytes
from tests.e2e.conftest import Cluster
from tests.e2e.procs import WHATSAP2P

ALICE, BOB, CAROL = "+5511999990001", "+5511999990002", "+5511999990003"
STEP = 15.0


class Pane:
    """One tmux session on a server of its own (nothing shared with a person's tmux)."""

    def __init__(self, socket: str) -> None:
        self.socket = socket
        self.output = asyncio.Event()  # the pane printed something since it was cleared
        self._control: asyncio.subprocess.Process | None = None
        self._listening: asyncio.Task[None] | None = None

    async def tmux(self, *args: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            "tmux",
            "-L",
            self.socket,
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), STEP)
        assert proc.returncode == 0, err.decode()
        return out.decode()

    async def start(self, command: str) -> None:
        """The pane, running `command`. The tmux server this starts keeps the standard
        streams it was given: none of ours, or reading them would never end."""
        proc = await asyncio.create_subprocess_exec(
            "tmux",
            "-L",
            self.socket,
            "new-session",
            "-d",
            "-s",
            "ui",
            "-x",
            "100",
            "-y",
            "30",
            "-e",
            "TERM=xterm-256color",
            command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        assert await asyncio.wait_for(proc.wait(), STEP) == 0
        await self.tmux("set-option", "-t", "ui", "window-size", "manual")  # stay 100x30
        self._control = await asyncio.create_subprocess_exec(
            "tmux",
            "-L",
            self.socket,
            "-C",
            "attach",
            "-t",
            "ui",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        self._listening = asyncio.create_task(self._listen())

    async def _listen(self) -> None:
        assert self._control is not None
        assert self._control.stdout is not None
        while line := await self._control.stdout.readline():
            if line.startswith(b"%output"):
                self.output.set()

    async def stop(self) -> None:
        if self._listening is not None:
            self._listening.cancel()
        if self._control is not None and self._control.returncode is None:
            self._control.kill()
            await self._control.wait()

    async def screen(self) -> str:
        return await self.tmux("capture-pane", "-p", "-t", "ui")

    async def until(self, check: Callable[[str], bool]) -> str:
        screen = ""
        try:
            async with asyncio.timeout(STEP):
                while True:
                    self.output.clear()
                    if check(screen := await self.screen()):
                        break
                    await self.output.wait()
        except TimeoutError:
            raise AssertionError(f"not on the screen in time:\n{screen}") from None
        return screen

    async def type(self, line: str) -> None:
        await self.tmux("send-keys", "-t", "ui", "-l", line)
        await self.tmux("send-keys", "-t", "ui", "Enter")


@pytest.fixture
async def pane() -> AsyncIterator[Pane]:
    pane = Pane(f"whatsap2p-test-{uuid.uuid4().hex[:8]}")
    try:
        yield pane
    finally:
        await pane.stop()
        with_server = await asyncio.create_subprocess_exec(
            "tmux", "-L", pane.socket, "kill-server", stderr=asyncio.subprocess.DEVNULL
        )
        await with_server.wait()


async def test_a_person_chats_and_sends_a_group_photo_in_the_terminal_ui(
    cluster: Cluster, pane: Pane, tmp_path: Path
) -> None:
    bob, carol = await cluster.user(BOB), await cluster.user(CAROL)
    photo = tmp_path / "sunny.png"
    photo.write_bytes(image_bytes(size=(160, 100)) + os.urandom(3 << 20))
    exit_code = tmp_path / "exit-code"
    command = (
        f"{shlex.quote(WHATSAP2P)} user {cluster.server.address} --phone {ALICE} "
        f"--data-dir {shlex.quote(str(tmp_path / 'alice'))} --listen 127.0.0.1:0; "
        f"echo $? > {shlex.quote(str(exit_code))}; echo module-exited; sleep 60"
    )
    await pane.start(command)
    await pane.until(lambda s: "server connected" in s and ALICE in s)

    # add a contact and see it online
    await pane.type("/add bob +55 11 99999-0002")
    await pane.until(lambda s: "● bob" in s)

    # chat both ways; what a peer sends is shown as typed, never as markup
    await pane.type("hello from the terminal")
    got = await bob.notification("receive")
    assert (got["from"], got["text"]) == (ALICE, "hello from the terminal")
    await pane.until(lambda s: "✓ bob delivered" in s)
    await bob.call("send", to=ALICE, text="[bold red]not bold[/] *plain*")
    await pane.until(lambda s: "bob: [bold red]not bold[/] *plain*" in s)

    # a photo to a group: progress, then delivered to each member, with its preview
    await pane.type("/add carol +5511999990003")
    await pane.until(lambda s: "● carol" in s)
    await pane.type("/group pals bob carol")
    await pane.until(lambda s: "# pals 2/2" in s)
    # two lines typed faster than the screen follows stay two lines
    await pane.tmux("send-keys", "-t", "ui", "/groups", "Enter", "/who carol", "Enter")
    await pane.until(lambda s: "group pals (id " in s and f"{CAROL} online" in s)
    await pane.type(f"/photo pals {photo}")
    delivered = "✓ bob delivered  ✓ carol delivered"  # (under the news of the group too)
    screen = await pane.until(lambda s: "photo sunny.png" in s and s.count(delivered) == 2)
    assert "▀" in screen  # the half-block preview
    for member in (bob, carol):
        received = await member.notification("receive")
        assert received["photo"]["bytes"] == photo.stat().st_size
        assert received["group"] == "pals"

    # /quit leaves the server: the peers see alice offline, the module exits 0
    await pane.type("/quit")
    await pane.until(lambda s: "module-exited" in s)
    assert exit_code.read_text().strip() == "0"
    assert await bob.call("status", target=ALICE) == {ALICE: {"online": False}}
