"""Directory servers on a real Redis Cluster (three masters, a replica each, started on
free ports): users spread over the masters, presence and texts across servers, a second
key refused, and a master killed and failed over without losing anyone (issue 26)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import redis
from redis.crc import key_slot

from tests.redis_server import redis_cluster, wait_failed_over
from tests.servers import directory_client, running_server, session_config
from whatsap2p.app.events import TextReceived
from whatsap2p.app.session import Session
from whatsap2p.errors import NumberBound
from whatsap2p.net.directory_client import DirectoryClient
from whatsap2p.protocol import events as ev
from whatsap2p.protocol.keys import StaticKey
from whatsap2p.server.redis_store import RedisDirectory

PHONES = [f"+55119999{i:05}" for i in range(24)]


class Cluster:
    def __init__(self, url: str, procs: dict[int, subprocess.Popen[bytes]]) -> None:
        self.url, self.procs = url, procs
        self.admin = redis.RedisCluster(host="127.0.0.1", port=next(iter(procs)))

    def master_of(self, phone: str) -> int:
        """The port of the master that holds `phone`'s keys."""
        slot = key_slot(f"wa:bind:{{{phone}}}".encode())
        return int(self.admin.nodes_manager.get_node_from_slot(slot).port)

    def refresh(self) -> None:
        self.admin.close()
        alive = next(p for p, proc in self.procs.items() if proc.poll() is None)
        self.admin = redis.RedisCluster(host="127.0.0.1", port=alive)


@pytest.fixture(scope="module")
def cluster_nodes() -> Iterator[tuple[str, dict[int, subprocess.Popen[bytes]]]]:
    with redis_cluster() as (url, procs):
        yield url, procs


@pytest.fixture
def cluster(cluster_nodes: tuple[str, dict[int, subprocess.Popen[bytes]]]) -> Iterator[Cluster]:
    url, procs = cluster_nodes
    found = Cluster(url, procs)
    found.admin.flushall(target_nodes=redis.RedisCluster.PRIMARIES)
    yield found
    found.admin.close()


@pytest.fixture
async def two_servers(cluster: Cluster) -> AsyncIterator[tuple[int, int]]:
    async with AsyncExitStack() as stack:
        ports = []
        for _ in range(2):
            server = running_server(directory=RedisDirectory(cluster.url))
            _, port = await stack.enter_async_context(server)
            ports.append(port)
        yield ports[0], ports[1]


async def registered(port: int, phones: list[str]) -> list[DirectoryClient]:
    clients = []
    for i, phone in enumerate(phones):
        client = await directory_client(port)
        await client.register(phone, 4000 + i)
        clients.append(client)
    return clients


async def test_users_spread_over_the_masters_are_found_from_every_server(
    cluster: Cluster, two_servers: tuple[int, int]
) -> None:
    port_a, port_b = two_servers
    on_a = await registered(port_a, PHONES[:12])
    on_b = await registered(port_b, PHONES[12:])
    assert len({cluster.master_of(phone) for phone in PHONES}) == 3  # keys on every master
    for client in (on_a[0], on_b[0]):
        assert sorted(await client.lookup(PHONES)) == sorted(PHONES)
    thief = await directory_client(port_b)
    with pytest.raises(NumberBound):
        await thief.register(PHONES[0], 4999)  # bound on a, refused through b
    # presence across servers: a watch on b hears a registration on a
    watcher = on_b[0]
    came: asyncio.Queue[ev.PeerAddress] = asyncio.Queue()
    watcher.on_online = came.put_nowait
    newcomer = "+5511988880001"
    await watcher.watch([newcomer])
    late = await directory_client(port_a)
    await late.register(newcomer, 4998)
    assert (await asyncio.wait_for(came.get(), 5)).phone == newcomer
    for client in [*on_a, *on_b, thief, late]:
        await client.close()


async def test_texts_cross_servers_on_a_cluster(
    cluster: Cluster, two_servers: tuple[int, int], tmp_path: Path
) -> None:
    port_a, port_b = two_servers
    async with (
        Session(session_config(port_a, PHONES[0], tmp_path / "alice")) as alice,
        Session(session_config(port_b, PHONES[1], tmp_path / "bob")) as bob,
    ):
        report = await alice.send_text(PHONES[1], "across the cluster")
        assert report.delivered == [PHONES[1]]
        got = await asyncio.wait_for(bob.events.get(), 10)
        assert isinstance(got, TextReceived)
        assert got.text == "across the cluster"


async def test_a_master_killed_is_failed_over_and_nobody_is_lost(
    cluster: Cluster, two_servers: tuple[int, int]
) -> None:
    port_a, port_b = two_servers
    keys = {phone: StaticKey.generate() for phone in PHONES}
    clients = []
    for i, phone in enumerate(PHONES):
        client = await directory_client(port_a if i % 2 else port_b, keys[phone])
        await client.register(phone, 4000 + i)
        clients.append(client)
    for port in cluster.procs:  # (what each master wrote has reached its replica)
        node = redis.Redis(port=port)
        if node.execute_command("ROLE")[0] == b"master":  # type: ignore[no-untyped-call]
            ranges = node.execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
            first = next(r[0] for r in ranges if int(r[2][1]) == port)  # (its own slots)
            mine = next(f"t{i}" for i in range(100_000) if key_slot(f"t{i}".encode()) == first)
            node.incr(f"test:{{{mine}}}")  # a write of its own, after all the others
            assert node.wait(1, 5000) == 1
        node.close()
    victim = cluster.master_of(PHONES[0])
    cluster.procs[victim].send_signal(signal.SIGKILL)
    cluster.procs[victim].wait()
    wait_failed_over(list(cluster.procs), victim)
    cluster.refresh()
    assert cluster.master_of(PHONES[0]) != victim  # its replica is the master now
    asker = clients[1]
    found: dict[str, ev.PeerAddress] = {}
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(30):  # the servers find the new master (their retries)
            while len(found) < len(PHONES):
                try:
                    found = await asker.lookup(PHONES)
                except Exception:  # noqa: S112 (`unavailable` until the servers see it)
                    continue
                finally:
                    await asyncio.sleep(0.1)
    missing = [(p, cluster.master_of(p)) for p in PHONES if p not in found]
    assert not missing, (victim, missing)  # nobody lost
    thief = await directory_client(port_a)
    with pytest.raises(NumberBound):  # and no binding either
        await thief.register(PHONES[0], 4999)
    promoted = cluster.master_of(PHONES[0])
    fresh = next(  # a new number whose keys are on the promoted master
        p for p in (f"+55119777{i:05}" for i in range(10_000)) if cluster.master_of(p) == promoted
    )
    newcomer = await directory_client(port_b)
    await newcomer.register(fresh, 4997)  # written to the promoted master
    assert fresh in await asker.lookup([fresh])
    for client in [*clients, thief, newcomer]:
        await client.close()
