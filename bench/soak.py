"""`make soak`: 10,000 texts sent with `"queue": true` from A to B, pipelined, while B is
killed (-9) and restarted and the server is killed (-9) and restarted during the flow;
prints how each send was answered, what B showed and A said, and how long it took.

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
        if isinstance(value, float):
            shown = f"{value:.2f}"
        elif isinstance(value, list):
            shown = str(len(value))
        else:
            shown = str(value)
        print(f"{field.name:>26}: {shown}")
    for answer in result.failed[:5]:
        print(f"  failed: {answer}")
    print(
        "every send queued or delivered; every text shown (again only what a killed B had"
        " printed unmarked); every queued one said delivered once; the outbox empty, the"
        " history agreeing"
        if result.ok
        else "FAILED"
    )
    return 0 if result.ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=10_000)
    raise SystemExit(asyncio.run(main(parser.parse_args().messages)))
