"""`whatsap2p loadgen`: an operator's load generator for a directory server.

It plays N user modules with the real protocol (connect, Noise handshake, register,
heartbeat), holds them online, then runs M lookups from C concurrent clients and
reports throughput and latency, in the spirit of redis-benchmark. Its connections are
spread over several worker processes so that the generator is not the bottleneck;
they take their orders from the parent over a pipe, phase by phase, so the figures of
every phase cover all the workers at once.

The simulated users are `net.simulated`'s: the module's protocol driven from callbacks,
cheap enough that the generator costs less than the server it measures.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import hashlib
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import random
import signal
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

import uvloop

from whatsap2p.config import Limits, Timeouts
from whatsap2p.errors import ServerUnreachable, WhatsAp2pError
from whatsap2p.net.deadlines import Deadlines
from whatsap2p.net.network import TcpNetwork
from whatsap2p.net.simulated import HEARTBEAT_SLACK, SimulatedUser, connect_simulated
from whatsap2p.protocol.keys import StaticKey

__all__ = ["LoadResult", "key_of", "phone_of", "run_loadgen"]

#: Handshakes one worker runs at once (the server caps unauthenticated connections per IP).
_CONNECTING = 32
#: Tries to bring one user online, and the first pause between them (it grows).
_ATTEMPTS, _RETRY_PAUSE = 5, 0.5
#: Where the simulated users say they listen (nobody connects to them).
_FAKE_PORT = 9


def phone_of(index: int) -> str:
    """The number of simulated user `index` (São Paulo mobiles, +55 11 99...)."""
    return f"+551199{index:07d}"


def key_of(seed: str, index: int) -> StaticKey:
    """Simulated user `index`'s key, derived from `seed`: a server keeps numbers bound to
    keys, so the same numbers can come back (another run, another server) only with the
    same keys. Test identities, never anyone's real one."""
    return StaticKey.from_private(
        hashlib.sha256(f"whatsap2p-loadgen {seed} {index}".encode()).digest()
    )


@dataclass
class LoadResult:
    users_online: int = 0
    register_per_s: float = 0.0
    lookups_per_s: float = 0.0
    lookup_p50_ms: float = 0.0
    lookup_p99_ms: float = 0.0
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    #: Connections tried again while registering (not errors: they came online after).
    retried: int = 0

    def as_json(self) -> dict[str, object]:
        return {
            "users_online": self.users_online,
            "register_per_s": round(self.register_per_s, 1),
            "lookups_per_s": round(self.lookups_per_s, 1),
            "lookup_p50_ms": round(self.lookup_p50_ms, 3),
            "lookup_p99_ms": round(self.lookup_p99_ms, 3),
            "errors": self.errors,
        }

    def table(self) -> str:
        rows = [
            ("users online", f"{self.users_online:,}"),
            ("registrations/s", f"{self.register_per_s:,.0f}"),
            ("lookups/s", f"{self.lookups_per_s:,.0f}"),
            ("lookup p50", f"{self.lookup_p50_ms:.3f} ms"),
            ("lookup p99", f"{self.lookup_p99_ms:.3f} ms"),
            ("errors", f"{self.errors:,}"),
        ]
        rows += [(f"  {kind}", f"{count:,}") for kind, count in sorted(self.error_kinds.items())]
        rows.append(("registrations tried again", f"{self.retried:,}"))
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def run_loadgen(
    servers: list[tuple[str, int]],
    users: int,
    lookups: int,
    concurrency: int,
    *,
    workers: int | None = None,
    server_fingerprint: str | None = None,
    seed: str = "loadgen",
    hold: float = 0.0,
    progress: TextIO | None = None,
    report: Callable[[LoadResult], None] | None = None,
    first: int = 0,
    population: int | None = None,
) -> LoadResult:
    """Run the whole load; blocking. The result goes to `report` as soon as it is known;
    with `hold`, the users then stay online (heartbeating) that many seconds more.

    The simulated users are numbers `first` to `first + users - 1`; lookups ask for
    numbers among the first `population` (default: up to ours), so several loadgens can
    share a deployment: one holding many users, others looking them up."""
    population = population if population is not None else first + users
    count = max(1, min(workers or os.cpu_count() or 1, users or 1))
    context = multiprocessing.get_context("spawn")
    pipes: list[multiprocessing.connection.Connection] = []
    procs = []
    share = [users // count + (1 if i < users % count else 0) for i in range(count)]
    for worker in range(count):
        parent, child = context.Pipe()
        proc = context.Process(
            target=_worker_main,
            args=(child, _Share(servers, first, share[worker], server_fingerprint, seed)),
            name=f"loadgen-{worker}",
            daemon=True,
        )
        proc.start()
        child.close()
        pipes.append(parent)
        procs.append(proc)
        first += share[worker]
    result = LoadResult()
    try:
        registered = [pipe.recv() for pipe in pipes]
        _merge_errors(result, registered)
        result.users_online = sum(r["online"] for r in registered)
        result.retried = sum(r["retried"] for r in registered)
        spans = [r for r in registered if r["online"]]
        if spans:
            took = max(r["end"] for r in spans) - min(r["start"] for r in spans)
            result.register_per_s = result.users_online / took if took > 0 else 0.0
        if progress is not None:
            print(f"{result.users_online:,} users online", file=progress, flush=True)
        if lookups and result.users_online:
            clients = [
                concurrency // count + (1 if i < concurrency % count else 0) for i in range(count)
            ]
            asks = [lookups * c // max(1, concurrency) for c in clients]
            asks[0] += lookups - sum(asks)
            for pipe, c, n in zip(pipes, clients, asks, strict=True):
                pipe.send(("lookup", c, n, population))
            looked = [pipe.recv() for pipe in pipes]
            _merge_errors(result, looked)
            latencies = array.array("d")
            for answer in looked:
                latencies.frombytes(answer["latencies"])
            busy = [r for r in looked if r["done"]]
            if busy:
                took = max(r["end"] for r in busy) - min(r["start"] for r in busy)
                done = sum(r["done"] for r in busy)
                result.lookups_per_s = done / took if took > 0 else 0.0
            if len(latencies) == 1:  # quantiles need two: one lookup is all its percentiles
                result.lookup_p50_ms = result.lookup_p99_ms = latencies[0] * 1e3
            elif latencies:
                cuts = statistics.quantiles(latencies, n=100, method="inclusive")
                result.lookup_p50_ms = statistics.median(latencies) * 1e3
                result.lookup_p99_ms = cuts[98] * 1e3
        if report is not None:
            report(result)
        if hold > 0:
            with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C or SIGTERM: hold no longer
                time.sleep(hold)
    finally:
        for pipe in pipes:  # a worker Ctrl-C reached too has already gone
            with contextlib.suppress(OSError):
                pipe.send(("stop",))
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
    return result


def _merge_errors(result: LoadResult, answers: list[dict[str, object]]) -> None:
    for answer in answers:
        kinds = answer["errors"]
        assert isinstance(kinds, dict)
        for kind, n in kinds.items():
            result.error_kinds[kind] = result.error_kinds.get(kind, 0) + n
            result.errors += n


@dataclass(frozen=True)
class _Share:
    """What one worker process plays: users `first` to `first + count - 1`."""

    servers: list[tuple[str, int]]
    first: int
    count: int
    server_fingerprint: str | None
    seed: str
    #: Heartbeats at the default interval keep the users online for as long as we hold.
    timeouts: Timeouts = field(default_factory=Timeouts)


def _worker_main(pipe: multiprocessing.connection.Connection, share: _Share) -> None:
    # One line per lost heartbeat of thousands of users helps nobody: the report counts.
    logging.getLogger("whatsap2p").setLevel(logging.ERROR)
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(_Worker(pipe, share).run())


class _Worker:
    def __init__(self, pipe: multiprocessing.connection.Connection, share: _Share) -> None:
        self._share = share
        self._pipe = pipe
        self._clients: dict[int, SimulatedUser] = {}  # user index -> its connection
        self._errors: Counter[str] = Counter()  # error kind -> how many
        self._retried = 0  # connections tried again (unreachable, or no answer in time)
        self._stopping = False
        self._gate = asyncio.Semaphore(_CONNECTING)
        self._again: set[asyncio.Task[None]] = set()
        self._limits = Limits()
        #: The users' deadlines (their heartbeats, mostly), on one loop timer.
        self._deadlines = Deadlines(HEARTBEAT_SLACK)
        self._network = TcpNetwork()

    def _error(self, exc: BaseException) -> None:
        self._errors[type(exc).__name__] += 1

    async def _order(self) -> tuple[object, ...]:
        order: tuple[object, ...] = await asyncio.to_thread(self._pipe.recv)
        return order

    async def run(self) -> None:
        start = time.monotonic()
        await asyncio.gather(
            *(self._register(self._share.first + i) for i in range(self._share.count))
        )
        self._pipe.send(
            {
                "online": len(self._clients),
                "start": start,
                "end": time.monotonic(),
                "errors": self._take_errors(),
                "retried": self._retried,
            }
        )
        try:
            while True:
                order = await self._order()
                if order[0] == "lookup":
                    _, concurrency, lookups, population = order
                    assert isinstance(concurrency, int)
                    assert isinstance(lookups, int)
                    assert isinstance(population, int)
                    self._pipe.send(await self._lookups(concurrency, lookups, population))
                else:
                    return
        finally:
            self._stopping = True
            for task in self._again:
                task.cancel()
            await asyncio.gather(*self._again, return_exceptions=True)
            for client in [*self._clients.values()]:
                client.close()
            self._deadlines.close()

    def _take_errors(self) -> dict[str, int]:
        errors, self._errors = self._errors, Counter()
        return dict(errors)

    async def _register(self, index: int) -> None:
        """Bring user `index` online. As a user module does, a server that cannot be
        reached or does not answer in time is tried again after a pause (the pauses
        grow, with jitter, so a crowd does not come back at once), on the next server of
        the list if there are several; a refusal is final."""
        for attempt in range(1, _ATTEMPTS + 1):
            async with self._gate:
                try:
                    client = await self._connect(index, attempt)
                except ServerUnreachable as exc:
                    if attempt == _ATTEMPTS:
                        self._error(exc)
                        return
                    self._retried += 1
                except (WhatsAp2pError, OSError) as exc:
                    self._error(exc)
                    return
                else:
                    self._clients[index] = client
                    client.on_lost = lambda: self._dropped(index)
                    return
            await asyncio.sleep(_RETRY_PAUSE * attempt * random.uniform(0.5, 1.5))

    async def _connect(self, index: int, attempt: int) -> SimulatedUser:
        """User `index` connected, its secure channel up and its number registered."""
        servers = self._share.servers
        host, port = servers[(index + attempt - 1) % len(servers)]
        return await connect_simulated(
            self._network,
            host,
            port,
            key_of(self._share.seed, index),
            phone_of(index),
            _FAKE_PORT,
            server_fingerprint=self._share.server_fingerprint,
            limits=self._limits,
            timeouts=self._share.timeouts,
            deadlines=self._deadlines,
        )

    def _dropped(self, index: int) -> None:
        """User `index` lost its connection (a heartbeat went unanswered, or the server
        closed it): held users are registered again, as their module would."""
        self._clients.pop(index, None)
        if self._stopping:
            return
        task = asyncio.get_running_loop().create_task(self._register(index))
        self._again.add(task)
        task.add_done_callback(self._again.discard)

    async def _lookups(self, concurrency: int, lookups: int, population: int) -> dict[str, object]:
        latencies = array.array("d")
        clients = [*self._clients.values()][: max(1, concurrency)]
        if not clients or not lookups:
            return {
                "latencies": b"",
                "done": 0,
                "start": 0.0,
                "end": 0.0,
                "errors": self._take_errors(),
            }
        shares = [
            lookups // len(clients) + (1 if i < lookups % len(clients) else 0)
            for i in range(len(clients))
        ]
        rng = random.Random(self._share.first)
        # The numbers are drawn before the clock starts: drawing each as it is sent (the
        # random module and phone_of() are Python) would cost the generator per lookup.
        numbers = [phone_of(rng.randrange(population)) for _ in range(sum(shares))]
        pick = iter(numbers).__next__
        start = time.monotonic()
        await asyncio.gather(
            *(
                client.look_up(n, pick, latencies, self._errors)
                for client, n in zip(clients, shares, strict=True)
            )
        )
        return {
            "latencies": latencies.tobytes(),
            "done": len(latencies),
            "start": start,
            "end": time.monotonic(),
            "errors": self._take_errors(),
        }


def main_loadgen(
    servers: list[tuple[str, int]],
    users: int,
    lookups: int,
    concurrency: int,
    *,
    as_json: bool,
    workers: int | None,
    server_fingerprint: str | None,
    seed: str,
    hold: float,
    first: int = 0,
    population: int | None = None,
) -> int:
    # SIGTERM as Ctrl-C: a hold ends early, and the users go offline cleanly either way.
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    def report(result: LoadResult) -> None:
        if as_json:  # the JSON's keys are fixed: what they do not say goes to stderr
            kinds = json.dumps(result.error_kinds, sort_keys=True)
            print(f"errors by kind: {kinds}; registrations tried again: {result.retried}",
                  file=sys.stderr, flush=True)  # fmt: skip
            print(json.dumps(result.as_json()), flush=True)
        else:
            print(result.table(), flush=True)

    result = run_loadgen(
        servers,
        users,
        lookups,
        concurrency,
        workers=workers,
        server_fingerprint=server_fingerprint,
        seed=seed,
        hold=hold,
        progress=None if as_json else sys.stderr,
        report=report,
        first=first,
        population=population,
    )
    return 0 if result.users_online == users and not result.errors else 1
