"""Turning what peers send into things a terminal shows safely.

Everything from a peer (text, names, group names, file names) becomes a `rich.text.Text`
built from the plain string: never parsed as Rich or Textual markup, and made safe as
in the plain mode (ui/terminal.py): a message keeps its line breaks, a name none.
Photos become a half-block rendering (two pixels per cell, `▀` with the top pixel as
foreground and the bottom one as background), which every colour terminal shows, tmux
included.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from PIL import Image
from rich.style import Style
from rich.text import Text

from whatsap2p.ui.terminal import safe_text

__all__ = ["clock_of", "halfblocks", "literal", "message"]


def literal(text: str, style: str | Style = "") -> Text:
    """A name as typed (markup stays characters), on one line: every control escaped."""
    return Text(safe_text(text), style=style, no_wrap=False)


def message(text: str, style: str | Style = "") -> Text:
    """A message, or our own output, as typed: its line breaks kept, other controls
    escaped."""
    return Text(safe_text(text, lines=True), style=style, no_wrap=False)


def clock_of(timestamp: str) -> str:
    """`HH:MM` in local time of an ISO-8601 stamp; `--:--` for a stamp that is not one."""
    try:
        return dt.datetime.fromisoformat(timestamp).astimezone().strftime("%H:%M")
    except ValueError:
        return "--:--"


def halfblocks(path: Path, columns: int, rows: int) -> Text:
    """A preview of the image at `path` in at most `columns` x `rows` cells (blocking:
    call it on a thread). Raises OSError or PIL errors for a file that is not an image."""
    with Image.open(path) as image:
        image.draft("RGB", (columns, rows * 2))  # JPEG: decode at a fraction of the size
        picture = image.convert("RGB")
    picture.thumbnail((columns, rows * 2), Image.Resampling.BILINEAR)
    width, height = picture.size
    pixels = picture.load()
    assert pixels is not None
    out = Text(no_wrap=True, overflow="crop")
    for y in range(0, height, 2):
        for x in range(width):
            top = pixels[x, y]
            bottom = pixels[x, y + 1] if y + 1 < height else (0, 0, 0)
            assert isinstance(top, tuple)
            assert isinstance(bottom, tuple)
            out.append("▀", Style(color=_rgb(top), bgcolor=_rgb(bottom)))
        if y + 2 < height:
            out.append("\n")
    return out


def _rgb(pixel: tuple[int, ...]) -> str:
    return f"rgb({pixel[0]},{pixel[1]},{pixel[2]})"
