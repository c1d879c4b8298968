"""One line spelling out the chart markers: family letters and colours, frontier, budget."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from .fmt import family_names, family_style, rgb, short_name


def legend_text(unplotted=(), combos=(), compact: bool = False, held=None) -> Text:
    """The markers; `unplotted`: the families with points that have no quality figure (they
    have no place on a speedup-vs-loss chart; the table lists them); `combos`: the
    combinations the sweep holds (only those); `held`: the families the sweep holds (None,
    before a sweep: every family a dense model can have); `compact`: the combinations'
    markers in one group ("X Z Q combinations: table (3)"), for a narrow screen."""
    from .. import families as registry

    t = Text()
    shown = []
    for fam in family_names():
        if registry.is_combo(fam) and fam not in combos:
            continue
        if not registry.is_combo(fam) and fam != "dense" and (
                fam not in held if held is not None else registry.get(fam).moe_only):
            continue
        if compact and registry.is_combo(fam):
            shown.append(fam)
            continue
        marker, color = family_style(fam)
        t.append(marker, style=f"bold {rgb(color)}")
        t.append(f" {short_name(fam)}  ")
    if shown:
        for fam in shown:
            marker, color = family_style(fam)
            t.append(marker, style=f"bold {rgb(color)}")
        t.append(" combinations: table (3)  ")
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
        self.combos: tuple = ()
        self.held = None  # the families the sweep holds (None before one)

    def on_mount(self) -> None:
        self.update(legend_text())

    def show_unplotted(self, snapshot) -> None:
        """Name the families whose points have no quality figure (the charts' "N without a
        quality figure"); redrawn only when that set changes."""
        from .. import families as registry

        fams = tuple(dict.fromkeys(p.strategy for p in snapshot.result.points
                                   if p.quality.value is None))
        combos = tuple(dict.fromkeys(p.strategy for p in snapshot.result.points
                                     if registry.is_combo(p.strategy)))
        held = tuple(dict.fromkeys(p.strategy for p in snapshot.result.points
                                   if not registry.is_combo(p.strategy)))
        if fams != self.unplotted or combos != self.combos or held != self.held:
            self.unplotted, self.combos, self.held = fams, combos, held
            self._draw()

    def _draw(self) -> None:
        """Every marker spelled out, or the combinations' grouped when that would take more
        than two lines of this width."""
        t = legend_text(unplotted=self.unplotted, combos=self.combos, held=self.held)
        width = max(self.size.width - 2, 20) if self.size.width else 10**6
        if self.combos and _lines(t, width) > 2:
            t = legend_text(unplotted=self.unplotted, combos=self.combos, compact=True,
                            held=self.held)
        self.update(t)

    def on_resize(self, event) -> None:
        if self.combos:
            self._draw()


def _lines(t: Text, width: int) -> int:
    from rich.console import Console

    return len(t.wrap(Console(width=width, legacy_windows=False), width))
