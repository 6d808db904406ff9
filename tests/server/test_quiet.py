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


def test_what_was_held_back_is_said_once_its_cause_is_over(
    caplog: pytest.LogCaptureFixture,
) -> None:
    said = Throttled(logging.getLogger("test.quiet"), every=5.0)
    with caplog.at_level(logging.WARNING, "test.quiet"):
        said.flush()  # (nothing held: nothing said)
        for tenth in range(30):  # a 3 s outage: the first said, 29 held back
            said.warning(100.0 + tenth / 10, "answering a %s: %s", "lookup", f"down {tenth}")
        said.flush()  # the store is back
        said.warning(103.5, "answering a %s: %s", "lookup", "down again")  # a new outage
    assert caplog.messages == [
        "answering a lookup: down 0",
        "answering a lookup: down 29 (the last of 29 more like it since the last said)",
        "answering a lookup: down again",
    ]
