"""The interactive terminal UI, built with Textual."""

from whatsap2p.ui.tui.app import ChatApp

__all__ = ["ChatApp"]
