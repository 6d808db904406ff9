"""A master failover under load (issue 26): 500 simulated users (`whatsap2p loadgen`)
held online through two real servers on one Sentinel-kept Redis (a master, a replica, a
sentinel); the master is killed with kill -9; once the sentinel has promoted the
replica, no binding and no registration is lost."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import redis.asyncio as aioredis

from tests.e2e.procs import ServerProcess
from tests.e2e.test_loadgen import hold_users
from tests.redis_server import redis_process, redis_sentinel
from tests.servers import directory_client

USERS = 500
#: Enough for 500 registrations and their lookups from one machine at once.
UNLIMITED = ("--ip-register-rate", "100000", "--ip-register-burst", "100000")


async def count(client: aioredis.Redis, pattern: str) -> int:
    return len([key async for key in client.scan_iter(match=pattern, count=1000)])


async def test_a_master_killed_under_500_users_loses_no_binding_and_no_registration(
    tmp_path: Path,
) -> None:
    with (
        redis_process() as (master_url, master),
        redis_process("--replicaof", "127.0.0.1", master_url.split(":")[2].split("/")[0]),
        redis_sentinel(master_url) as sentinel_url,
    ):
        key = ("--key", str(tmp_path / "deployment.key"))
        servers = [
            await ServerProcess.start(
                tmp_path / f"{n}.sqlite3",
                "--redis",
                sentinel_url,
                *key,
                *UNLIMITED,
                *(["--new-key"] if n == 0 else []),
            )
            for n in range(2)
        ]
        holder = await hold_users(",".join(s.address for s in servers), USERS, 120)
        admin = aioredis.Redis.from_url(master_url)
        sentinel_port = int(sentinel_url.split(":")[2].split("/")[0])
        sentinel = aioredis.Redis(port=sentinel_port)
        switches = sentinel.pubsub()
        try:
            assert await count(admin, "wa:bind:*") == USERS
            assert await count(admin, "wa:online:*") == USERS
            await admin.incr("test:writes")  # after all the others: once the replica has
            async with asyncio.timeout(30):  # it (WAIT), it has them all
                while await admin.wait(1, 1000) < 1:
                    continue
            await switches.subscribe("+switch-master")
            killed = time.monotonic()
            master.send_signal(signal.SIGKILL)
            async with asyncio.timeout(30):
                async for message in switches.listen():
                    if message["type"] == "message":
                        break  # the replica is the master now
            promoted_host, promoted_port = await sentinel.execute_command(  # type: ignore[no-untyped-call]
                "SENTINEL", "get-master-addr-by-name", "mymaster"
            )
            promoted = aioredis.Redis(host=promoted_host.decode(), port=int(promoted_port))
            # every binding made it (a new one is acknowledged once a replica has it)
            assert await count(promoted, "wa:bind:*") == USERS
            # the servers serve again: a new user registers through each
            for n, server in enumerate(servers):
                async with asyncio.timeout(30):
                    while True:
                        probe = await directory_client(server.port)
                        try:
                            await probe.register(f"+5521988880{n:03}", 4000 + n)
                            break
                        except Exception:  # noqa: S112 (`unavailable` until they follow)
                            continue
                        finally:
                            await probe.close()
            back = time.monotonic() - killed
            # and every user is still registered (renewed by its heartbeats meanwhile)
            assert await count(promoted, "wa:online:*") >= USERS
            assert holder.returncode is None  # the holder is still holding them all
            print(f"master killed: registrations served again after {back:.1f} s")
            await promoted.aclose()
        finally:
            await switches.aclose()  # type: ignore[no-untyped-call]
            await sentinel.aclose()
            await admin.aclose()
            holder.send_signal(signal.SIGTERM)
            await asyncio.wait_for(holder.wait(), 30)
            for server in servers:
                await server.stop()
