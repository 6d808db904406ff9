"""The directory on Redis (or Valkey), shared by any number of `whatsap2p server`s.

Keys (the `{phone}` hash tag puts both keys of a number in one Redis Cluster slot, so
the scripts that touch both stay on one node):

- `wa:bind:{+5511...}`   string, the 32-byte key the number is bound to; no expiry.
- `wa:online:{+5511...}` string, msgpack `[owner, host, port, key]`, and `local` after
  them for a module behind a router that said its LAN address (strings as msgpack
  raw strings, which the scripts' cmsgpack reads), expiring `ttl`
  seconds after the last heartbeat its server saw (a crashed server's users are gone
  within `ttl`). `owner` is `SERVER-ID:CONNECTION-ID`: only that connection may renew
  or remove it.
- channel `wa:came-online`: msgpack `[phone, host, port, key]` (and `local`), published on every
  registration, so each server can push it to the connections watching that number.
- channel `wa:dial:SERVER-ID`, one per server (the `SERVER-ID` of the owners it writes):
  requests to connect back to a module connected to that server (or to meet its asker
  at a relay), passed on by the server the asker is connected to, and the answers to
  those it passed on (below).

Connecting back (`reverse`) needs the callee's server connection, which only its own
server holds (it pushes the `dial` there, and knows where that connection comes from:
the `reversing` answer). A server asked for a number connected elsewhere runs one
script that reads the number's owner and publishes the request on that server's
channel (nobody hears it: offline); that server makes the checks that need the
connection (the number's rate limit among them: every request for a number reaches its
one server), pushes the `dial` and publishes the answer on the asker's channel. A
round trip through Redis and back; an answer that does not come within
`ANSWER_WITHIN` seconds (its server died or lost Redis) is `offline`.

Requests go to Redis in batches, like group commits (redis_batches.py): what the
server's connections ask while one pipeline is out (lookups, their rate-limit buckets,
registrations) goes out together in the next, so a crowd of lookups costs a round trip
per batch rather than one or two each; heartbeat renewals are gathered for
`RENEW_EVERY` seconds. The clients come from `--redis` URLs (redis_urls.py).

Registration is one script (binding check, bind on first use, one live registration
per number), so two servers never both accept a number. Bindings have no expiry and are
the only record of who owns a number, so they are kept with care:

- a registration that creates a binding is acknowledged only once a replica has it,
  where the master has replicas (`WAIT 1`, at most `BIND_WAIT` seconds, after each
  batch of registrations; on a cluster, after each registration, at its master, on
  the connection its script went on); when no replica takes it in time the registration is refused
  `unavailable` (the module tries again: the binding stays for its key, and the next
  try's WAIT covers it), so a failover to a replica that lags cannot forget a number
  it said was bound;
- every renewal re-asserts its binding: one missing (a failover lost it anyway, or an
  operator's mistake) is put back from the key of the registration renewing it, and a
  binding to another key found there ends that registration (logged, counted).

Under Sentinel, the server asks the sentinels every `FOLLOW_EVERY` seconds which master
to write to, and moves to the one they name (a master frozen while they failed over runs
on as a master once it resumes, until they demote it; what it takes meanwhile is lost,
so a registration no replica acknowledged is acknowledged only if the master they name
has its binding).

The same key registering again from elsewhere (its module failed over to another
server, the old connection is dead or dying) takes the registration over; the old
server finds out at its next renewal and drops that connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections.abc import Callable
from typing import Annotated, Any, ClassVar

import msgpack
import msgspec
import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError, RedisError, ResponseError

from whatsap2p.background import Background
from whatsap2p.config import Timeouts
from whatsap2p.errors import StoreError
from whatsap2p.protocol import events as ev
from whatsap2p.protocol.directory import MAX_RELAYS, MAX_TICKET_BYTES, TOKEN_BYTES
from whatsap2p.protocol.events import PeerAddress
from whatsap2p.protocol.keys import KEY_BYTES
from whatsap2p.server.directory import (
    Bind,
    Dialled,
    Directory,
    Found,
    PushDial,
    Refused,
    Spend,
)
from whatsap2p.server.redis_batches import Batches, Command, Health, script
from whatsap2p.server.redis_urls import client_for, cluster_parts, sentinel_pool, shown

__all__ = ["RedisDirectory"]

log = logging.getLogger(__name__)

CHANNEL = "wa:came-online"
#: Followed by a server's id: the channel of requests to connect back passed on to it,
#: and of the answers to those it passed on.
DIAL_CHANNEL = "wa:dial:"
#: A request to connect back passed on to another server is `offline` when that server
#: has not answered within this many seconds (it died, or lost Redis, meanwhile).
ANSWER_WITHIN = 2.0
#: Heartbeats are renewed in Redis in batches gathered over this many seconds.
RENEW_EVERY = 0.5
#: The presence TTL (`Timeouts.presence_ttl`): a crashed server's users show offline
#: everywhere within this many seconds (unless they registered through another first).
DEFAULT_TTL = Timeouts().presence_ttl
#: How long a registration that creates a binding waits for a replica to have it.
BIND_WAIT = 1.0
#: How often the server asks its Redis how many replicas it has (`ROLE`).
REPLICAS_EVERY = 5.0
#: Under Sentinel, how often the server asks the sentinels which master to write to.
FOLLOW_EVERY = 1.0
#: Once they name another, how long requests already sent through the old master's
#: connections may take before those are closed.
RETIRE_AFTER = 5.0
#: After `server release`, how long the released key may not take the number again.
RELEASE_HOLD = 600.0

# KEYS: bind, online. ARGV: key, owner, record, ttl-ms, channel, presence message.
_REGISTER = """
local bound = redis.call('GET', KEYS[1])
if bound and string.sub(bound, 1, 9) == 'released:' then
  if string.sub(bound, 10) == ARGV[1] then return 'bound' end
  bound = false
end
if bound and bound ~= ARGV[1] then return 'bound' end
local current = redis.call('GET', KEYS[2])
if current then
  local record = cmsgpack.unpack(current)
  if record[1] ~= ARGV[2] and record[4] ~= ARGV[1] then return 'online' end
end
if not bound then redis.call('SET', KEYS[1], ARGV[1]) end
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
redis.call('PUBLISH', ARGV[5], ARGV[6])
if not bound then return 'new' end
return 'ok'
"""

# KEYS: bind, online. ARGV: hold-ms. The operator frees the number from its key: for
# hold-ms, that key may not take it again (its registration is removed now, and ended at
# its next renewal: a module that still holds a released number, stolen say, cannot
# re-assert it), while any other key may bind it. 1 if it was bound.
_RELEASE = """
local bound = redis.call('GET', KEYS[1])
if not bound or string.sub(bound, 1, 9) == 'released:' then return 0 end
redis.call('SET', KEYS[1], 'released:' .. bound, 'PX', ARGV[1])
redis.call('DEL', KEYS[2])
return 1
"""

# KEYS: online, bind. ARGV: owner, record, ttl-ms, key. 'ok' renewed (or restored after
# expiring), 'taken' when another connection holds the number now; 'restored' renewed,
# and the binding, missing, put back; 'conflict' the number is bound to another key
# (the registration is removed).
_RENEW = """
local current = redis.call('GET', KEYS[1])
if current and cmsgpack.unpack(current)[1] ~= ARGV[1] then return 'taken' end
local bound = redis.call('GET', KEYS[2])
if bound and bound ~= ARGV[4] then
  if current then redis.call('DEL', KEYS[1]) end
  return 'conflict'
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
if not bound then
  redis.call('SET', KEYS[2], ARGV[4])
  return 'restored'
end
return 'ok'
"""

# KEYS: online. ARGV: channel prefix, message. Publishes the message on the channel of
# the server that owns the registration; how many heard it, -1 when there is none.
_TO_OWNER = """
local current = redis.call('GET', KEYS[1])
if not current then return -1 end
local server = string.match(cmsgpack.unpack(current)[1], '^([^:]+):')
if not server then return -1 end
return redis.call('PUBLISH', ARGV[1] .. server, ARGV[2])
"""

# KEYS: online. ARGV: owner.
_UNREGISTER = """
local current = redis.call('GET', KEYS[1])
if current and cmsgpack.unpack(current)[1] == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""


def _pack(values: list[object]) -> bytes:
    """msgpack without the bin type (Redis' cmsgpack predates it): bytes and str both
    become raw strings, read back with `raw=True`."""
    packed: bytes = msgpack.packb(values, use_bin_type=False)
    return packed


# KEYS: bucket. ARGV: rate/s, burst, cost. Redis' clock, so servers' clocks do not matter.
_TAKE = """
local rate, burst, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(state[1]), tonumber(state[2])
if not tokens then tokens, at = burst, now end
tokens = math.min(burst, tokens + (now - at) * rate)
local allowed = 0
if cost <= tokens then
  tokens = tokens - cost
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst / rate + 1) * 1000))
return allowed
"""


_Port = Annotated[int, msgspec.Meta(gt=0, lt=65536)]
_Phone = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
_Host = Annotated[str, msgspec.Meta(min_length=1, max_length=255)]


class _PassedOn(msgspec.Struct, frozen=True, array_like=True, tag="ask"):
    """A request to connect back, passed on to the server `phone` is connected to by the
    one `caller` is: what that server pushes (a `dial` from the caller, at the address
    its own server sees it at), and where its answer goes. Checked as the module that is
    pushed the `dial` checks it (a malformed one would close its connection)."""

    ask: int  # the asking server's number for it, repeated in the answer
    reply_to: Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{1,64}$")]  # its server id
    phone: _Phone
    caller: _Phone
    host: _Host
    port: _Port
    key: Annotated[bytes, msgspec.Meta(min_length=KEY_BYTES, max_length=KEY_BYTES)]
    token: Annotated[bytes, msgspec.Meta(min_length=TOKEN_BYTES, max_length=TOKEN_BYTES)]
    punch: _Port | None


class _RelayPassedOn(msgspec.Struct, frozen=True, array_like=True, tag="relay"):
    """A request to meet at a relay, passed on like `_PassedOn`: what that server pushes
    (a `relayed` from the caller, with the relays and the ticket its server gave)."""

    ask: int
    reply_to: Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{1,64}$")]
    phone: _Phone
    caller: _Phone
    host: _Host
    port: _Port
    key: Annotated[bytes, msgspec.Meta(min_length=KEY_BYTES, max_length=KEY_BYTES)]
    relays: Annotated[list[tuple[_Host, _Port]], msgspec.Meta(min_length=1, max_length=MAX_RELAYS)]
    ticket: Annotated[bytes, msgspec.Meta(min_length=1, max_length=MAX_TICKET_BYTES)]


class _Pushed(msgspec.Struct, frozen=True, array_like=True, tag="dialled"):
    """The `dial` was pushed: where the callee's server connection comes from."""

    ask: int
    host: _Host | None
    port: _Port | None


class _NotPushed(msgspec.Struct, frozen=True, array_like=True, tag="refused"):
    """The `dial` was not pushed: the failure code and message to answer with."""

    ask: int
    code: Annotated[str, msgspec.Meta(pattern="^(offline|rate-limited|invalid-host)$")]
    message: Annotated[str, msgspec.Meta(max_length=512)]


_DIAL_MESSAGES = msgspec.msgpack.Decoder(_PassedOn | _RelayPassedOn | _Pushed | _NotPushed)


def _get(phone: str) -> Command:
    """The command that reads `phone`'s registration."""
    key = _online_key(phone)
    return lambda pipe: pipe.get(key)


def _found(phones: list[str], records: list[Any]) -> list[PeerAddress]:
    found = []
    for phone, record in zip(phones, records, strict=True):
        if record is not None:
            _, host, port, key, *local = msgpack.unpackb(record, raw=True)
            found.append(PeerAddress(phone, host.decode(), port, key, _local(local)))
    return found


def _local(rest: list[Any]) -> str | None:
    """A record's `local` (what follows its key), if it has one."""
    return bytes(rest[0]).decode() if rest else None


def _key_of(record: bytes) -> bytes:
    """The key in a registration's record (`[owner, host, port, key, ...]`)."""
    key: bytes = msgpack.unpackb(record, raw=True)[3]
    return key


def _bind_key(phone: str) -> str:
    return f"wa:bind:{{{phone}}}"


def _online_key(phone: str) -> str:
    return f"wa:online:{{{phone}}}"


def least_ttl(timeouts: Timeouts) -> float:
    """The shortest presence TTL that keeps the users of a frozen server online until
    their modules have registered through another: its last renewal may be a heartbeat
    and a batch old when it freezes; a module waits a heartbeat more for the answer to
    the next, then may try a server of its list that is frozen too (connect, handshake)
    before one that answers."""
    heartbeat = timeouts.heartbeat_interval
    return 2 * heartbeat + RENEW_EVERY + timeouts.connect + timeouts.handshake


class RedisDirectory(Directory):
    """A `Directory` (and the number-to-key bindings) in Redis."""

    binds_keys: ClassVar[bool] = True  # its registration script checks and makes bindings

    def __init__(
        self,
        url: str,
        ttl: float = DEFAULT_TTL,
        answer_within: float = ANSWER_WITHIN,
        password: str | None = None,
    ) -> None:
        """`url`: `redis://HOST:PORT/DB` (also `rediss://`, `unix://`), or, for a Redis
        kept highly available by Sentinel, `sentinel://HOST:PORT[,HOST:PORT...]/SERVICE/DB`
        (the sentinels; the client follows the master they name across failovers)."""
        self.url = url
        self.ttl_ms = int(ttl * 1000)
        timeouts = Timeouts()
        if ttl < (least := least_ttl(timeouts)):
            log.warning(
                "presence TTL %g s: users whose server freezes (or loses Redis) for %g s or"
                " more show offline before their modules move to another server; at least"
                " %g s is advised",
                ttl,
                max(0.0, ttl - timeouts.heartbeat_interval - RENEW_EVERY),
                least,
            )
        self.answer_within = answer_within
        self.server_id = uuid.uuid4().hex[:12]
        #: Where other servers pass on requests to connect back, and answer ours.
        self.dial_channel = DIAL_CHANNEL + self.server_id
        self._redis, self._sentinel = client_for(url, password)
        #: A Redis Cluster: no WAIT (a write's master is the key's), pub/sub on any node.
        self._cluster = isinstance(self._redis, RedisCluster)
        #: On a cluster: a plain client per master, for registrations, whose WAIT must
        #: go on the connection their script went on (a cluster pipeline's may not).
        self._masters: dict[str, redis.Redis] = {}
        self._master_options = cluster_parts(url, password)[1] if self._cluster else {}
        self._register = self._redis.register_script(_REGISTER)
        self._renew = self._redis.register_script(_RENEW)
        self._unregister = self._redis.register_script(_UNREGISTER)
        self._take = self._redis.register_script(_TAKE)
        self._to_owner = self._redis.register_script(_TO_OWNER)
        self._release = self._redis.register_script(_RELEASE)
        scripts = [
            self._register,
            self._renew,
            self._unregister,
            self._take,
            self._to_owner,
        ]
        self.health = Health(shown(url))
        self._batches = Batches(self._redis, scripts, self.health)
        #: Registrations go in pipelines of their own, each ended by a WAIT for a replica
        #: when there are replicas (a WAIT holds its pipeline: not the lookups').
        self._registrations = Batches(self._redis, scripts, self.health, self._wait_command)
        #: Replicas of the master, as it last said (ROLE, every REPLICAS_EVERY seconds).
        self.replicas = 0
        self._watching_replicas: asyncio.Task[None] | None = None
        #: Told of what an operator alerts on: "store-lost", "store-back",
        #: "binding-restored", "binding-conflict", "binding-unreplicated",
        #: "master-changed" (under Sentinel).
        self.on_event: Callable[[str], None] = lambda event: None
        self.health.on_event = lambda event: self.on_event(event)
        self._records: dict[str, bytes] = {}  # our own registrations, for renewals
        self._renewals: dict[str, tuple[int, Callable[[], None]]] = {}
        self._renewing: asyncio.TimerHandle | None = None
        #: Renewals being written, answers to requests passed on, old clients to close.
        self._background = Background(log)
        self._listener: asyncio.Task[None] | None = None
        self._pubsub: Any = None  # (the subscription, heard by `_listener`)
        #: Under Sentinel: a client of the master they name (asked before each use), and
        #: the master's address as we last saw it.
        self._named: redis.Redis | None = None
        self._master_seen: tuple[str, int] | None = None
        if self._sentinel is not None:
            self._named = self._master_client()
        #: Requests to connect back we passed on, by number: their answers to come.
        self._asks = itertools.count(1)
        self._asked: dict[int, asyncio.Future[Dialled]] = {}

    async def start(self, on_online: Callable[[PeerAddress], None], push_dial: PushDial) -> None:
        """Check Redis answers, hear of every registration on every server, and of the
        requests to connect back passed on to this one (and the answers to ours)."""
        try:
            await self._redis.ping()
            pubsub = self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            await pubsub.subscribe(CHANNEL, self.dial_channel)
        except Exception as exc:  # (redis-py's, a cluster's, a bad option's: one line)
            raise StoreError(f"cannot use Redis at {shown(self.url)}: {exc}") from exc
        self._listener = asyncio.create_task(
            self._listen(pubsub, on_online, push_dial), name="redis-sub"
        )
        await self._count_replicas()
        if self._named is not None:  # (the master our connections reach)
            self._master_seen = sentinel_pool(self._named).master_address
        self._watching_replicas = asyncio.create_task(self._watch_replicas(), name="replicas")

    async def _count_replicas(self) -> None:
        if self._cluster:
            return
        node = self._redis
        if self._named is not None:
            try:
                node = await self._named_master()
            except (RedisError, OSError) as exc:  # (then none can fail it over either)
                log.debug("asking the sentinels for the master: %s", exc)
        try:
            role = await node.execute_command("ROLE")
        except (RedisError, OSError) as exc:
            log.debug("ROLE: %s", exc)
            return
        replicas = len(role[2]) if role and role[0] == b"master" else 0
        if replicas != self.replicas:
            log.info("the directory store's master has %d replica(s)", replicas)
        self.replicas = replicas

    def _master_client(self) -> redis.Redis:
        """Under Sentinel: a new client of the master the sentinels name (its own pool)."""
        assert self._sentinel is not None
        pool = sentinel_pool(self._redis)
        db = pool.connection_kwargs.get("db", 0)
        client: redis.Redis = self._sentinel.master_for(
            pool.service_name, db=db, decode_responses=False
        )
        return client

    async def _named_master(self) -> redis.Redis:
        """Under Sentinel: a client of the master the sentinels name now (asked each
        time; connections to one they no longer name are dropped)."""
        assert self._named is not None
        await sentinel_pool(self._named).get_master_address()  # type: ignore[no-untyped-call]
        return self._named

    async def _unreplicated(self, phone: str, key: bytes, master: redis.Redis | None) -> bool:
        """Whether a registration of `phone` for `key` that no replica acknowledged must
        be refused: the master (a cluster's `master`) has replicas now (asked again: a
        WAIT none answered may mean the one it had is gone, or a failover left it
        without any), or, under Sentinel, the master the sentinels name does not have
        its binding (it went to an old master that a freeze left running as one, whose
        writes are lost when they demote it)."""
        if master is not None:
            try:
                info = await master.info("replication")
            except Exception:  # (it answered the WAIT just now: count it as having)
                return True
            return int(info.get("connected_slaves", 0)) > 0
        if self._named is not None:
            try:
                named = await self._named_master()
            except (RedisError, OSError) as exc:
                # No sentinel answers: none can fail the master over either, so what
                # it took stays; acknowledged as without Sentinel (if it has no replica).
                log.debug("asking the sentinels for the master: %s", exc)
            else:
                try:
                    if await named.get(_bind_key(phone)) != key:
                        await self._leave_old_master(named)
                        return True
                except Exception as exc:  # (the master they name does not answer)
                    log.debug("checking a registration at the sentinels' master: %s", exc)
                    return True
        await self._count_replicas()
        return self.replicas > 0

    async def _register_at_master(
        self, keys: list[str], args: list[bytes | str | int]
    ) -> tuple[Any, int, redis.Redis]:
        """On a cluster: the registration script at the master of its keys, and a WAIT
        on the same connection (registrations are rare: a pipeline each)."""
        for _ in range(3):  # (again after the master did not know the script, or moved)
            node = self._redis.get_node_from_key(keys[0])
            found = self._masters.get(node.name)
            if found is None:
                found = redis.Redis(
                    host=node.host, port=node.port, decode_responses=False, **self._master_options
                )
                self._masters[node.name] = found
            master: redis.Redis = found
            try:
                async with master.pipeline(transaction=False) as pipe:
                    pipe.evalsha(self._register.sha, len(keys), *keys, *args)
                    pipe.execute_command("WAIT", 1, int(BIND_WAIT * 1000))
                    outcome, acked = await pipe.execute(raise_on_error=False)
            except Exception as exc:
                self.health.failed(exc)
                await self._redis.nodes_manager.initialize()  # (where the slots are now)
                raise StoreError(f"directory store: {exc}") from exc
            if isinstance(outcome, NoScriptError):
                await master.script_load(_REGISTER)
            elif isinstance(outcome, ResponseError) and str(outcome).startswith(("MOVED", "ASK")):
                await self._redis.nodes_manager.initialize()
            else:
                break
        for result in (outcome, acked):
            if isinstance(result, Exception):
                raise StoreError(f"directory store: {result}")
        self.health.answered()
        return outcome, int(acked), master

    async def _watch_replicas(self) -> None:
        counted = time.monotonic()
        while True:
            await asyncio.sleep(FOLLOW_EVERY if self._named is not None else REPLICAS_EVERY)
            if self._named is not None:
                with contextlib.suppress(Exception):  # (no sentinel answers: said elsewhere)
                    await self._leave_old_master(await self._named_master())
            if time.monotonic() - counted >= REPLICAS_EVERY:
                counted = time.monotonic()
                await self._count_replicas()

    async def _leave_old_master(self, named: redis.Redis) -> None:
        """Under Sentinel, once the sentinels name another master than the last one we
        saw: stop writing to the old one. A master frozen (or cut off) while they failed
        over runs on as a master once it resumes, until they demote it (about 10 s), and
        what it takes meanwhile is lost: requests from now on go through a new client
        (its connections reach the master named now), the old client's connections are
        closed `RETIRE_AFTER` later (a request still waiting on a frozen old master then
        fails, and is asked again), and the subscription is made again at the new one.
        A registration the old one took is not acknowledged (`_unreplicated`)."""
        address = sentinel_pool(named).master_address
        seen, self._master_seen = self._master_seen, address
        if seen is None or address is None or tuple(seen) == tuple(address):
            return
        log.warning(
            "the sentinels name another master, %s:%s (was %s:%s): writing there only",
            *address,
            *seen,
        )
        self.on_event("master-changed")
        old, self._redis = self._redis, self._master_client()
        self._batches.client = self._registrations.client = self._redis
        await self._count_replicas()  # (a promoted replica has none yet: no WAIT for one)
        if self._pubsub is not None:
            # Subscribed at the new master before the old subscription is dropped: its
            # listener moves over at once (no pause, in which a presence another server
            # pushes would be missed); if this fails, the old one is dropped, and the
            # listener subscribes again after its pause.
            fresh = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await fresh.subscribe(CHANNEL, self.dial_channel)
            except Exception as exc:
                log.warning("subscribing at the new master: %s", exc)
                with contextlib.suppress(Exception):
                    await fresh.aclose()
                if self._pubsub.connection is not None:
                    with contextlib.suppress(Exception):
                        await self._pubsub.connection.disconnect()
            else:
                self._pubsub = fresh
        self._retire(old)

    def _retire(self, old: redis.Redis) -> None:
        """Close the client `old` once what it was sending has had its time (a request
        waiting for an old master that is frozen fails then, and is asked again)."""

        async def retire() -> None:
            try:
                await asyncio.sleep(RETIRE_AFTER)
            finally:  # (closing the store: at once)
                with contextlib.suppress(Exception):
                    await old.aclose()
                    await old.connection_pool.disconnect(inuse_connections=True)

        self._background.start(retire(), "closing the old master's client")

    def _wait_command(self) -> Command | None:
        """Ends each pipeline of registrations: a replica must have what it wrote."""
        if not self.replicas:
            return None
        return lambda pipe: pipe.execute_command("WAIT", 1, int(BIND_WAIT * 1000))

    async def _listen(
        self, pubsub: Any, on_online: Callable[[PeerAddress], None], push_dial: PushDial
    ) -> None:
        try:
            while True:
                if pubsub is not self._pubsub:  # (moved to a new master's: see below)
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()
                    pubsub = self._pubsub
                try:
                    # (a timeout: a subscription made anew elsewhere is taken up soon)
                    message = await pubsub.get_message(timeout=FOLLOW_EVERY)
                except Exception as exc:  # (a cluster's errors are not all RedisErrors)
                    if pubsub is not self._pubsub:  # (the old master's, dropped)
                        continue
                    log.warning("redis subscription: %s; resubscribing", exc)
                    await asyncio.sleep(1.0)
                    # A new one from the client in use (a cluster's node may be gone:
                    # another, which hears all; under Sentinel, the new master's).
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()
                    pubsub = self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
                    with contextlib.suppress(Exception):  # (tried again, never given up)
                        await pubsub.subscribe(CHANNEL, self.dial_channel)
                    continue
                if message is None or message.get("type") != "message":
                    continue
                if message.get("channel") != CHANNEL.encode():
                    self._heard(message["data"], push_dial)
                    continue
                try:
                    phone, host, port, key, *local = msgpack.unpackb(message["data"], raw=True)
                    address = PeerAddress(
                        phone.decode(), host.decode(), int(port), bytes(key), _local(local)
                    )
                except (ValueError, TypeError, UnicodeDecodeError) as exc:
                    log.warning("ignoring a malformed presence message: %s", exc)
                    continue
                on_online(address)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    def _heard(self, data: bytes, push_dial: PushDial) -> None:
        """A message on our dial channel: a request to connect back to a module connected
        here (pushed, and answered on its asker's channel), or the answer to one of ours."""
        try:
            message = _DIAL_MESSAGES.decode(data)
        except msgspec.DecodeError as exc:  # (ValidationError is one)
            log.warning("ignoring a malformed message on %s: %s", self.dial_channel, exc)
            return
        if isinstance(message, _PassedOn | _RelayPassedOn):
            caller = PeerAddress(message.caller, message.host, message.port, message.key)
            dial: ev.Dial | ev.Relayed
            if isinstance(message, _PassedOn):
                dial = ev.Dial(0, caller, message.token, message.punch)
            else:
                relays = tuple(ev.RelayAddress(host, port) for host, port in message.relays)
                dial = ev.Relayed(0, caller, relays, message.ticket)
            try:
                dialled = push_dial(message.phone, dial)
            except Exception:  # a bug: say so, and keep hearing the others
                log.exception("pushing a dial passed on by server %s", message.reply_to)
                return
            answer: _Pushed | _NotPushed
            if type(dialled) is ev.Reversing:
                answer = _Pushed(message.ask, dialled.host, dialled.port)
            else:
                assert type(dialled) is ev.Failure
                answer = _NotPushed(message.ask, dialled.code, dialled.message)
            channel = DIAL_CHANNEL + message.reply_to
            answering = self._answer(channel, msgspec.msgpack.encode(answer))
            self._background.start(answering, "answering a request to connect back")
            return
        waiting = self._asked.get(message.ask)
        if waiting is None or waiting.done():
            log.info("an answer to a request to connect back came too late")
            return
        if isinstance(message, _Pushed):
            waiting.set_result(ev.Reversing(0, message.host, message.port))
        else:
            waiting.set_result(ev.Failure(0, message.code, message.message))

    async def _answer(self, channel: str, answer: bytes) -> None:
        try:
            await self._batches.run(lambda pipe: pipe.publish(channel, answer))
        except StoreError as exc:  # its asker's server answers `offline` in time
            log.warning("answering a request to connect back: %s", exc)

    async def pass_on(self, phone: str, dial: ev.Dial | ev.Relayed) -> Dialled:
        """Publish the request on the channel of the server `phone` is registered
        through (one script: read its owner, publish), and await that server's answer."""
        ask = next(self._asks)
        answered: asyncio.Future[Dialled] = asyncio.get_running_loop().create_future()
        self._asked[ask] = answered
        peer = dial.peer
        asked: _PassedOn | _RelayPassedOn
        if type(dial) is ev.Dial:
            asked = _PassedOn(
                ask, self.server_id, phone, peer.phone, peer.host, peer.port, peer.key,
                dial.token, dial.punch,
            )  # fmt: skip
        else:
            assert type(dial) is ev.Relayed
            asked = _RelayPassedOn(
                ask, self.server_id, phone, peer.phone, peer.host, peer.port, peer.key,
                [(relay.host, relay.port) for relay in dial.relays], dial.ticket,
            )  # fmt: skip
        args = [DIAL_CHANNEL, msgspec.msgpack.encode(asked)]
        try:
            [heard] = await self._batches.run(script(self._to_owner, [_online_key(phone)], args))
            if heard < 0:
                return ev.Failure(0, "offline", f"{phone} is not online")
            if heard == 0:
                return ev.Failure(0, "offline", f"{phone} is not online (its server is gone)")
            async with asyncio.timeout(self.answer_within):
                return await answered
        except TimeoutError:
            return ev.Failure(0, "offline", f"{phone} is not online (its server does not answer)")
        finally:
            del self._asked[ask]

    async def close(self) -> None:
        if self._renewing is not None:
            self._renewing.cancel()
        await self._background.close()
        if self._watching_replicas is not None:
            self._watching_replicas.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watching_replicas
        await self._batches.close()
        await self._registrations.close()
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        await self._redis.aclose()
        if not self._cluster:  # every connection, in use or not (a pub/sub one included)
            await self._redis.connection_pool.disconnect(inuse_connections=True)
        if self._named is not None:
            await self._named.aclose()
            await self._named.connection_pool.disconnect(inuse_connections=True)
        for master in self._masters.values():
            await master.aclose()
        if self._sentinel is not None:
            for sentinel in self._sentinel.sentinels:
                await sentinel.aclose()
                await sentinel.connection_pool.disconnect(inuse_connections=True)

    def _owner(self, owner: int) -> bytes:
        return f"{self.server_id}:{owner}".encode()

    async def register_limited(
        self, address: PeerAddress, owner: int, spend: Spend, bind: Bind | None
    ) -> Refused:
        """The bucket, then the registration script (which binds: `bind` is not used).
        Two round trips: one script for both would touch the source IP's bucket and the
        number's keys, which hash to different Redis Cluster slots; a registration comes
        once a session."""
        [allowed] = await self._batches.run(self._taking(spend))
        if not allowed:
            return "rate-limited"
        where: list[bytes | str | int] = [address.host, address.port, address.key]
        if address.local is not None:
            where.append(address.local)
        record = _pack([self._owner(owner), *where])
        pushed = _pack([address.phone, *where])
        keys = [_bind_key(address.phone), _online_key(address.phone)]
        args: list[bytes | str | int] = [address.key, self._owner(owner), record, self.ttl_ms]
        args += [CHANNEL, pushed]
        acked: int | None
        master: redis.Redis | None = None
        if self._cluster:
            outcome, acked, master = await self._register_at_master(keys, args)
        else:
            outcome, *waited = await self._registrations.run(script(self._register, keys, args))
            acked = waited[0] if waited else None
        if outcome == b"bound":
            return "number-bound"
        if outcome == b"online":
            return "number-online"
        if (
            acked is not None
            and acked < 1
            and await self._unreplicated(address.phone, address.key, master)
        ):
            # No replica has what this registration wrote, its binding maybe (made now,
            # or by an earlier try that was refused just so): a failover now would
            # forget it. Not acknowledged; the module tries again (its binding stays
            # for its key: a later try's WAIT covers it once a replica catches up).
            with contextlib.suppress(StoreError):  # (its presence goes with it)
                online = [_online_key(address.phone)]
                await self._batches.run(script(self._unregister, online, [self._owner(owner)]))
            log.error(
                "%s: no replica took its registration within %g s; refused",
                address.phone,
                BIND_WAIT,
            )
            self.on_event("binding-unreplicated")
            raise StoreError(f"no replica took the registration of {address.phone} in time")
        self._records[address.phone] = record
        return None

    def renew(self, phone: str, owner: int, taken: Callable[[], None]) -> None:
        """A heartbeat: keep `phone` online. Renewals are gathered for `RENEW_EVERY`
        seconds and sent as one pipeline (tens of thousands of users heartbeat every
        10 s: one round trip each would be most of a server's work); `taken()` is called
        if another connection has taken the number meanwhile."""
        self._renewals[phone] = (owner, taken)
        if self._renewing is None:
            loop = asyncio.get_running_loop()
            self._renewing = loop.call_later(RENEW_EVERY, self._start_renewals)

    def _start_renewals(self) -> None:
        self._background.start(self.flush(), "renewing registrations")

    async def flush(self) -> None:
        """Send the renewals gathered so far, now."""
        if self._renewing is not None:
            self._renewing.cancel()
            self._renewing = None
        batch, self._renewals = self._renewals, {}
        batch = {p: b for p, b in batch.items() if p in self._records}
        if not batch:
            return
        renewals = [
            script(
                self._renew,
                [_online_key(phone), _bind_key(phone)],
                [
                    self._owner(owner),
                    self._records[phone],
                    self.ttl_ms,
                    _key_of(self._records[phone]),
                ],
            )
            for phone, (owner, _) in batch.items()
        ]
        try:
            outcomes = await self._batches.run(*renewals)
        except StoreError as exc:
            log.warning("renewing %d registrations: %s", len(batch), exc)
            return
        for (phone, (_, taken)), outcome in zip(batch.items(), outcomes, strict=True):
            if outcome == b"restored":
                log.warning(
                    "%s: its binding was missing from the directory store (a failover that"
                    " lost it?); put back from its registration's key",
                    phone,
                )
                self.on_event("binding-restored")
            elif outcome == b"conflict":
                log.error(
                    "%s: the directory store binds it to another key than the one registered"
                    " here; this registration ends (an operator should check who owns it)",
                    phone,
                )
                self.on_event("binding-conflict")
                self._records.pop(phone, None)
                taken()
            elif outcome == b"taken":
                self._records.pop(phone, None)
                taken()

    async def unregister(self, phone: str, owner: int) -> bool:
        self._records.pop(phone, None)
        keys, args = [_online_key(phone)], [self._owner(owner)]
        [removed] = await self._batches.run(script(self._unregister, keys, args))
        return bool(removed)

    def _taking(self, spend: Spend) -> Command:
        """Redis' clock, not `spend.now`: the servers' clocks need not agree."""
        keys = [f"wa:rate:{spend.bucket}:{spend.key}"]
        return script(self._take, keys, [spend.rate, spend.burst, spend.cost])

    async def lookup(self, phones: list[str]) -> list[PeerAddress]:
        wanted = list(dict.fromkeys(phones))
        return _found(wanted, await self._batches.run(*map(_get, wanted))) if wanted else []

    async def lookup_limited(self, phones: list[str], spend: Spend) -> Found:
        """The bucket and the lookup in one batch: one round trip (what the numbers'
        records say is dropped unread when the bucket refuses)."""
        wanted = list(dict.fromkeys(phones))
        allowed, *records = await self._batches.run(self._taking(spend), *map(_get, wanted))
        return _found(wanted, records) if allowed else None

    async def count(self) -> int:
        """Users online on all servers (a scan: for tests and operators, not hot paths)."""
        total = 0
        async for _ in self._redis.scan_iter(match="wa:online:*", count=1000):
            total += 1
        return total

    async def release(self, phone: str) -> bool:
        """Free `phone` from its key (the operator's `server release`): any other key
        may bind it; the released one may not for `RELEASE_HOLD` seconds, and its
        registration ends (a module still holding the number cannot keep or re-take it)."""
        keys = [_bind_key(phone), _online_key(phone)]
        return bool(await self._release(keys=keys, args=[int(RELEASE_HOLD * 1000)]))

    async def key_of(self, phone: str) -> bytes | None:
        key = await self._redis.get(_bind_key(phone))
        if not isinstance(key, bytes) or key.startswith(b"released:"):
            return None
        return key
