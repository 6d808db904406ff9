"""What each fault of a deployment costs its users, measured with the real commands
(`make outages`; the results go to bench/OUTAGES.md, which docs/deployment.md quotes).

Two deployments as docs/deployment.md describes them, each with two directory servers,
300 users held online by `whatsap2p loadgen` and 8 real user modules (JSON-RPC) that have
both servers in their list:

- on Redis kept by Sentinel (a master with AOF, a replica, three sentinels with quorum 2,
  `down-after-milliseconds` 1000): the replica frozen 10 s (what a lagging or cut-off
  replica does to new bindings), then the master killed with kill -9;
- on one Redis with AOF (`appendfsync everysec`): a server frozen 15 s, one frozen 25 s
  (SIGSTOP: a stalled VM, a stop-the-world pause), a server killed with kill -9, and
  Redis killed with kill -9 and started again at once.

During each fault, probes register new numbers (each with a key of its own) and look up
held users through each server every 50 ms; Redis is read directly for the bindings and
the presence records (their remaining TTL, every 100 ms, during a server's freeze).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import random
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from baselines import REDIS_SERVER, free_port, stop, wait_listening

from whatsap2p.errors import DirectoryError
from whatsap2p.net.directory_client import DirectoryClient
from whatsap2p.protocol.keys import StaticKey

WHATSAP2P = str(Path(sys.executable).parent / "whatsap2p")
HELD = 300
MODULES = 8
#: Enough for every registration and probe of this machine at once.
UNLIMITED = ["--ip-register-rate", "100000", "--ip-register-burst", "100000",
             "--ip-lookup-rate", "1000000", "--ip-lookup-burst", "1000000"]  # fmt: skip
PROBE_EVERY = 0.05
#: The sentinels' failover-timeout: they fail a master over at most once in twice this.
FAILOVER_TIMEOUT = 4.0
_numbers = itertools.count(1)


#: The probes' numbers start so (their presence records come and go).
PROBES = "+552198"


def module_phone(n: int) -> str:
    return f"+551198{n:07d}"


def probe_phone() -> str:
    return f"{PROBES}{next(_numbers):07d}"


# --- the processes ------------------------------------------------------------------------


async def start_redis(folder: Path, port: int, *args: str) -> asyncio.subprocess.Process:
    """A redis-server on `port` keeping its AOF in `folder`."""
    assert REDIS_SERVER is not None
    folder.mkdir(parents=True, exist_ok=True)
    proc = await asyncio.create_subprocess_exec(
        REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
        "--save", "", "--appendonly", "yes", "--appendfsync", "everysec", *args,
        stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    await wait_listening(port, proc)
    return proc


async def start_sentinel(folder: Path, master_port: int) -> tuple[asyncio.subprocess.Process, int]:
    assert REDIS_SERVER is not None
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = folder / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {folder}\n"
        f"sentinel monitor mymaster 127.0.0.1 {master_port} 2\n"
        "sentinel down-after-milliseconds mymaster 1000\n"
        f"sentinel failover-timeout mymaster {int(FAILOVER_TIMEOUT * 1000)}\n"
    )
    proc = await asyncio.create_subprocess_exec(
        REDIS_SERVER, str(conf), "--sentinel", stdout=asyncio.subprocess.DEVNULL
    )
    await wait_listening(port, proc)
    return proc, port


@dataclass
class Server:
    proc: asyncio.subprocess.Process
    address: str

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])


#: Where the servers' logs go (`--logs`), or None: nowhere.
LOGS: Path | None = None


async def start_server(work: Path, n: int, url: str) -> Server:
    new = ["--new-key"] if n == 0 else []  # (the deployment's first server makes its key)
    log = asyncio.subprocess.DEVNULL
    if LOGS is not None:
        LOGS.mkdir(parents=True, exist_ok=True)
        log = (LOGS / f"{work.name}-server-{n}.log").open("ab")  # type: ignore[assignment]
    proc = await asyncio.create_subprocess_exec(
        WHATSAP2P, "server", "--port", "0", "--db", str(work / f"server-{n}.sqlite3"),
        "--redis", url, "--key", str(work / "deployment.key"), *new, *UNLIMITED,
        stdout=asyncio.subprocess.PIPE, stderr=log,
    )  # fmt: skip
    assert proc.stdout is not None
    while not (line := (await proc.stdout.readline()).decode()).startswith("listening on "):
        if not line:
            raise RuntimeError(f"server {n} ended before listening")
    return Server(proc, line.split()[-1])


@dataclass
class Module:
    """A `whatsap2p user --json`: where it is registered, and when that changed."""

    proc: asyncio.subprocess.Process
    phone: str
    server: str = ""
    #: (monotonic time, state, server) of each `serverConnection` notification.
    changes: list[tuple[float, str, str | None]] = field(default_factory=list)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            message = json.loads(line)
            params = message.get("params", {})
            if message.get("method") == "ready":
                self.server = params["server"]
                self.ready.set()
            elif message.get("method") == "serverConnection":
                self.changes.append((time.monotonic(), params["state"], params["server"]))
                if params["server"]:
                    self.server = params["server"]
                self.changed.set()

    def moved_after(self, since: float) -> float | None:
        """Seconds from `since` to its registration at another server (None: it did not)."""
        return next((t - since for t, s, _ in self.changes if t > since and s == "restored"), None)

    async def moved(self, since: float) -> None:
        """Once it has registered at another server since `since`."""
        while self.moved_after(since) is None:
            self.changed.clear()
            await self.changed.wait()

    def lost_since(self, since: float) -> int:
        return sum(1 for t, s, _ in self.changes if t > since and s == "lost")


async def start_modules(
    work: Path, servers: list[Server]
) -> tuple[list[Module], list[asyncio.Task[None]]]:
    where = ",".join(s.address for s in servers)
    modules, readers = [], []
    for n in range(MODULES):
        proc = await asyncio.create_subprocess_exec(
            WHATSAP2P, "user", where, "--phone", module_phone(n), "--json",
            "--data-dir", str(work / f"user-{n}"), "--listen", "127.0.0.1:0",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        module = Module(proc, module_phone(n))
        modules.append(module)
        readers.append(asyncio.create_task(module.read()))
    async with asyncio.timeout(60):
        for module in modules:
            await module.ready.wait()
    return modules, readers


async def hold(servers: list[Server]) -> asyncio.subprocess.Process:
    """`whatsap2p loadgen` holding HELD users over `servers` (it registers again any
    whose connection is lost, as their module would)."""
    holder = await asyncio.create_subprocess_exec(
        WHATSAP2P, "loadgen", ",".join(s.address for s in servers), "--users", str(HELD),
        "--workers", "2", "--json", "--hold", "3600",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert holder.stdout is not None
    held = json.loads(await asyncio.wait_for(holder.stdout.readline(), 60))
    if (held["users_online"], held["errors"]) != (HELD, 0):
        raise RuntimeError(f"loadgen could not hold its users: {held}")
    return holder


# --- what the probes see --------------------------------------------------------------------


@dataclass
class Window:
    """When probes of one kind failed: the first and last failure, and the first success
    after `since` once they had failed (or at all, for a fault that fails nothing)."""

    failures: int = 0
    first_failed: float | None = None
    last_failed: float | None = None

    def saw(self, ok: bool, at: float) -> None:
        if not ok:
            self.failures += 1
            self.first_failed = self.first_failed or at
            self.last_failed = at

    def lasted(self, since: float) -> str:
        if self.last_failed is None:
            return "none refused"
        return f"refused until {self.last_failed - since:.1f} s ({self.failures} probes)"


async def registers(server: Server) -> str | None:
    """The new number a fresh key registered through `server`, None if refused."""
    try:
        client = await DirectoryClient.connect("127.0.0.1", server.port, StaticKey.generate())
    except (DirectoryError, OSError):
        return None
    phone = probe_phone()
    try:
        await client.register(phone, 4000)
        return phone
    except DirectoryError:
        return None
    finally:
        await client.close()


async def until_registered(servers: list[Server]) -> None:
    """Until a new number registers through each of `servers` (30 s at most)."""
    async with asyncio.timeout(30):
        for _ in itertools.count():  # Redis and its sentinels: no event to wait for
            if all([await registers(s) for s in servers]):
                return
            await asyncio.sleep(PROBE_EVERY)


class Probes:
    """Registrations and lookups through each of `servers`, every PROBE_EVERY s, until
    stopped; what failed, when."""

    def __init__(self, servers: list[Server], looked_up: list[str]) -> None:
        self.servers, self.looked_up = servers, looked_up
        self.registrations, self.lookups = Window(), Window()
        #: The numbers registered (acknowledged) meanwhile.
        self.registered: list[str] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Probes:
        for server in self.servers:
            client = await DirectoryClient.connect("127.0.0.1", server.port, StaticKey.generate())
            await client.register(probe_phone(), 4000)  # (a module looks up once registered)
            self._tasks.append(asyncio.create_task(self._look(client)))
            self._tasks.append(asyncio.create_task(self._register(server)))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _register(self, server: Server) -> None:
        while True:
            phone = await registers(server)
            self.registrations.saw(phone is not None, time.monotonic())
            if phone is not None:
                self.registered.append(phone)
            await asyncio.sleep(PROBE_EVERY)

    async def _look(self, client: DirectoryClient) -> None:
        try:
            while True:
                phones = random.sample(self.looked_up, 5)
                try:
                    found = await client.lookup(phones)
                    ok = len(found) == len(phones)
                except DirectoryError:
                    ok = False
                self.lookups.saw(ok, time.monotonic())
                await asyncio.sleep(PROBE_EVERY)
        finally:
            await client.close()


async def count(client: aioredis.Redis, pattern: str) -> int:
    return len([key async for key in client.scan_iter(match=pattern, count=1000)])


async def records(client: aioredis.Redis) -> tuple[int, int]:
    """How many bindings and presence records the Redis of `client` holds (then closed)."""
    try:
        return await count(client, "wa:bind:*"), await count(client, "wa:online:*")
    finally:
        await client.aclose()


def kept(
    before: tuple[int, int], after: tuple[int, int], modules: list[Module], since: float
) -> str:
    lost = sum(m.lost_since(since) for m in modules)
    return (
        f"bindings {after[0]} of {before[0]} kept (+ the probes'), presence records "
        f"{after[1]} of {before[1]}; modules that lost their server: {lost}"
    )


async def least_ttl_while(client: aioredis.Redis, seconds: float) -> tuple[float, int]:
    """For `seconds`: the least remaining TTL (s) seen of any presence record, and how
    many records lapsed meanwhile (gone, then back or not)."""
    keys = [
        key
        async for key in client.scan_iter(match="wa:online:*", count=1000)
        if PROBES.encode() not in key
    ]
    least, lapsed = float("inf"), set()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        async with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.pttl(key)
            ttls = await pipe.execute()
        for key, ttl in zip(keys, ttls, strict=True):
            if ttl < 0:
                lapsed.add(key)
            else:
                least = min(least, ttl / 1000)
        await asyncio.sleep(0.1)
    return least, len(lapsed)


# --- the faults -----------------------------------------------------------------------------


Row = tuple[str, str]


async def freeze_server(
    admin: aioredis.Redis, servers: list[Server], modules: list[Module], seconds: float
) -> Row:
    frozen, other = servers
    on = [m for m in modules if m.server == frozen.address]
    phones = [m.phone for m in modules]
    since = time.monotonic()
    frozen.proc.send_signal(signal.SIGSTOP)
    try:
        async with Probes([other], phones) as probes:
            least, lapsed = await least_ttl_while(admin, seconds)
    finally:
        frozen.proc.send_signal(signal.SIGCONT)
    resumed = time.monotonic()
    async with Probes([other, frozen], phones) as after:
        await asyncio.sleep(3)
    moved = sorted(t for m in on if (t := m.moved_after(since)) is not None)
    spread = f"{moved[0]:.1f}-{moved[-1]:.1f} s" if moved else "-"
    back = [m for m in on if m.server == frozen.address]
    return (
        f"a directory server frozen {seconds:.0f} s (SIGSTOP), its {len(on)} modules",
        f"{len(moved)} of {len(on)} moved to the other server after {spread}; "
        f"{lapsed} presence records lapsed, the least TTL left {least:.1f} s; "
        f"through the other: registrations {probes.registrations.lasted(since)}, "
        f"lookups {probes.lookups.lasted(since)}; after it resumed "
        f"({resumed - since:.0f} s): lookups {after.lookups.lasted(resumed)}, "
        f"{len(back)} modules still on it",
    )


async def kill_server(servers: list[Server], modules: list[Module]) -> Row:
    killed, other = servers
    on = [m for m in modules if m.server == killed.address]
    since = time.monotonic()
    killed.proc.send_signal(signal.SIGKILL)
    async with Probes([other], [m.phone for m in modules]) as probes:
        async with asyncio.timeout(30):
            for module in on:
                await module.moved(since)
    moved = sorted(t for m in on if (t := m.moved_after(since)) is not None)
    return (
        f"a directory server killed (kill -9), its {len(on)} modules",
        f"all {len(on)} registered at the other after {moved[0]:.2f}-{moved[-1]:.2f} s; "
        f"through the other: lookups {probes.lookups.lasted(since)}",
    )


async def restart_redis(
    folder: Path, port: int, redis_proc: asyncio.subprocess.Process, server: Server,
    modules: list[Module],
) -> tuple[Row, asyncio.subprocess.Process]:  # fmt: skip
    before = await records(aioredis.Redis(port=port))
    await asyncio.sleep(1.5)  # (appendfsync everysec: what was acknowledged is on disk)
    since = time.monotonic()
    async with Probes([server], [m.phone for m in modules]) as probes:
        redis_proc.kill()
        await redis_proc.wait()
        redis_proc = await start_redis(folder, port)
        await until_registered([server])
        back = time.monotonic() - since
    after = await records(aioredis.Redis(port=port))
    return (
        "Redis killed (kill -9) and started again at once (AOF, everysec)",
        f"registrations served again {back:.1f} s after the kill; lookups "
        f"{probes.lookups.lasted(since)}; {kept(before, after, modules, since)}",
    ), redis_proc


async def freeze_replica(replica: asyncio.subprocess.Process, servers: list[Server],
                         modules: list[Module], seconds: float) -> Row:  # fmt: skip
    since = time.monotonic()
    replica.send_signal(signal.SIGSTOP)
    try:
        async with Probes(servers, [m.phone for m in modules]) as probes:
            await asyncio.sleep(seconds)
            replica.send_signal(signal.SIGCONT)
            resumed = time.monotonic()
            await until_registered(servers[:1])
            back = time.monotonic() - resumed
    finally:
        replica.send_signal(signal.SIGCONT)
    lost = sum(m.lost_since(since) for m in modules)
    return (
        f"the Redis replica frozen {seconds:.0f} s (SIGSTOP: a lagging or cut-off replica)",
        f"new numbers refused `unavailable` while it was ({probes.registrations.failures} "
        f"probes), registered {back:.1f} s after it resumed; lookups "
        f"{probes.lookups.lasted(since)}; modules that lost their server: {lost}",
    )


async def kill_master(
    master: asyncio.subprocess.Process, sentinel_port: int, servers: list[Server],
    modules: list[Module], killed_port: int,
) -> Row:  # fmt: skip
    before = await records(aioredis.Redis(port=killed_port))
    sentinel = aioredis.Redis(port=sentinel_port)
    since = time.monotonic()
    async with Probes(servers, [m.phone for m in modules]) as probes:
        master.kill()
        async with asyncio.timeout(60):
            while True:
                host, port = await sentinel.execute_command(  # type: ignore[no-untyped-call]
                    "SENTINEL", "get-master-addr-by-name", "mymaster"
                )
                if int(port) != killed_port:
                    break
                await asyncio.sleep(0.05)
            promoted_at = time.monotonic() - since
            await until_registered(servers)
        back = time.monotonic() - since
    await sentinel.aclose()
    after = await records(aioredis.Redis(host=host.decode(), port=int(port)))
    return (
        "the Redis master killed (kill -9); Sentinel promotes the replica",
        f"replica promoted after {promoted_at:.1f} s, registrations served again through "
        f"both servers after {back:.1f} s; lookups {probes.lookups.lasted(since)}; "
        f"{kept(before, after, modules, since)}",
    )


async def master_port(sentinel: aioredis.Redis) -> int:
    """The port of the master the sentinels name."""
    _, port = await sentinel.execute_command(  # type: ignore[no-untyped-call]
        "SENTINEL", "get-master-addr-by-name", "mymaster"
    )
    return int(port)


async def until_replica(port: int) -> None:
    """Until the Redis on `port` is a replica (the sentinels made it one)."""
    node = aioredis.Redis(port=port)
    try:
        async with asyncio.timeout(60):
            for _ in itertools.count():  # Redis and its sentinels: no event to wait for
                if (await node.execute_command("ROLE"))[0] == b"slave":  # type: ignore[no-untyped-call]
                    return
                await asyncio.sleep(0.05)
    finally:
        await node.aclose()


async def bound(sentinel: aioredis.Redis, phones: list[str]) -> int:
    """How many of `phones` the master the sentinels name has a binding for."""
    master = aioredis.Redis(port=await master_port(sentinel))
    try:
        return sum([await master.exists(f"wa:bind:{{{phone}}}") for phone in phones])
    finally:
        await master.aclose()


async def restart_old_master(
    folder: Path, port: int, sentinel: aioredis.Redis, servers: list[Server],
    modules: list[Module],
) -> tuple[Row, asyncio.subprocess.Process]:  # fmt: skip
    since = time.monotonic()
    async with Probes(servers, [m.phone for m in modules]) as probes:
        proc = await start_redis(folder, port)  # (its AOF: what it had as the master)
        await until_replica(port)
        demoted = time.monotonic() - since
    kept = await bound(sentinel, probes.registered)
    return (
        "the killed master started again (its AOF): a master until the sentinels make it a replica",
        f"made a replica after {demoted:.1f} s; meanwhile registrations "
        f"{probes.registrations.lasted(since)}, lookups {probes.lookups.lasted(since)}; "
        f"bindings of the {len(probes.registered)} registered meanwhile kept: {kept}",
    ), proc


async def freeze_master(
    procs: dict[int, asyncio.subprocess.Process], sentinel: aioredis.Redis,
    servers: list[Server], modules: list[Module], seconds: float,
) -> Row:  # fmt: skip
    port = await master_port(sentinel)
    frozen = procs[port]
    await asyncio.sleep(2 * FAILOVER_TIMEOUT)  # (the sentinels' rule: since the last one)
    since = time.monotonic()
    async with Probes(servers, [m.phone for m in modules]) as probes:
        frozen.send_signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(seconds)
        finally:
            frozen.send_signal(signal.SIGCONT)
        failed_over = await master_port(sentinel) != port
        await until_registered(servers)
        back = time.monotonic() - since
        if failed_over:
            await until_replica(port)
        demoted = time.monotonic() - since
    kept = await bound(sentinel, probes.registered)
    lost = sum(m.lost_since(since) for m in modules)
    return (
        f"the Redis master frozen {seconds:.0f} s (SIGSTOP), then resumed",
        f"{'failed over' if failed_over else 'not failed over'}; the old master a replica "
        f"after {demoted:.1f} s, registrations {probes.registrations.lasted(since)}, served "
        f"through both servers after {back:.1f} s; lookups {probes.lookups.lasted(since)}; "
        f"bindings of the {len(probes.registered)} registered meanwhile kept: {kept}; "
        f"modules that lost their server: {lost}",
    )


# --- the two deployments --------------------------------------------------------------------


@contextlib.asynccontextmanager
async def deployment(work: Path, url: str) -> Any:
    servers = [await start_server(work, n, url) for n in range(2)]
    holder = await hold(servers)
    modules, readers = await start_modules(work, servers)
    try:
        yield servers, modules
    finally:
        for module in modules:
            await stop(module.proc)
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        await stop(holder)
        for server in servers:
            await stop(server.proc)


async def on_sentinel(work: Path) -> list[Row]:
    first_port, replica_port = free_port(), free_port()
    master = await start_redis(work / "master", first_port)
    replica = await start_redis(
        work / "replica", replica_port, "--replicaof", "127.0.0.1", str(first_port)
    )
    sentinels = [await start_sentinel(work / f"sentinel-{n}", first_port) for n in range(3)]
    url = "sentinel://" + ",".join(f"127.0.0.1:{p}" for _, p in sentinels) + "/mymaster/0"
    sentinel = aioredis.Redis(port=sentinels[0][1])
    try:
        async with deployment(work / "sentinel", url) as (servers, modules):
            rows = [await freeze_replica(replica, servers, modules, 10)]
            rows.append(await kill_master(master, sentinels[0][1], servers, modules, first_port))
            row, master = await restart_old_master(
                work / "master", first_port, sentinel, servers, modules
            )
            rows.append(row)
            procs = {first_port: master, replica_port: replica}
            rows.append(await freeze_master(procs, sentinel, servers, modules, 5))
        return rows
    finally:
        await sentinel.aclose()
        for proc in [master, replica, *(p for p, _ in sentinels)]:
            await stop(proc)


async def on_one_redis(work: Path) -> list[Row]:
    port = free_port()
    redis_proc = await start_redis(work / "redis", port)
    try:
        async with deployment(work / "one", f"redis://127.0.0.1:{port}/0") as (servers, modules):
            admin = aioredis.Redis(port=port)
            rows = []
            for seconds in (15, 25):
                # (the server most modules are on)
                servers.sort(key=lambda s: -sum(m.server == s.address for m in modules))
                rows.append(await freeze_server(admin, servers, modules, seconds))
            await admin.aclose()
            servers.sort(key=lambda s: -sum(m.server == s.address for m in modules))
            rows.append(await kill_server(servers, modules))
            row, redis_proc = await restart_redis(
                work / "redis", port, redis_proc, servers[1], modules
            )
            rows.append(row)
        return rows
    finally:
        await stop(redis_proc)


async def main(out: Path | None, only: str | None) -> None:
    if REDIS_SERVER is None:
        raise SystemExit("redis-server is not installed: run `make bench-tools`")
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        rows = []
        if only in (None, "sentinel"):
            rows += await on_sentinel(work)
        if only in (None, "one"):
            rows += await on_one_redis(work)
    lines = [
        "# What each fault costs (make outages)",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} by bench/outages.py: two directory servers, "
        f"{HELD} users held by loadgen and {MODULES} user modules with both servers in "
        "their list; presence TTL 45 s (the default), heartbeats every 10 s.",
        "",
        "| fault | what it cost |",
        "|---|---|",
        *(f"| {fault} | {cost} |" for fault, cost in rows),
        "",
    ]
    print("\n".join(lines))
    if out is not None:
        out.write_text("\n".join(lines))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the table there too")
    parser.add_argument("--only", choices=["sentinel", "one"], help="one deployment's faults")
    parser.add_argument("--logs", type=Path, help="keep the servers' logs in this folder")
    args = parser.parse_args()
    LOGS = args.logs
    asyncio.run(main(args.out, args.only))
