"""`make soak`: 10,000 queued messages from A to B while B is killed (-9) twice and the
server restarted once; prints what arrived, how often it was shown, and how long it took.

    python bench/soak.py [--messages N]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.e2e.soak import soak  # the harness lives with the tests


async def main(messages: int) -> int:
    with tempfile.TemporaryDirectory(prefix="whatsap2p-soak-") as root:
        result = await soak(Path(root), messages)
    for field in dataclasses.fields(result):
        value = getattr(result, field.name)
        shown = f"{value:.2f}" if isinstance(value, float) else str(value)
        print(f"{field.name:>24}: {shown}")
    ok = (
        result.missing_shown == 0
        and result.duplicates_shown <= result.b_kills
        and result.stored_at_b == messages
        and result.delivered_at_a == messages
    )
    print(
        "every message stored once, shown (at most one repeat per kill), marked delivered"
        if ok
        else "FAILED"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=10_000)
    raise SystemExit(asyncio.run(main(parser.parse_args().messages)))
