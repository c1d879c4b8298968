"""The Pareto chart of one phase: speedup against quality loss, one series per family.

Each family has its own marker letter and colour (the registry's, through ``fmt.family_style``; the legend
widget under the charts spells them out), the frontier is a line, the budget a vertical
line, and the recommended point is drawn as ``@``.
"""

from __future__ import annotations

import time
from typing import Optional

from textual_plotext import PlotextPlot

from ..display import oracle_strategies
from ..pricing.uncertainty import BLOCKING_FLAGS
from .fmt import family_names, family_style, fit, latency, short_label

FRONTIER_COLOR = (150, 150, 150)
BUDGET_COLOR = (230, 80, 80)
BEST_COLOR = (255, 255, 255)
FLAGGED_COLOR = (230, 190, 60)  # flagged points: shown apart, off the axis scale


class ParetoChart(PlotextPlot):
    """Draws :meth:`show`'s data; knows nothing of the engine beyond Point fields."""

    DEFAULT_CSS = """
    ParetoChart { width: 1fr; height: 1fr; min-height: 8; border: round $primary 40%; }
    """

    def __init__(self, phase: str, **kw):
        super().__init__(**kw)
        self.phase = phase
        self.drawn_with_data_at: Optional[float] = None
        self._has_data = False
        self.summary = ""  # what is drawn, in words (tests and screen readers)
        self._titles = None  # (title options, subtitle options), longest first
        self._draw_empty("estimating…")

    def _draw_empty(self, message: str) -> None:
        self.plt.clear_figure()
        self._titles = None
        self.border_subtitle = ""
        self.border_title = f"{self.phase}: {message}"
        self.summary = message

    def show_error(self, message: str) -> None:
        """Nothing to draw (the first sweep failed): say so where the chart would be."""
        self.plt.clear_figure()
        self._has_data = False
        self._draw_empty(message)
        self.refresh()

    def show(self, snapshot, family: Optional[str] = None) -> None:
        result, rec = snapshot.result, snapshot.recs.get(self.phase)
        budget = snapshot.choices.active_budget
        ppl = snapshot.metric == "ppl_increase"
        pts = [p for p in result.phase_points(self.phase) if family in (None, p.strategy)]
        known = [p for p in pts if p.quality.value is not None]
        unknown = len(pts) - len(known)  # no quality figure: they have no x; the table lists them
        plt = self.plt
        plt.clear_figure()
        if not known:
            self._has_data = False
            self._draw_empty("no point has a known quality cost")
            self.refresh()
            return
        if rec is not None and rec.frontier:
            fr = sorted(rec.frontier, key=lambda p: p.quality.value)
            xs = [100 * p.quality.value for p in fr]
            ys = [p.speedup for p in fr]
            if len(fr) == 1:
                xs, ys = xs * 2, ys * 2
            plt.plot(xs, ys, marker="braille", color=FRONTIER_COLOR)
        xmax = max(max(100 * p.quality.value for p in known), 100 * budget) * 1.08 + 0.5
        plt.vertical_line(100 * budget, color=BUDGET_COLOR)
        # the dense baseline last, on top: a family with no gain at zero loss sits on it
        fams = sorted((f for f in family_names() if any(p.strategy == f for p in known)),
                      key=lambda f: f == "dense")
        # flagged points (above their physical ceiling, measured under mixed conditions) are
        # shown apart: marked "!", and the axis is scaled to the others (a 3.5× point measured on
        # a busy machine would squeeze every trustworthy one into a line)
        flagged_pts = [p for p in known if any(f in BLOCKING_FLAGS for f in p.flags)]
        sound = [p for p in known if p not in flagged_pts]
        for fam in fams:
            fp = sorted((p for p in sound if p.strategy == fam), key=lambda p: p.sparsity)
            marker, color = family_style(fam)
            plt.scatter([100 * p.quality.value for p in fp], [p.speedup for p in fp],
                        marker=marker, color=color)
        best = rec.best if rec is not None else None
        if best is not None and best.quality.value is not None:
            plt.scatter([100 * best.quality.value], [best.speedup], marker="@", color=BEST_COLOR)
        ys = [p.speedup for p in sound] + [1.0]
        lo, hi = min(ys), max(ys)
        pad = max(0.02, (hi - lo) * 0.08)
        if flagged_pts:  # at their speedup when it is on the scale, else pinned to its edge
            plt.scatter([100 * p.quality.value for p in flagged_pts],
                        [min(max(p.speedup, lo - pad), hi + pad) for p in flagged_pts],
                        marker="!", color=FLAGGED_COLOR)
        plt.xlim(0, xmax)
        plt.ylim(lo - pad, hi + pad)
        self.y_range = (lo - pad, hi + pad)  # the speedup axis as drawn (flagged points aside)
        style_axes(plt, xmax, lo - pad, hi + pad, self.size, "%")
        dense = f"dense {latency(pts[0].dense_latency_ms if pts else 0.0)}"
        scen = result.scenario
        axis = "speedup vs +ppl" if ppl else "speedup vs acc. drop"
        subs = [axis]
        if unknown:
            n = f"{unknown} point{'s' if unknown != 1 else ''}"
            subs = [f"{axis} · {n} without a quality figure: see the table (3)",
                    f"{axis} · {unknown} without a quality figure: table (3)",
                    f"{unknown} without a quality figure: table (3)",
                    f"{unknown} without quality figure: table (3)",
                    f"{unknown} without quality: table (3)", f"{unknown} without quality (3)"]
        if flagged_pts:
            n = len(flagged_pts)
            subs = [f"{subs[0]} · ! {n} flagged, off the scale: see the table (3)",
                    f"{subs[0]} · ! {n} flagged"] + subs
        oracles = oracle_strategies(known)  # their quality is an upper bound: say so
        if oracles:
            subs = [f"{subs[0]} · ᵒ oracle quality (upper bound): {', '.join(oracles)}",
                    f"{subs[0]} · ᵒ oracle quality: upper bound"] + subs
        self._titles = ([f"{scen.label(self.phase)} · {dense}",
                         f"{short_label(scen, self.phase)} · {dense}", f"{self.phase} · {dense}"],
                        subs)
        self._fit_titles()
        self._has_data = True
        self.summary = (f"{self.phase}: {len(known)} points, {len(rec.frontier) if rec else 0} on "
                        f"the frontier, best {best.strategy if best else 'none'}")
        if oracles:
            self.summary += f"; ᵒ oracle quality, an upper bound: {', '.join(oracles)}"
        if flagged_pts:
            self.summary += (f"; {len(flagged_pts)} flagged point(s) marked ! and left out of the "
                             "axis scale")
        if unknown:
            fams = ", ".join(dict.fromkeys(p.strategy for p in pts if p.quality.value is None))
            self.summary += (f"; {unknown} point{'s' if unknown != 1 else ''} without a quality "
                             f"figure ({fams}), not plotted: see the table (3)")
        self.refresh()

    def _fit_titles(self) -> None:
        """The longest title and subtitle that fit the border (each side loses 3 cells)."""
        if self._titles is None:
            return
        room = (self.outer_size.width or 40) - 6
        titles, subs = self._titles
        self.border_title = fit(titles, room)
        self.border_subtitle = fit(subs, room)

    def on_resize(self, event) -> None:
        self._fit_titles()

    def render(self):
        out = super().render()
        if self._has_data and self.drawn_with_data_at is None:
            self.drawn_with_data_at = time.perf_counter()
        return out


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round tick values (steps of 1, 2, 2.5 or 5 × a power of ten) covering [lo, hi]."""
    import math

    span = max(hi - lo, 1e-9)
    raw = span / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step) * step
    out, v = [], start
    while v <= hi + 1e-9:
        out.append(round(v, 6))
        v += step
    return out


def style_axes(plt, xmax: float, ylo: float, yhi: float, size, xunit: str) -> None:
    """Lower and left axes only (saves a row and a column), round tick values."""
    plt.xaxes(True, False)
    plt.yaxes(True, False)
    w, h = (size.width or 60), (size.height or 16)
    xt = nice_ticks(0, xmax, max(3, w // 12))
    plt.xticks(xt, [f"{t:g}{xunit}" for t in xt])
    yt = nice_ticks(ylo, yhi, max(2, h // 4))
    plt.yticks(yt, [f"{t:g}×" for t in yt])
