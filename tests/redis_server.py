"""A real `redis-server` on a free loopback port for the tests of the shared directory
(`make test` installs Debian's redis-server when it is missing)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

REDIS_SERVER = shutil.which("redis-server")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def _running(command: list[str], port: int, what: str) -> Iterator[subprocess.Popen[bytes]]:
    """`command` running until the block ends, once something listens on `port`."""
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:  # a foreign process: no event to wait for but its port
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{what} did not start") from None
                time.sleep(0.01)
        yield proc
    finally:
        proc.terminate()
        proc.wait()


@contextmanager
def redis_sentinel(master_url: str, service: str = "mymaster") -> Iterator[str]:
    """A Sentinel watching the Redis at `master_url`; yields the `sentinel://` URL."""
    assert REDIS_SERVER is not None
    master_port = int(master_url.rsplit(":", 1)[1].split("/")[0])
    port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        conf = f"{folder}/sentinel.conf"  # sentinel rewrites its own configuration
        with open(conf, "w") as out:
            out.write(
                f"port {port}\nbind 127.0.0.1\ndir {folder}\n"
                f"sentinel monitor {service} 127.0.0.1 {master_port} 1\n"
                f"sentinel down-after-milliseconds {service} 1000\n"
                f"sentinel failover-timeout {service} 10000\n"
            )
        with _running([REDIS_SERVER, conf, "--sentinel"], port, "redis-sentinel"):
            yield f"sentinel://127.0.0.1:{port}/{service}/0"


@contextmanager
def redis_server() -> Iterator[str]:
    """Start redis-server (nothing saved to disk, expiry events published); yields its
    URL. Fails clearly when redis-server is not installed."""
    with redis_process() as (url, _):
        yield url


@contextmanager
def redis_process(*args: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`redis_server` with more arguments (`--replicaof HOST PORT`), yielding the process
    too (for a test that kills it)."""
    if REDIS_SERVER is None:
        raise RuntimeError("redis-server is not installed: run `make test`, which installs it")
    port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        command = [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        command += ["--appendonly", "no", "--dir", folder, "--notify-keyspace-events", "Ex"]
        with _running([*command, *args], port, "redis-server") as proc:
            yield f"redis://127.0.0.1:{port}/0", proc


@contextmanager
def redis_inside(inside: tuple[str, ...], host: str, port: int = 6379) -> Iterator[str]:
    """`redis_server` on `host`:`port` in a network namespace (`inside`: the command that
    runs a program there, `ip netns exec NAME`), where no probe from this process reaches:
    ready once it says so. Yields its URL."""
    if REDIS_SERVER is None:
        raise RuntimeError("redis-server is not installed: run `make test`, which installs it")
    with tempfile.TemporaryDirectory() as folder:
        command = [*inside, REDIS_SERVER, "--port", str(port), "--bind", host, "--save", ""]
        # (protected mode takes connections from loopback only; this is the test's own net)
        command += ["--appendonly", "no", "--dir", folder, "--protected-mode", "no"]
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        try:
            for line in proc.stdout:  # its log, until it is ready (or gone: it failed)
                if "ready to accept connections" in line.lower():
                    break
            else:
                raise RuntimeError(f"redis-server did not start on {host}:{port}")
            yield f"redis://{host}:{port}/0"
        finally:
            proc.terminate()
            proc.wait()
            proc.stdout.close()
