"""Real `whatsap2p` processes on 127.0.0.1, driven the way a script would drive them."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import signal
import sys
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

WHATSAP2P = str(Path(sys.executable).parent / "whatsap2p")
TIMEOUT = 15.0
#: The longest line read from a module (a page of 1,000 history entries is a few
#: hundred KiB; asyncio's default, 64 KiB, would end the reader).
LINE_LIMIT = 16 * 1024 * 1024


class RpcError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


async def run(*args: str, stdin: bytes = b"", timeout: float = TIMEOUT) -> tuple[int, str, str]:
    """Run a whatsap2p command to completion: (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        WHATSAP2P,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def spawn_user(
    server: str, phone: str, data_dir: Path, *args: str, inside: tuple[str, ...] = ()
) -> asyncio.subprocess.Process:
    """`whatsap2p user` on 127.0.0.1 with a free port, all three standard streams piped;
    `inside`: the command it runs under (`ip netns exec NAME`)."""
    return await asyncio.create_subprocess_exec(
        *inside,
        WHATSAP2P,
        "user",
        server,
        "--phone",
        phone,
        "--data-dir",
        str(data_dir),
        "--listen",
        "127.0.0.1:0",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        limit=LINE_LIMIT,
    )


class ServerProcess:
    def __init__(
        self, proc: asyncio.subprocess.Process, port: int, fingerprint: str, db: Path
    ) -> None:
        self.proc = proc
        self.port = port
        self.address = f"127.0.0.1:{port}"
        self.fingerprint = fingerprint
        self.db = db

    @classmethod
    async def start(
        cls,
        db: Path,
        *args: str,
        port: int = 0,
        inside: tuple[str, ...] = (),
        host: str = "127.0.0.1",
    ) -> ServerProcess:
        """A server on `host` with its bindings in `db` (its key beside it, in `db`.key);
        `inside`: the command it runs under (`ip netns exec NAME`)."""
        proc = await asyncio.create_subprocess_exec(
            *inside,
            WHATSAP2P,
            "server",
            "--host",
            host,
            "--port",
            str(port),
            "--db",
            str(db),
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None
        first = (await asyncio.wait_for(proc.stdout.readline(), TIMEOUT)).decode()
        assert first.startswith("fingerprint "), first
        line = (await asyncio.wait_for(proc.stdout.readline(), TIMEOUT)).decode()
        assert line.startswith(f"listening on {host}:"), line
        server = cls(proc, int(line.rsplit(":", 1)[1]), first.split()[1], db)
        server.address = f"{host}:{server.port}"
        return server

    async def stop(self, signum: int = signal.SIGTERM) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(signum)
        return await asyncio.wait_for(self.proc.wait(), TIMEOUT)

    async def stderr(self) -> str:
        """All it wrote on stderr (once it has stopped)."""
        assert self.proc.stderr is not None
        return (await asyncio.wait_for(self.proc.stderr.read(), TIMEOUT)).decode()


class UserProcess:
    """A `whatsap2p user --json` process: requests out, responses and notifications in."""

    def __init__(self, proc: asyncio.subprocess.Process, phone: str, data_dir: Path) -> None:
        self.proc = proc
        self.phone = phone
        self.data_dir = data_dir
        self.ready: dict[str, Any] = {}
        self._ids = itertools.count(1)
        self._waiting: dict[object, asyncio.Future[Any]] = {}
        self.notifications: dict[str, asyncio.Queue[dict[str, Any]]] = defaultdict(asyncio.Queue)
        self.stdout_lines: list[str] = []
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(
        cls,
        server: str,
        phone: str,
        data_dir: Path,
        *args: str,
        wait_ready: bool = True,
        inside: tuple[str, ...] = (),
    ) -> UserProcess:
        proc = await spawn_user(server, phone, data_dir, "--json", *args, inside=inside)
        user = cls(proc, phone, data_dir)
        if wait_ready:
            user.ready = await user.notification("ready")
            assert user.ready["phone"] == phone
        return user

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            text = line.decode()
            self.stdout_lines.append(text)
            message = json.loads(text)  # anything but JSON on stdout fails the test here
            if isinstance(message, list) or "id" in message:
                key = "batch" if isinstance(message, list) else message["id"]
                future = self._waiting.pop(key, None)
                assert future is not None, f"unexpected response {text}"
                future.set_result(message)
            else:
                self.notifications[message["method"]].put_nowait(message["params"])

    def expect(self, key: object) -> asyncio.Future[Any]:
        """The response with id `key` ("batch" for a batch), once it arrives."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[key] = future
        return future

    def write(self, line: str | bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line if isinstance(line, bytes) else line.encode() + b"\n")

    async def response(self, request: dict[str, Any]) -> dict[str, Any]:
        """Send one request object and return the whole response object."""
        future = self.expect(request.get("id"))
        self.write(json.dumps(request))
        return await asyncio.wait_for(future, TIMEOUT)

    async def call(self, method: str, **params: Any) -> Any:
        request_id = next(self._ids)
        answer = await self.response(
            {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
        )
        assert answer["id"] == request_id
        if "error" in answer:
            raise RpcError(answer["error"]["code"], answer["error"]["message"])
        return answer["result"]

    async def notification(self, method: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        return await asyncio.wait_for(self.notifications[method].get(), timeout)

    async def quit(self) -> int:
        assert await self.call("quit") == {}
        return await self.wait()

    async def wait(self) -> int:
        code = await asyncio.wait_for(self.proc.wait(), TIMEOUT)
        await self._reader
        return code

    async def stderr(self) -> str:
        assert self.proc.stderr is not None
        return (await asyncio.wait_for(self.proc.stderr.read(), TIMEOUT)).decode()

    def kill(self) -> None:
        self.proc.kill()

    async def close(self) -> None:
        """Best-effort clean-up for a test that failed half-way."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader


class RelayProcess:
    """A `whatsap2p relay` process: where it listens, and its metrics if it serves them."""

    def __init__(
        self, proc: asyncio.subprocess.Process, host: str, port: int, metrics: str | None
    ) -> None:
        """`metrics`: where it serves them (HOST:PORT), if it does."""
        self.proc = proc
        self.host, self.port, self.metrics = host, port, metrics
        self.address = f"{host}:{port}"

    async def scrape(self, inside: tuple[str, ...] = ()) -> str:
        """Its metrics, read from `inside` (a namespace's `ip netns exec NAME`)."""
        url = f"http://{self.metrics}/metrics"
        read = f"import urllib.request as u; print(u.urlopen({url!r}, timeout=5).read().decode())"
        proc = await asyncio.create_subprocess_exec(
            *inside, sys.executable, "-c", read, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await asyncio.wait_for(proc.communicate(), TIMEOUT)
        assert proc.returncode == 0
        return out.decode()

    async def stop(self, signum: int = signal.SIGTERM) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(signum)
        return await asyncio.wait_for(self.proc.wait(), TIMEOUT)


@contextlib.asynccontextmanager
async def relay_process(
    *args: str,
    env: dict[str, str] | None = None,
    inside: tuple[str, ...] = (),
    host: str = "127.0.0.1",
    port: int = 0,
) -> AsyncIterator[RelayProcess]:
    """`whatsap2p relay` on `host`:`port` with `args` (its metrics on the same host
    with `--metrics-port`), stopped cleanly at the end unless the test killed it."""
    proc = await asyncio.create_subprocess_exec(
        *inside, WHATSAP2P, "relay", "--host", host, "--port", str(port), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stderr is not None
        metrics = None
        if "--metrics-port" in args:
            said = (await asyncio.wait_for(proc.stderr.readline(), TIMEOUT)).decode()
            found = re.fullmatch(r"metrics on http://([^/]*)/metrics\n", said)
            assert found, said
            metrics = found[1]
        line = (await asyncio.wait_for(proc.stdout.readline(), TIMEOUT)).decode()
        found = re.fullmatch(rf"listening on {re.escape(host)}:(\d+)\n", line)
        assert found, line
        relay = RelayProcess(proc, host, int(found[1]), metrics)
        yield relay
        if proc.returncode is None:
            assert await relay.stop() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
