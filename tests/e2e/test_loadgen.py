"""End to end: `whatsap2p loadgen` against a real server."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

from tests.e2e.procs import WHATSAP2P, ServerProcess, run

KEYS = {
    "users_online",
    "register_per_s",
    "lookups_per_s",
    "lookup_p50_ms",
    "lookup_p99_ms",
    "errors",
}


async def test_loadgen_registers_holds_and_looks_up(tmp_path: Path) -> None:
    server = await ServerProcess.start(tmp_path / "bindings.sqlite3")
    try:
        args = ["loadgen", server.address, "--users", "40", "--lookups", "400"]
        args += [
            "--concurrency",
            "6",
            "--workers",
            "2",
            "--json",
            "--server-key",
            server.fingerprint,
        ]
        code, out, err = await run(*args)
        assert code == 0, err
        result = json.loads(out)
        assert set(result) == KEYS
        assert result["users_online"] == 40
        assert result["errors"] == 0  # every lookup found the user it asked for
        assert result["register_per_s"] > 0
        assert result["lookups_per_s"] > 0
        assert 0 < result["lookup_p50_ms"] <= result["lookup_p99_ms"]

        # The same numbers come back with the same keys (the server keeps the bindings);
        # a single lookup is its own p50 and p99.
        code, out, err = await run(*args[:5], "1", *args[6:])
        assert code == 0, err
        again = json.loads(out)
        assert again["users_online"] == 40
        assert 0 < again["lookup_p50_ms"] == again["lookup_p99_ms"]

        # Other keys for the same numbers are refused: counted as errors, exit 1.
        code, out, _ = await run(*args[:-2], "--seed", "someone-else")
        assert code == 1
        refused = json.loads(out)
        assert refused["users_online"] == 0
        assert refused["errors"] == 40
    finally:
        assert await server.stop() == 0


async def test_loadgen_refuses_an_impostor_server(tmp_path: Path) -> None:
    server = await ServerProcess.start(tmp_path / "bindings.sqlite3")
    try:
        code, out, _ = await run(
            "loadgen", server.address, "--users", "3", "--json", "--server-key", "ab" * 32
        )
        assert code == 1
        assert json.loads(out)["users_online"] == 0
    finally:
        assert await server.stop() == 0


async def test_loadgen_spreads_over_servers_and_probes_another_loadgens_users(
    tmp_path: Path, redis_url: str
) -> None:
    """One loadgen holds users spread over two servers on one Redis; a second, on one
    server only, looks them up among that population: every one is found. When one
    server is killed, the holder registers its users again on the other."""
    import msgpack
    import redis.asyncio as aioredis

    from whatsap2p.server.redis_store import CHANNEL
    from whatsap2p.ui.loadgen import phone_of

    shared = ["--redis", redis_url, "--key", str(tmp_path / "deployment.key")]
    a = await ServerProcess.start(tmp_path / "a.sqlite3", *shared, "--new-key")
    b = await ServerProcess.start(tmp_path / "b.sqlite3", *shared)
    holder = await hold_users(f"{a.address},{b.address}", 30, 60)
    try:
        probe = ["loadgen", b.address, "--first", "30", "--users", "2", "--population", "30"]
        code, out, err = await run(*probe, "--lookups", "300", "--concurrency", "2", "--json")
        assert code == 0, err
        result = json.loads(out)
        assert (result["users_online"], result["errors"]) == (2, 0)  # all 30 found from b

        # a's users (even numbers: a is first in the list) come back on b.
        on_a = {phone_of(i) for i in range(0, 30, 2)}
        events = aioredis.Redis.from_url(redis_url)
        came = events.pubsub()
        await came.subscribe(CHANNEL)
        try:
            assert await a.stop(signal.SIGKILL) == -signal.SIGKILL
            back: set[str] = set()
            async with asyncio.timeout(30):
                async for message in came.listen():
                    if message["type"] == "message":
                        back.add(msgpack.unpackb(message["data"], raw=True)[0].decode())
                        if on_a <= back:
                            break
        finally:
            await came.aclose()  # type: ignore[no-untyped-call]
            await events.aclose()
        probe[3] = "40"  # two other probe users
        code, out, err = await run(*probe, "--lookups", "300", "--concurrency", "2", "--json")
        assert code == 0, err
        assert json.loads(out)["errors"] == 0  # all 30 found from b, a's users too
    finally:
        holder.kill()
        await holder.wait()
        assert holder.stdout is not None
        await holder.stdout.read()  # to its end: its workers (which share it) are gone too
        await a.stop(signal.SIGKILL)
        assert await b.stop() == 0


async def test_a_held_loadgen_ends_on_sigterm_and_takes_its_users_offline(
    tmp_path: Path,
) -> None:
    server = await ServerProcess.start(tmp_path / "bindings.sqlite3")
    holder = await hold_users(server.address, 20, 600)
    try:
        holder.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(holder.wait(), 30) == 0  # not killed: ended the hold
        # Its workers took every user offline: a probe finds none of the 20 numbers.
        probe = ["loadgen", server.address, "--first", "20", "--users", "1"]
        code, out, _ = await run(*probe, "--population", "20", "--lookups", "40", "--json")
        assert code == 1
        assert json.loads(out)["errors"] == 40
    finally:
        if holder.returncode is None:
            holder.kill()
            await holder.wait()
        assert await server.stop() == 0


async def hold_users(servers: str, users: int, hold: float) -> asyncio.subprocess.Process:
    """A `whatsap2p loadgen` (two workers) holding `users` online for `hold` seconds,
    returned once it reported every one of them online."""
    holder = await asyncio.create_subprocess_exec(
        WHATSAP2P, "loadgen", servers, "--users", str(users), "--workers", "2", "--json",
        "--hold", str(hold),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        held = json.loads(await asyncio.wait_for(holder.stdout.readline(), 30))
        assert (held["users_online"], held["errors"]) == (users, 0)
    except BaseException:
        holder.kill()
        await holder.wait()
        raise
    return holder
