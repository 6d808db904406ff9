"""What may reach a terminal: text from peers (and names, file names), made safe to print.

A terminal obeys what it is sent: ESC starts control sequences (colours, cursor moves,
OSC 8 links, window titles, clipboard writes), C1 controls do the same in one byte, a
carriage return or backspace overwrites what was shown, bidi overrides reorder it
(Trojan Source, CVE-2021-42574), U+2028 and U+2029 break lines where a reader expects
none, and thousands of combining marks on one character ("Zalgo") smear over the lines
around it. So every such character is shown as an escape (`\\x1b`, `\\u202e`), a run of
combining marks is cut to a few, and line breaks are kept as line breaks only where a
text may have several lines (a message), never in a name.
"""

from __future__ import annotations

import unicodedata
from typing import Final

__all__ = ["MAX_COMBINING", "safe_text"]

#: Combining marks shown on one character; the rest of a longer run is counted instead.
#: (Real scripts stack three or four at most: Vietnamese, Hebrew points, Devanagari.)
MAX_COMBINING: Final = 4

#: Bidi controls; most are format characters (Cf) anyway, listed for the reader.
_BIDI: Final = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
#: Categories shown escaped: controls (C0, DEL, C1), format, line and paragraph
#: separators, surrogates, private use, unassigned.
_ESCAPED: Final = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})
_COMBINING: Final = frozenset({"Mn", "Me", "Mc"})
#: Format characters that join or part letters (emoji sequences, Persian, Indic
#: scripts): they cannot move or hide anything, so they are shown as they are.
_JOINERS: Final = frozenset("\u200c\u200d")


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe_text(text: str, *, lines: bool = False) -> str:
    """`text` safe to print on a terminal (see the module's docstring). With `lines`, a
    line break (LF, or CR LF) stays one; any other control is escaped."""
    out: list[str] = []
    marks = 0  # combining marks on the current character so far
    skipped = 0  # marks of the current run left out
    text = text.replace("\r\n", "\n") if lines else text
    for char in text:
        category = unicodedata.category(char)
        if category in _COMBINING:
            marks += 1
            if marks > MAX_COMBINING:
                skipped += 1
                continue
            out.append(char)
            continue
        if skipped:
            out.append(f"[+{skipped} combining marks]")
        marks = skipped = 0
        if (char == "\n" and lines) or char == "\t" or char in _JOINERS:
            out.append(char)
        elif category in _ESCAPED or char in _BIDI:
            out.append(_escape(char))
        else:
            out.append(char)
    if skipped:
        out.append(f"[+{skipped} combining marks]")
    return "".join(out)
