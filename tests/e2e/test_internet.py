"""The test bed of tests/e2e/internet.py behaves like the internet with home routers on it:
a LAN gets out behind its router's address, nothing gets in unasked, a symmetric NAT
gives every connection another outer port, and the bed is gone afterwards. Small Python
listeners and clients run inside the namespaces; a connection dropped times out (1 s)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.internet import Host, Router, cannot_make_internet, internet
from tests.e2e.procs import ServerProcess, UserProcess

REASON = cannot_make_internet()
pytestmark = [pytest.mark.skipif(REASON is not None, reason=REASON or ""),
              pytest.mark.timeout(30)]  # fmt: skip

DROPPED = 1.0  # seconds a client waits for an answer that never comes

# Accept COUNT connections on HOST at every PORT within WAIT seconds; one line for each:
# "PORT PEER_ADDRESS PEER_PORT", every connection kept open until the end.
LISTEN = """
import selectors, socket, sys, time
host, count, wait, *ports = sys.argv[1:]
selector = selectors.DefaultSelector()
for port in ports:
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((host, int(port)))
    server.listen()
    selector.register(server, selectors.EVENT_READ)
print("listening", flush=True)
end, left, kept = time.monotonic() + float(wait), int(count), []
while left > 0 and time.monotonic() < end:
    for key, _ in selector.select(end - time.monotonic()):
        conn, peer = key.fileobj.accept()
        kept.append(conn)
        left -= 1
        print(key.fileobj.getsockname()[1], *peer, flush=True)
"""

# Connect to every ADDRESS:PORT in turn from local port BIND (0: any), each waiting WAIT
# seconds, every connection kept open until the end; one line for each: "connected
# LOCAL_PORT", "timeout", "refused" or "error ERRNO".
CONNECT = """
import socket, sys
wait, bind, *targets = sys.argv[1:]
kept = []
for target in targets:
    address, port = target.rsplit(":", 1)
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    client.settimeout(float(wait))
    client.bind(("", int(bind)))
    try:
        client.connect((address, int(port)))
    except TimeoutError:
        print("timeout", flush=True)
    except ConnectionRefusedError:
        print("refused", flush=True)
    except OSError as error:
        print("error", error.errno, flush=True)
    else:
        print("connected", client.getsockname()[1], flush=True)
        kept.append(client)
"""


# From local port BIND connect to ADDRESS:PORT, waiting WAIT seconds, as a peer punching a
# hole does (the other side connecting back at the same time): "connecting" first, then
# "connected PEER_ADDRESS PEER_PORT WHAT_THE_PEER_SENT" or "failed ERROR".
PUNCH = """
import socket, sys
bind, address, port, wait = sys.argv[1:]
client = socket.socket()
client.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
client.settimeout(float(wait))
client.bind(("", int(bind)))
print("connecting", flush=True)
try:
    client.connect((address, int(port)))
    client.sendall(bind.encode())
    print("connected", *client.getpeername(), client.recv(100).decode(), flush=True)
except OSError as error:
    print("failed", type(error).__name__, flush=True)
"""


def listen(host: Host, *ports: int, count: int = 1, wait: float = 10.0) -> subprocess.Popen[str]:
    """A listener on every port of `host` (all its addresses), once it listens."""
    listener = host.popen(sys.executable, "-I", "-S", "-c", LISTEN, "0.0.0.0", str(count),
                          str(wait), *map(str, ports))  # fmt: skip
    assert listener.stdout is not None
    assert listener.stdout.readline() == "listening\n", listener.communicate(timeout=5)
    return listener


def accepted(listener: subprocess.Popen[str], wait: float = 5.0) -> list[tuple[int, str, int]]:
    """What the listener accepted: (its port, the peer's address, the peer's port); it is
    stopped if it still waits."""
    try:
        out, _ = listener.communicate(timeout=wait)
    except subprocess.TimeoutExpired:
        listener.kill()
        out, _ = listener.communicate()
    return [(int(port), peer, int(peer_port)) for port, peer, peer_port in
            (line.split() for line in out.splitlines())]  # fmt: skip


def connect(host: Host, *targets: str, bind: int = 0) -> list[str]:
    """Connect from `host` to every "ADDRESS:PORT" in turn (all held open together)."""
    done = host.run(sys.executable, "-I", "-S", "-c", CONNECT, str(DROPPED), str(bind),
                    *targets, timeout=DROPPED * len(targets) + 10)  # fmt: skip
    return done.stdout.splitlines()


def test_a_lan_host_reaches_a_public_host_from_its_routers_address() -> None:
    with internet() as net:
        dave = net.public_host("203.0.113.20")
        home = net.router()
        alice = home.host()
        listener = listen(dave, 7001)
        assert connect(alice, "203.0.113.20:7001")[0].startswith("connected ")
        [(port, peer, _)] = accepted(listener)
        assert (alice.address, home.address) == ("10.1.0.2", "203.0.113.101")
        assert (port, peer) == (7001, home.address)  # masqueraded


def test_nothing_unasked_gets_in_to_a_lan_host_nor_to_its_router() -> None:
    with internet() as net:
        dave = net.public_host("203.0.113.20")
        home = net.router()
        alice = home.host()
        # a neighbour on the ISP's segment may even route the LAN's addresses to the router
        dave.run("ip", "route", "add", home.network, "via", home.address)
        behind, on_router = listen(alice, 7001), listen(home, 7002)
        assert connect(dave, f"{alice.address}:7001", f"{home.address}:7002") == [
            "timeout",  # dropped, not refused
            "timeout",
        ]
        assert accepted(behind, wait=0) == accepted(on_router, wait=0) == []
        # what the LAN asked for does come back in
        assert connect(alice, "203.0.113.20:7003") == ["refused"]


def test_a_router_that_rejects_answers_the_unasked_with_a_reset() -> None:
    with internet() as net:
        dave = net.public_host("203.0.113.20")
        home = net.router(rejects=True)
        alice = home.host()
        dave.run("ip", "route", "add", home.network, "via", home.address)
        behind = listen(alice, 7001)
        assert connect(dave, f"{alice.address}:7001", f"{home.address}:7002") == [
            "refused",
            "refused",
        ]
        assert accepted(behind, wait=0) == []


def test_two_hosts_on_one_lan_reach_each_other_directly() -> None:
    with internet() as net:
        home = net.router()
        alice, bob = home.host(), home.host()
        listener = listen(alice, 7001)
        assert connect(bob, f"{alice.address}:7001", bind=40000) == ["connected 40000"]
        assert accepted(listener) == [(7001, "10.1.0.3", 40000)]  # no NAT between them


def test_a_host_behind_one_router_cannot_reach_one_behind_another() -> None:
    with internet() as net:
        alice = net.router().host()
        other = net.router()
        carol = other.host()
        assert carol.address == "10.2.0.2"
        listener = listen(carol, 7001)
        private, public = connect(alice, f"{carol.address}:7001", f"{other.address}:7001")
        assert not private.startswith("connected")  # no route to another's private LAN
        assert public == "timeout"  # and carol's router drops what she did not ask for
        assert accepted(listener, wait=0) == []


def test_the_bed_is_gone_afterwards_even_when_the_body_raises() -> None:
    def root_links() -> set[str]:
        lines = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True,
                               check=True).stdout.splitlines()  # fmt: skip
        return {line.split(":")[1].strip() for line in lines}

    def namespaces() -> str:
        return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                              check=True).stdout  # fmt: skip

    before = root_links()
    for failure in (RuntimeError, KeyboardInterrupt):
        with pytest.raises(failure), internet() as net:  # noqa: PT012
            net.public_host()
            net.router(symmetric=True).host()
            left_running = net.routers[0].hosts[0].popen("sleep", "60")
            made = list(net.namespaces)
            assert len(made) == 4
            assert all(name in namespaces() for name in made)
            raise failure("half-way")
        left_running.communicate(timeout=5)
        assert left_running.returncode == -9  # killed with its namespace
        assert not any(name in namespaces() for name in made)
        assert root_links() == before  # no veth left behind in the root namespace


def test_a_symmetric_router_maps_every_connection_to_another_outer_port() -> None:
    with internet() as net:
        dave = net.public_host("203.0.113.20")
        home = net.router()
        alice, bob = home.host(), home.host()
        symmetric = net.router(symmetric=True)
        carol = symmetric.host()
        ports = (7001, 7002, 7003)
        targets = [f"{dave.address}:{port}" for port in ports]

        # plain: the inner port kept on every connection while it is free ...
        listener = listen(dave, *ports, count=4)
        assert connect(alice, *targets, bind=40000) == ["connected 40000"] * 3
        # ... and another one for a second host's same inner port to the same peer
        assert connect(bob, targets[0], bind=40000) == ["connected 40000"]
        seen = accepted(listener)
        assert {peer for _, peer, _ in seen} == {home.address}
        outer = [port for _, _, port in seen]
        assert len(outer) == 4
        assert outer.count(40000) == 3, outer

        # symmetric: each connection from one inner port gets an outer port of its own
        listener = listen(dave, *ports, count=3)
        assert connect(carol, *targets, bind=40000) == ["connected 40000"] * 3
        seen = accepted(listener)
        assert {peer for _, peer, _ in seen} == {symmetric.address}
        assert len({port for _, _, port in seen}) > 1, seen


def punch(one: Host, one_router: Router, other: Host, other_router: Router) -> list[str]:
    """`one` at port 40001 and `other` at port 40002 connect to each other's router's
    address at the other's port, `other` once the SYN of `one` is out: what each saw."""
    wait = "3" if not other_router.symmetric else str(DROPPED)
    first = one.popen(sys.executable, "-I", "-S", "-c", PUNCH, "40001", other_router.address,
                      "40002", wait)  # fmt: skip
    assert first.stdout is not None
    assert first.stdout.readline() == "connecting\n"
    second = other.popen(sys.executable, "-I", "-S", "-c", PUNCH, "40002", one_router.address,
                         "40001", wait)  # fmt: skip
    return [process.communicate(timeout=10)[0].splitlines()[-1] for process in (first, second)]


def test_hosts_behind_two_port_keeping_routers_meet_by_a_simultaneous_open() -> None:
    # The SYN of the first is dropped by the other's router (nobody there asked for it);
    # the second's SYN then matches the first's outgoing connection in its router's
    # conntrack and comes in: both sockets, each in SYN-SENT, meet in one connection.
    with internet() as net:
        home, other = net.router(), net.router()
        alice, carol = home.host(), other.host()
        assert punch(alice, home, carol, other) == [
            f"connected {other.address} 40002 40002",
            f"connected {home.address} 40001 40001",
        ]
        # behind a symmetric NAT the other's SYN goes out from another port than the one
        # connected to: neither router lets the other's SYN in
        symmetric = net.router(symmetric=True)
        dave = symmetric.host()
        assert punch(alice, home, dave, symmetric) == ["failed TimeoutError"] * 2


async def test_a_user_behind_a_nat_gets_ready_on_a_server_on_the_internet(
    tmp_path: Path,
) -> None:
    with internet() as net:
        directory = net.public_host("203.0.113.10")
        alice = net.router().host()
        server = await ServerProcess.start(
            tmp_path / "server.sqlite3", inside=directory.inside, host=directory.address
        )
        user = None
        try:
            user = await UserProcess.start(
                server.address, "+5511999990001", tmp_path / "alice", "--listen", "0.0.0.0:0",
                "--server-key", server.fingerprint, inside=alice.inside,
            )  # fmt: skip
            assert user.ready["phone"] == "+5511999990001"
            assert await user.quit() == 0
        finally:
            if user is not None:
                await user.close()
            assert await server.stop() == 0
