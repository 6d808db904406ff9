"""A warning that may come with every request is said at most once every few seconds,
with how many were held back (time passed in)."""

from __future__ import annotations

import logging

import pytest

from whatsap2p.server.quiet import Throttled


def test_a_flood_of_one_warning_is_said_once_per_period_with_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    said = Throttled(logging.getLogger("test.quiet"), every=5.0)
    with caplog.at_level(logging.WARNING, "test.quiet"):
        for tenth in range(120):  # 12 s of a request every 0.1 s
            said.warning(100.0 + tenth / 10, "answering a %s: %s", "lookup", "store down")
        said.warning(200.0, "answering a %s: %s", "register", "store down")
    assert caplog.messages == [
        "answering a lookup: store down",  # at 100 s
        "answering a lookup: store down (and 49 more like it since the last said)",  # 105 s
        "answering a lookup: store down (and 49 more like it since the last said)",  # 110 s
        "answering a register: store down (and 19 more like it since the last said)",
    ]
