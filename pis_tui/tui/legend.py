"""One line spelling out the chart markers: family letters and colours, frontier, budget."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from .fmt import family_names, family_style, rgb, short_name


def legend_text(families=None, unplotted=()) -> Text:
    """The markers; `unplotted`: the families with points that have no quality figure (they
    have no place on a speedup-vs-loss chart; the table lists them)."""
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
    if unplotted:
        t.append("  not plotted:")
        for fam in unplotted:
            marker, color = family_style(fam)
            t.append(f" {marker}", style=f"bold {rgb(color)}")
    return t


class Legend(Static):
    DEFAULT_CSS = """
    Legend { height: auto; width: 1fr; padding: 0 1; color: $text-muted; }
    """

    def __init__(self, **kw):
        super().__init__(**kw)
        self.unplotted: tuple = ()

    def on_mount(self) -> None:
        self.update(legend_text())

    def show_families(self, families) -> None:
        self.update(legend_text(families))

    def show_unplotted(self, snapshot) -> None:
        """Name the families whose points have no quality figure (the charts' "N without a
        quality figure"); redrawn only when that set changes."""
        fams = tuple(dict.fromkeys(p.strategy for p in snapshot.result.points
                                   if p.quality.value is None))
        if fams != self.unplotted:
            self.unplotted = fams
            self.update(legend_text(unplotted=fams))
