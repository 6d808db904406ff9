"""How a `--redis` URL becomes a Redis client (docs/deployment.md): `redis://`,
`rediss://`, `unix://`; `sentinel://` and `sentinels://` (a client that follows the master
the sentinels name); `cluster://` and `clusters://`. User and password in the URL or given
apart (a file, the environment); `shown()` is what logs and errors say of a URL."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote

import redis.asyncio as redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff

from whatsap2p.errors import StoreError

__all__ = ["SENTINEL_TIMEOUT", "client_for", "cluster_parts", "sentinel_pool", "shown"]

#: How long a sentinel may take to answer (connect, or a command) before the next is asked.
SENTINEL_TIMEOUT = 1.0

#: The URLs `--redis` takes (docs/deployment.md).
_SCHEMES = ("redis://", "rediss://", "unix://", "sentinel://", "sentinels://", "cluster://")


def _hosts(
    where: str, password: str | None, wrong: StoreError
) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """`[USER:PASSWORD@]HOST:PORT,...`: the hosts, and the credentials to use (the
    password given apart when the URL has none)."""
    credentials, _, hosts = where.rpartition("@")
    try:
        found = [(h, int(p)) for h, _, p in (a.rpartition(":") for a in hosts.split(","))]
    except ValueError:
        raise wrong from None
    if not all(h for h, _ in found):
        raise wrong
    user, _, secret = credentials.partition(":")
    extra = {"password": unquote(secret) if secret else password, "username": unquote(user)}
    return found, {k: v for k, v in extra.items() if v}


def _cluster(url: str, password: str | None) -> Any:
    """A Redis Cluster client, from `cluster://[USER:PASSWORD@]HOST:PORT[,HOST:PORT...]`
    (any of its nodes as seeds; `clusters://` over TLS)."""
    seeds, extra = cluster_parts(url, password)
    nodes = [ClusterNode(host, port) for host, port in seeds]
    return RedisCluster(startup_nodes=nodes, decode_responses=False, **extra)


def cluster_parts(url: str, password: str | None) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """A cluster URL's seeds, and the options to connect to its nodes with."""
    scheme, _, rest = url.partition("://")
    where, _, tail = rest.partition("/")
    wrong = StoreError(
        f"not a cluster URL: {shown(url)} (cluster://[USER:PASSWORD@]HOST:PORT,HOST:PORT...)"
    )
    if tail.strip("/"):
        raise wrong
    seeds, extra = _hosts(where, password, wrong)
    if scheme == "clusters":
        extra["ssl"] = True
    return seeds, extra


def shown(url: str) -> str:
    """`url` without its password (in the credentials, which may hold '@' and '/', or in
    a `password=` option), to log or to say in an error."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest:
        credentials, _, hosts = rest.rpartition("@")
        user = credentials.partition(":")[0] if ":" in credentials else ""
        rest = f"{user}:***@{hosts}"
    rest = re.sub(r"(?i)(password=)[^&]*", r"\1***", rest)
    return f"{scheme}{sep}{rest}"


def client_for(url: str, password: str | None = None) -> tuple[Any, Sentinel | None]:
    """The client for `url`, and the Sentinel it goes through (None for a plain URL).
    `password`: for a URL that has none (given from a file or the environment, so that
    it stays out of process lists). `sentinels://` is `sentinel://` over TLS."""
    if url.startswith(("cluster://", "clusters://")):
        return _cluster(url, password), None
    if not url.startswith(_SCHEMES):
        raise StoreError(
            f"not a Redis URL: {shown(url)} (redis://[USER:PASSWORD@]HOST:PORT/DB,"
            " rediss://... over TLS, unix://PATH, sentinel://[USER:PASSWORD@]HOST:PORT,.../"
            "SERVICE/DB)"
        )
    extra: dict[str, Any] = {} if password is None else {"password": password}
    if not url.startswith(("sentinel://", "sentinels://")):
        try:
            return redis.Redis.from_url(url, decode_responses=False, **extra), None
        except ValueError as exc:
            raise StoreError(f"not a Redis URL: {shown(url)} ({exc})") from None
    scheme, _, rest = url.partition("://")
    where, _, rest = rest.partition("/")
    service, _, db = rest.partition("/")
    wrong = StoreError(
        f"not a sentinel URL: {shown(url)} (sentinel://[USER:PASSWORD@]HOST:PORT,.../SERVICE/DB)"
    )
    sentinels, extra = _hosts(where, password, wrong)
    try:
        number = int(db or 0)
    except ValueError:
        raise wrong from None
    if not service:
        raise wrong
    if scheme == "sentinels":
        extra["ssl"] = True
    # The sentinels' own connections get a timeout too (`sentinel_kwargs`, once given,
    # is all they get), and no retries (redis-py's default backs off and tries 3 more
    # times: 14 s for one frozen sentinel): they are asked every second and when a
    # registration's WAIT failed; a frozen one must not hold either (the next is asked).
    asking = {
        "socket_timeout": SENTINEL_TIMEOUT,
        "socket_connect_timeout": SENTINEL_TIMEOUT,
        "retry": Retry(NoBackoff(), 0),
    }
    watchers = Sentinel(  # type: ignore[no-untyped-call]
        sentinels, socket_timeout=5.0, sentinel_kwargs={**asking, **extra}, **extra
    )
    master: redis.Redis = watchers.master_for(service, db=number, decode_responses=False)
    return master, watchers


def sentinel_pool(client: redis.Redis) -> SentinelConnectionPool:
    """The pool of a client that `Sentinel.master_for` made."""
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    return pool
