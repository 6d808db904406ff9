"""Real pictures on terminals that can show them (kitty's graphics protocol, Sixel),
through textual-image; elsewhere (tmux, most terminals) the half-block preview of
`render.halfblocks`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from textual.widget import Widget

__all__ = ["terminal_graphics"]

log = logging.getLogger(__name__)


def terminal_graphics() -> Callable[[Path], Widget] | None:
    """The image widget for this terminal's graphics protocol, or None for half blocks.

    It asks the terminal what it supports (textual-image does, when imported): call it
    on a real terminal, before the app starts reading the keyboard."""
    try:
        from textual_image import renderable
    except Exception as exc:  # a terminal that answers oddly: keep the half blocks
        log.info("no terminal graphics: %s", exc)
        return None
    if renderable.Image is renderable.TGPImage:
        from textual_image.widget import TGPImage

        return TGPImage
    if renderable.Image is renderable.SixelImage:
        from textual_image.widget import SixelImage

        return SixelImage
    return None
