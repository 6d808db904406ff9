"""A real `redis-server` on a free loopback port for the tests of the shared directory
(`make test` installs Debian's redis-server when it is missing)."""

from __future__ import annotations

import contextlib
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
def redis_sentinel(
    master_url: str, service: str = "mymaster", password: str | None = None
) -> Iterator[str]:
    """A Sentinel watching the Redis at `master_url` (which asks for `password`, as the
    sentinel then does too); yields the `sentinel://` URL (no password in it)."""
    with sentinel_process(master_url, service, password) as (url, _):
        yield url


@contextmanager
def sentinel_process(
    master_url: str, service: str = "mymaster", password: str | None = None
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`redis_sentinel`, yielding its process too (for a test that freezes it)."""
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
            if password is not None:
                out.write(f"requirepass {password}\nsentinel auth-pass {service} {password}\n")
        with _running([REDIS_SERVER, conf, "--sentinel"], port, "redis-sentinel") as proc:
            yield f"sentinel://127.0.0.1:{port}/{service}/0", proc


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


def _certificates(folder: str) -> tuple[str, str, str]:
    """A CA and a certificate for 127.0.0.1 it signed (files: CA, cert, key)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)

    def certificate(
        subject: str,
        key: ec.EllipticCurvePrivateKey,
        issuer: x509.Name,
        signer: ec.EllipticCurvePrivateKey,
        ca: bool,
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
        return builder.sign(signer, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = certificate("test CA", ca_key, ca_name, ca_key, ca=True)
    cert = certificate("127.0.0.1", key, ca_name, ca_key, ca=False)
    paths = (f"{folder}/ca.pem", f"{folder}/redis.pem", f"{folder}/redis.key")
    for path, data in zip(
        paths,
        (
            ca.public_bytes(serialization.Encoding.PEM),
            cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        ),
        strict=True,
    ):
        with open(path, "wb") as out:
            out.write(data)
    return paths


@contextmanager
def redis_tls(password: str) -> Iterator[tuple[str, str]]:
    """A redis-server speaking only TLS (a certificate for 127.0.0.1 from a CA made
    here) and asking for `password`; yields its `rediss://` URL (no password in it) and
    the CA file."""
    if REDIS_SERVER is None:
        raise RuntimeError("redis-server is not installed: run `make test`, which installs it")
    port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        ca, cert, key = _certificates(folder)
        command = [REDIS_SERVER, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1"]
        command += ["--tls-cert-file", cert, "--tls-key-file", key, "--tls-ca-cert-file", ca]
        command += ["--tls-auth-clients", "no", "--requirepass", password, "--save", ""]
        command += ["--appendonly", "no", "--dir", folder]
        with _running(command, port, "redis-server (TLS)"):
            yield f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}", ca


REDIS_CLI = shutil.which("redis-cli")


@contextmanager
def redis_cluster(
    masters: int = 3, replicas: int = 1
) -> Iterator[tuple[str, dict[int, subprocess.Popen[bytes]]]]:
    """A real Redis Cluster of `masters` masters with `replicas` replicas each, on free
    loopback ports (a node timeout of 1 s: a master killed is failed over in seconds);
    yields its `cluster://` URL (every node a seed) and its processes by port."""
    if REDIS_SERVER is None or REDIS_CLI is None:
        raise RuntimeError("redis-server is not installed: run `make test`, which installs it")
    ports = [free_port() for _ in range(masters * (1 + replicas))]
    with tempfile.TemporaryDirectory() as folder, contextlib.ExitStack() as stack:
        procs: dict[int, subprocess.Popen[bytes]] = {}
        for port in ports:
            command = [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
            command += ["--appendonly", "no", "--dir", folder, "--cluster-enabled", "yes"]
            command += ["--cluster-config-file", f"nodes-{port}.conf"]
            command += ["--cluster-port", str(free_port())]  # (not port + 10000: past 65535)
            command += ["--cluster-node-timeout", "1000", "--notify-keyspace-events", "Ex"]
            procs[port] = stack.enter_context(_running(command, port, "redis-server (cluster)"))
        nodes = [f"127.0.0.1:{port}" for port in ports]
        create = [REDIS_CLI, "--cluster", "create", *nodes, "--cluster-yes"]
        created = subprocess.run(
            [*create, "--cluster-replicas", str(replicas)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {created.stdout}")
        wait_cluster_ok(ports)
        _wait_replicas_synced(ports)
        yield "cluster://" + ",".join(nodes), procs


def _wait_replicas_synced(ports: list[int], timeout: float = 30) -> None:
    """Until every replica among `ports` has its link to its master up (its first sync
    done: a WAIT for it answers)."""
    import redis

    deadline = time.monotonic() + timeout
    for port in ports:
        client = redis.Redis(port=port)
        try:
            while True:  # (a foreign process's state: nothing to wait on but its answers)
                info = client.info("replication")
                if info["role"] != "slave" or info.get("master_link_status") == "up":
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the replica at {port} did not sync in {timeout} s")
                time.sleep(0.05)
        finally:
            client.close()


def wait_cluster_ok(ports: list[int], timeout: float = 30) -> None:
    """Until every node in `ports` that answers says the cluster is ok (a foreign
    process's state: nothing to wait on but its answers)."""
    import redis

    deadline = time.monotonic() + timeout
    for port in ports:
        client = redis.Redis(port=port)
        try:
            while True:
                try:
                    info = client.execute_command("CLUSTER", "INFO")  # type: ignore[no-untyped-call]
                    if b"cluster_state:ok" in info:
                        break
                except redis.ConnectionError:
                    break  # (a node that was killed)
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the cluster is not ok at {port} in {timeout} s")
                time.sleep(0.05)
        finally:
            client.close()


def wait_failed_over(ports: list[int], victim: int, timeout: float = 30) -> None:
    """Until the cluster (asked at a live node of `ports`) names another master for
    every slot the killed `victim` had, and is ok again."""
    import redis

    client = redis.Redis(port=next(p for p in ports if p != victim))
    deadline = time.monotonic() + timeout
    try:
        while any(  # a foreign process's state: nothing to wait on but its answers
            int(r[2][1]) == victim
            for r in client.execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
        ):
            if time.monotonic() > deadline:
                raise RuntimeError(f"no failover of {victim} in {timeout} s")
            time.sleep(0.05)
    finally:
        client.close()
    wait_cluster_ok([p for p in ports if p != victim])
