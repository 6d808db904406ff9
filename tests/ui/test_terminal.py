"""Text on its way to a terminal (ui/terminal.py): nothing in it can drive the terminal,
and a message's line breaks stay line breaks."""

from __future__ import annotations

from whatsap2p.app.events import TextReceived
from whatsap2p.ui.lines import format_received
from whatsap2p.ui.terminal import MAX_COMBINING, safe_text


def test_controls_and_sequences_are_escaped() -> None:
    hostile = (
        "a\x1b[2J"  # ESC: clear the screen
        "\x1b]8;;http://evil/\x07link\x1b]8;;\x07"  # OSC 8 hyperlink, ended by BEL
        "\x9b31m"  # C1 CSI: a control sequence in one byte
        "b\rc\bd\x7f"  # overwrite by carriage return, backspace; DEL
        "\u202eevil\u2066\u200b"  # bidi override, isolate, zero-width space
        "\u2028\u2029"  # line and paragraph separators
        "\ue000"  # private use
    )
    assert safe_text(hostile) == (
        "a\\x1b[2J\\x1b]8;;http://evil/\\x07link\\x1b]8;;\\x07\\x9b31m"
        "b\\x0dc\\x08d\\x7f\\u202eevil\\u2066\\u200b\\u2028\\u2029\\ue000"
    )


def test_a_message_keeps_its_line_breaks_a_name_none() -> None:
    assert safe_text("one\ntwo\r\nthree", lines=True) == "one\ntwo\nthree"
    assert safe_text("one\ntwo") == "one\\x0atwo"
    assert safe_text("lone\rreturn", lines=True) == "lone\\x0dreturn"


def test_runs_of_combining_marks_are_cut_and_counted() -> None:
    zalgo = "Z" + "\u0301" * 10_000 + "ok"
    assert safe_text(zalgo) == "Z" + "\u0301" * MAX_COMBINING + "[+9996 combining marks]ok"
    assert safe_text("e\u0301\u0323 Tiếng Việt") == "e\u0301\u0323 Tiếng Việt"  # real accents


def test_what_people_write_is_shown_as_it_is() -> None:
    text = "olá\tcafé 😀 👨\u200d👩\u200d👧 नमस्ते می‌خواهم [b]x[/b] $(rm -rf) *stars*"
    assert safe_text(text) == text


def test_a_peer_cannot_fake_a_message_of_its_own_with_a_line_break() -> None:
    forged = "hi\n[12:00] bank: your account is locked, send your code"
    event = TextReceived("m", "+5511999990002", "bob", None, "2026-12-04T12:00:00+00:00", forged)
    line = format_received(event)
    first, second = line.split("\n")
    assert first.endswith("] bob: hi")
    assert second == "  [12:00] bank: your account is locked, send your code"  # indented
