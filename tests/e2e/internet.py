"""A small internet of network namespaces for the tests, made by this test run and always
removed: "the internet" is a bridge on 203.0.113.0/24 (a documentation range) in a
namespace of its own; public hosts sit on it, and home routers sit on it with their WAN
side and NAT (MASQUERADE) their LAN (10.N.0.0/24) behind a firewall that drops whatever
nobody inside asked for. Addresses only inside these namespaces; no traffic leaves the
machine, and the machine's own namespace gets no interface.

    with internet() as net:
        directory = net.public_host("203.0.113.10")
        home = net.router()                 # WAN 203.0.113.101, LAN 10.1.0.0/24
        alice, bob = home.host(), home.host()   # 10.1.0.2, 10.1.0.3
        carol = net.router(symmetric=True).host()   # 10.2.0.2, behind another NAT
        ServerProcess.start(..., inside=directory.inside)
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

__all__ = ["PUBLIC_NETWORK", "Host", "Internet", "Router", "cannot_make_internet", "internet"]

PUBLIC_NETWORK = "203.0.113.0/24"
_PUBLIC_PREFIX = "203.0.113."
_FIRST_ROUTER = 101  # the routers' WAN addresses: 203.0.113.101, .102, ...
_FIRST_PUBLIC = 10  # public hosts given no address: 203.0.113.10, .11, ...
_TIMEOUT = 30


def _run(*command: str, stdin: str | None = None) -> None:
    try:
        subprocess.run(command, check=True, capture_output=True, text=True, input=stdin,
                       timeout=_TIMEOUT)  # fmt: skip
    except subprocess.CalledProcessError as error:
        raise RuntimeError(f"{' '.join(command)}: {error.stderr.strip()}") from error


def cannot_make_internet() -> str | None:
    """Why this machine cannot build an internet of namespaces (None: it can)."""
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs as root)"
    for tool, package in (("ip", "iproute2"), ("iptables", "iptables"),
                          ("iptables-restore", "iptables")):  # fmt: skip
        if shutil.which(tool) is None:
            return f"{tool} is missing ({package})"
    return None


@dataclass(frozen=True)
class Host:
    """A namespace with one address: `inside` runs a program in it (`ip netns exec NAME`),
    as ServerProcess.start / UserProcess.start take it."""

    name: str
    address: str

    @property
    def inside(self) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.name)

    def command(self, *argv: str) -> list[str]:
        """`argv` run inside this host."""
        return [*self.inside, *argv]

    def run(
        self, *argv: str, timeout: float = _TIMEOUT, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` inside this host to completion, its output captured as text."""
        return subprocess.run(self.command(*argv), check=check, capture_output=True,
                              text=True, timeout=timeout)  # fmt: skip

    def popen(self, *argv: str) -> subprocess.Popen[str]:
        """Start `argv` inside this host, stdout piped as text (stderr too)."""
        return subprocess.Popen(self.command(*argv), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip


@dataclass(frozen=True)
class Router(Host):
    """A home router: `address` its WAN address on the internet, `lan_address` its own on
    the LAN `network`; `host()` adds a computer to that LAN."""

    lan_address: str = ""
    network: str = ""
    symmetric: bool = False
    rejects: bool = False
    _internet: Internet | None = field(default=None, repr=False, compare=False)
    _hosts: list[Host] = field(default_factory=list, repr=False, compare=False)

    @property
    def hosts(self) -> tuple[Host, ...]:
        return tuple(self._hosts)

    def host(self) -> Host:
        """A computer on this router's LAN (10.N.0.2, .3, ...), its default route via the
        router."""
        assert self._internet is not None
        last = len(self._hosts) + 2
        if last > 254:
            raise ValueError(f"{self.name}: the LAN is full")
        address = self.lan_address.rsplit(".", 1)[0] + f".{last}"
        host = self._internet._lan_host(self, address, port=f"h{last}")
        self._hosts.append(host)
        return host


class Internet:
    """The namespaces of one run, named `wa-test-HEX-...`; build them with public_host()
    and router(), inside `internet()`, which removes them all."""

    def __init__(self) -> None:
        self.prefix = f"wa-test-{secrets.token_hex(4)}"
        self.namespaces: list[str] = []  # every namespace asked for, created or not
        self.public_hosts: list[Host] = []
        self.routers: list[Router] = []
        self._taken: set[str] = set()
        self._count = 0
        self.core = ""  # the internet's own namespace, with its bridge br0

    def _start(self) -> None:
        self.core = self._namespace("net")
        _run("ip", "-n", self.core, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", self.core, "link", "set", "br0", "up")

    def _namespace(self, kind: str) -> str:
        self._count += 1
        name = f"{self.prefix}-{kind}{self._count}"
        self.namespaces.append(name)  # before it exists: an interrupt still removes it
        _run("ip", "netns", "add", name)
        _run("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def _cable(self, name: str, inner: str, outer_namespace: str, outer: str) -> None:
        """A veth from `inner` in `name` to `outer` in `outer_namespace`, both up."""
        _run("ip", "-n", name, "link", "add", inner, "type", "veth",
             "peer", "name", outer, "netns", outer_namespace)  # fmt: skip
        _run("ip", "-n", name, "link", "set", inner, "up")
        _run("ip", "-n", outer_namespace, "link", "set", outer, "up")

    def _plug(self, name: str, inner: str, port: str) -> None:
        """A veth from `inner` in `name` to a port of the internet's bridge."""
        self._cable(name, inner, self.core, port)
        _run("ip", "-n", self.core, "link", "set", port, "master", "br0")

    def _public_address(self, address: str | None) -> str:
        if address is None:
            last = _FIRST_PUBLIC
            while f"{_PUBLIC_PREFIX}{last}" in self._taken:
                last += 1
            address = f"{_PUBLIC_PREFIX}{last}"
        if not address.startswith(_PUBLIC_PREFIX) or address in self._taken:
            raise ValueError(f"{address}: not a free address of {PUBLIC_NETWORK}")
        last = int(address.rsplit(".", 1)[1])
        if not 1 <= last <= 254:
            raise ValueError(f"{address}: not a host of {PUBLIC_NETWORK}")
        self._taken.add(address)
        return address

    def public_host(self, address: str | None = None) -> Host:
        """A host on the internet itself with a public address (203.0.113.10, .11, ...
        when none is given), its eth0 on the bridge."""
        address = self._public_address(address)
        name = self._namespace("pub")
        self._plug(name, "eth0", f"p{len(self.public_hosts) + 1}")
        _run("ip", "-n", name, "addr", "add", f"{address}/24", "dev", "eth0")
        host = Host(name, address)
        self.public_hosts.append(host)
        return host

    def router(self, symmetric: bool = False, rejects: bool = False) -> Router:
        """A home router, the Nth one: its `wan` on the internet (203.0.113.(100+N)), its
        `lan` a bridge on 10.N.0.0/24 (itself 10.N.0.1), forwarding, masquerading the LAN
        behind its WAN address (`symmetric`: --random-fully, every connection another outer
        port) and dropping whatever nobody inside asked for, forwarded or addressed to it
        (`rejects`: unsolicited TCP answered with a reset instead)."""
        n = len(self.routers) + 1
        wan = self._public_address(f"{_PUBLIC_PREFIX}{_FIRST_ROUTER + n - 1}")
        name = self._namespace("rtr")
        self._plug(name, "wan", f"r{n}")
        _run("ip", "-n", name, "addr", "add", f"{wan}/24", "dev", "wan")
        _run("ip", "-n", name, "link", "add", "lan", "type", "bridge")
        _run("ip", "-n", name, "link", "set", "lan", "up")
        _run("ip", "-n", name, "addr", "add", f"10.{n}.0.1/24", "dev", "lan")
        _run("ip", "netns", "exec", name, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward")
        _run("ip", "netns", "exec", name, "iptables-restore",
             stdin=_router_rules(symmetric, rejects))  # fmt: skip
        router = Router(name, wan, f"10.{n}.0.1", f"10.{n}.0.0/24", symmetric, rejects, self)
        self.routers.append(router)
        return router

    def _lan_host(self, router: Router, address: str, port: str) -> Host:
        name = self._namespace("lan")
        self._cable(name, "eth0", router.name, port)
        _run("ip", "-n", router.name, "link", "set", port, "master", "lan")
        _run("ip", "-n", name, "addr", "add", f"{address}/24", "dev", "eth0")
        _run("ip", "-n", name, "route", "add", "default", "via", router.lan_address)
        return Host(name, address)

    def remove(self) -> None:
        """Every namespace gone (and with them their interfaces), the programs still
        running in them killed first; an interrupt half-way does not stop the rest."""
        interrupted: BaseException | None = None
        for name in reversed(self.namespaces):
            try:
                _remove_namespace(name)
            except BaseException as error:  # (KeyboardInterrupt too) go on with the rest
                interrupted = interrupted or error
        self.namespaces.clear()
        if interrupted is not None:
            raise interrupted


def _remove_namespace(name: str) -> None:
    pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True,
                          timeout=_TIMEOUT).stdout.split()  # fmt: skip
    for pid in pids:  # programs a test started in this namespace and left running
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=_TIMEOUT)


def _router_rules(symmetric: bool, rejects: bool) -> str:
    """A home router's iptables: NAT of the LAN behind the WAN address; a firewall that
    lets out what the LAN sends, in only its answers (conntrack), and drops the rest."""
    masquerade = "-A POSTROUTING -o wan -j MASQUERADE" + (" --random-fully" if symmetric else "")
    reset = "-p tcp -j REJECT --reject-with tcp-reset"
    lines = [
        "*nat", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
        ":POSTROUTING ACCEPT [0:0]", masquerade, "COMMIT",
        "*filter", ":INPUT DROP [0:0]", ":FORWARD DROP [0:0]", ":OUTPUT ACCEPT [0:0]",
        "-A INPUT -i lo -j ACCEPT",
        "-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
        "-A INPUT -i lan -j ACCEPT",
        "-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
        "-A FORWARD -i lan -o wan -j ACCEPT",
        # the LAN's own traffic crosses its bridge, and br_netfilter (when loaded) shows
        # bridged packets to iptables as forwarded from lan to lan
        "-A FORWARD -i lan -o lan -j ACCEPT",
        *([f"-A INPUT -i wan {reset}", f"-A FORWARD -i wan {reset}"] if rejects else []),
        "COMMIT",
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


@contextmanager
def internet() -> Iterator[Internet]:
    """An empty internet (its bridge only) to add hosts and routers to; every namespace it
    made is removed afterwards, whatever happens, also when building one fails half-way."""
    net = Internet()
    try:
        net._start()
        yield net
    finally:
        net.remove()
