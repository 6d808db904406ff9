"""Small internets for the tests: network namespaces this test run makes and always
removes. Addresses only inside them; no traffic leaves the machine."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["cannot_make_namespaces", "namespace"]


def _run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True, timeout=30)


def cannot_make_namespaces() -> str | None:
    """Why this machine cannot give a test a namespace (None: it can)."""
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs as root)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"{tool} is missing (iproute2)"
    return None


@contextmanager
def namespace(rate: str | None = None) -> Iterator[tuple[str, ...]]:
    """A namespace with only its loopback, up; with `rate` (tc's words: "8mbit"), that
    loopback shaped by a token bucket filter. Yields the command that runs a program
    inside it (`ip netns exec NAME`); removed afterwards, whatever happens."""
    name = f"wa-test-{secrets.token_hex(4)}"
    _run("ip", "netns", "add", name)
    try:
        _run("ip", "-n", name, "link", "set", "lo", "up")
        if rate is not None:
            # an Ethernet's MTU: a token bucket never lets through a packet larger than
            # its burst, and loopback's own MTU is 64 KiB
            _run("ip", "-n", name, "link", "set", "lo", "mtu", "1500")
            _run("ip", "netns", "exec", name, "tc", "qdisc", "add", "dev", "lo", "root",
                 "tbf", "rate", rate, "burst", "32kbit", "latency", "400ms")  # fmt: skip
        yield ("ip", "netns", "exec", name)
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
