"""Review of issue 26 (durable bindings, Redis access, Redis Cluster): defects a second
pair of eyes found, each a test that failed and holds since the mend. Real
redis-server processes."""

from __future__ import annotations

import asyncio
import signal
import subprocess

import pytest
import redis
import redis.asyncio as aioredis
from redis.crc import key_slot

from tests.redis_server import free_port, redis_cluster, redis_process
from tests.servers import directory_client, running_server
from whatsap2p.errors import StoreError, StoreUnavailable
from whatsap2p.protocol.keys import StaticKey
from whatsap2p.server.redis_store import RedisDirectory
from whatsap2p.server.redis_urls import shown

ALICE = "+5511999990001"


def bind_key(phone: str) -> str:
    return f"wa:bind:{{{phone}}}"


# --- a binding the operator released comes back -----------------------------------


async def test_a_release_by_the_operator_is_not_undone_by_the_old_holders_renewal(
    redis_url: str,
) -> None:
    """docs/deployment.md: to repair a stolen binding, `server release PHONE --redis URL`
    frees the number and its owner's next registration binds it again. But the key
    holding it (the thief) is still registered: its next heartbeat's renewal finds the
    binding missing and puts it back ('restored', as if a failover had lost it), so the
    release is silently undone and the real owner stays locked out."""
    async with running_server(directory=RedisDirectory(redis_url)) as (server, port):
        directory = server.directory
        assert isinstance(directory, RedisDirectory)
        events: list[str] = []
        directory.on_event = events.append
        thief_key = StaticKey.generate()
        thief = await directory_client(port, thief_key)
        await thief.register(ALICE, 4001)
        assert await directory.release(ALICE)  # what `whatsap2p server release` does
        await thief.ping()  # the thief's heartbeat: its renewal is gathered ...
        await directory.flush()  # ... and sent
        try:
            assert await directory.key_of(ALICE) != thief_key.public, (
                "the released binding was put back by the old holder's renewal"
            )
            assert "binding-restored" not in events
        finally:
            await thief.close()


# --- the take-back of an unreplicated binding races a registration of the same key -----


async def test_an_acknowledged_registration_keeps_its_binding_when_a_concurrent_one_is_taken_back() -> (  # noqa: E501
    None
):
    """Two registrations of the same key while the replica lags (a module that retries
    on another server while its first try waits): the first creates the binding and
    waits for the replica; the second finds the binding already there ('ok', never
    checked against its WAIT) and is acknowledged. The first's WAIT then times out and
    _UNBIND deletes the binding (it is the same key): the acknowledged registration is
    left with no binding, and the number is free for any key once it quits before its
    next renewal."""
    with (
        redis_process() as (master_url, _),
        redis_process("--replicaof", "127.0.0.1", master_url.split(":")[2].split("/")[0]) as (
            _,
            replica,
        ),
    ):
        admin = aioredis.Redis.from_url(master_url)
        try:
            await _race(admin, master_url, replica)
        finally:
            await admin.aclose()


async def _race(admin: aioredis.Redis, master_url: str, replica: subprocess.Popen[bytes]) -> None:
    if True:  # (kept as the reviewer wrote it)
        await admin.incr("test:writes")
        async with asyncio.timeout(30):  # (the replica has synced: it answers WAIT)
            while await admin.wait(1, 1000) < 1:
                continue
        async with (
            running_server(directory=RedisDirectory(master_url)) as (_, port_a),
            running_server(directory=RedisDirectory(master_url)) as (_, port_b),
        ):
            key = StaticKey.generate()
            first = await directory_client(port_a, key)
            second = await directory_client(port_b, key)
            replica.send_signal(signal.SIGSTOP)  # replication stalls
            try:
                trying = asyncio.create_task(first.register(ALICE, 4001))
                async with asyncio.timeout(5):  # the first try's binding is written
                    while await admin.get(bind_key(ALICE)) is None:  # noqa: ASYNC110
                        await asyncio.sleep(0.01)  # (a foreign process's state)
                acknowledged = True
                try:
                    await second.register(ALICE, 4002)
                except StoreUnavailable:
                    acknowledged = False  # (refused too: also acceptable)
                with pytest.raises(StoreUnavailable):
                    await trying  # refused: no replica took the new binding
                if acknowledged:
                    assert await admin.get(bind_key(ALICE)) == key.public, (
                        "an acknowledged registration was left without its binding"
                    )
            finally:
                replica.send_signal(signal.SIGCONT)
                for client in (first, second):
                    await client.close()


# --- Redis Cluster: no WAIT at all ------------------------------------------------------


async def test_a_new_binding_on_a_cluster_waits_for_the_masters_replica() -> None:
    """Issue 26 item 1: a registration that creates a binding is acknowledged only once a
    replica has it 'where replicas exist'. On a cluster (masters with replicas) the
    server sends no WAIT at all (`_count_replicas` returns early): with the master's
    replica stalled, a new binding is acknowledged that a failover of that master to
    its replica would forget, which is the very loss the issue is about."""
    with redis_cluster() as (url, procs):
        admin = redis.RedisCluster(host="127.0.0.1", port=next(iter(procs)))
        try:
            slot = key_slot(bind_key(ALICE).encode())
            master = int(admin.nodes_manager.get_node_from_slot(slot).port)
        finally:
            admin.close()
        replica_port = next(p for p in procs if _replica_of(p) == master)
        async with running_server(directory=RedisDirectory(url)) as (_, port):
            alice = await directory_client(port)
            replica: subprocess.Popen[bytes] = procs[replica_port]
            replica.send_signal(signal.SIGSTOP)
            try:
                with pytest.raises(StoreUnavailable):
                    await alice.register(ALICE, 4001)
            finally:
                replica.send_signal(signal.SIGCONT)
                await alice.close()


def _replica_of(port: int) -> int | None:
    """The port of the master the node at `port` replicates (None for a master)."""
    node = redis.Redis(port=port)
    try:
        info = node.info("replication")
        return int(info["master_port"]) if info["role"] == "slave" else None
    finally:
        node.close()


# --- URLs: tracebacks instead of one line -------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "cluster://127.0.0.1:{port}",  # a cluster down (or a typo in its host) at start
        "redis://127.0.0.1:{port}/0?ssl_ca_cert=/etc/ca.pem",  # a typo in an option
    ],
)
async def test_a_bad_or_unreachable_url_is_one_line_not_a_traceback(url: str) -> None:
    """`cluster://` with no reachable seed raises redis-py's RedisClusterException (not a
    RedisError): start() lets it through and `whatsap2p server` dies with a traceback.
    An unknown query option (`ssl_ca_cert` for `ssl_ca_certs`) raises TypeError at the
    first command: a traceback too."""
    directory = RedisDirectory(url.format(port=free_port()))
    try:
        with pytest.raises(StoreError):  # (what the CLI prints as one line)
            await directory.start(lambda address: None, lambda phone, dial: None)  # type: ignore[arg-type,return-value]
    finally:
        await directory.close()


# --- passwords shown in logs and errors -------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "redis://:hunter@2secret@10.0.0.5:6379/0",  # an '@' in the password (redis-py takes it)
        "redis://app:hunter/2secret@10.0.0.5:6379/0",  # a '/' (base64 passwords have them)
        "sentinel://:hunter/2secret@10.0.0.5:26379/mymaster/0",
        "redis://10.0.0.5:6379/0?password=hunter2secret",  # redis-py reads it there too
    ],
)
def test_shown_never_shows_the_password(url: str) -> None:
    """`shown()` is what every log line and error says of the URL (`directory store lost
    (URL)`, `cannot use Redis at URL`, `not a sentinel URL: URL`)."""
    assert "2secret" not in shown(url)
