"""Several `whatsap2p server --redis` processes, one real redis-server, real user modules:
users on different servers talk, a number is online once, a module fails over when its
server is killed, and a user whose only server died shows offline everywhere."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.conftest import image_bytes
from tests.e2e.procs import ServerProcess, UserProcess, run

ALICE, BOB, CAROL = "+5511999990001", "+5511999990002", "+5511999990003"
TTL = "2"  # seconds a dead server's users stay listed (30 by default)


class Deployment:
    """Servers sharing one Redis and one key file; the user modules started on them."""

    def __init__(self, redis_url: str, root: Path) -> None:
        self.redis_url, self.root = redis_url, root
        self.servers: list[ServerProcess] = []
        self.users: list[UserProcess] = []

    async def server(self) -> ServerProcess:
        n = len(self.servers)
        server = await ServerProcess.start(
            self.root / f"server-{n}" / "unused.sqlite3",
            "--redis",
            self.redis_url,
            "--key",
            str(self.root / "deployment.key"),
            "--presence-ttl",
            TTL,
            *(["--new-key"] if n == 0 else []),  # (the directory's first server makes it)
        )
        self.servers.append(server)
        return server

    async def user(self, phone: str, *servers: ServerProcess, folder: str = "") -> UserProcess:
        where = ",".join(s.address for s in servers)
        user = await UserProcess.start(where, phone, self.root / (folder or phone))
        self.users.append(user)
        return user


@pytest.fixture
async def deployment(redis_url: str, tmp_path: Path) -> AsyncIterator[Deployment]:
    deployment = Deployment(redis_url, tmp_path)
    try:
        yield deployment
    finally:
        for user in deployment.users:
            await user.close()
        for server in deployment.servers:
            await server.stop(signal.SIGKILL)


async def test_users_on_different_servers_exchange_texts_and_photos(
    deployment: Deployment, tmp_path: Path
) -> None:
    a, b = await deployment.server(), await deployment.server()
    assert a.fingerprint == b.fingerprint  # one deployment, one key
    alice, bob = await deployment.user(ALICE, a), await deployment.user(BOB, b)
    sent = await alice.call("send", to=BOB, text="hello across servers")
    assert sent["delivered"] == [BOB]
    assert (await bob.notification("receive"))["text"] == "hello across servers"
    photo = tmp_path / "p.png"
    photo.write_bytes(image_bytes())
    assert (await bob.call("send", to=ALICE, photo=str(photo)))["delivered"] == [ALICE]
    received = await alice.notification("receive")
    assert Path(received["photo"]["path"]).read_bytes() == photo.read_bytes()
    assert await alice.quit() == 0
    assert await bob.call("status", target=ALICE) == {ALICE: {"online": False}}


async def test_a_number_is_online_once_across_servers(deployment: Deployment) -> None:
    a, b = await deployment.server(), await deployment.server()
    await deployment.user(ALICE, a)
    code, _, err = await run(
        "user", b.address, "--phone", ALICE, "--data-dir", str(deployment.root / "thief"),
        "--listen", "127.0.0.1:0", "--json",
    )  # fmt: skip
    assert code != 0
    assert "bound to another key" in err


async def test_queued_messages_follow_presence_across_servers(deployment: Deployment) -> None:
    a, b = await deployment.server(), await deployment.server()
    bob = await deployment.user(BOB, b)
    sent = await bob.call("send", to=ALICE, text="when you are back", queue=True)
    assert sent["queued"] == [ALICE]
    alice = await deployment.user(ALICE, a)  # registers on the other server: pushed to b
    assert (await alice.notification("receive"))["text"] == "when you are back"
    assert (await bob.notification("delivered")) == {"id": sent["id"], "phone": ALICE}


async def test_a_module_fails_over_when_its_server_is_killed(deployment: Deployment) -> None:
    a, b = await deployment.server(), await deployment.server()
    alice = await deployment.user(ALICE, a, b)  # one of the two at random, the other then
    on, other = (a, b) if alice.ready["server"] == a.address else (b, a)
    assert alice.ready["server"] == on.address
    bob = await deployment.user(BOB, other)
    assert (await alice.call("send", to=BOB, text="before"))["delivered"] == [BOB]
    await bob.notification("receive")

    killed = time.monotonic()
    await on.stop(signal.SIGKILL)
    assert (await alice.notification("serverConnection"))["state"] == "lost"
    back = await alice.notification("serverConnection", timeout=5)
    assert back == {"state": "restored", "server": other.address}
    assert time.monotonic() - killed < 5
    sent = await bob.call("send", to=ALICE, text="still there?")
    assert sent["delivered"] == [ALICE]
    assert (await alice.notification("receive"))["text"] == "still there?"
    assert await alice.quit() == 0
    said = await alice.stderr()  # which server was lost, why, and where it is now
    assert f"the server closed the connection ({on.address}); reconnecting" in said
    assert f"registered again, at server {other.address}" in said


async def test_without_another_server_a_user_shows_offline_everywhere(
    deployment: Deployment, redis_url: str
) -> None:
    a, b = await deployment.server(), await deployment.server()
    await deployment.user(CAROL, a)  # a only
    bob = await deployment.user(BOB, b)
    assert await bob.call("status", target=CAROL) == {CAROL: {"online": True}}
    events = aioredis.Redis.from_url(redis_url)
    expired = events.pubsub()
    await expired.subscribe("__keyevent@0__:expired")
    try:
        await a.stop(signal.SIGKILL)  # nobody renews carol's registration any more
        async with asyncio.timeout(float(TTL) + 10):
            async for message in expired.listen():
                if message["type"] == "message" and CAROL.encode() in message["data"]:
                    break
    finally:
        await expired.aclose()  # type: ignore[no-untyped-call]
        await events.aclose()
    assert await bob.call("status", target=CAROL) == {CAROL: {"online": False}}


async def test_a_server_of_a_shared_directory_never_makes_a_key_of_its_own(
    deployment: Deployment, tmp_path: Path
) -> None:
    """A second server started without the deployment's key file would show another
    fingerprint, which every pinned user refuses: it does not start. The first one,
    told `--new-key`, makes it; each logs the fingerprint it serves with."""
    first = await deployment.server()  # (--new-key: the deployment's first server)
    missing = tmp_path / "elsewhere" / "server.key"
    code, out, err = await run(
        "server", "--port", "0", "--redis", deployment.redis_url, "--key", str(missing)
    )
    assert code != 0
    assert out == ""
    assert err.strip().splitlines() == [
        f"whatsap2p: no server key file at {missing}: every server of a shared directory "
        "(--redis) needs the same key; copy it from another server, or give --new-key to "
        "make the directory's first one"
    ]
    assert not missing.exists()
    second = await deployment.server()
    assert second.fingerprint == first.fingerprint
    await second.stop()
    assert f"fingerprint {first.fingerprint}" in await second.stderr()
