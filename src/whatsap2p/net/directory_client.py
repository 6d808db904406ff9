"""The user module's connection to the central server: requests, answers, heartbeats."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from whatsap2p.config import Limits, Timeouts
from whatsap2p.errors import (
    DirectoryError,
    NumberAlreadyOnline,
    NumberBound,
    ProtocolError,
    RateLimited,
    RemoteKeyMismatch,
    ServerKeyMismatch,
    ServerRefused,
    ServerUnreachable,
)
from whatsap2p.net.handshake import complete_handshake
from whatsap2p.protocol import events as ev
from whatsap2p.protocol.directory import DirectoryClientConnection
from whatsap2p.protocol.keys import StaticKey, fingerprint
from whatsap2p.protocol.noise import COMPACT, NoiseChannel

__all__ = ["DirectoryClient", "cannot_reach", "client_connection", "handshake_failed", "refusal"]

log = logging.getLogger(__name__)

_READ_SIZE = 64 * 1024

_FAILURES: dict[str, type[DirectoryError]] = {
    "number-online": NumberAlreadyOnline,
    "number-bound": NumberBound,
    "rate-limited": RateLimited,
}


def refusal(answer: ev.Failure) -> DirectoryError:
    """The error a Failure answer from the server stands for."""
    return _FAILURES.get(answer.code, ServerRefused)(f"the server refused: {answer.message}")


def client_connection(
    key: StaticKey, limits: Limits, server_fingerprint: str | None
) -> DirectoryClientConnection:
    """A user module's side of a directory connection, before its handshake; with
    `server_fingerprint`, it refuses any server that proves another key."""
    channel = NoiseChannel(
        key,
        initiator=True,
        suite=COMPACT,
        max_body=limits.max_directory_frame,
        expected_fingerprint=server_fingerprint,
    )
    return DirectoryClientConnection(limits, channel)


def cannot_reach(where: str, exc: OSError | TimeoutError) -> ServerUnreachable:
    """Why opening the connection to the server at `where` failed."""
    reason = "timed out" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
    return ServerUnreachable(f"cannot reach the server at {where}: {reason}")


def handshake_failed(
    where: str, exc: OSError | TimeoutError | ProtocolError, expected: str | None
) -> DirectoryError:
    """Why the secure handshake with the server at `where` failed: it proved a key other
    than the `expected` one, or it did not complete."""
    if isinstance(exc, RemoteKeyMismatch):
        return ServerKeyMismatch(
            f"the server at {where} has key {fingerprint(exc.remote_key)}, "
            f"not the expected {expected}: refusing it"
        )
    return ServerUnreachable(
        f"no secure connection to the server at {where}: {str(exc) or 'timed out'}"
    )


class DirectoryClient:
    """One TCP connection to the server; the registration lives as long as it does."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        conn: DirectoryClientConnection,
        timeouts: Timeouts,
    ) -> None:
        """Use `connect`: it hands over a connection whose secure channel is established."""
        self._reader = reader
        self._writer = writer
        self._timeouts = timeouts
        self._conn = conn
        self.server_key = conn.remote_key
        #: Called with each watched number that comes online (pushed by the server).
        self.on_online: Callable[[ev.PeerAddress], None] | None = None
        #: Called once the connection is gone (lost, or closed), after `closed` is set.
        self.on_closed: Callable[[], None] | None = None
        self._waiting: dict[int, asyncio.Future[ev.Message]] = {}
        self._lost: BaseException | None = None
        self.closed = asyncio.Event()
        self._reader_task = asyncio.create_task(self._read_loop(), name="directory-reader")
        self._heartbeat_task: asyncio.Task[None] | None = None
        # Numbers waiting for the next lookup request, and the one request out (its rid,
        # its batch and its deadline).
        self._batches: deque[_LookupBatch] = deque()
        self._lookup_out: tuple[int, _LookupBatch, asyncio.TimerHandle] | None = None
        self._max_lookup = conn.limits.max_lookup_phones

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        key: StaticKey,
        *,
        server_fingerprint: str | None = None,
        limits: Limits | None = None,
        timeouts: Timeouts | None = None,
    ) -> DirectoryClient:
        """Connect and complete the secure handshake; with `server_fingerprint`, refuse
        any server that proves another key (before revealing ours)."""
        timeouts = timeouts or Timeouts()
        limits = limits or Limits()
        where = f"{host}:{port}"
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port), timeouts.connect
            )
        except (OSError, TimeoutError) as exc:
            raise cannot_reach(where, exc) from exc
        conn = client_connection(key, limits, server_fingerprint)
        try:
            await complete_handshake(reader, writer, conn, timeouts.handshake)
        except (OSError, TimeoutError, ProtocolError) as exc:
            writer.close()
            raise handshake_failed(where, exc, server_fingerprint) from exc
        return cls(reader, writer, conn, timeouts)

    async def register(self, phone: str, port: int, host: str | None = None) -> ev.Registered:
        answer = await self._request(ev.Register(self._conn.next_rid(), phone, port, host))
        assert isinstance(answer, ev.Registered)
        self._heartbeat_task = asyncio.create_task(self._heartbeat(), name="directory-heartbeat")
        return answer

    async def lookup(self, phones: list[str]) -> dict[str, ev.PeerAddress]:
        """The online ones among `phones`, with their addresses.

        Lookups are coalesced like group commits: while one lookup request is out,
        the numbers asked meanwhile wait together for the next one, sent as soon as the
        answer is in. Every caller's answer so comes from a request made after it asked,
        and a burst of sends costs a few requests (and rate-limit tokens), not one each."""
        if not phones:
            return {}
        batch = self._batches[-1] if self._batches else None
        if batch is None or len(batch.phones) + len(phones) > self._max_lookup:
            batch = _LookupBatch()
            self._batches.append(batch)
        asked = batch.ask(phones)
        if self._lookup_out is None:
            self._send_lookup()
        found = await asked
        return {phone: found[phone] for phone in phones if phone in found}

    def _send_lookup(self) -> None:
        """Send the oldest waiting batch as one lookup request. No task and no drain: one
        request is out at a time, answered from the read loop, which sends the next."""
        if not self._batches:
            return
        batch = self._batches.popleft()
        if self._lost is not None:
            self._fail_lookups(batch, ServerUnreachable(f"lost the connection: {self._lost}"))
            return
        rid = self._conn.next_rid()
        try:
            self._writer.write(self._conn.send(ev.Lookup(rid, tuple(batch.phones))))
        except (OSError, RuntimeError, ProtocolError) as exc:
            self._fail_lookups(batch, ServerUnreachable(f"cannot ask the server: {exc}"))
            return
        timer = asyncio.get_running_loop().call_later(
            self._timeouts.server_reply, self._lookup_timed_out
        )
        self._lookup_out = (rid, batch, timer)

    def _lookup_answered(self, answer: ev.Message) -> None:
        assert self._lookup_out is not None
        _, batch, timer = self._lookup_out
        self._lookup_out = None
        timer.cancel()
        if isinstance(answer, ev.LookupResult):
            batch.answer({peer.phone: peer for peer in answer.peers})
            self._send_lookup()
        elif isinstance(answer, ev.Failure):
            self._fail_lookups(batch, refusal(answer))
        else:
            self._fail_lookups(batch, ServerRefused(f"unexpected answer {type(answer).__name__}"))

    def _lookup_timed_out(self) -> None:
        assert self._lookup_out is not None
        _, batch, _ = self._lookup_out
        self._lookup_out = None
        self._fail_lookups(batch, ServerUnreachable("the server does not answer"))

    def _fail_lookups(self, batch: _LookupBatch, error: DirectoryError) -> None:
        """This batch and every one waiting behind it fail with `error`."""
        for failed in (batch, *self._batches):
            failed.fail(error)
        self._batches.clear()

    async def watch(self, phones: list[str]) -> dict[str, ev.PeerAddress]:
        """Be told (on_online) when any of `phones` comes online; returns those online now."""
        answer = await self._request(ev.Watch(self._conn.next_rid(), tuple(phones)))
        assert isinstance(answer, ev.Watching)
        return {peer.phone: peer for peer in answer.peers}

    async def unregister(self) -> None:
        await self._request(ev.Unregister(self._conn.next_rid()))

    async def ping(self, timeout: float | None = None) -> None:
        """One heartbeat now (the server renews our registration)."""
        await self._request(ev.Ping(self._conn.next_rid()), timeout)

    async def close(self) -> None:
        for task in (self._heartbeat_task, self._reader_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()
        self._fail_all(ServerUnreachable("the connection to the server is closed"))

    async def _request(
        self, message: ev.DirectoryMessage, timeout: float | None = None
    ) -> ev.Message:
        if self._lost is not None:
            raise ServerUnreachable(f"lost the connection to the server: {self._lost}")
        future: asyncio.Future[ev.Message] = asyncio.get_running_loop().create_future()
        self._waiting[message.rid] = future
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
            # that races with the answer, and close() would then wait forever.
            async with asyncio.timeout(timeout or self._timeouts.server_reply):
                self._writer.write(self._conn.send(message))
                await self._writer.drain()
                answer = await future
        except (OSError, TimeoutError) as exc:
            raise ServerUnreachable("the server does not answer") from exc
        finally:
            self._waiting.pop(message.rid, None)
        if isinstance(answer, ev.Failure):
            raise refusal(answer)
        return answer

    async def _read_loop(self) -> None:
        reason: BaseException = ServerUnreachable("the server closed the connection")
        try:
            while data := await self._reader.read(_READ_SIZE):
                self._conn.receive_data(data)
                while (message := self._conn.next_event()) is not None:
                    self._dispatch(message)
        except (OSError, ProtocolError) as exc:
            reason = exc
        finally:
            self._lost = reason
            self._fail_all(ServerUnreachable(f"lost the connection to the server: {reason}"))
            self.closed.set()
            if self.on_closed is not None:
                self.on_closed()

    def _dispatch(self, message: ev.Message) -> None:
        assert isinstance(message, ev.DirectoryMessage)
        if isinstance(message, ev.Online):
            if self.on_online is not None:
                self.on_online(message.peer)
            return
        out = self._lookup_out
        if out is not None and message.rid == out[0]:
            self._lookup_answered(message)
            return
        future = self._waiting.get(message.rid)
        if future is not None and not future.done():
            future.set_result(message)
        elif isinstance(message, ev.Failure):
            log.warning("server: %s", message.message)

    def _fail_all(self, error: DirectoryError) -> None:
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(error)
        self._waiting.clear()
        if self._lookup_out is not None:
            _, batch, timer = self._lookup_out
            self._lookup_out = None
            timer.cancel()
            self._fail_lookups(batch, error)
        while self._batches:
            self._batches.popleft().fail(error)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self._timeouts.heartbeat_interval)
            try:
                # Unanswered within one interval: the server (or the path) is gone, even if
                # the connection looks open — detection takes at most two intervals.
                await self.ping(timeout=self._timeouts.heartbeat_interval)
            except DirectoryError as exc:
                log.warning("heartbeat failed: %s", exc)
                self._writer.close()
                return


@dataclass(eq=False)
class _LookupBatch:
    """Numbers asked while another lookup was out, answered together. Each asker waits
    on a future of its own: one that gives up (is cancelled) leaves the others waiting,
    and none is left holding an answer or a failure that nobody will read."""

    phones: set[str] = field(default_factory=set)
    askers: list[asyncio.Future[dict[str, ev.PeerAddress]]] = field(default_factory=list)

    def ask(self, phones: list[str]) -> asyncio.Future[dict[str, ev.PeerAddress]]:
        self.phones.update(phones)
        asked: asyncio.Future[dict[str, ev.PeerAddress]] = (
            asyncio.get_running_loop().create_future()
        )
        self.askers.append(asked)
        return asked

    def answer(self, found: dict[str, ev.PeerAddress]) -> None:
        for asked in self.askers:
            if not asked.done():  # cancelled: its asker gave up
                asked.set_result(found)

    def fail(self, error: DirectoryError) -> None:
        for asked in self.askers:
            if not asked.done():
                asked.set_exception(error)
