"""Modal dialogs: a small form (new contact, new group, attach a photo), the trust
prompt shown when a contact's key changes, and the outbox (what waits, to cancel)."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.suggester import Suggester
from textual.widgets import Button, Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from whatsap2p.ui.tui.model import Waiting
from whatsap2p.ui.tui.render import literal

__all__ = [
    "Field",
    "FormDialog",
    "OutboxDialog",
    "PathSuggester",
    "TrustDialog",
    "complete_path",
]


class PathSuggester(Suggester):
    """Completes file paths as they are typed (→ or End accepts); `~` is the home folder."""

    def __init__(self) -> None:
        super().__init__(use_cache=False, case_sensitive=True)

    async def get_suggestion(self, value: str) -> str | None:
        return await asyncio.to_thread(complete_path, value)


def complete_path(value: str) -> str | None:
    """The first entry of the folder `value` names that completes it (hidden ones only
    when asked for with a dot); a folder gets its separator."""
    folder, partial = os.path.split(os.path.expanduser(value))
    try:
        names = sorted(os.listdir(folder or "."))
    except OSError:
        return None
    for name in names:
        if name == partial or not name.startswith(partial):
            continue
        if name.startswith(".") and not partial.startswith("."):
            continue
        completed = value[: len(value) - len(partial)] + name
        if os.path.isdir(os.path.join(folder or ".", name)):
            completed += os.sep
        return completed
    return None


@dataclass(frozen=True)
class Field:
    label: str
    placeholder: str = ""
    paths: bool = False  # complete file paths


class FormDialog(ModalScreen[list[str] | None]):
    """A title, some fields, OK and Cancel; dismissed with the values, or None."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str, fields: list[Field]) -> None:
        super().__init__()
        self._title = title
        self._fields = fields
        self._inputs = [
            Input(placeholder=f.placeholder, suggester=PathSuggester() if f.paths else None)
            for f in fields
        ]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(Text(self._title, style="bold"), markup=False)
            for field, box in zip(self._fields, self._inputs, strict=True):
                yield Label(Text(field.label), markup=False)
                yield box
            with Horizontal(classes="buttons"):
                yield Button("OK", variant="primary", id="ok")
                yield Button("Cancel", id="cancel")

    @on(Input.Submitted)
    def _next_or_done(self, event: Input.Submitted) -> None:
        index = self._inputs.index(event.input)
        if index + 1 < len(self._inputs):
            self._inputs[index + 1].focus()
        else:
            self._done()

    @on(Button.Pressed, "#ok")
    def _done(self) -> None:
        self.dismiss([box.value.strip() for box in self._inputs])

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)


class TrustDialog(ModalScreen[bool]):
    """A contact proved a key other than the one pinned for it: show both fingerprints;
    True when the person accepts the new key. "Not now" has the focus: Enter pressed out
    of habit must not accept a key nobody compared; only a deliberate choice trusts it."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "later", "Not now")]
    AUTO_FOCUS = "#later"

    def __init__(self, phone: str, name: str | None, old: str | None, new: str) -> None:
        super().__init__()
        self._phone, self._name, self._old, self._new = phone, name, old, new

    def compose(self) -> ComposeResult:
        who = literal(f"{self._name} ({self._phone})" if self._name else self._phone)
        text = Text()
        text.append("The key of ", style="bold")
        text.append_text(who)
        text.append(" changed.\n\n", style="bold")
        text.append("Before:\n", style="dim")
        text.append(_grouped(self._old) if self._old else "(none pinned)")
        text.append("\nNow:\n", style="dim")
        text.append(_grouped(self._new), style="bold yellow")
        text.append(
            "\n\nCompare the new fingerprint with the person (in person or on a call). "
            "Nothing is sent to or accepted from this number until you trust it."
        )
        with Vertical(classes="dialog trust"):
            yield Static(text, markup=False)
            with Horizontal(classes="buttons"):
                yield Button("Trust the new key", variant="warning", id="trust")
                yield Button("Not now", id="later")

    @on(Button.Pressed, "#trust")
    def _trust(self) -> None:
        self.dismiss(True)

    @on(Button.Pressed, "#later")
    def action_later(self) -> None:
        self.dismiss(False)


class OutboxDialog(ModalScreen[str | None]):
    """The messages waiting for recipients who are offline or out of reach: Enter on one
    cancels it for them (dismissed with its id), Escape closes."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "close", "Close")]

    def __init__(self, waiting: list[Waiting]) -> None:
        super().__init__()
        self._waiting = waiting

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            title = "Waiting to be delivered" if self._waiting else "Nothing is waiting"
            yield Label(Text(title, style="bold"), markup=False)
            if self._waiting:
                yield Label(Text("Enter cancels the one chosen; Escape closes.", style="dim"))
                options = []
                for message in self._waiting:
                    line = Text(no_wrap=True, overflow="ellipsis")
                    line.append("⏳ ", style="yellow")
                    line.append_text(literal(message.to, style="bold"))
                    line.append(": ")
                    line.append_text(literal(message.what))
                    line.append(f"  {message.since}", style="dim")
                    options.append(Option(line, id=message.id))
                yield OptionList(*options, id="waiting")
            with Horizontal(classes="buttons"):
                yield Button("Close", id="close")

    @on(OptionList.OptionSelected, "#waiting")
    def _chosen(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)

    @on(Button.Pressed, "#close")
    def action_close(self) -> None:
        self.dismiss(None)


def _grouped(fingerprint: str) -> str:
    """64 hex digits in groups of four, two lines of eight groups (fits 80 columns)."""
    groups = [fingerprint[i : i + 4] for i in range(0, len(fingerprint), 4)]
    return " ".join(groups[:8]) + "\n" + " ".join(groups[8:])
