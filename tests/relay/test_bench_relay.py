"""bench/relay.py keeps working: it runs end to end in its quick mode (no timing is
asserted: the relay's throughput is measured by the benchmark, not tested)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parent.parent.parent / "bench" / "relay.py"


@pytest.mark.timeout(120)
async def test_the_relay_benchmark_runs_end_to_end() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(BENCH),
        "--quick",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 100)
    assert proc.returncode == 0, err.decode()[-3000:]
    table = out.decode()
    assert "| what | direct | through the relay | relay / direct |" in table
    for row in (
        "| 8 MB, raw bytes: throughput |",
        "| 8 MB, sealed (Noise, 1 MiB bodies): throughput |",
        "| 100-byte round trip, p50 |",
        "| relay CPU per MB forwarded |",
        "| reads the relay paused for a byte rate | | 0 | |",  # its defaults: one user
    ):
        assert row in table, table
