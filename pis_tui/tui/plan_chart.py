"""The Plan view's chart: each candidate's gain over dense under the objective (end-to-end
latency or throughput) against its quality loss.

Candidates that may serve the workload are drawn in their family's letter and colour, those
that may not (over the budget, too big for the GPU, missing a target) in grey; the frontier of
the ones that may serve is a line, the budget a vertical line, the recommended model ``@``.
"""

from __future__ import annotations

from typing import Optional

from textual_plotext import PlotextPlot

from ..display import oracle_strategies
from .fmt import family_names, family_style
from .pareto_chart import BEST_COLOR, BUDGET_COLOR, FRONTIER_COLOR, style_axes

EXCLUDED_COLOR = (110, 110, 110)


class PlanChart(PlotextPlot):
    DEFAULT_CSS = """
    PlanChart { width: 1fr; height: 1fr; min-height: 8; border: round $primary 40%; }
    """

    def __init__(self, **kw):
        super().__init__(**kw)
        self.summary = "planning…"
        self.border_title = "plan: computing…"
        self._shown = None  # the snapshot drawn, to redraw at a new size (ticks follow it)
        self._drawn_size = None

    def on_resize(self, event) -> None:
        if self._shown is not None and event.size != self._drawn_size:
            self.show(self._shown)

    def show_message(self, message: str) -> None:
        self._shown = None
        self.plt.clear_figure()
        self.border_title = f"plan: {message}"
        self.border_subtitle = ""
        self.summary = message
        self.refresh()

    def show(self, ps) -> None:
        """Draw a :class:`~pis_tui.tui.backend.PlanSnapshot`."""
        self._shown, self._drawn_size = ps, self.size
        rec, result = ps.rec, ps.result
        ok = {c.key for c in rec.ranked}
        pts = [(c, ps.gain(c)) for c in result.candidates if c.quality.value is not None]
        pts = [(c, g) for c, g in pts if g is not None]
        plt = self.plt
        plt.clear_figure()
        if not pts:
            self.show_message("no candidate has both a quality figure and a "
                              f"{ps.objective_words()} figure")
            return
        budget = rec.budget
        fr = sorted(rec.frontier, key=lambda c: c.quality.value)
        if fr:
            xs = [100 * c.quality.value for c in fr]
            ys = [ps.gain(c) or 0.0 for c in fr]
            if len(fr) == 1:
                xs, ys = xs * 2, ys * 2
            plt.plot(xs, ys, marker="braille", color=FRONTIER_COLOR)
        xmax = max(max(100 * c.quality.value for c, _ in pts), 100 * budget) * 1.08 + 0.5
        plt.vertical_line(100 * budget, color=BUDGET_COLOR)
        out = [(c, g) for c, g in pts if c.key not in ok]
        for fam in family_names() + ("speculative",):
            marker, _ = family_style(fam)
            fp = [(c, g) for c, g in out if c.strategy == fam]
            if fp:
                plt.scatter([100 * c.quality.value for c, _ in fp], [g for _, g in fp], marker=marker,
                            color=EXCLUDED_COLOR)
        fams = sorted((f for f in family_names() + ("speculative",) if any(c.strategy == f and c.key in ok for c, _ in pts)),
                      key=lambda f: f == "dense")  # dense last, on top
        for fam in fams:
            marker, color = family_style(fam)
            fp = [(c, g) for c, g in pts if c.strategy == fam and c.key in ok]
            plt.scatter([100 * c.quality.value for c, _ in fp], [g for _, g in fp], marker=marker, color=color)
        best: Optional[object] = rec.best
        if best is not None and best.quality.value is not None and ps.gain(best) is not None:
            plt.scatter([100 * best.quality.value], [ps.gain(best)], marker="@", color=BEST_COLOR)
        ys = [g for _, g in pts] + [1.0]
        lo, hi = min(ys), max(ys)
        pad = max(0.02, (hi - lo) * 0.08)
        plt.xlim(0, xmax)
        plt.ylim(lo - pad, hi + pad)
        style_axes(plt, xmax, lo - pad, hi + pad, self.size, "%")
        self.border_title = ("E2E" if rec.objective == "latency" else "tok/s") + " gain vs quality loss"
        oracles = oracle_strategies(c for c, _ in pts)  # their quality is an upper bound
        self.border_subtitle = "grey: may not serve" + (" · ᵒ oracle quality: upper bound"
                                                        if oracles else "")
        self.summary = (f"plan: {len(pts)} candidates, {len(ok)} may serve, best "
                        f"{best.strategy if best is not None else 'none'}"
                        + (f"; ᵒ oracle quality, an upper bound: {', '.join(oracles)}"
                           if oracles else ""))
        self.refresh()
