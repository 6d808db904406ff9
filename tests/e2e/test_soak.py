"""A shortened soak in the suite; `make soak` runs it with 10,000 messages."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.soak import soak


async def test_queued_messages_survive_receiver_kills_and_a_server_restart(
    tmp_path: Path,
) -> None:
    result = await soak(tmp_path, 300)
    assert (result.b_kills, result.server_restarts) == (2, 1)
    assert result.missing_shown == 0  # every message shown
    # A kill between printing a message and marking it shown repeats that one message
    # (same id) at the next start: at most one per kill, never a loss.
    assert result.duplicates_shown <= result.b_kills
    assert result.stored_at_b == 300
    assert result.delivered_at_a == 300
    assert result.delivered_notifications == 300
