"""Through a relay against the direct path, in the same run: 50 MB of raw bytes, the same
sealed by a Noise session (1 MiB bodies, as a photo's chunks), a 100-byte round trip,
joining, and the relay's CPU per MB forwarded.

Three processes, as deployed: this one sends, a `whatsap2p relay` (default limits)
forwards, a receiver process reads. The direct path is the same two ends connected to
each other. Each relayed run's sender connects from a loopback address of its own
(127.0.0.10, .11...): the relay's per-source allowance is one user's, and a benchmark
from one address would soon be over it. Medians of 5 runs.

    python bench/relay.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

import uvloop

from whatsap2p.protocol.keys import StaticKey
from whatsap2p.protocol.noise import NoiseChannel
from whatsap2p.protocol.relay import encode_preface, mint
from whatsap2p.relay.secret import load_or_create_secret

MB = 1_000_000
MiB = 1 << 20
READ = 1 << 18
WHATSAP2P = str(Path(sys.executable).parent / "whatsap2p")
RUNS = 5
ALICE, BOB = "+5511999990001", "+5511999990002"

# The receiving end, a process of its own. One command a line on stdin:
#   HOST PORT PREFACE_HEX|- raw|sealed|echo
# connects there (saying the preface, then waiting for the relay's status byte), prints
# "waiting" once its preface is out, then: raw: reads an 8-byte size and that many bytes,
# answers b"k"; sealed: the same inside a Noise session it answers (1 MiB bodies, the
# first beginning with the size), its answer a sealed b"k"; echo: sends back every 100
# bytes read, until the end. Then prints "done".
RECEIVER = r"""
import asyncio, sys, uvloop
from whatsap2p.protocol.keys import StaticKey
from whatsap2p.protocol.noise import NoiseChannel

async def raw(reader, writer):
    size = int.from_bytes(await reader.readexactly(8), "big")
    while size:
        chunk = await reader.read(min(size, 1 << 18))
        assert chunk, "ended early"
        size -= len(chunk)
    writer.write(b"k")

async def sealed(reader, writer):
    channel = NoiseChannel(StaticKey.generate(), initiator=False, max_body=1 << 20)
    size, got = None, 0
    while size is None or got < size:
        while (body := channel.next_body()) is not None:
            if size is None:
                size, body = int.from_bytes(body[:8], "big"), body[8:]
            got += len(body)
        if out := channel.data_to_send():
            writer.write(out)
        if size is not None and got >= size:
            break
        data = await reader.read(1 << 18)
        assert data, "ended early"
        channel.receive_data(data)
    writer.write(channel.seal(b"k"))

async def echo(reader, writer):
    while True:
        try:
            writer.write(await reader.readexactly(100))
        except asyncio.IncompleteReadError:
            return

async def main():
    loop = asyncio.get_running_loop()
    commands = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)
    while line := await commands.readline():
        host, port, preface, mode = line.decode().split()
        reader, writer = await asyncio.open_connection(host, int(port), limit=1 << 18)
        if preface != "-":
            writer.write(bytes.fromhex(preface))
        print("waiting", flush=True)
        if preface != "-":
            assert await reader.readexactly(1) == b"\0", "not joined"
        await {"raw": raw, "sealed": sealed, "echo": echo}[mode](reader, writer)
        await writer.drain()
        writer.close()
        print("done", flush=True)

uvloop.run(main())
"""


class Receiver:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls) -> Receiver:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", RECEIVER, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        return cls(proc)

    async def connect(self, port: int, mode: str, preface: bytes | None = None) -> None:
        """Have it connect to `port` (through a relay when `preface`); returns once its
        preface is out."""
        assert self.proc.stdin is not None
        said = preface.hex() if preface else "-"
        self.proc.stdin.write(f"127.0.0.1 {port} {said} {mode}\n".encode())
        assert await self.said() == "waiting"

    async def said(self) -> str:
        assert self.proc.stdout is not None
        line = (await asyncio.wait_for(self.proc.stdout.readline(), 60)).decode().strip()
        if not line:
            raise RuntimeError(f"the receiver ended ({await self.proc.wait()})")
        return line

    async def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        await asyncio.wait_for(self.proc.wait(), 10)


class Relay:
    def __init__(self, proc: asyncio.subprocess.Process, port: int, secret: bytes) -> None:
        self.proc = proc
        self.port = port
        self.secret = secret
        self.sources = (f"127.0.0.{n}" for n in itertools.count(10))
        self.metrics_url = ""

    @classmethod
    async def start(cls, work: Path) -> Relay:
        secret_file = work / "relay.secret"
        proc = await asyncio.create_subprocess_exec(
            WHATSAP2P, "relay", "--port", "0", "--secret", str(secret_file),
            "--metrics-port", "0", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdout is not None
        assert proc.stderr is not None
        said = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        if not line.startswith("listening on 127.0.0.1:") or not said.startswith("metrics on"):
            raise RuntimeError(f"the relay said {said!r}, {line!r}")
        relay = cls(proc, int(line.rsplit(":", 1)[1]), load_or_create_secret(secret_file))
        relay.metrics_url = said.split()[-1]
        return relay

    def metric(self, name: str) -> float:
        with urllib.request.urlopen(self.metrics_url, timeout=10) as response:  # noqa: S310
            text = response.read().decode()
        found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
        assert found, name
        return float(found[1])

    def peak_rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmHWM")

    def preface(self) -> bytes:
        return encode_preface(mint(self.secret, ALICE, BOB, time.time()))

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    async def stop(self) -> None:
        self.proc.terminate()
        await asyncio.wait_for(self.proc.wait(), 10)


Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class Route:
    """One way from this process to the receiver: direct, or through the relay."""

    def __init__(self, receiver: Receiver, relay: Relay | None) -> None:
        self.receiver = receiver
        self.relay = relay
        self._accepted: asyncio.Queue[Streams] = asyncio.Queue()
        self._listening: asyncio.Server | None = None
        self.join_times: list[float] = []
        self.relay_cpu = 0.0

    async def connect(self, mode: str) -> Streams:
        """A connection to the receiver, joined (through the relay) and ready."""
        if self.relay is None:
            if self._listening is None:
                self._listening = await asyncio.start_server(
                    lambda r, w: self._accepted.put_nowait((r, w)), "127.0.0.1", 0, limit=READ
                )
            port = self._listening.sockets[0].getsockname()[1]
            await self.receiver.connect(port, mode)
            return await self._accepted.get()
        preface = self.relay.preface()
        await self.receiver.connect(self.relay.port, mode, preface)
        start = time.perf_counter()
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", self.relay.port, limit=READ, local_addr=(next(self.relay.sources), 0)
        )
        writer.write(preface)
        assert await reader.readexactly(1) == b"\0"
        self.join_times.append(time.perf_counter() - start)
        return reader, writer

    async def timed(self, mode: str, work: Callable[[Streams], Awaitable[None]]) -> float:
        """Seconds `work` takes on a fresh connection (its set-up not counted)."""
        streams = await self.connect(mode)
        cpu = self.relay.cpu_seconds() if self.relay else 0.0
        start = time.perf_counter()
        await work(streams)
        took = time.perf_counter() - start
        if self.relay:
            self.relay_cpu += self.relay.cpu_seconds() - cpu
        streams[1].close()
        assert await self.receiver.said() == "done"
        return took

    async def close(self) -> None:
        if self._listening is not None:
            self._listening.close()
            await self._listening.wait_closed()


def raw(payload: bytes) -> Callable[[Streams], Awaitable[None]]:
    async def send(streams: Streams) -> None:
        reader, writer = streams
        writer.write(len(payload).to_bytes(8, "big"))
        writer.write(payload)
        await writer.drain()
        assert await reader.readexactly(1) == b"k"

    return send


def sealed(payload: bytes) -> Callable[[Streams], Awaitable[None]]:
    async def send(streams: Streams) -> None:
        reader, writer = streams
        channel = NoiseChannel(StaticKey.generate(), initiator=True, max_body=MiB)
        while not channel.established:  # (the handshake is not counted out)
            writer.write(channel.data_to_send())
            channel.receive_data(await reader.read(READ))
            assert channel.next_body() is None
        writer.write(channel.data_to_send())
        chunk = MiB - 1024
        body = len(payload).to_bytes(8, "big") + payload[: chunk - 8]
        writer.write(channel.seal(body))
        for start in range(chunk - 8, len(payload), chunk):
            writer.write(channel.seal(payload[start : start + chunk]))
            await writer.drain()
        while (answer := channel.next_body()) is None:
            channel.receive_data(await reader.read(READ))
        assert answer == b"k"

    return send


async def round_trips(path: Route, count: int) -> list[float]:
    reader, writer = await path.connect("echo")
    message, times = os.urandom(100), []
    for _ in range(count):
        start = time.perf_counter()
        writer.write(message)
        assert await reader.readexactly(100) == message
        times.append(time.perf_counter() - start)
    writer.close()
    assert await path.receiver.said() == "done"
    return times


def percentile(samples: list[float], share: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def relay_report(quick: bool) -> list[str]:
    """The report's section (`make bench` may add it to bench/RESULTS.md as it is)."""
    runs = 1 if quick else RUNS
    size = (8 if quick else 50) * MB
    work = Path(tempfile.mkdtemp(prefix="whatsap2p-bench-relay-"))
    relay = await Relay.start(work)
    receiver = await Receiver.start()
    direct, relayed = Route(receiver, None), Route(receiver, relay)
    rows: list[str] = []
    try:
        payload = os.urandom(size)
        for what, work_of in (("raw bytes", raw), ("sealed (Noise, 1 MiB bodies)", sealed)):
            times: dict[str, list[float]] = {"direct": [], "relay": []}
            for _ in range(runs):  # alternately, so that both see the same machine
                times["direct"].append(await direct.timed(work_of.__name__, work_of(payload)))
                times["relay"].append(await relayed.timed(work_of.__name__, work_of(payload)))
            ours, theirs = (size / MB / statistics.median(times[k]) for k in ("direct", "relay"))
            rows.append(
                f"| {size // MB} MB, {what}: throughput | {ours:,.0f} MB/s | {theirs:,.0f} MB/s "
                f"| {theirs / ours:.2f} |"
            )
        count = 200 if quick else 2000
        near, far = await round_trips(direct, count), await round_trips(relayed, count)
        for share, name in ((0.5, "p50"), (0.99, "p99")):
            a, b = percentile(near, share) * 1e3, percentile(far, share) * 1e3
            rows.append(f"| 100-byte round trip, {name} | {a:.3f} ms | {b:.3f} ms | {b / a:.2f} |")
        joins = statistics.median(relayed.join_times) * 1e3
        rows.append(
            f"| joining (connect, preface, status; its other half waiting), p50 | | "
            f"{joins:.2f} ms | |"
        )
        forwarded = 2 * runs * size / MB  # raw and sealed (what the sealing adds: ~0.03%)
        rows.append(
            f"| relay CPU per MB forwarded | | {relayed.relay_cpu / forwarded * 1e3:.2f} ms/MB | |"
        )
        rows.append(f"| relay peak RSS | | {relay.peak_rss_mib():.1f} MiB | |")
        throttled = relay.metric("whatsap2p_relay_throttled_total")
        rows.append(f"| reads the relay paused for a byte rate | | {throttled:,.0f} | |")
    finally:
        await direct.close()
        await relayed.close()
        await receiver.stop()
        await relay.stop()
        shutil.rmtree(work, ignore_errors=True)
    return [
        "",
        "## Through a relay",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}. Medians of {runs} runs. Sender, relay "
        "(`whatsap2p relay`, default limits) and receiver are three processes; "
        "direct: the same two ends connected to each other. Throughput from the "
        "first byte sent to the receiver's answer.",
        "",
        "| what | direct | through the relay | relay / direct |",
        "|---|---|---|---|",
        *rows,
    ]


async def main(quick: bool) -> None:
    print("\n".join(await relay_report(quick)))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one run, 8 MB")
    uvloop.run(main(parser.parse_args().quick))
