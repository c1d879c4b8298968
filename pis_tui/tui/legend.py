"""One line spelling out the chart markers: family letters and colours, frontier, budget."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from .fmt import family_names, family_style, rgb, short_name


def legend_text(families=None) -> Text:
    t = Text()
    for fam in family_names():
        if families is not None and fam not in families:
            continue
        marker, color = family_style(fam)
        t.append(marker, style=f"bold {rgb(color)}")
        t.append(f" {short_name(fam)}  ")
    t.append("@", style="bold")
    t.append(" recommended  ")
    t.append("⠒⠒", style="rgb(150,150,150)")
    t.append(" frontier  ")
    t.append("│", style="rgb(230,80,80)")
    t.append(" budget")
    return t


class Legend(Static):
    DEFAULT_CSS = """
    Legend { height: auto; width: 1fr; padding: 0 1; color: $text-muted; }
    """

    def on_mount(self) -> None:
        self.update(legend_text())

    def show_families(self, families) -> None:
        self.update(legend_text(families))
