"""`make bench` keeps working: the benchmark runs end to end in its quick mode.

Nothing here asserts a timing; performance is measured by `make bench`, not tested.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

BENCH = Path(__file__).parent.parent / "bench" / "run.py"


async def test_the_benchmark_runs_end_to_end() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(BENCH),
        "--quick",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()[-2000:]
    table = out.decode()
    assert "| what | WhatsAp2p | baseline | ratio |" in table
    assert "| photo 2 MB, delivered and verified |" in table
    assert "| ... delivered (acknowledged) / printed by B | 1,000 / 1,000 of 1,000 | | |" in table
    assert "| users online | 1,000 |" in table  # loadgen held every user it registered
    assert "| errors | 0 |" in table
    assert "| uvloop echo (yardstick) |" in table  # the tail's yardstick, next to the lookups'
    assert "| lookups | " in table
    # Each round of lookups next to its redis-benchmark run (when redis is installed).
    rounds = "| round | redis GET/s | our lookups/s | ratio | our p50 / p99 |"
    assert rounds in table or "No redis-benchmark baseline in this run" in table
