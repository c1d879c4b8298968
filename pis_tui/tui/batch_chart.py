"""The Batch tab: decode speedup against decode batch for the study's core families (where a
pruned model pays off), and for a mixture of experts the experts a step touches.

Drawn from the sweep result's :class:`pis_tui.decide.batch_curve.BatchCurve` (computed with
the sweep, on the same device, engine and context); x is the decode batch on a log₂ axis.
"""

from __future__ import annotations

import math
from typing import Optional

from textual_plotext import PlotextPlot

from .fmt import family_style, fit
from .pareto_chart import style_axes


class BatchChart(PlotextPlot):
    DEFAULT_CSS = """
    BatchChart { width: 1fr; height: 1fr; min-height: 8; border: round $primary 40%; }
    """

    def __init__(self, **kw):
        super().__init__(**kw)
        self.summary = ""
        self.legend = ""
        self.border_title = "decode speedup by batch: estimating…"
        self._titles: Optional[list] = None

    def show(self, snapshot) -> None:
        self._last, self._drawn_size = snapshot, (self.size.width, self.size.height)
        curve = getattr(snapshot.result, "batch_curve", None)
        plt = self.plt
        plt.clear_figure()
        if curve is None or not curve.speedups:
            self.border_title = "decode speedup by batch: nothing to show"
            self.border_subtitle, self._titles, self.summary = "", None, "empty"
            self.refresh()
            return
        xs = [math.log2(b) for b in curve.batches]
        ys_all = [1.0]
        for name, ys in curve.speedups.items():
            marker, color = family_style(name.split()[0])
            plt.plot(xs, ys, marker="braille", color=color)
            plt.scatter(xs, ys, marker=marker, color=color)
            ys_all += [y for y in ys if y == y]
        lo, hi = min(ys_all), max(ys_all)
        pad = max(0.02, (hi - lo) * 0.06)
        plt.ylim(lo - pad, hi + pad)
        plt.xlim(xs[0] - 0.3, xs[-1] + 0.5)
        style_axes(plt, xs[-1] + 0.5, lo - pad, hi + pad, self.size, "")
        plt.xticks(xs, [str(b) for b in curve.batches])
        plt.horizontal_line(1.0, color=(110, 110, 110))
        ctx = snapshot.result.scenario.context_len
        names = " · ".join(f"{family_style(n.split()[0])[0]} {n}" for n in curve.speedups)
        self._titles = [f"decode speedup by batch @ {ctx}: {names}",
                        f"decode speedup by batch @ {ctx}", "speedup by batch", "by batch"]
        if curve.experts_touched is not None:
            touched = " → ".join(f"{t:.0f}" for t in curve.experts_touched[::2])
            self.border_subtitle = fit([f"experts touched of {curve.experts}: {touched}",
                                        f"experts touched: {touched}"],
                                       (self.outer_size.width or 40) - 6)
        else:
            self.border_subtitle = ""
        self._fit_titles()
        self.legend = "  ".join(f"{family_style(n.split()[0])[0]} {n}" for n in curve.speedups)
        self.summary = f"{len(curve.speedups)} strategies × {len(curve.batches)} batches"
        self.refresh()

    def _fit_titles(self) -> None:
        if self._titles is None:
            return
        self.border_title = fit(self._titles, (self.outer_size.width or 40) - 6)

    def on_resize(self) -> None:
        last = getattr(self, "_last", None)
        if last is not None and self._drawn_size != (self.size.width, self.size.height):
            self.show(last)  # the ticks follow the size drawn at
            return
        self._fit_titles()
