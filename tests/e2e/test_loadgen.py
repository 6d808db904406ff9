"""End to end: `whatsap2p loadgen` against a real server."""

from __future__ import annotations

import json
from pathlib import Path

from tests.e2e.procs import ServerProcess, run

KEYS = {
    "users_online",
    "register_per_s",
    "lookups_per_s",
    "lookup_p50_ms",
    "lookup_p99_ms",
    "errors",
}


async def test_loadgen_registers_holds_and_looks_up(tmp_path: Path) -> None:
    server = await ServerProcess.start(tmp_path / "bindings.sqlite3")
    try:
        args = ["loadgen", server.address, "--users", "40", "--lookups", "400"]
        args += [
            "--concurrency",
            "6",
            "--workers",
            "2",
            "--json",
            "--server-key",
            server.fingerprint,
        ]
        code, out, err = await run(*args)
        assert code == 0, err
        result = json.loads(out)
        assert set(result) == KEYS
        assert result["users_online"] == 40
        assert result["errors"] == 0  # every lookup found the user it asked for
        assert result["register_per_s"] > 0
        assert result["lookups_per_s"] > 0
        assert 0 < result["lookup_p50_ms"] <= result["lookup_p99_ms"]

        # The same numbers come back with the same keys (the server keeps the bindings).
        code, out, err = await run(*args)
        assert code == 0, err
        assert json.loads(out)["users_online"] == 40

        # Other keys for the same numbers are refused: counted as errors, exit 1.
        code, out, _ = await run(*args[:-2], "--seed", "someone-else")
        assert code == 1
        refused = json.loads(out)
        assert refused["users_online"] == 0
        assert refused["errors"] == 40
    finally:
        assert await server.stop() == 0


async def test_loadgen_refuses_an_impostor_server(tmp_path: Path) -> None:
    server = await ServerProcess.start(tmp_path / "bindings.sqlite3")
    try:
        code, out, _ = await run(
            "loadgen", server.address, "--users", "3", "--json", "--server-key", "ab" * 32
        )
        assert code == 1
        assert json.loads(out)["users_online"] == 0
    finally:
        assert await server.stop() == 0
