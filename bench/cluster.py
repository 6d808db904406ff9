"""Directory servers sharing one redis-server: many online users spread over several
server processes, lookups through each server finding users of all of them.

One `whatsap2p loadgen` registers and holds the users, spread over the servers; then,
server by server, a second loadgen registers 50 users there and looks up numbers among
the whole population through that server only ("not found" would count as an error).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import redis.asyncio as aioredis
from baselines import REDIS_SERVER, redis_server, stop

PROBE_USERS = 50


async def used_memory(port: int) -> int:
    client = aioredis.Redis(port=port)
    try:
        info = await client.info("memory")
        return int(info["used_memory"])
    finally:
        await client.aclose()


async def summary_line(stderr: asyncio.StreamReader, found: asyncio.Future[str]) -> None:
    """Read a loadgen's stderr to its end (a pipe nobody reads blocks its writer); its
    summary line ("errors by kind: ...; registrations tried again: N") goes to `found`."""
    while line := await stderr.readline():
        text = line.decode(errors="replace").strip()
        if text.startswith("errors by kind:") and not found.done():
            found.set_result(text)
    if not found.done():
        found.set_result("no summary from the loadgen")


StartServer = Callable[..., Awaitable[tuple[asyncio.subprocess.Process, str]]]


async def directory_cluster(
    work: Path,
    users: int,
    lookups: int,
    *,
    whatsap2p: str,
    start: StartServer,
    unlimited: list[str],
    rss_kib: Callable[[int], int],
    count: int = 4,
) -> list[str]:
    """The report's section (markdown lines). `start(db, *args)` starts a server and
    returns it with its `listening on` line."""
    if REDIS_SERVER is None:
        return ["", "## Several servers on one Redis", "", "Not measured: no redis-server."]
    async with redis_server() as redis_port:
        url = f"redis://127.0.0.1:{redis_port}/0"
        shared = ["--redis", url, "--key", str(work / "cluster.key"), *unlimited]
        servers = []
        try:
            for i in range(count):
                first = ["--new-key"] if i == 0 else []  # (the directory's first server)
                proc, line = await start(work / f"cluster-{i}.sqlite3", *shared, *first)
                servers.append((proc, line.rsplit(" ", 1)[1]))
            before = await used_memory(redis_port)
            holder = await asyncio.create_subprocess_exec(
                whatsap2p, "loadgen", ",".join(a for _, a in servers), "--users", str(users),
                "--workers", "4", "--json", "--hold", "1800",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            assert holder.stderr is not None
            kinds = asyncio.get_running_loop().create_future()
            stderr = asyncio.create_task(summary_line(holder.stderr, kinds))
            try:
                assert holder.stdout is not None
                held = json.loads(await holder.stdout.readline())
                how = await kinds
                after = await used_memory(redis_port)
                rows = []
                for i, (proc, address) in enumerate(servers):
                    probe = await asyncio.create_subprocess_exec(
                        whatsap2p, "loadgen", address, "--first", str(users + PROBE_USERS * i),
                        "--users", str(PROBE_USERS), "--population", str(users),
                        "--lookups", str(lookups), "--concurrency", "50", "--json",
                        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
                    )  # fmt: skip
                    out, _ = await probe.communicate()
                    result = json.loads(out)
                    rss = rss_kib(proc.pid)
                    rows.append(
                        f"| {i + 1} ({address}) | {result['lookups_per_s']:,.0f} | "
                        f"{result['lookup_p50_ms']:.2f} ms | {result['lookup_p99_ms']:.2f} ms | "
                        f"{result['errors']:,} | {rss / 1024:,.0f} MiB |"
                    )
            finally:
                await stop(holder)  # SIGTERM: the hold ends, its users go offline
                await stderr
        finally:
            for proc, _ in servers:
                await stop(proc)
    online = held["users_online"]
    per_user = (after - before) / max(1, online)
    return [
        "",
        f"## Several servers on one Redis: {count} server processes, {users:,} users",
        "",
        f"`whatsap2p loadgen` holds {online:,} users spread over {count} `whatsap2p server "
        "--redis` processes",
        f"({held['register_per_s']:,.0f} registrations/s, {held['errors']:,} errors; {how});",
        f"then, through each server in turn, {lookups:,} lookups",
        f"of numbers among all {users:,} users from 50 clients registered on that server. "
        "Everything shares",
        "this machine's two cores (servers, loadgens, redis-server, and the held users' "
        "heartbeats).",
        "",
        "| server | lookups/s | p50 | p99 | errors (not found) | server RSS |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        f"Redis memory per online user: {per_user:,.0f} bytes "
        f"({(after - before) / 2**20:,.1f} MiB for {online:,} users, bindings included).",
    ]
