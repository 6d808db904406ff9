"""Real modules behind home routers, in a small internet of network namespaces the test
builds and removes (tests/e2e/internet.py): who reaches whom, and by which route. Each
pair exchanges a text both ways and a 5 MB photo verified by its hash; where no path
works yet (a symmetric router on one side: no relay yet), the failure is clean and fast.
Also with two directory servers sharing a Redis, the two users on different servers."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, ExitStack, asynccontextmanager
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import image_bytes
from tests.e2e.internet import Host, Internet, cannot_make_internet, internet
from tests.e2e.procs import ServerProcess, UserProcess
from tests.redis_server import redis_inside

pytestmark = pytest.mark.skipif(
    cannot_make_internet() is not None, reason=str(cannot_make_internet())
)

ALICE, BOB, CAROL, DAVE = (f"+551199999000{i}" for i in range(1, 5))
PHOTO_BYTES = 5_000_000


METRICS = 9100  # (the directory's own namespace: no other port to meet)


class Town:
    """The internet, its directory servers, and the users a test starts in it."""

    def __init__(
        self, net: Internet, hosts: list[Host], servers: list[ServerProcess], root: Path,
        stack: AsyncExitStack,
    ) -> None:  # fmt: skip
        self.net, self.hosts, self.servers = net, hosts, servers
        self.root, self._stack = root, stack

    async def counted(self, family: str, server: int = 0) -> dict[str, float]:
        """The `server`th server's Prometheus counter `family` (its samples by their one
        label)."""
        host = self.hosts[server]
        url = f"http://{host.address}:{METRICS}/metrics"
        read = f"import urllib.request as u; print(u.urlopen({url!r}).read().decode())"
        scraped = await asyncio.to_thread(host.run, sys.executable, "-c", read)
        (found,) = (f for f in text_string_to_metric_families(scraped.stdout) if f.name == family)
        return {
            next(iter(sample.labels.values())): sample.value
            for sample in found.samples
            if sample.name == f"{family}_total"
        }

    async def user(self, phone: str, host: Host, server: int = 0) -> UserProcess:
        """`phone`'s module on `host`, registered at the `server`th server."""
        at = self.servers[server]
        user = await UserProcess.start(
            at.address, phone, self.root / phone, "--listen", "0.0.0.0:0",
            "--server-key", at.fingerprint, inside=host.inside,
        )  # fmt: skip
        self._stack.push_async_callback(user.close)
        return user


@asynccontextmanager
async def town(root: Path, servers: int = 1) -> AsyncIterator[Town]:
    """A town with one directory server (its bindings in SQLite) or `servers` of them on
    hosts of their own (203.0.113.10, .11, ...), sharing a Redis on another (.5)."""
    with internet() as net, ExitStack() as redis:
        options: tuple[str, ...] = ()
        if servers > 1:
            database = net.public_host("203.0.113.5")
            url = redis.enter_context(redis_inside(database.inside, database.address))
            options = ("--redis", url, "--key", str(root / "deployment.key"), "--new-key")
        started: list[ServerProcess] = []
        hosts: list[Host] = []
        try:
            for n in range(servers):
                host = net.public_host(f"203.0.113.{10 + n}")
                hosts.append(host)
                db = root / f"server-{n}" / "bindings.sqlite3"
                metrics = ("--metrics-port", str(METRICS), "--metrics-host", host.address)
                server = await ServerProcess.start(
                    db, *options, *metrics, inside=host.inside, host=host.address
                )
                started.append(server)
            async with AsyncExitStack() as stack:
                yield Town(net, hosts, started, root, stack)
        finally:
            for server in started:
                assert await server.stop() == 0


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "big.png"
    path.write_bytes(image_bytes(size=(200, 200), marker=os.urandom(PHOTO_BYTES)))
    return path


async def text(sender: UserProcess, receiver: UserProcess, words: str) -> str:
    """Send a text; once it is shown at the receiver, the route it went by."""
    sent = await sender.call("send", to=receiver.phone, text=words)
    assert sent["delivered"] == [receiver.phone], sent
    got = await receiver.notification("receive")
    assert (got["from"], got["text"]) == (sender.phone, words)
    route: str = sent["routes"][receiver.phone]
    return route


async def photo_to(sender: UserProcess, receiver: UserProcess, photo: Path) -> str:
    sent = await sender.call("send", to=receiver.phone, photo=str(photo))
    assert sent["delivered"] == [receiver.phone], sent
    got = (await receiver.notification("receive"))["photo"]
    assert got["sha256"] == hashlib.sha256(photo.read_bytes()).hexdigest()
    assert Path(got["path"]).read_bytes() == photo.read_bytes()
    route: str = sent["routes"][receiver.phone]
    return route


#: The ways in to a module behind a port-keeping router: it connects back, or both
#: connect at once (whichever comes first).
IN = ("reverse", "punched")


async def test_a_public_user_and_one_behind_a_router(tmp_path: Path, photo: Path) -> None:
    async with town(tmp_path) as place:
        dave = await place.user(DAVE, place.net.public_host())
        alice = await place.user(ALICE, place.net.router().host())
        assert await text(alice, dave, "out, as always") == "direct"
        # the server tells dave that alice sits behind a router: she is asked to connect
        # back at once, not once a dial has had its chance (Timeouts.reverse_after, 1 s)
        started = time.monotonic()
        assert await text(dave, alice, "in: alice connects back") in IN
        assert time.monotonic() - started < 0.9
        assert await photo_to(dave, alice, photo) in IN


async def test_a_public_user_and_one_behind_a_symmetric_router(tmp_path: Path, photo: Path) -> None:
    async with town(tmp_path) as place:
        dave = await place.user(DAVE, place.net.public_host())
        alice = await place.user(ALICE, place.net.router(symmetric=True).host())
        assert await text(dave, alice, "in") == "reverse"
        assert await text(alice, dave, "out") == "direct"
        assert await photo_to(dave, alice, photo) == "reverse"


async def test_two_users_behind_one_router_talk_over_their_lan(tmp_path: Path, photo: Path) -> None:
    async with town(tmp_path) as place:
        home = place.net.router()
        alice, bob = await place.user(ALICE, home.host()), await place.user(BOB, home.host())
        assert await text(alice, bob, "across the room") == "direct"
        assert await text(bob, alice, "and back") == "direct"
        assert await photo_to(alice, bob, photo) == "direct"


async def test_users_behind_two_routers_punch_a_hole(tmp_path: Path, photo: Path) -> None:
    async with town(tmp_path) as place:
        alice = await place.user(ALICE, place.net.router().host())
        carol = await place.user(CAROL, place.net.router().host())
        assert await text(alice, carol, "through both routers") == "punched"
        assert await text(carol, alice, "and back") == "punched"
        assert await photo_to(alice, carol, photo) == "punched"
        # what the operator sees: three connections (two text links, one photo link),
        # each through a hole punched at a request passed on
        for each in (alice, carol):
            await each.call("status", target=ALICE if each is carol else CAROL)  # (after it)
        assert await place.counted("whatsap2p_connections") == {"punched": 3}
        assert await place.counted("whatsap2p_rendezvous") == {"punched": 3}


async def test_behind_a_symmetric_router_no_hole_is_punched_and_it_says_so_fast(
    tmp_path: Path,
) -> None:
    # (no relay yet: what the person sees is a plain, prompt failure, or a queued message)
    async with town(tmp_path) as place:
        alice = await place.user(ALICE, place.net.router().host())
        carol = await place.user(CAROL, place.net.router(symmetric=True).host())
        started = time.monotonic()
        sent = await alice.call("send", to=CAROL, text="anyone there?")
        assert time.monotonic() - started < 15
        (failed,) = sent["failed"]
        assert failed["code"] in ("timeout", "unreachable")
        assert "a router may be keeping it out" in failed["error"]
        assert "it did not connect back either" in failed["error"]
        assert carol.notifications["receive"].empty()
        # asked to queue it, alice keeps it for later instead (tried again, less often)
        kept = await alice.call("send", to=CAROL, text="keep it for me", queue=True)
        assert (kept["queued"], kept["failed"]) == ([CAROL], [])
        assert [entry["id"] for entry in await alice.call("outbox")] == [kept["id"]]


async def test_a_user_behind_a_router_is_reached_through_another_server(
    tmp_path: Path, photo: Path
) -> None:
    # alice is connected to one server, dave to another: dave's server passes his
    # request to connect back on to alice's (a symmetric router: no hole, only that way)
    async with town(tmp_path, servers=2) as place:
        alice = await place.user(ALICE, place.net.router(symmetric=True).host(), server=0)
        dave = await place.user(DAVE, place.net.public_host(), server=1)
        assert await text(dave, alice, "in, from the other server") == "reverse"
        assert await photo_to(dave, alice, photo) == "reverse"
        assert await text(alice, dave, "out") == "direct"


async def test_users_behind_two_routers_on_two_servers_punch_a_hole(tmp_path: Path) -> None:
    async with town(tmp_path, servers=2) as place:
        alice = await place.user(ALICE, place.net.router().host(), server=0)
        carol = await place.user(CAROL, place.net.router().host(), server=1)
        assert await text(alice, carol, "through both routers and servers") == "punched"
        assert await text(carol, alice, "and back") == "punched"
