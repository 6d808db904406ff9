"""Benchmarks: WhatsAp2p against a raw asyncio baseline measured in the same run.

The server and the receiving user module are real `whatsap2p` processes; the sender is
a Session in this process. Each baseline does the same connection pattern over loopback
with no protocol at all (connect, write the bytes, read a 1-byte ack, close), so the
ratio is what our framing, lookups, verification and storage cost. Medians of 5 runs.

    python bench/run.py [--out bench/RESULTS.md] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import functools
import hashlib
import io
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import uvloop
from baselines import Scp, Wormhole, python_echo, redis_get, redis_missing, redis_server, stop
from cluster import directory_cluster
from paths import paths
from PIL import Image

from relay import relay_report
from whatsap2p.app.contacts import FILE_NAME as CONTACTS_FILE
from whatsap2p.app.contacts import AddressBook
from whatsap2p.app.session import Session, SessionConfig
from whatsap2p.config import Limits

MB = 1_000_000

ALICE, BOB, PIPELINED = "+5511999990001", "+5511999990002", "+5511999990003"
WHATSAP2P = str(Path(sys.executable).parent / "whatsap2p")
RUNS = 5

# A sink for the baseline: per connection, read `size` bytes (first 8 bytes say how
# many), answer b"k", close. Runs in its own process, like the receiving module.
SINK = r"""
import asyncio, struct, sys
async def handle(reader, writer):
    size = struct.unpack(">Q", await reader.readexactly(8))[0]
    while size:
        chunk = await reader.read(min(size, 1 << 18))
        if not chunk:
            break
        size -= len(chunk)
    writer.write(b"k")
    await writer.drain()
    writer.close()
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", 0, limit=1 << 18)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


# A sink for the text baselines: per connection, a 1-byte ack for every 100 bytes read.
ACKER = r"""
import asyncio
async def handle(reader, writer):
    try:
        while True:
            await reader.readexactly(100)
            writer.write(b"k")
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""
TEXT = "x" * 100
# What the JSON-RPC output lines say: an answer to a request, a delivery to B, a receipt.
ANSWER, DELIVERED, RECEIVED = (
    '{"jsonrpc":"2.0","id":',
    f'"delivered":["{BOB}"]',
    '"method":"receive"',
)

_drains: set[asyncio.Task[None]] = set()

#: How long one phase of the run may take (a `--quick` run's phases take seconds; the
#: full run's directory load a few minutes): a phase that hangs ends the run, named.
PHASE_DEADLINE = 1200.0
T = TypeVar("T")


@contextlib.asynccontextmanager
async def phase(name: str) -> AsyncIterator[None]:
    """The body as the phase `name`: its start and its duration go to stderr; past the
    deadline it is cancelled and the run fails naming it (the processes it started are
    stopped on the way out)."""
    print(f"bench: {name} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    # Just before the deadline cancels it: where it hangs, what each task awaits.
    where = asyncio.get_running_loop().call_later(PHASE_DEADLINE - 1, _print_tasks)
    deadline = asyncio.timeout(PHASE_DEADLINE)
    try:
        async with deadline:
            yield
    except TimeoutError:
        if deadline.expired():
            raise RuntimeError(f"bench phase {name!r} not done in {PHASE_DEADLINE:.0f} s") from None
        raise
    finally:
        where.cancel()
    print(f"bench: {name}: {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)


def _print_tasks() -> None:
    """Each task and the chain of awaits it is suspended in, innermost last."""
    for task in asyncio.all_tasks():
        print(f"bench: task {task.get_name()} awaits:", file=sys.stderr)
        step: Any = task.get_coro()
        while step is not None:
            frame = getattr(step, "cr_frame", None) or getattr(step, "ag_frame", None)
            if frame is not None:
                code = frame.f_code
                print(f"  {code.co_filename}:{frame.f_lineno} {code.co_name}", file=sys.stderr)
            step = getattr(step, "cr_await", None) or getattr(step, "ag_await", None)


async def within(name: str, work: Awaitable[T]) -> T:
    """`work` as the phase `name`."""
    async with phase(name):
        return await work


class Lines:
    """How many lines of a process's output contained each marker so far."""

    def __init__(self, *markers: str) -> None:
        self.seen = dict.fromkeys(markers, 0)
        self._changed = asyncio.Event()

    def feed(self, lines: bytes) -> None:
        """Whole lines; a marker counts once per line it is in (none is in a line twice)."""
        for marker in self.seen:
            if found := lines.count(marker.encode()):
                self.seen[marker] += found
                self._changed.set()

    async def until(self, marker: str, count: int) -> None:
        while self.seen[marker] < count:
            self._changed.clear()
            await self._changed.wait()


#: The markers counted in each spawned process's output, by process id.
output: dict[int, Lines] = {}


async def spawn(
    *args: str, ready: str = "", count: tuple[str, ...] = ()
) -> tuple[asyncio.subprocess.Process, str]:
    """Start a process; return it and its first line of output that starts with `ready`.
    The rest of its output is read and dropped, as a real consumer would read it (a
    module whose stdout is never read blocks on it); lines with the markers in `count`
    are counted in `output[pid]`. Its stderr goes to a file nobody reads unless it ends
    before it is ready: then the error says what it said."""
    with tempfile.TemporaryFile() as log:
        proc = await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log
        )
        stdout = proc.stdout
        assert stdout is not None
        try:
            first = (await stdout.readline()).decode().strip()
            while not first.startswith(ready):
                if stdout.at_eof():
                    await proc.wait()
                    log.seek(0)
                    said = log.read()[-2000:].decode(errors="replace")
                    raise RuntimeError(
                        f"{args[0]} {args[1]} ended ({proc.returncode}) before saying "
                        f"{ready!r}; its stderr:\n{said}"
                    )
                first = (await stdout.readline()).decode().strip()
        except BaseException:  # not started: nobody else will stop it
            await stop(proc)
            raise

    lines = output[proc.pid] = Lines(*count)

    async def drain() -> None:
        partial = b""
        while chunk := await stdout.read(1 << 16):
            whole, _, partial = (partial + chunk).rpartition(b"\n")
            lines.feed(whole)

    task = asyncio.create_task(drain())
    _drains.add(task)
    task.add_done_callback(_drains.discard)
    return proc, first


async def start_server(db: Path, *args: str) -> tuple[asyncio.subprocess.Process, str]:
    """A `whatsap2p server` on a free port; returns it and its `listening on` line."""
    return await spawn(
        WHATSAP2P, "server", "--port", "0", "--db", str(db), *args, ready="listening on"
    )


async def baseline_send(port: int, payload: bytes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 18)
    writer.write(len(payload).to_bytes(8, "big"))
    view = memoryview(payload)
    for start in range(0, len(payload), 1 << 18):
        writer.write(view[start : start + (1 << 18)])
        await writer.drain()
    assert await reader.readexactly(1) == b"k"
    writer.close()
    await writer.wait_closed()


async def timed(work: Callable[[], Awaitable[None]]) -> float:
    runs = []
    for _ in range(RUNS):
        start = time.perf_counter()
        await work()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def photo_of(size: int, folder: Path) -> Path:
    """A real PNG padded to `size` bytes with random data (decoders ignore the tail)."""
    out = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 120, 200)).save(out, "PNG")
    head = out.getvalue()
    path = folder / f"photo-{size}.png"
    path.write_bytes(head + os.urandom(size - len(head)))
    return path


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


#: A server loaded from one machine must not rate-limit the load generator.
UNLIMITED = ["--ip-register-rate", "1e9", "--ip-register-burst", "1e9", "--ip-lookup-rate"]
UNLIMITED += ["1e9", "--ip-lookup-burst", "1e9", "--lookup-rate", "1e9", "--lookup-burst"]
UNLIMITED += ["1e9", "--max-unauthenticated", "1e9"]


async def directory_load(work: Path, users: int) -> list[str]:
    """One server holding `users` heartbeating users (registered by a `whatsap2p loadgen`
    over the real protocol), its RSS, then rounds of lookups from 50 clients (a second
    loadgen, looking the held users up), each right after a redis-benchmark run of GETs
    with 50 connections, so that each ratio compares the two in the same spell."""
    concurrency = 50
    lookups, rounds, requests = (20_000, 1, 20_000) if users < 5_000 else (100_000, 3, 200_000)
    echo = await python_echo(sys.executable, requests)
    server, line = await start_server(work / "load.sqlite3", *UNLIMITED)
    address = line.rsplit(" ", 1)[1]
    holder = None
    try:
        before = rss_kib(server.pid)
        holder = await asyncio.create_subprocess_exec(
            WHATSAP2P, "loadgen", address, "--users", str(users), "--json", "--hold", "3600",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        assert holder.stdout is not None
        held = json.loads(await holder.stdout.readline())
        during = rss_kib(server.pid)  # while all users are online and heartbeating
        why_no_redis = redis_missing()
        async with contextlib.AsyncExitStack() as stack:
            redis_port = None if why_no_redis else await stack.enter_async_context(redis_server())
            measured: list[tuple[tuple[float, float] | None, dict[str, float]]] = []
            for _ in range(rounds):
                redis = await redis_get(redis_port, requests) if redis_port else None
                measured.append((redis, await lookup_round(address, users, lookups, concurrency)))
    finally:
        if holder is not None:
            await stop(holder)  # SIGTERM ends the hold: its users go offline
        await stop(server)
    ours = [result for _, result in measured]
    per_s = statistics.median(r["lookups_per_s"] for r in ours)
    p50 = statistics.median(r["lookup_p50_ms"] for r in ours)
    p99 = statistics.median(r["lookup_p99_ms"] for r in ours)
    errors = held["errors"] + sum(r["errors"] for r in ours)
    per_user = (during - before) * 1024 / max(1, held["users_online"])
    return [
        "",
        f"## Directory load: one server process, {users:,} users",
        "",
        "`whatsap2p loadgen` registers the users with the real protocol (Noise handshake,",
        "register, heartbeats) and holds them; a second loadgen then runs the lookups of each",
        f"round from {concurrency} clients of its own, among the held users' numbers. Both",
        "share this machine's two cores with the server. Figures: medians of the rounds.",
        "",
        "| what | figure |",
        "|---|---|",
        f"| users online | {held['users_online']:,} |",
        f"| registrations/s | {held['register_per_s']:,.0f} |",
        f"| lookups/s ({concurrency} clients) | {per_s:,.0f} |",
        f"| lookup p50 / p99 | {p50:.2f} ms / {p99:.2f} ms |",
        f"| errors | {errors:,} |",
        f"| server RSS | {before / 1024:,.1f} MiB idle, {during / 1024:,.1f} MiB with the users |",
        f"| RSS per online user | {per_user / 1024:,.1f} KiB |",
        *redis_rows(why_no_redis, measured, lookups, per_s, p50),
        "",
        "Yardstick of what Python does here with no work per request: a uvloop echo server,",
        f"64-byte requests from 50 connections (clients in two processes): {echo.per_s:,.0f} round",
        f"trips/s. Our lookups run at {per_s / echo.per_s:.1%} of it; the rest",
        "is the lookup's own work on both sides (decrypt, decode, check, rate limits, look up,",
        "encode, encrypt), each side in Python compiled by mypyc, calling into C.",
        "",
        "The tail is this machine's as much as ours: with 50 clients each waiting for its answer,",
        "p50 is about 50 / throughput, and p99 is a multiple of p50 set by how the processes",
        "share the two cores; the echo yardstick, measured the same way, shows that multiple.",
        "",
        "| what | p50 | p99 | p99 / p50 |",
        "|---|---|---|---|",
        f"| uvloop echo (yardstick) | {echo.p50_ms:.3f} ms | {echo.p99_ms:.3f} ms | "
        f"{echo.p99_ms / echo.p50_ms:.1f} |",
        f"| lookups | {p50:.3f} ms | {p99:.3f} ms | {p99 / max(p50, 1e-9):.1f} |",
    ]


async def lookup_round(address: str, held: int, lookups: int, concurrency: int) -> dict[str, float]:
    """One `whatsap2p loadgen` of `concurrency` users of its own running `lookups` lookups
    of the numbers the holder keeps online; its JSON result."""
    looker = await asyncio.create_subprocess_exec(
        WHATSAP2P, "loadgen", address, "--users", str(concurrency), "--first", str(held),
        "--population", str(held), "--lookups", str(lookups), "--concurrency", str(concurrency),
        "--json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    out, _ = await looker.communicate()
    result: dict[str, float] = json.loads(out)
    return result


def redis_rows(
    why_not: str | None,
    measured: list[tuple[tuple[float, float] | None, dict[str, float]]],
    lookups: int,
    ours: float,
    p50: float,
) -> list[str]:
    """The redis-benchmark rounds next to ours (`ours` and `p50`: the medians of our rounds)."""
    if why_not is not None:
        return ["", f"No redis-benchmark baseline in this run: {why_not}."]
    rounds = [(redis, result) for redis, result in measured if redis is not None]  # all of them
    gets = statistics.median(redis[0] for redis, _ in rounds)
    redis_p50 = statistics.median(redis[1] for redis, _ in rounds)
    ratios = [result["lookups_per_s"] / redis[0] for redis, result in rounds]
    return [
        "",
        f"Baseline measured in the same rounds, each just before our {lookups:,} lookups:",
        "`redis-benchmark -t get -c 50` against a `redis-server` on loopback.",
        "",
        "| round | redis GET/s | our lookups/s | ratio | our p50 / p99 |",
        "|---|---|---|---|---|",
        *(
            f"| {i} | {redis[0]:,.0f} | {result['lookups_per_s']:,.0f} | {ratio:.1%} | "
            f"{result['lookup_p50_ms']:.2f} / {result['lookup_p99_ms']:.2f} ms |"
            for i, ((redis, result), ratio) in enumerate(zip(rounds, ratios, strict=True), 1)
        ),
        "",
        "| what | WhatsAp2p | redis-server | ratio |",
        "|---|---|---|---|",
        f"| lookups/s vs GET/s, 50 connections (medians) | {ours:,.0f} | {gets:,.0f} | "
        f"{statistics.median(ratios):.1%} (median of the rounds' ratios) |",
        f"| p50 | {p50:.3f} ms | {redis_p50:.3f} ms | {p50 / redis_p50:.1f}x |",
    ]


def percentile(samples: list[float], share: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


def latency_rows(what: str, ours: list[float], base: list[float]) -> list[str]:
    return [
        row(f"{what}, p50", percentile(ours, 0.5), percentile(base, 0.5), "ms", 1e3),
        row(f"{what}, p99", percentile(ours, 0.99), percentile(base, 0.99), "ms", 1e3),
    ]


async def text_to_bob(sender: Session) -> float:
    """Seconds from asking `sender` to send a text to BOB until BOB acknowledged it."""
    start = time.perf_counter()
    report = await sender.send_text(BOB, TEXT)
    took = time.perf_counter() - start
    assert report.delivered == [BOB], report
    return took


async def cold_texts(server_port: int, work: Path, runs: int) -> list[float]:
    """First text from a fresh module to BOB: lookup, connect, handshake, hello, ack."""
    samples = []
    for i in range(runs):
        phone = f"+55119999{i + 100:05d}"
        config = SessionConfig(phone, "127.0.0.1", server_port, work / phone, "127.0.0.1")
        async with Session(config) as sender:
            samples.append(await text_to_bob(sender))
    return samples


async def warm_texts(alice: Session, runs: int) -> list[float]:
    """Texts to BOB one after another: lookup, the kept link, ack."""
    await text_to_bob(alice)
    return [await text_to_bob(alice) for _ in range(runs)]


async def baseline_cold(port: int, runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(TEXT.encode())
        await reader.readexactly(1)
        samples.append(time.perf_counter() - start)
        writer.close()
        await writer.wait_closed()
    return samples


async def baseline_warm(port: int, runs: int) -> list[float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        writer.write(TEXT.encode())
        await reader.readexactly(1)
        samples.append(time.perf_counter() - start)
    writer.close()
    return samples


async def baseline_pipelined(port: int, count: int) -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    start = time.perf_counter()
    writer.write(TEXT.encode() * count)
    await reader.readexactly(count)
    took = time.perf_counter() - start
    writer.close()
    return took


async def pipelined_texts(
    server_port: int, work: Path, bob: asyncio.subprocess.Process, count: int
) -> tuple[float, int, int]:
    """`count` sends written at once into a JSON-RPC module (A) for BOB: the time until
    the last answer, how many were delivered, and how many B printed."""
    alice, _ = await spawn(
        WHATSAP2P,
        "user",
        f"127.0.0.1:{server_port}",
        "--phone",
        PIPELINED,
        "--json",
        "--data-dir",
        str(work / "pipelined"),
        "--listen",
        "127.0.0.1:0",
        count=(ANSWER, DELIVERED),
    )
    received_before = output[bob.pid].seen[RECEIVED]
    assert alice.stdin is not None
    requests = "".join(
        json.dumps(
            {"jsonrpc": "2.0", "id": i, "method": "send", "params": {"to": BOB, "text": TEXT}}
        )
        + "\n"
        for i in range(count)
    ).encode()
    start = time.perf_counter()
    alice.stdin.write(requests)
    await alice.stdin.drain()
    await output[alice.pid].until(ANSWER, count)
    took = time.perf_counter() - start
    delivered = output[alice.pid].seen[DELIVERED]
    # B prints every text it acknowledged; wait for them (a lost one would hang here).
    await output[bob.pid].until(RECEIVED, received_before + delivered)
    alice.stdin.close()
    await alice.wait()
    return took, delivered, output[bob.pid].seen[RECEIVED] - received_before


async def outside(
    baseline: Scp | Wormhole, measure: Callable[[], Awaitable[float]]
) -> float | None:
    """The median of RUNS measurements of a baseline we do not own, or None when the tool
    fails (its `why_not` then says how, in the report): a misbehaving scp or magic-wormhole
    is reported, it does not end the run."""
    try:
        return statistics.median([await measure() for _ in range(RUNS)])
    except RuntimeError as exc:
        baseline.why_not = str(exc)
        return None


def row(what: str, ours: float, base: float, unit: str, scale: float) -> str:
    return (
        f"| {what} | {ours * scale:,.2f} {unit} | {base * scale:,.2f} {unit} | {ours / base:.2f}x |"
    )


async def main(out: Path | None, quick: bool) -> None:
    global RUNS, PHASE_DEADLINE
    if quick:
        RUNS, PHASE_DEADLINE = 1, 60.0
    work = Path(tempfile.mkdtemp(prefix="whatsap2p-bench-"))
    procs: list[asyncio.subprocess.Process] = []
    stack = contextlib.AsyncExitStack()
    try:
        server, line = await within("start the server", start_server(work / "server.sqlite3"))
        procs.append(server)
        server_port = int(line.rsplit(":", 1)[1])
        # B's contacts: A and the pipelining module (a stranger's burst is cut short).
        (work / "bob").mkdir()
        book = AddressBook.load(work / "bob" / CONTACTS_FILE)
        book.add_contact("alice", ALICE)
        book.add_contact("pipelined", PIPELINED)
        bob, _ = await within(
            "start B",
            spawn(
                WHATSAP2P, "user", f"127.0.0.1:{server_port}", "--phone", BOB, "--json",
                "--data-dir", str(work / "bob"), "--listen", "127.0.0.1:0", count=(RECEIVED,),
            ),
        )  # fmt: skip
        procs.append(bob)
        sink, sink_port = await within("start the sink", spawn(sys.executable, "-c", SINK))
        procs.append(sink)
        config = SessionConfig(
            ALICE,
            "127.0.0.1",
            server_port,
            work / "alice",
            listen_host="127.0.0.1",
            limits=Limits(),
        )
        rows = []
        acker, acker_port = await within("start the acker", spawn(sys.executable, "-c", ACKER))
        procs.append(acker)
        runs = 5 if quick else 30
        rows += latency_rows(
            "text, cold (first to a peer: lookup, connect, handshake, ack)",
            await within("cold texts", cold_texts(server_port, work, runs)),
            await within("cold baseline", baseline_cold(int(acker_port), runs)),
        )
        async with Session(config) as alice:
            texts = 50 if quick else 1000
            rows += latency_rows(
                "text, warm (lookup, kept connection, ack)",
                await within("warm texts", warm_texts(alice, texts)),
                await within("warm baseline", baseline_warm(int(acker_port), texts)),
            )
            pipelined = 1_000 if quick else 10_000
            took, delivered, received = await within(
                "pipelined texts", pipelined_texts(server_port, work, bob, pipelined)
            )
            base = await within(
                "pipelined baseline", baseline_pipelined(int(acker_port), pipelined)
            )
            rows.append(
                f"| {pipelined:,} texts pipelined A->B through JSON-RPC | "
                f"{pipelined / took:,.0f} msg/s | {pipelined / base:,.0f} msg/s | "
                f"{base / took:.3f} of baseline |"
            )
            rows.append(
                f"| ... delivered (acknowledged) / printed by B | {delivered:,} / {received:,}"
                f" of {pipelined:,} | | |"
            )

            async def one_lookup() -> None:
                for _ in range(200):
                    await alice.lookup([BOB])

            lookups = await within("lookup round trips", timed(one_lookup))

            sizes = [2 * MB, 8 * MB] if quick else [2 * MB, 8 * MB, 50 * MB]
            async with phase("start the scp and magic-wormhole baselines"):
                scp = await stack.enter_async_context(Scp())
                wormhole = await stack.enter_async_context(Wormhole())
            outsiders: list[tuple[str, str, Scp | Wormhole, Callable[[Path], Awaitable[float]]]]
            outsiders = [
                ("scp", "OpenSSH", scp, scp.copy_seconds),
                ("magic-wormhole", "direct", wormhole, wormhole.send_seconds),
            ]
            for size in sizes:
                path = photo_of(size, work)
                payload = path.read_bytes()

                async def our_photo(path: Path = path) -> None:
                    report = await alice.send_photo(BOB, path)
                    assert report.delivered == [BOB], report

                async def base_photo(payload: bytes = payload) -> None:
                    await baseline_send(int(sink_port), payload)

                mb = size / MB
                ours = await within(f"photo {mb:.0f} MB", timed(our_photo))
                base = await within(f"photo {mb:.0f} MB baseline", timed(base_photo))
                rows.append(
                    row(f"photo {mb:.0f} MB, delivered and verified", ours, base, "ms", 1e3)
                )
                rows.append(
                    f"| photo {mb:.0f} MB throughput | {mb / ours:,.0f} MB/s | "
                    f"{mb / base:,.0f} MB/s | {base / ours:.2f} of baseline |"
                )
                start = time.perf_counter()
                hashlib.sha256(payload).digest()
                hash_time = time.perf_counter() - start
                rows.append(
                    f"| SHA-256 of {mb:.0f} MB (yardstick) | {hash_time * 1e3:,.2f} ms | | |"
                )
                for name, how, baseline, measure in outsiders:
                    if baseline.why_not:
                        continue
                    async with phase(f"photo {mb:.0f} MB by {name}"):
                        theirs = await outside(baseline, functools.partial(measure, path))
                    if theirs is not None:
                        rows.append(
                            f"| photo {mb:.0f} MB: {name} ({how}, set-up included) | "
                            f"{ours * 1e3:,.2f} ms | {theirs * 1e3:,.2f} ms | "
                            f"{theirs / ours:.2f}x faster than {name} |"
                        )
                for stored in (work / "bob" / "photos").glob("*"):
                    stored.unlink()
        directory = await within(
            "directory load", directory_load(work, users=1_000 if quick else 19_000)
        )
        directory += await within(
            "several servers on one redis",
            directory_cluster(
                work,
                users=2_000 if quick else 60_000,
                lookups=2_000 if quick else 20_000,
                whatsap2p=WHATSAP2P,
                start=start_server,
                unlimited=UNLIMITED,
                rss_kib=rss_kib,
            ),
        )
        photo = photo_of((8 if quick else 50) * 1_000_000, work)
        directory += await within("paths through home routers", paths(work, photo))
        directory += await within("through a relay", relay_report(quick))
    finally:
        await stack.aclose()
        for proc in procs:
            await stop(proc)
        shutil.rmtree(work, ignore_errors=True)

    header = [
        f"# Benchmark results — {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}. Medians of {RUNS} runs; `make bench` rewrites this file.",
        "Baseline: raw asyncio over loopback, same connection pattern, no protocol "
        "(connect, write, 1-byte ack, close). The ratio is what counts: these machines are noisy.",
        "",
        "| what | WhatsAp2p | baseline | ratio |",
        "|---|---|---|---|",
    ]
    for name, _, baseline, _ in outsiders:
        if baseline.why_not:  # one line of the table, whatever the tool said
            rows.append(
                f"| {name} baseline | not measured: {' '.join(baseline.why_not.split())} | | |"
            )
    footer = [
        "",
        f"Directory lookup round trip (one number): {lookups / 200 * 1e3:.3f} ms median.",
        "",
        "What the photo time includes beyond the baseline: the sender's Pillow check, the",
        "encryption and framing, SHA-256 of the whole file on both sides while it streams,",
        "the receiver's fsync, Pillow verification and the rename into `photos/`.",
    ]
    report = "\n".join(header + rows + footer + directory) + "\n"
    print(report)
    if out is not None:
        out.write_text(report)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--quick", action="store_true", help="one run, smaller sizes")
    args = parser.parse_args()
    uvloop.run(main(args.out, args.quick))  # the sender runs on uvloop, as the product does
