"""End to end: what issue 3 promises — privacy on the wire, numbers bound to keys,
pinned identities, a pinned server, and rate limits — through the real commands."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import signal
from pathlib import Path

import pytest

from tests.conftest import image_bytes
from tests.e2e.conftest import Cluster
from tests.e2e.procs import ServerProcess, UserProcess, run
from whatsap2p.errors import RateLimited
from whatsap2p.net.directory_client import DirectoryClient
from whatsap2p.protocol.framing import PROTOCOL_VERSION
from whatsap2p.protocol.keys import StaticKey

ALICE, BOB, CAROL = "+5511999990001", "+5511999990002", "+5511999990003"
MARKER = b"MARKER-7f3a9c-never-on-the-wire"


async def start_capture(path: Path) -> asyncio.subprocess.Process:
    """tcpdump on loopback, writing every TCP packet to `path`; returns once it listens.
    Its buffer is 32 MiB (the default 2 MiB dropped packets on a busy machine)."""
    tcpdump = shutil.which("tcpdump")
    assert tcpdump is not None, "tcpdump is missing: `make test` installs it"
    proc = await asyncio.create_subprocess_exec(
        tcpdump, "-i", "lo", "--immediate-mode", "-U", "-s", "0", "-B", "32768",
        "-w", str(path), "tcp",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    line = await asyncio.wait_for(proc.stderr.readline(), 15)
    assert b"listening on lo" in line, line
    return proc


async def stop_capture(proc: asyncio.subprocess.Process, path: Path) -> str:
    """Let tcpdump write out what it has seen, stop it, and return its closing report."""
    # tcpdump discards packets it has not processed yet when it is interrupted, and
    # nothing announces that it has caught up: wait until the file stops growing.
    size, stable_since = -1, 0
    for _ in range(100):
        await asyncio.sleep(0.05)  # tcpdump offers no event to await
        current = path.stat().st_size
        stable_since = stable_since + 1 if current == size else 0
        size = current
        if stable_since >= 6:
            break
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGINT)
    assert proc.stderr is not None
    report = (await asyncio.wait_for(proc.stderr.read(), 15)).decode()
    await asyncio.wait_for(proc.wait(), 15)
    return report


async def test_the_wire_shows_no_text_photo_or_number(tmp_path: Path) -> None:
    capture = tmp_path / "loopback.pcap"
    tcpdump = await start_capture(capture)
    text = "meet me at the old mill, 9pm"
    photo = tmp_path / "secret.png"
    photo.write_bytes(image_bytes(size=(200, 150), marker=MARKER * 100))
    server = await ServerProcess.start(tmp_path / "bindings.sqlite3")
    alice = await UserProcess.start(server.address, ALICE, tmp_path / "alice")
    bob = await UserProcess.start(server.address, BOB, tmp_path / "bob")
    try:
        assert (await alice.call("send", to=BOB, text=text))["delivered"] == [BOB]
        assert (await bob.notification("receive"))["text"] == text
        assert (await alice.call("send", to=BOB, photo=str(photo)))["delivered"] == [BOB]
        received = Path((await bob.notification("receive"))["photo"]["path"])
        assert MARKER in received.read_bytes()  # the marker did travel, inside the photo
        assert (await bob.call("send", to=ALICE, text=text))["delivered"] == [ALICE]
        assert await alice.quit() == 0
        assert await bob.quit() == 0
        assert await server.stop() == 0
    finally:
        for user in (alice, bob):
            await user.close()
        report = await stop_capture(tcpdump, capture)
    assert re.search(r"^0 packets dropped by kernel$", report, re.MULTILINE), report
    wire = capture.read_bytes()
    assert len(wire) > photo.stat().st_size  # the transfer is in the capture...
    for secret in (text.encode(), MARKER, MARKER[:12]):  # ...but none of this is
        assert secret not in wire
    for phone in (ALICE, BOB):
        for form in (phone, phone[1:], phone[3:]):  # +55119..., 55119..., 119...
            assert form.encode() not in wire
            assert form.encode("utf-16-le") not in wire


async def test_a_second_key_cannot_take_a_bound_number_even_after_a_restart(
    tmp_path: Path,
) -> None:
    db = tmp_path / "bindings.sqlite3"
    server = await ServerProcess.start(db)
    owner = await UserProcess.start(server.address, ALICE, tmp_path / "alice")
    assert await owner.quit() == 0  # offline, but the number stays bound to its key
    impostor = ["--phone", ALICE, "--data-dir", str(tmp_path / "impostor"), "--json"]
    code, _, err = await run("user", server.address, *impostor)
    assert code != 0
    assert err.strip() == f"whatsap2p: the server refused: {ALICE} is bound to another key"
    assert await server.stop() == 0

    server = await ServerProcess.start(db)
    try:
        code, _, err = await run("user", server.address, *impostor)
        assert code != 0
        assert "bound to another key" in err
        owner = await UserProcess.start(server.address, ALICE, tmp_path / "alice")
        assert await owner.quit() == 0
        code, out, _ = await run("server", "release", ALICE, "--db", str(db))
        assert (code, out) == (0, f"released {ALICE}\n")
        newcomer = await UserProcess.start(server.address, ALICE, tmp_path / "impostor")
        assert await newcomer.quit() == 0  # released: the new key took the number
    finally:
        assert await server.stop() == 0


async def test_a_wiped_database_shows_old_contacts_an_identity_change(tmp_path: Path) -> None:
    db = tmp_path / "server" / "bindings.sqlite3"
    server = await ServerProcess.start(db)
    alice = await UserProcess.start(server.address, ALICE, tmp_path / "alice")
    bob = await UserProcess.start(server.address, BOB, tmp_path / "bob")
    await alice.call("addContact", name="bob", phone=BOB)
    assert (await alice.call("send", to="bob", text="hi"))["delivered"] == [BOB]
    old_fp = (await bob.call("identity"))["fingerprint"]
    assert (await alice.call("listContacts"))[0]["fingerprint"] == old_fp
    for user in (alice, bob):
        assert await user.quit() == 0
    assert await server.stop() == 0

    for wiped in db.parent.glob(db.name + "*"):  # the database, not the server's key
        if not wiped.name.endswith(".key"):
            wiped.unlink()
    server = await ServerProcess.start(db)
    new_bob = await UserProcess.start(server.address, BOB, tmp_path / "new-bob")
    alice = await UserProcess.start(server.address, ALICE, tmp_path / "alice")
    try:
        new_fp = (await new_bob.call("identity"))["fingerprint"]
        assert new_fp != old_fp
        sent = await alice.call("send", to="bob", text="is that you?")
        assert sent["delivered"] == []
        assert [(f["phone"], f["code"]) for f in sent["failed"]] == [(BOB, "identity-changed")]
        assert "identity changed" in sent["failed"][0]["error"]
        assert await alice.notification("identityChanged") == {"phone": BOB, "fingerprint": new_fp}
        back = await new_bob.call("send", to=ALICE, text="new phone, same bob")
        assert back["failed"][0]["code"] == "refused"  # alice refuses him too
        assert "identity changed" in back["failed"][0]["error"]
        assert (await alice.call("listContacts"))[0]["fingerprint"] == old_fp  # still pinned

        assert await alice.call("trust", phone="11 99999-0002") == {
            "phone": BOB,
            "fingerprint": new_fp,
        }
        assert (await alice.call("listContacts"))[0]["fingerprint"] == new_fp
        assert (await alice.call("send", to="bob", text="welcome back"))["delivered"] == [BOB]
        assert (await new_bob.notification("receive"))["text"] == "welcome back"
        assert (await new_bob.call("send", to=ALICE, text="thanks"))["delivered"] == [ALICE]
    finally:
        for user in (alice, new_bob):
            await user.close()
        assert await server.stop() == 0


async def test_a_pinned_server_key_refuses_an_impostor_server(tmp_path: Path) -> None:
    real = await ServerProcess.start(tmp_path / "real" / "bindings.sqlite3")
    impostor = await ServerProcess.start(tmp_path / "impostor" / "bindings.sqlite3")
    try:
        args = ["--phone", ALICE, "--data-dir", str(tmp_path / "alice"), "--json"]
        code, out, err = await run(
            "user", impostor.address, *args, "--server-key", real.fingerprint
        )
        assert code != 0
        assert out == ""
        assert f"has key {impostor.fingerprint}, not the expected {real.fingerprint}" in err
        assert len(err.strip().splitlines()) == 1
        alice = await UserProcess.start(
            real.address, ALICE, tmp_path / "alice", "--server-key", real.fingerprint.upper()
        )
        assert await alice.quit() == 0
    finally:
        assert await real.stop() == 0
        assert await impostor.stop() == 0


async def test_a_lookup_flood_is_rate_limited_while_normal_sends_work(cluster: Cluster) -> None:
    alice, bob = await cluster.user(ALICE), await cluster.user(BOB)
    flooder = await DirectoryClient.connect("127.0.0.1", cluster.server.port, StaticKey.generate())
    await flooder.register(CAROL, 40000)
    numbers = [f"+55119{n:08d}" for n in range(100)]  # enumerating a range of numbers
    limited = 0
    flooding = True

    async def flood() -> None:
        nonlocal limited
        while flooding:
            try:
                await flooder.lookup(numbers)
            except RateLimited:
                limited += 1

    flood_task = asyncio.create_task(flood())
    try:
        for i in range(20):
            sent = await alice.call("send", to=BOB, text=f"normal message {i}")
            assert sent["delivered"] == [BOB], sent
            assert (await bob.notification("receive"))["text"] == f"normal message {i}"
    finally:
        flooding = False
        await flood_task
        await flooder.close()
    assert limited > 0


@pytest.mark.parametrize("bad", ["xyz", "12" * 31])
async def test_a_malformed_server_key_is_a_usage_error(bad: str) -> None:
    code, _, err = await run("user", "127.0.0.1:1", "--phone", ALICE, "--server-key", bad)
    assert code == 2
    assert "not a key fingerprint" in err


async def test_a_thousand_idle_connections_do_not_get_in_the_way(tmp_path: Path) -> None:
    server = await ServerProcess.start(
        tmp_path / "bindings.sqlite3",
        "--ip-register-rate",
        "100000",
        "--ip-register-burst",
        "100000",
    )  # the operator allows one host to register this many
    idle: list[DirectoryClient] = []
    alice = await UserProcess.start(server.address, ALICE, tmp_path / "alice")
    bob = await UserProcess.start(server.address, BOB, tmp_path / "bob")
    try:

        async def one_idle(n: int) -> DirectoryClient:
            client = await DirectoryClient.connect("127.0.0.1", server.port, StaticKey.generate())
            await client.register(f"+551198{n:07d}", 30000 + n % 20000)
            return client

        for start in range(0, 1000, 100):
            idle.extend(await asyncio.gather(*(one_idle(n) for n in range(start, start + 100))))
        sent = await alice.call("send", to=BOB, text="still quick")
        assert sent["delivered"] == [BOB]
        assert (await bob.notification("receive"))["text"] == "still quick"
        some = await alice.call("status", target="+5511980000999")
        assert some == {"+5511980000999": {"online": True}}
        assert await alice.quit() == 0
        assert await bob.quit() == 0
    finally:
        for client in idle:
            await client.close()
        await alice.close()
        await bob.close()
        assert await server.stop() == 0


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB$", status, re.MULTILINE).group(1))  # type: ignore[union-attr]


async def test_half_sent_frames_cannot_make_the_server_grow(tmp_path: Path) -> None:
    server = await ServerProcess.start(tmp_path / "bindings.sqlite3")
    held: list[asyncio.StreamWriter] = []
    try:
        before = rss_kib(server.proc.pid)
        for _ in range(200):  # each announces the largest frame and sends half of it
            _, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(bytes([PROTOCOL_VERSION]) + (65535).to_bytes(4, "big") + bytes(32000))
            held.append(writer)
        await asyncio.gather(*(w.drain() for w in held))
        alice = await UserProcess.start(server.address, ALICE, tmp_path / "alice")
        assert await alice.quit() == 0  # the server still serves
        grown = rss_kib(server.proc.pid) - before
        assert grown < 64 * 1024, f"the server grew by {grown} KiB"  # 200 x 64 KiB at most
    finally:
        for writer in held:
            writer.close()
        assert await server.stop() == 0
