"""Commands of many requests sent to Redis together (`Batches`, like group commits),
and whether Redis answers (`Health`, said once when that changes)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError

from whatsap2p.errors import StoreError

__all__ = ["Batches", "Command", "Health", "script"]

log = logging.getLogger(__name__)

Command = Callable[[Any], object]
#: What one caller asked, and where its results go.
_Asked = tuple[tuple[Command, ...], "asyncio.Future[list[Any]]"]


def script(script: Any, keys: list[str], args: list[Any]) -> Command:
    """The command that runs a registered script by its digest. (Through the script's
    own call, redis-py asks SCRIPT EXISTS before every pipeline: a round trip more; and
    a cluster's pipeline refuses `evalsha` by name, not EVALSHA as a command, which it
    sends to the node of the keys' slot.)"""
    return lambda pipe: pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)


class Health:
    """Whether Redis answers, said once when that changes (logged, and to `on_event`)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.up = True
        self._since = 0.0
        self.on_event: Callable[[str], None] = lambda event: None

    def failed(self, exc: BaseException) -> None:
        if self.up:
            self.up, self._since = False, time.monotonic()
            log.error(
                "directory store lost (%s): %s; requests that need it are refused", self.url, exc
            )
            self.on_event("store-lost")

    def answered(self) -> None:
        if not self.up:
            self.up = True
            log.warning(
                "directory store back (%s) after %.1f s", self.url, time.monotonic() - self._since
            )
            self.on_event("store-back")


class Batches:
    """Commands of many requests sent together: whatever is asked while a pipeline is
    out goes in the next one. Each caller gets the results of its own commands. Scripts
    run by digest; a Redis that does not know them (restarted, flushed) gets them again
    and runs what it refused (a refused script did not run, so it is not run twice)."""

    def __init__(
        self,
        client: redis.Redis,
        scripts: list[Any],
        health: Health,
        tail: Callable[[], Command | None] = lambda: None,
    ) -> None:
        """`tail()`: a command to end each pipeline with (its result is added to each
        caller's results), or None; `health` hears whether Redis answered."""
        self.client = client
        self._scripts = scripts
        self._health = health
        self._tail = tail
        self._waiting: list[_Asked] = []
        self._sent: list[_Asked] = []
        self._sending: asyncio.Task[None] | None = None
        self._closed = False

    async def run(self, *commands: Command) -> list[Any]:
        """The results of `commands` (StoreError if Redis fails, or fails one of them)."""
        if self._closed:
            raise StoreError("directory store: closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        self._waiting.append((commands, future))
        if self._sending is None:
            self._sending = loop.create_task(self._send(), name="redis-batches")
        return await future

    async def _send(self) -> None:
        try:
            while self._waiting:
                self._sent, self._waiting = self._waiting, []
                await self._send_one(self._sent)
                self._sent = []
        finally:
            self._sending = None

    async def _send_one(self, batch: list[_Asked]) -> None:
        flat = [command for commands, _ in batch for command in commands]
        tail = self._tail()
        try:
            results = await self._execute(flat if tail is None else [*flat, tail])
            unknown = [
                i for i, r in enumerate(results[: len(flat)]) if isinstance(r, NoScriptError)
            ]
            if unknown:
                for script in self._scripts:
                    await self.client.script_load(script.script)
                again = await self._execute(
                    [flat[i] for i in unknown] + ([] if tail is None else [tail])
                )
                for i, result in zip(unknown, again, strict=False):
                    results[i] = result
                if tail is not None:  # (the tail again, after what ran again)
                    results[-1] = again[-1]
        except (RedisError, OSError) as exc:
            self._health.failed(exc)
            self._fail(batch, exc)
            return
        except Exception as exc:  # (a cluster's client raises others): fail, never hang
            log.exception("a batch of requests to the directory store failed")
            self._fail(batch, exc)
            return
        self._health.answered()
        extra = results[len(flat) :]
        at = 0
        for commands, future in batch:
            mine, at = results[at : at + len(commands)] + extra, at + len(commands)
            if future.done():
                continue  # its asker is gone (its connection closed)
            failed = next((r for r in mine if isinstance(r, Exception)), None)
            if failed is not None:
                future.set_exception(StoreError(f"directory store: {failed}"))
            else:
                future.set_result(mine)

    async def _execute(self, commands: list[Command]) -> list[Any]:
        if not isinstance(self.client, RedisCluster):
            return await self._pipeline(commands)
        try:
            results = await self._pipeline(commands)
        except RedisConnectionError:
            results = [RedisConnectionError()]
        if any(isinstance(r, RedisConnectionError) for r in results):
            # A cluster's node gone (failed over): its client has learned where the
            # slots are now; once more there (every script here may run twice).
            return await self._pipeline(commands)
        return results

    async def _pipeline(self, commands: list[Command]) -> list[Any]:
        async with self.client.pipeline(transaction=False) as pipe:
            for command in commands:
                command(pipe)
            return list(await pipe.execute(raise_on_error=False))

    @staticmethod
    def _fail(batch: list[_Asked], exc: BaseException) -> None:
        for _, future in batch:
            if not future.done():
                future.set_exception(StoreError(f"directory store: {exc}"))

    async def close(self) -> None:
        """Stop: what is still asked for fails (and nothing more may be)."""
        self._closed = True
        if self._sending is not None:
            self._sending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sending
        left, self._sent, self._waiting = self._sent + self._waiting, [], []
        self._fail(left, RuntimeError("the server is closing"))
