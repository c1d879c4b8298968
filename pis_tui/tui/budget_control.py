"""The quality budget: 0-50 % on screen (a fraction underneath); ``+``/``-`` by 1 %."""

from __future__ import annotations

from rich.text import Text
from textual.binding import Binding
from textual.message import Message
from textual.widgets import Static


class BudgetControl(Static, can_focus=True):
    BINDINGS = [
        Binding("right,plus,equals_sign,right_square_bracket", "step(1)", "+1%", show=False),
        Binding("left,minus,left_square_bracket", "step(-1)", "-1%", show=False),
        Binding("pageup", "step(5)", "+5%", show=False),
        Binding("pagedown", "step(-5)", "-5%", show=False),
    ]
    DEFAULT_CSS = """
    BudgetControl { height: 1; width: 1fr; }
    BudgetControl:focus { background: $boost; text-style: bold; }
    """

    class Changed(Message):
        def __init__(self, value: float) -> None:
            super().__init__()
            self.value = value

    def __init__(self, value: float = 0.10, maximum: float = 0.50, label: str = "accuracy drop", **kw):
        super().__init__("", **kw)
        self.value = value
        self.maximum = maximum
        self.label = label

    def on_mount(self) -> None:
        self._draw()

    def set(self, value: float, maximum: float | None = None, label: str | None = None) -> None:
        if maximum is not None:
            self.maximum = maximum
        if label is not None:
            self.label = label
        self.value = min(max(round(value, 4), 0.0), self.maximum)
        self._draw()

    def _draw(self) -> None:
        width = 14
        filled = int(round(width * self.value / self.maximum)) if self.maximum else 0
        t = Text()
        t.append(f"{100 * self.value:4.0f}% ", style="bold")
        t.append("━" * filled, style="red")
        t.append("─" * (width - filled), style="dim")
        t.append(f" ≤{100 * self.maximum:.0f}%", style="dim")
        self.update(t)

    def action_step(self, pct: int) -> None:
        self.set(self.value + pct / 100.0)
        self.post_message(self.Changed(self.value))
