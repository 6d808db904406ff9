from __future__ import annotations

import pytest

from whatsap2p.app.events import IdentityChanged, ServerConnectionChanged, TextReceived
from whatsap2p.ui.lines import escape_untrusted, format_event, format_received, split_target


@pytest.mark.parametrize(
    ("rest", "expected"),
    [
        ("bob hello  there", ("bob", "hello  there")),
        ('"my mom" she said "hi"', ("my mom", 'she said "hi"')),
        ("'the gang' ok", ("the gang", "ok")),
        ("+55 11 hello", ("+55", "11 hello")),
        ("bob", ("bob", "")),
    ],
)
def test_split_target_keeps_the_text_as_typed(rest: str, expected: tuple[str, str]) -> None:
    assert split_target(rest) == expected


def test_unclosed_quote_is_an_error() -> None:
    with pytest.raises(ValueError, match="no closing quotation"):
        split_target('"my mom hello')


def test_untrusted_text_cannot_drive_the_terminal() -> None:
    assert escape_untrusted("a\x1b[2Jb\r\n\u202e\u2066\x7f\u200bé😀") == (
        "a\\x1b[2Jb\\x0d\\x0a\\u202e\\u2066\\x7f\\u200bé😀"
    )


def test_group_messages_name_the_group() -> None:
    event = TextReceived("m", "+5511999990001", None, "fam\x1b", "2026-11-27T10:00:00+00:00", "hi")
    line = format_received(event)
    assert line.endswith("] +5511999990001 [fam\\x1b]: hi")


def test_a_key_change_is_announced_with_what_to_do() -> None:
    line = format_event(IdentityChanged("+5511999990002", "ab" * 32))
    assert line.startswith("! the key of +5511999990002 changed (now abab")
    assert line.endswith("/trust +5511999990002")


def test_the_server_connection_state_is_announced() -> None:
    assert "reconnecting" in format_event(ServerConnectionChanged("lost"))
    assert format_event(ServerConnectionChanged("restored")) == "! connected to the server again"
