"""`make bench` keeps working: the benchmark runs end to end in its quick mode.

Nothing here asserts a timing; performance is measured by `make bench`, not tested.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parent.parent / "bench" / "run.py"

#: The quick bench takes ~22 s here (~10 s without redis-server, whose baseline and
#: shared-directory sections it then skips). Its phases have deadlines of their own
#: (bench/run.py `phase`), under this one for the whole run.
DEADLINE = 150


@pytest.mark.timeout(DEADLINE + 30)
async def test_the_benchmark_runs_end_to_end(tmp_path: Path) -> None:
    log = tmp_path / "bench.err"  # its progress (a phase per line) and errors
    with log.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(BENCH),
            "--quick",
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
            start_new_session=True,  # the bench and every process it starts: one group
        )
    try:
        async with asyncio.timeout(DEADLINE):
            out, _ = await proc.communicate()
    except TimeoutError:
        pytest.fail(f"the quick bench ran over {DEADLINE} s:\n{log.read_text()[-3000:]}")
    finally:
        # Whatever happened, nothing the bench started outlives the test (a server or a
        # holding loadgen left behind would keep running, and keep its pipes open).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
    assert proc.returncode == 0, log.read_text()[-3000:]
    table = out.decode()
    assert "| what | WhatsAp2p | baseline | ratio |" in table
    assert "## Paths through home routers" in table
    assert "| relayed: behind symmetric routers, both | relay |" in table
    assert "## Through a relay" in table
    assert "| 8 MB, sealed (Noise, 1 MiB bodies): throughput |" in table
    assert "| photo 2 MB, delivered and verified |" in table
    assert "| ... delivered (acknowledged) / printed by B | 1,000 / 1,000 of 1,000 | | |" in table
    assert "| users online | 1,000 |" in table  # loadgen held every user it registered
    assert "| errors | 0 |" in table
    assert "| uvloop echo (yardstick) |" in table  # the tail's yardstick, next to the lookups'
    assert "| lookups | " in table
    # Each round of lookups next to its redis-benchmark run (when redis is installed).
    rounds = "| round | redis GET/s | our lookups/s | ratio | our p50 / p99 |"
    assert rounds in table or "No redis-benchmark baseline in this run" in table
