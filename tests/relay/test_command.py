"""`whatsap2p relay` as a real process: it says where it listens, as the contract says;
joins pairs whose tokens a directory holding the same secret file minted; refuses the
rest; counts it all for Prometheus; and carries a Noise session whose numbers and
content nobody watching it can read."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import time
from pathlib import Path

from tests.e2e.procs import TIMEOUT, relay_process, run
from tests.e2e.test_security import stop_capture
from tests.relay.client import ALICE, BOB, RelayClient, connect, token
from whatsap2p.protocol.keys import StaticKey
from whatsap2p.protocol.noise import NoiseChannel
from whatsap2p.protocol.relay import MAGIC, Status, encode_preface, mint
from whatsap2p.relay.secret import load_or_create_secret

MiB = 1024 * 1024
MARKER = b"MARKER-relay-4e1d-never-on-the-wire"


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert found, f"{name} not in the metrics"
    return float(found[1])


async def test_the_command_listens_joins_refuses_and_counts(tmp_path: Path) -> None:
    secret_file = tmp_path / "relay.secret"
    options = ("--secret", str(secret_file), "--metrics-port", "0", "--wait-timeout", "0.5")
    async with relay_process(*options) as relay:
        # The directory's side: the same file (created by the relay, as it was missing).
        secret = load_or_create_secret(secret_file)
        shared = token(secret=secret)
        alice, bob = await connect(relay.port), await connect(relay.port)
        alice.present(shared)
        bob.present(shared)
        assert (await alice.status(), await bob.status()) == (Status.JOINED, Status.JOINED)
        there, back = os.urandom(4 * MiB), os.urandom(4 * MiB)
        alice.write(there)
        bob.write(back)
        assert await bob.read(len(there)) == there
        assert await alice.read(len(back)) == back

        forged = await connect(relay.port)
        forged.present(token())  # tests' own secret: not this relay's
        assert await forged.status() == Status.FORGED
        lone = await connect(relay.port)
        lone.present(token(secret=secret))
        assert await lone.status() == Status.TIMEOUT  # after --wait-timeout 0.5

        scraped = await relay.scrape()
        assert metric(scraped, "whatsap2p_relay_sessions") == 1
        assert metric(scraped, "whatsap2p_relay_waiting") == 0
        assert metric(scraped, "whatsap2p_relay_buffered_bytes") == 0
        assert metric(scraped, "whatsap2p_relay_joined_total") == 1
        assert metric(scraped, "whatsap2p_relay_forwarded_bytes_total") == 8 * MiB
        assert metric(scraped, 'whatsap2p_relay_refused_total{reason="forged"}') == 1
        assert metric(scraped, 'whatsap2p_relay_refused_total{reason="timeout"}') == 1
        assert metric(scraped, 'whatsap2p_relay_refused_total{reason="replayed"}') == 0
        alice.close()
        bob.close()


async def test_both_sides_share_the_default_secret_file(tmp_path: Path) -> None:
    """No --secret: the user data dir's file, which `whatsap2p server` uses by default
    too; on one machine, for one user, they share it with no option at all."""
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "data")}
    async with relay_process(env=env) as relay:
        secret = load_or_create_secret(tmp_path / "data" / "whatsap2p" / "relay.secret")
        alice, bob = await connect(relay.port), await connect(relay.port)
        shared = token(secret=secret)
        alice.present(shared)
        bob.present(shared)
        assert (await alice.status(), await bob.status()) == (Status.JOINED, Status.JOINED)
        alice.close()
        bob.close()


async def test_a_corrupt_secret_or_a_taken_port_is_a_one_line_error(tmp_path: Path) -> None:
    corrupt = tmp_path / "relay.secret"
    corrupt.write_text("whatsap2p-relay-secret 1\nc2hvcnQ=\n")
    code, out, err = await run("relay", "--port", "0", "--secret", str(corrupt))
    assert (code, out) == (1, "")
    assert err == (
        f"whatsap2p: relay secret file {corrupt} is corrupt (5 bytes, fewer than 32);"
        " it was not changed\n"
    )
    async with relay_process("--secret", str(tmp_path / "ok.secret")) as relay:
        code, _, err = await run(
            "relay", "--port", str(relay.port), "--secret", str(tmp_path / "ok.secret")
        )
        assert code == 1
        assert err.startswith(f"whatsap2p: cannot listen on 127.0.0.1:{relay.port}: ")
        assert err.count("\n") == 1


async def _sealed(client: RelayClient, channel: NoiseChannel) -> None:
    """Run the Noise handshake over `client`'s relayed connection."""
    while True:
        if handshake := channel.data_to_send():
            client.write(handshake)
        if channel.established:
            return
        channel.receive_data(await client.some())
        assert channel.next_body() is None


async def _body(client: RelayClient, channel: NoiseChannel) -> bytes:
    while (body := channel.next_body()) is None:
        channel.receive_data(await client.some())
    return body


async def start_capture(path: Path, port: int) -> asyncio.subprocess.Process:
    """tcpdump on loopback, of the connections to and from `port` only (other tests may
    be running on this machine, some with numbers in the clear: to their Redis)."""
    tcpdump = shutil.which("tcpdump")
    assert tcpdump is not None, "tcpdump is missing: `make test` installs it"
    proc = await asyncio.create_subprocess_exec(
        tcpdump, "-i", "lo", "--immediate-mode", "-U", "-s", "0", "-B", "32768",
        "-w", str(path), "tcp", "port", str(port),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    line = await asyncio.wait_for(proc.stderr.readline(), TIMEOUT)
    assert b"listening on lo" in line, line
    return proc


async def test_a_noise_session_through_the_relay_shows_no_number_or_content(
    tmp_path: Path,
) -> None:
    """The two modules' own Noise XX session, through the relay, as the wire shows it:
    the preface and its token (no number in it), then ciphertext."""
    capture = tmp_path / "relay.pcap"
    async with relay_process("--secret", str(tmp_path / "relay.secret")) as relay:
        tcpdump = await start_capture(capture, relay.port)
        try:
            secret = load_or_create_secret(tmp_path / "relay.secret")
            shared = mint(secret, ALICE, BOB, now=time.time())
            alice, bob = await connect(relay.port), await connect(relay.port)
            alice.write(encode_preface(shared))
            bob.write(encode_preface(shared))
            assert (await alice.status(), await bob.status()) == (0, 0)
            alice_key, bob_key = StaticKey.generate(), StaticKey.generate()
            sender = NoiseChannel(
                alice_key, initiator=True, max_body=MiB, expected_remote=bob_key.public
            )
            receiver = NoiseChannel(bob_key, initiator=False, max_body=MiB)
            await asyncio.gather(_sealed(alice, sender), _sealed(bob, receiver))
            assert receiver.remote_key == alice_key.public  # the keys are checked end to end
            text = f"hello {BOB}, it is {ALICE} ".encode() * 50 + MARKER * 1000
            alice.write(bytes(sender.seal(text)))
            assert await _body(bob, receiver) == text
            bob.write(bytes(receiver.seal(MARKER + ALICE.encode())))
            assert await _body(alice, sender) == MARKER + ALICE.encode()
            alice.close()
            bob.close()
        finally:
            report = await stop_capture(tcpdump, capture)
    assert re.search(r"^0 packets dropped by kernel$", report, re.MULTILINE), report
    wire = capture.read_bytes()
    assert MAGIC in wire
    assert shared in wire
    assert len(wire) > 2 * len(text)  # both legs of the text's way
    for secret_text in (MARKER, MARKER[:12]):
        assert secret_text not in wire
    for phone in (ALICE, BOB):
        for form in (phone, phone[1:], phone[3:]):
            assert form.encode() not in wire
            assert form.encode("utf-16-le") not in wire
