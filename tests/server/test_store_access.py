"""Reaching the shared store: Redis over TLS, with a password kept out of the command
line, through Sentinels that ask for one too; and any other URL refused in one line.
Real redis-server processes (issue 26, item 4)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.e2e.procs import ServerProcess, run
from tests.redis_server import redis_process, redis_sentinel, redis_tls
from tests.servers import directory_client, running_server
from whatsap2p.errors import StoreError
from whatsap2p.protocol.keys import StaticKey
from whatsap2p.server.redis_store import RedisDirectory

ALICE, BOB = "+5511999990001", "+5511999990002"
SECRET = "correct-horse-battery-staple"


async def test_a_directory_on_redis_over_tls_with_a_password() -> None:
    with redis_tls(SECRET) as (url, _):
        async with running_server(directory=RedisDirectory(url, password=SECRET)) as (_, port):
            alice = await directory_client(port)
            await alice.register(ALICE, 4001)
            bob = await directory_client(port)
            await bob.register(BOB, 4002)
            assert sorted(await bob.lookup([ALICE, BOB])) == [ALICE, BOB]
            for client in (alice, bob):
                await client.close()
        wrong = RedisDirectory(url.replace("rediss://", f"rediss://:{SECRET}x@"))
        with pytest.raises(StoreError, match="cannot use Redis at") as refused:
            async with running_server(directory=wrong):
                pass
        assert SECRET not in str(refused.value)  # (the URL is shown without it)
        assert "rediss://:***@127.0.0.1" in str(refused.value)


async def test_the_server_takes_the_password_from_a_file_or_the_environment(
    tmp_path: Path,
) -> None:
    secret_file = tmp_path / "redis-password"
    secret_file.write_text(SECRET + "\n")
    secret_file.chmod(0o600)
    with redis_tls(SECRET) as (url, _):
        key = ("--key", str(tmp_path / "server.key"), "--new-key")
        by_file = await ServerProcess.start(
            tmp_path / "a.sqlite3", "--redis", url, "--redis-password-file", str(secret_file), *key
        )
        os.environ["WHATSAP2P_REDIS_PASSWORD"] = SECRET
        try:
            by_env = await ServerProcess.start(tmp_path / "b.sqlite3", "--redis", url, *key)
        finally:
            del os.environ["WHATSAP2P_REDIS_PASSWORD"]
        try:
            alice = await directory_client(by_file.port)
            await alice.register(ALICE, 4001)
            bob = await directory_client(by_env.port)
            await bob.register(BOB, 4002)
            assert ALICE in await bob.lookup([ALICE])  # one directory, over TLS
            for client in (alice, bob):
                await client.close()
        finally:
            assert await by_file.stop() == 0
            assert await by_env.stop() == 0
        code, _, err = await run(
            "server", "--port", "0", "--redis", url, *key[:2], "--db", str(tmp_path / "c.db")
        )
        assert code != 0  # no password: refused, in one line
        assert err.count("\n") == 1
        assert err.startswith("whatsap2p: cannot use Redis at rediss://127.0.0.1:")


async def test_sentinels_that_ask_for_a_password() -> None:
    """The password in the URL, or given apart (from a file or the environment): for
    the sentinels and for the master they name."""
    key = StaticKey.generate()
    with (
        redis_process("--requirepass", SECRET) as (master_url, _),
        redis_sentinel(master_url, password=SECRET) as sentinel_url,
    ):
        with_password = sentinel_url.replace("sentinel://", f"sentinel://:{SECRET}@")
        for url, password in ((with_password, None), (sentinel_url, SECRET)):
            directory = RedisDirectory(url, password=password)
            async with running_server(directory=directory) as (_, port):
                alice = await directory_client(port, key)
                await alice.register(ALICE, 4001)
                assert ALICE in await alice.lookup([ALICE])
                await alice.unregister()
                await alice.close()


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("cluster://127.0.0.1:notaport", "not a cluster URL: cluster://127.0.0.1:notaport"),
        ("cluster://127.0.0.1:7000/0", "not a cluster URL"),
        ("http://127.0.0.1:6379", "not a Redis URL: http://127.0.0.1:6379"),
        ("redis://127.0.0.1:notaport/0", "not a Redis URL"),
        ("127.0.0.1:6379", "not a Redis URL"),
        (f"sentinel://:{SECRET}@h:1/", "not a sentinel URL: sentinel://:***@h:1/"),
    ],
)
async def test_any_other_url_is_one_clear_line(url: str, said: str, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=re.escape(said)):
        RedisDirectory(url)
    code, out, err = await run(
        "server", "--port", "0", "--redis", url, "--new-key", "--db", str(tmp_path / "x.db")
    )
    assert (code, out) == (1, "")
    assert err.startswith("whatsap2p: ")
    assert err.count("\n") == 1  # one line, never a traceback
    assert SECRET not in err
