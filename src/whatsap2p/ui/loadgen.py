"""`whatsap2p loadgen`: an operator's load generator for a directory server.

It plays N user modules with the real protocol (connect, Noise handshake, register,
heartbeat), holds them online, then runs M lookups from C concurrent clients and
reports throughput and latency, in the spirit of redis-benchmark. Its connections are
spread over several worker processes so that the generator is not the bottleneck;
they take their orders from the parent over a pipe, phase by phase, so the figures of
every phase cover all the workers at once.

A simulated user is the user module's protocol (the same sans-IO connection and Noise
channel) driven straight from its transport's callbacks, as redis-benchmark drives its
own: no task, no streams and no future per request, so the generator costs less than
the server it measures.
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
import statistics
import sys
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

import uvloop

from whatsap2p.config import Limits, Timeouts
from whatsap2p.errors import (
    ProtocolError,
    RemoteKeyMismatch,
    ServerKeyMismatch,
    ServerUnreachable,
    WhatsAp2pError,
)
from whatsap2p.net.directory_client import refusal
from whatsap2p.protocol import events as ev
from whatsap2p.protocol.directory import DirectoryClientConnection
from whatsap2p.protocol.keys import StaticKey, fingerprint
from whatsap2p.protocol.noise import COMPACT, NoiseChannel

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
            time.sleep(hold)
        for pipe in pipes:
            pipe.send(("stop",))
    finally:
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
        self._clients: dict[int, _SimUser] = {}  # user index -> its connection
        self._errors: dict[str, int] = {}
        self._retried = 0  # connections tried again (unreachable, or no answer in time)
        self._stopping = False
        self._gate = asyncio.Semaphore(_CONNECTING)
        self._again: set[asyncio.Task[None]] = set()
        self._timeouts = share.timeouts
        self._limits = Limits()

    def _error(self, exc: BaseException) -> None:
        kind = type(exc).__name__
        self._errors[kind] = self._errors.get(kind, 0) + 1

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

    def _take_errors(self) -> dict[str, int]:
        errors, self._errors = self._errors, {}
        return errors

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

    async def _connect(self, index: int, attempt: int) -> _SimUser:
        """User `index` connected, its secure channel up and its number registered."""
        servers = self._share.servers
        host, port = servers[(index + attempt - 1) % len(servers)]
        where = f"{host}:{port}"
        expected = self._share.server_fingerprint
        channel = NoiseChannel(
            key_of(self._share.seed, index),
            initiator=True,
            suite=COMPACT,
            max_body=self._limits.max_directory_frame,
            expected_fingerprint=expected,
        )
        conn = DirectoryClientConnection(self._limits, channel)
        timeouts = self._timeouts
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeouts.connect):
                _, user = await loop.create_connection(lambda: _SimUser(conn, timeouts), host, port)
        except (OSError, TimeoutError) as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
            raise ServerUnreachable(f"cannot reach the server at {where}: {reason}") from exc
        try:
            try:
                async with asyncio.timeout(timeouts.handshake):
                    await user.established
            except RemoteKeyMismatch as exc:
                raise ServerKeyMismatch(
                    f"the server at {where} has key {fingerprint(exc.remote_key)}, "
                    f"not the expected {expected}: refusing it"
                ) from exc
            except (OSError, TimeoutError, ProtocolError) as exc:
                raise ServerUnreachable(
                    f"no secure connection to the server at {where}: {str(exc) or 'timed out'}"
                ) from exc
            register = ev.Register(conn.next_rid(), phone_of(index), _FAKE_PORT, None)
            try:
                async with asyncio.timeout(timeouts.server_reply):
                    answer = await user.request(register)
            except (OSError, TimeoutError, ProtocolError) as exc:
                raise ServerUnreachable(f"no answer to register: {exc or 'timed out'}") from exc
            if isinstance(answer, ev.Failure):
                raise refusal(answer)
        except BaseException:
            user.close()
            raise
        user.start_heartbeats()
        return user

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

        def pick() -> str:
            return phone_of(rng.randrange(population))

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


class _SimUser(asyncio.Protocol):
    """One simulated user module on its own connection (see the module's docstring)."""

    __slots__ = ("_conn", "_heartbeat", "_lookups", "_loop", "_lost", "_ping", "_request",
                 "_timeouts", "_transport", "established", "on_lost", "reply_timeout")  # fmt: skip

    def __init__(self, conn: DirectoryClientConnection, timeouts: Timeouts) -> None:
        self._conn = conn
        self._timeouts = timeouts
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        #: Resolved once the secure channel is up (or failed with why it is not).
        self.established: asyncio.Future[None] = self._loop.create_future()
        #: The one request awaited as a future (the registration): its rid and future.
        self._request: tuple[int, asyncio.Future[ev.Message]] | None = None
        self._ping = 0  # the rid of the heartbeat still unanswered, 0 if none
        self._heartbeat: asyncio.TimerHandle | None = None
        self._lookups: _Lookups | None = None
        self._lost: BaseException | None = None
        self.reply_timeout = timeouts.server_reply
        #: Called once the connection is gone, if it was not closed by us.
        self.on_lost: Callable[[], None] | None = None

    # --- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport = typing.cast(asyncio.Transport, transport)
        transport.write(self._conn.data_to_send())  # the handshake's first message

    def data_received(self, data: bytes) -> None:
        conn, transport = self._conn, self._transport
        assert transport is not None
        try:
            conn.receive_data(data)
        except ProtocolError as exc:
            self._end(exc)
            transport.abort()
            return
        if not self.established.done():
            if handshake := conn.data_to_send():
                transport.write(handshake)
            if conn.established:
                self.established.set_result(None)
        while (message := conn.next_event()) is not None:
            assert isinstance(message, ev.DirectoryMessage)  # what the connection lets through
            lookups = self._lookups
            if lookups is not None and message.rid == lookups.rid:
                lookups.answered(message)
            elif message.rid == self._ping:
                self._ping = 0
            elif self._request is not None and message.rid == self._request[0]:
                _, future = self._request
                self._request = None
                if not future.done():
                    future.set_result(message)
            # else: a push (a watched number online) or a late answer: nothing to do

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(exc or ConnectionResetError("the server closed the connection"))
        if self.on_lost is not None:
            self.on_lost()

    # --- what the worker asks -----------------------------------------------------------

    def request(self, message: ev.DirectoryMessage) -> asyncio.Future[ev.Message]:
        """Send `message`; the future gets its answer (or the reason there is none)."""
        future: asyncio.Future[ev.Message] = self._loop.create_future()
        if self._lost is not None:
            future.set_exception(self._lost)
        else:
            self._request = (message.rid, future)
            self.send(message)
        return future

    def start_heartbeats(self) -> None:
        """Ping every interval, as a module does; a ping still unanswered an interval
        later means the server (or the path) is gone: the connection is dropped."""
        self._heartbeat = self._loop.call_later(self._timeouts.heartbeat_interval, self._beat)

    def look_up(
        self,
        count: int,
        pick: Callable[[], str],
        latencies: array.array[float],
        errors: dict[str, int],
    ) -> asyncio.Future[None]:
        """Ask for `count` numbers from `pick`, one lookup at a time, each sent as soon
        as the one before is answered; resolved once all are answered or failed."""
        lookups = self._lookups = _Lookups(self, count, pick, latencies, errors)
        if self._lost is None:
            lookups.next()
        else:  # gone before the worker heard of it (it is told in the same loop turn)
            lookups.lost()
        return lookups.done

    def close(self) -> None:
        self.on_lost = None
        self._end(ConnectionAbortedError("closed by the load generator"))
        if self._transport is not None:
            self._transport.close()

    def send(self, message: ev.DirectoryMessage) -> None:
        assert self._transport is not None
        self._transport.write(self._conn.send(message))

    def next_rid(self) -> int:
        return self._conn.next_rid()

    def give_up(self, reason: BaseException) -> None:
        """Drop the connection: everything waiting on it fails with `reason`."""
        self._end(reason)
        if self._transport is not None:
            self._transport.abort()

    # --- the rest --------------------------------------------------------------------------

    def _beat(self) -> None:
        if self._lost is not None:
            return
        if self._ping:
            self.give_up(TimeoutError("heartbeat unanswered"))
            return
        self._ping = self._conn.next_rid()
        self.send(ev.Ping(self._ping))
        self.start_heartbeats()

    def _end(self, reason: BaseException) -> None:
        """The connection is gone (or going): whatever waits on it fails with `reason`."""
        if self._lost is not None:
            return
        self._lost = reason
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        if not self.established.done():
            self.established.set_exception(reason)
        if self._request is not None:
            _, future = self._request
            self._request = None
            if not future.done():
                future.set_exception(reason)
        if self._lookups is not None:
            self._lookups.lost()


class _Lookups:
    """One simulated user's run of lookups: one out at a time, with a deadline."""

    __slots__ = ("_errors", "_latencies", "_left", "_loop", "_pick", "_reply", "_timer", "_user",
                 "began", "done", "phone", "rid")  # fmt: skip

    def __init__(
        self,
        user: _SimUser,
        count: int,
        pick: Callable[[], str],
        latencies: array.array[float],
        errors: dict[str, int],
    ) -> None:
        self._user = user
        self._reply = user.reply_timeout
        self._loop = asyncio.get_running_loop()
        self._left = count
        self._pick = pick
        self._latencies = latencies
        self._errors = errors
        self._timer: asyncio.TimerHandle | None = None
        self.done: asyncio.Future[None] = self._loop.create_future()
        self.rid = 0  # the lookup out, 0 if none
        self.phone = ""
        self.began = 0.0

    def next(self) -> None:
        if self._left == 0:
            self._finish()
            return
        self._left -= 1
        self.phone = self._pick()
        self.rid = self._user.next_rid()
        self.began = time.perf_counter()
        self._user.send(ev.Lookup(self.rid, (self.phone,)))
        if self._timer is None:
            self._timer = self._loop.call_later(self._reply, self._check)

    def answered(self, answer: ev.Message) -> None:
        if isinstance(answer, ev.LookupResult):
            self._latencies.append(time.perf_counter() - self.began)
            if not any(peer.phone == self.phone for peer in answer.peers):
                self._error("not-found")
        elif isinstance(answer, ev.Failure):
            self._error(type(refusal(answer)).__name__)
        else:
            self._error("ServerRefused")
        self.rid = 0
        self.next()

    def lost(self) -> None:
        """The connection is gone: the lookup out and those not sent yet fail."""
        if self.done.done():
            return
        self._errors["ServerUnreachable"] = (
            self._errors.get("ServerUnreachable", 0) + self._left + (1 if self.rid else 0)
        )
        self._left = self.rid = 0
        self._finish()

    def _check(self) -> None:
        """One timer for the whole run: it follows the lookup out, and a lookup
        unanswered past the deadline drops the connection (the rest then fail)."""
        self._timer = None
        if self.done.done():
            return
        if not self.rid:  # between lookups: nothing out to watch
            return
        late = self.began + self._reply - time.perf_counter()
        if late > 0:
            self._timer = self._loop.call_later(late, self._check)
            return
        self._user.give_up(TimeoutError("the server does not answer"))

    def _error(self, kind: str) -> None:
        self._errors[kind] = self._errors.get(kind, 0) + 1

    def _finish(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.done.done():
            self.done.set_result(None)


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
