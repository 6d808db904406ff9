"""The suite's own guard: an error an event loop would only log fails the test."""

from __future__ import annotations

import asyncio
import gc

from tests.conftest import LOOP_ERRORS


async def test_a_task_exception_nobody_retrieves_is_reported_to_the_suite() -> None:
    async def fails() -> None:
        raise RuntimeError("nobody looks")

    task = asyncio.get_running_loop().create_task(fails())
    await asyncio.wait([task])
    del task
    gc.collect()
    assert [str(context.get("exception")) for context in LOOP_ERRORS] == ["nobody looks"]
    LOOP_ERRORS.clear()  # (seen here: the guard would fail this test otherwise)
