"""Real modules behind routers that no hole gets through, meeting at real relays, in a
small internet of network namespaces the test builds and removes (tests/e2e/internet.py):
texts both ways and a 5 MB photo verified by its hash, with the relay's traffic captured
(no text, no photo byte, no number in it) and the directory reading far fewer bytes than
the photo; a stolen ticket replayed, a forged one and a flood refused while the pair
keeps talking; and a relay killed mid-photo, the photo completing through another."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shutil
import signal
import struct
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import image_bytes
from tests.e2e.internet import Host, Internet, cannot_make_internet, internet
from tests.e2e.procs import TIMEOUT, RelayProcess, ServerProcess, UserProcess, relay_process
from whatsap2p.protocol.relay import MAGIC, TOKEN_SIZE, Status, encode_preface

pytestmark = pytest.mark.skipif(
    cannot_make_internet() is not None, reason=str(cannot_make_internet())
)

ALICE, CAROL = "+5511999990001", "+5511999990003"
PORT = 5560  # (each relay in a namespace of its own)
TEXT = "MARKER-text-7c1f: meet me at the usual place"


class Town:
    """The internet, its directory server, its relays, and the users a test starts."""

    def __init__(
        self, net: Internet, server: ServerProcess, relays: list[tuple[Host, RelayProcess]],
        root: Path, stack: AsyncExitStack,
    ) -> None:  # fmt: skip
        self.net, self.server, self.relays = net, server, relays
        self.root, self._stack = root, stack

    async def user(self, phone: str, host: Host) -> UserProcess:
        user = await UserProcess.start(
            self.server.address, phone, self.root / phone, "--listen", "0.0.0.0:0",
            "--server-key", self.server.fingerprint, inside=host.inside,
        )  # fmt: skip
        self._stack.push_async_callback(user.close)
        return user


@asynccontextmanager
async def town(root: Path, *relay_options: tuple[str, ...]) -> AsyncIterator[Town]:
    """A town with a directory server and a relay for each of `relay_options` (its
    command-line options), each on a public host of its own, sharing one secret file."""
    secret = root / "relay.secret"
    with internet() as net:
        async with AsyncExitStack() as stack:
            relays = []
            for n, options in enumerate(relay_options):
                host = net.public_host(f"203.0.113.{20 + n}")
                relay = await stack.enter_async_context(
                    relay_process(
                        "--secret", str(secret), "--metrics-port", "9100", *options,
                        inside=host.inside, host=host.address, port=PORT,
                    )
                )  # fmt: skip
                relays.append((host, relay))
            directory = net.public_host("203.0.113.10")
            named = [f"--relay={relay.address}" for _, relay in relays]
            server = await ServerProcess.start(
                root / "server" / "bindings.sqlite3", *named, "--relay-secret", str(secret),
                inside=directory.inside, host=directory.address,
            )  # fmt: skip
            try:
                async with AsyncExitStack() as users:
                    yield Town(net, server, relays, root, users)
            finally:
                assert await server.stop() == 0


def photo_file(root: Path, size: int) -> tuple[Path, bytes]:
    """A photo with `size` random bytes in it, and those bytes."""
    noise = os.urandom(size)
    path = root / "big.png"
    path.write_bytes(image_bytes(size=(200, 200), marker=noise))
    return path, noise


async def relayed(sender: UserProcess, receiver: UserProcess, **content: Any) -> dict[str, Any]:
    """Send `content`; it went through a relay, and arrived: what the receiver got."""
    sent = await sender.call("send", to=receiver.phone, **content)
    assert (sent["delivered"], sent["routes"]) == ([receiver.phone], {receiver.phone: "relay"})
    got: dict[str, Any] = await receiver.notification("receive")
    assert got["from"] == sender.phone
    return got


def bytes_read(pid: int) -> int:
    """What process `pid` has read so far, from any file or socket."""
    io = Path(f"/proc/{pid}/io").read_text()
    found = re.search(r"^rchar: (\d+)$", io, re.MULTILINE)
    assert found
    return int(found[1])


async def capture(host: Host, path: Path) -> asyncio.subprocess.Process:
    """tcpdump in `host`'s namespace, of the relay's port only."""
    tcpdump = shutil.which("tcpdump")
    assert tcpdump is not None, "tcpdump is missing: `make test` installs it"
    proc = await asyncio.create_subprocess_exec(
        *host.inside, tcpdump, "-i", "any", "--immediate-mode", "-U", "-s", "0",
        "-B", "131072", "-w", str(path), "tcp", "port", str(PORT),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    while b"listening on any" not in (
        line := await asyncio.wait_for(proc.stderr.readline(), TIMEOUT)
    ):
        assert line, "tcpdump ended before it listened"
    return proc


async def stopped(tcpdump: asyncio.subprocess.Process) -> str:
    tcpdump.send_signal(signal.SIGINT)
    _, report = await asyncio.wait_for(tcpdump.communicate(), TIMEOUT)
    return report.decode()


#: Run inside an attacker's namespace: connect to the relay (argv 1, 2) with each token
#: given in hex on stdin, one per line, and print the status byte answered (or "closed");
#: then open argv 3 connections that send garbage, and keep them until stdin closes.
_ATTACKER = """
import asyncio, sys
async def status(host, port, preface):
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(preface)
    answer = await reader.read(1)
    writer.close()
    return str(answer[0]) if answer else "closed"
async def main():
    host, port, flood = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    lines = sys.stdin.readline().split()
    for line in lines:
        print(await status(host, port, bytes.fromhex(line)), flush=True)
    held = []
    for _ in range(flood):
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            break
        writer.write(b"GET / HTTP/1.0\\r\\n" if len(held) % 2 else b"WA2Rly\\x01\\x00")
        held.append(writer)
    print("flooding", len(held), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
asyncio.run(main())
"""


async def test_users_behind_symmetric_routers_meet_at_a_sealed_relay(tmp_path: Path) -> None:
    async with town(tmp_path, ()) as place:
        relay_host, relay = place.relays[0]
        alice = await place.user(ALICE, place.net.router(symmetric=True).host())
        carol = await place.user(CAROL, place.net.router(symmetric=True).host())
        wire = tmp_path / "relay.pcap"
        tcpdump = await capture(relay_host, wire)
        try:
            assert (await relayed(alice, carol, text=TEXT))["text"] == TEXT
            assert (await relayed(carol, alice, text="and back"))["text"] == "and back"
            photo, noise = photo_file(tmp_path, 5_000_000)
            read_before = bytes_read(place.server.proc.pid)
            got = (await relayed(alice, carol, photo=str(photo)))["photo"]
            read_during = bytes_read(place.server.proc.pid) - read_before
            assert got["sha256"] == hashlib.sha256(photo.read_bytes()).hexdigest()
            assert Path(got["path"]).read_bytes() == photo.read_bytes()
        finally:
            report = await stopped(tcpdump)
        # the directory never carried the photo: it read a few requests meanwhile
        assert read_during < len(noise) // 50, read_during
        assert re.search(r"^0 packets dropped by kernel$", report, re.MULTILINE), report
        seen = wire.read_bytes()
        assert len(seen) > 2 * len(noise)  # both legs of the photo's way went by
        assert TEXT.encode() not in seen
        assert TEXT[:12].encode() not in seen
        for start in range(0, len(noise) - 32, len(noise) // 64):  # no run of the photo
            assert noise[start : start + 32] not in seen
        for phone in (ALICE, CAROL):
            for form in (phone, phone[1:], phone[3:]):
                assert form.encode() not in seen
                assert form.encode("utf-16-le") not in seen

        # What a thief of the relay's traffic gets: the tickets (in the clear, by
        # design: they prove only that the directory introduced a pair), which the
        # relay does not take again; a forged one; and a flood, while alice and carol
        # keep talking (a new link each way: a photo).
        tickets = {
            seen[at + len(MAGIC) + 2 : at + len(MAGIC) + 2 + TOKEN_SIZE]
            for at in (m.start() for m in re.finditer(re.escape(MAGIC), seen))
            if struct.unpack(">H", seen[at + len(MAGIC) : at + len(MAGIC) + 2])[0] == TOKEN_SIZE
        }
        assert tickets
        stolen = next(iter(tickets))
        forged = bytes([stolen[0]]) + stolen[1:-1] + bytes([stolen[-1] ^ 1])
        mallory = place.net.public_host()
        attack = await asyncio.create_subprocess_exec(
            *mallory.inside, sys.executable, "-c", _ATTACKER, relay.host, str(PORT), "300",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert attack.stdin is not None
        assert attack.stdout is not None
        try:
            prefaces = (encode_preface(stolen), encode_preface(forged))
            attack.stdin.write(" ".join(p.hex() for p in prefaces).encode() + b"\n")
            await attack.stdin.drain()
            answers = [
                (await asyncio.wait_for(attack.stdout.readline(), TIMEOUT)).decode().strip()
                for _ in prefaces
            ]
            assert answers == [str(Status.REPLAYED.value), str(Status.FORGED.value)]
            flooding = (await asyncio.wait_for(attack.stdout.readline(), TIMEOUT)).decode()
            assert flooding.startswith("flooding ")
            small, _ = photo_file(tmp_path, 100_000)
            for sender, receiver in ((alice, carol), (carol, alice)):
                got = (await relayed(sender, receiver, photo=str(small)))["photo"]
                assert Path(got["path"]).read_bytes() == small.read_bytes()
            scraped = await relay.scrape(relay_host.inside)
        finally:
            attack.stdin.close()
            await asyncio.wait_for(attack.wait(), TIMEOUT)
        for reason in ("replayed", "forged"):
            assert f'whatsap2p_relay_refused_total{{reason="{reason}"}} 1.0' in scraped


def forwarded(scraped: str) -> float:
    found = re.search(r"^whatsap2p_relay_forwarded_bytes_total (\S+)$", scraped, re.MULTILINE)
    assert found
    return float(found[1])


async def test_a_photo_cut_off_with_its_relay_completes_through_another(tmp_path: Path) -> None:
    # Slow relays (1 MiB/s a pair), so that the one carrying the photo dies on its way.
    slow = ("--session-rate", "1", "--session-burst", "0.25")  # (MiB/s, MiB)
    async with town(tmp_path, slow, slow) as place:
        alice = await place.user(ALICE, place.net.router(symmetric=True).host())
        carol = await place.user(CAROL, place.net.router(symmetric=True).host())
        await relayed(alice, carol, text="hello")
        photo, _ = photo_file(tmp_path, 5_000_000)
        sending = asyncio.ensure_future(alice.call("send", to=CAROL, photo=str(photo)))
        carrying = None
        while carrying is None:  # a megabyte and more through one relay: that one dies
            for host, relay in place.relays:
                if forwarded(await relay.scrape(host.inside)) > 1_500_000:
                    carrying = relay
            assert not sending.done(), sending.result()
            await asyncio.sleep(0.1)  # (polling other processes' counters)
        await carrying.stop(signal.SIGKILL)
        sent = await sending
        assert (sent["delivered"], sent["routes"]) == ([CAROL], {CAROL: "relay"})
        got = (await carol.notification("receive"))["photo"]
        assert got["sha256"] == hashlib.sha256(photo.read_bytes()).hexdigest()
        assert Path(got["path"]).read_bytes() == photo.read_bytes()
        ((other_host, other),) = [(h, r) for h, r in place.relays if r is not carrying]
        assert forwarded(await other.scrape(other_host.inside)) < 4_500_000  # the rest only
