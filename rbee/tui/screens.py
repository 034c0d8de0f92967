"""The dashboard's dialogs: the spawn form, a yes/no confirmation, and the key help (`?`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Grid, Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, Static

__all__ = ["ConfirmScreen", "HelpScreen", "SpawnScreen"]

ENGINES = ("auto", "llamacpp", "mlx", "exllamav2")


class SpawnScreen(ModalScreen[dict[str, Any] | None]):
    """Asks for a worker's model, hive, engine and device; dismisses with the operation."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, *, model: str, hives: Sequence[str], hive: str) -> None:
        super().__init__()
        self._model = model
        self._hives = list(hives) or ["localhost"]
        self._hive = hive if hive in self._hives else self._hives[0]

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label("Spawn a worker", classes="title")
            with Grid(id="form"):
                yield Label("model")
                yield Input(self._model, id="model")
                yield Label("hive")
                yield Select([(h, h) for h in self._hives], value=self._hive, id="hive",
                             allow_blank=False)  # fmt: skip
                yield Label("engine")
                yield Select([(e, e) for e in ENGINES], value="auto", id="engine",
                             allow_blank=False)  # fmt: skip
                yield Label("device")
                yield Input("auto", id="device", placeholder="cpu, cuda:0, metal:0 or auto")
            with Horizontal(classes="buttons"):
                yield Button("Spawn", variant="primary", id="spawn")
                yield Button("Cancel", id="cancel")

    def operation(self) -> dict[str, Any]:
        """The `worker.spawn` job operation the form describes."""
        model = self.query_one("#model", Input).value.strip()
        device = self.query_one("#device", Input).value.strip() or "auto"
        return {
            "kind": "worker.spawn",
            "model": model,
            "hive": str(self.query_one("#hive", Select).value),
            "engine": str(self.query_one("#engine", Select).value),
            "device": device,
        }

    def _submit(self) -> None:
        if not self.query_one("#model", Input).value.strip():
            self.notify("a model id is needed", severity="error")
            return
        self.dismiss(self.operation())

    def on_input_submitted(self, _: Input.Submitted) -> None:
        self._submit()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "spawn":
            self._submit()
        else:
            self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class ConfirmScreen(ModalScreen[bool]):
    """A question answered with y (or Enter on Yes) or n/Escape."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, question: str) -> None:
        super().__init__()
        self._question = question

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(self._question, id="question", markup=False)
            with Horizontal(classes="buttons"):
                yield Button("Yes (y)", variant="error", id="yes")
                yield Button("No (n)", variant="primary", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class HelpScreen(ModalScreen[None]):
    """Every key the dashboard knows, with what it does (`?` and Escape close it)."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,question_mark,q", "close", "Close")]

    def __init__(self, keys: Sequence[tuple[str, str]]) -> None:
        super().__init__()
        self._keys = keys

    def compose(self) -> ComposeResult:
        width = max(len(k) for k, _ in self._keys)
        text = "\n".join(f"{k.rjust(width)}  {what}" for k, what in self._keys)
        with Vertical(id="dialog"):
            yield Label("rbee tui: keys", classes="title")
            yield Static(text, id="keys", markup=False)
            yield Label("Escape or ? closes", classes="hint")

    def action_close(self) -> None:
        self.dismiss(None)
