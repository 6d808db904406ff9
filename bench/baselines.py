"""Outside baselines measured in the same run as our figures, when the tools are here.

- `Scp`: an OpenSSH server of our own on a free loopback port (its own host key, an
  authorised key of its own, nothing of the machine's configuration), and `scp` of the
  same file, timed from the command's start to its end (connection set-up included, as
  a user of scp pays it).
- `Wormhole`: magic-wormhole between two processes of this machine, through a mailbox
  server and a transit relay of its own on loopback; the sender's direct hints are this
  machine's addresses, so the file goes directly (as it does between two computers
  that can reach each other), timed from both commands' start to the receiver's end.
- `redis_server` and `redis_get`: a `redis-server` on a free loopback port with nothing
  saved, and `redis-benchmark -t get -c 50`: the GET/s and p50 that issue 5 compares
  lookups with (run by `make bench` in rounds, each next to a round of our lookups).

`make bench-tools` installs them (Debian's openssh-server and redis-server, and
magic-wormhole in `.run/wormhole-venv`); without them the report says which baseline is
missing instead of failing.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import itertools
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

SSHD, SCP, SSH_KEYGEN = "/usr/sbin/sshd", shutil.which("scp"), shutil.which("ssh-keygen")
WORMHOLE_BIN = Path(__file__).resolve().parent.parent / ".run" / "wormhole-venv" / "bin"
REDIS_SERVER, REDIS_BENCHMARK = shutil.which("redis-server"), shutil.which("redis-benchmark")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def wait_listening(port: int, proc: asyncio.subprocess.Process) -> None:
    """Until something accepts on `port` (the process died: raise)."""
    for _ in range(500):
        if proc.returncode is not None:
            raise RuntimeError(f"the baseline server exited with {proc.returncode}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.01)  # a foreign program: no event to wait for
            continue
        writer.close()
        return
    raise RuntimeError(f"nothing listens on {port}")


async def stop(proc: asyncio.subprocess.Process, grace: float = 10.0) -> None:
    """Ask `proc` to end (SIGTERM); what still runs after `grace` seconds is killed."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


#: How long one scp copy or one magic-wormhole transfer (or a step of setting one up) may
#: take: 50 MB takes ~1 s. Under a `--quick` run's phase deadline (60 s), so a tool that
#: hangs is reported as not measured before its phase would fail the run.
OUTSIDE_DEADLINE = 30.0


async def run(*args: str, timeout: float | None = None) -> bytes:
    """`args` run to their end: their stdout; RuntimeError if they fail, or run past
    `timeout` seconds (then they are stopped)."""
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    except TimeoutError:
        await stop(proc)
        raise RuntimeError(f"{Path(args[0]).name} ran past {timeout:.0f} s") from None
    except BaseException:  # cancelled (a phase's deadline): it goes too
        await stop(proc)
        raise
    if proc.returncode:
        raise RuntimeError(f"{args[0]} failed: {err.decode(errors='replace').strip()}")
    return out


class Scp:
    """`async with Scp() as scp: await scp.copy_seconds(path)`; `why_not` when unusable."""

    def __init__(self) -> None:
        self.why_not = ""
        self._work = Path(tempfile.mkdtemp(prefix="whatsap2p-scp-"))
        self._proc: asyncio.subprocess.Process | None = None
        self._port = 0

    async def __aenter__(self) -> Scp:
        if not (os.path.exists(SSHD) and SCP and SSH_KEYGEN):
            self.why_not = "OpenSSH (sshd, scp) is not installed: `make bench-tools`"
            return self
        if os.geteuid() != 0:
            self.why_not = "sshd needs root to log a user in"
            return self
        work = self._work
        try:
            for name in ("host", "user"):
                keygen = [SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-f", str(work / name)]
                await run(*keygen, timeout=OUTSIDE_DEADLINE)
        except RuntimeError as exc:
            self.why_not = str(exc)
            return self
        shutil.copy(work / "user.pub", work / "authorized_keys")
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
        self._port = free_port()
        (work / "sshd_config").write_text(
            f"Port {self._port}\nListenAddress 127.0.0.1\nHostKey {work / 'host'}\n"
            f"AuthorizedKeysFile {work / 'authorized_keys'}\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
            f"PidFile {work / 'sshd.pid'}\nSubsystem sftp internal-sftp\n"
        )
        self._proc = await asyncio.create_subprocess_exec(
            SSHD, "-D", "-e", "-f", str(work / "sshd_config"), stderr=asyncio.subprocess.DEVNULL
        )
        try:
            await wait_listening(self._port, self._proc)
        except RuntimeError as exc:
            self.why_not = str(exc)
        return self

    async def copy_seconds(self, path: Path) -> float:
        """One `scp` of `path` to a fresh name on this machine, checked, in seconds."""
        assert SCP is not None
        target = self._work / f"copy-{path.name}"
        start = time.perf_counter()
        await run(
            SCP,
            "-q",
            "-i",
            str(self._work / "user"),
            "-P",
            str(self._port),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            str(path),
            f"root@127.0.0.1:{target}",
            timeout=OUTSIDE_DEADLINE,
        )
        took = time.perf_counter() - start
        if target.stat().st_size != path.stat().st_size:
            raise RuntimeError("scp copied a different size")
        target.unlink()
        return took

    async def __aexit__(self, *exc: object) -> None:
        if self._proc is not None:
            await stop(self._proc)
        shutil.rmtree(self._work, ignore_errors=True)


class Wormhole:
    """`async with Wormhole() as wormhole: await wormhole.send_seconds(path)`; `why_not`
    when unusable."""

    def __init__(self) -> None:
        self.why_not = ""
        self._work = Path(tempfile.mkdtemp(prefix="whatsap2p-wormhole-"))
        self._servers: list[asyncio.subprocess.Process] = []
        self._command: list[str] = []
        self._codes = itertools.count(1)

    async def __aenter__(self) -> Wormhole:
        twist, wormhole = WORMHOLE_BIN / "twist", WORMHOLE_BIN / "wormhole"
        if not wormhole.exists():
            self.why_not = "magic-wormhole is not installed: `make bench-tools`"
            return self
        mailbox, relay = free_port(), free_port()
        for plugin, port in (("wormhole-mailbox", mailbox), ("transitrelay", relay)):
            server = await asyncio.create_subprocess_exec(
                str(twist), plugin, "--port", f"tcp:{port}:interface=127.0.0.1",
                cwd=self._work, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            self._servers.append(server)
            try:
                await wait_listening(port, server)
            except RuntimeError as exc:
                self.why_not = str(exc)
                return self
        self._command = [str(wormhole), "--relay-url", f"ws://127.0.0.1:{mailbox}/v1"]
        self._command += ["--transit-helper", f"tcp:127.0.0.1:{relay}"]
        return self

    async def send_seconds(self, path: Path) -> float:
        """`wormhole send` of `path` and `wormhole receive` of it, checked, in seconds."""
        code = f"{next(self._codes)}-whatsap2p-bench"
        target = self._work / f"received-{path.name}"
        start = time.perf_counter()
        sender = await asyncio.create_subprocess_exec(
            *self._command, "send", "--code", code, str(path),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        try:
            receive = [*self._command, "receive", "--accept-file", "-o", str(target), code]
            await run(*receive, timeout=OUTSIDE_DEADLINE)
            took = time.perf_counter() - start
            async with asyncio.timeout(OUTSIDE_DEADLINE):
                sent = await sender.wait()
        finally:
            await stop(sender)
        if sent:
            raise RuntimeError("wormhole send failed")
        if target.stat().st_size != path.stat().st_size:
            raise RuntimeError("magic-wormhole delivered a different size")
        target.unlink()
        return took

    async def __aexit__(self, *exc: object) -> None:
        for server in self._servers:
            await stop(server)
        shutil.rmtree(self._work, ignore_errors=True)


@contextlib.asynccontextmanager
async def redis_server() -> AsyncIterator[int]:
    """A `redis-server` on a free loopback port with nothing saved; yields the port."""
    assert REDIS_SERVER is not None
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        REDIS_SERVER,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--maxclients",
        "50000",
        stdout=asyncio.subprocess.DEVNULL,
    )
    try:
        await wait_listening(port, proc)
        yield port
    finally:
        await stop(proc)


def redis_missing() -> str | None:
    """Why there can be no redis-benchmark baseline, or None."""
    if REDIS_SERVER and REDIS_BENCHMARK:
        return None
    return "redis-server is not installed: `make bench-tools`"


async def redis_get(port: int, requests: int) -> tuple[float, float]:
    """(GET/s, p50 ms) of one run of redis-benchmark with 50 connections against the
    `redis-server` on `port`."""
    assert REDIS_BENCHMARK is not None
    out = await run(
        REDIS_BENCHMARK, "-p", str(port), "-c", "50", "-n", str(requests), "-t", "get", "--csv"
    )
    rows = list(csv.reader(io.StringIO(out.decode())))
    header, values = rows[0], rows[-1]
    return float(values[header.index("rps")]), float(values[header.index("p50_latency_ms")])


# The yardstick of "what Python can do here": a uvloop echo server answering 64-byte
# requests from 50 connections, one request out per connection (as redis-benchmark and
# the loadgen's lookups), its clients in two processes. No work at all per request: the
# gap to our lookups is what decoding, checking, looking up and sealing cost.
ECHO = r"""
import array, asyncio, json, multiprocessing, statistics, sys, time, uvloop

class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
    def data_received(self, data):
        self.transport.write(data)

class Asker(asyncio.Protocol):
    def __init__(self, left, done, latencies):
        self.left, self.done, self.latencies = left, done, latencies
    def connection_made(self, transport):
        self.transport = transport
        self.began = time.perf_counter()
        transport.write(b"x" * 64)
    def data_received(self, data):
        now = time.perf_counter()
        self.latencies.append(now - self.began)
        self.left -= 1
        if self.left:
            self.began = now
            self.transport.write(b"x" * 64)
        elif not self.done.done():
            self.done.set_result(None)

def serve(ports):
    async def main():
        server = await asyncio.get_running_loop().create_server(Echo, "127.0.0.1", 0)
        ports.put(server.sockets[0].getsockname()[1])
        await asyncio.Event().wait()
    uvloop.run(main())

def ask(port, connections, each, go, results):
    latencies = array.array("d")
    async def main():
        loop = asyncio.get_running_loop()
        done = [loop.create_future() for _ in range(connections)]
        go.wait()
        for future in done:
            await loop.create_connection(
                lambda f=future: Asker(each, f, latencies), "127.0.0.1", port
            )
        await asyncio.gather(*done)
    uvloop.run(main())
    results.put(latencies.tobytes())

if __name__ == "__main__":
    total, connections, workers = int(sys.argv[1]), 50, 2
    ports, go, results = multiprocessing.Queue(), multiprocessing.Event(), multiprocessing.Queue()
    server = multiprocessing.Process(target=serve, args=(ports,), daemon=True)
    server.start()
    port = ports.get()
    each = total // connections
    askers = [
        multiprocessing.Process(target=ask, args=(port, connections // workers, each, go, results))
        for _ in range(workers)
    ]
    for asker in askers:
        asker.start()
    start = time.perf_counter()
    go.set()
    latencies = array.array("d")
    for _ in askers:
        latencies.frombytes(results.get())
    took = time.perf_counter() - start
    for asker in askers:
        asker.join()
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    print(json.dumps({"per_s": len(latencies) / took, "p50_ms": cuts[49] * 1e3,
                      "p99_ms": cuts[98] * 1e3}))
"""


@dataclass(frozen=True)
class Echo:
    """The uvloop echo yardstick: round trips/s and their latency (50 connections)."""

    per_s: float
    p50_ms: float
    p99_ms: float


async def python_echo(python: str, requests: int = 200_000, runs: int = 3) -> Echo:
    """The uvloop echo yardstick: the run with the median round trips/s of `runs`."""
    results = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as folder:
            script = Path(folder) / "echo.py"  # multiprocessing's children import it
            script.write_text(ECHO)
            results.append(Echo(**json.loads(await run(python, str(script), str(requests)))))
    return sorted(results, key=lambda echo: echo.per_s)[len(results) // 2]
