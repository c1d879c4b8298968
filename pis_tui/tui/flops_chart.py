"""The "Beyond FLOPs" chart of one phase: per family, speedup against achieved sparsity,
the real (measured or estimated) speedup beside the FLOPs-predicted one.

Real speedups are the family's marker letter joined by a line; the FLOPs-predicted ones
are a dotted (braille) line in the same colour.  The gap between them is what the
study is about.
"""

from __future__ import annotations

from typing import Optional

from textual_plotext import PlotextPlot

from .fmt import family_names, family_style, fit, short_label
from .pareto_chart import style_axes


#: the caption, longest first: the longest that fits the border is shown (a chart is 40 columns
#: at 80×24 and beside the setup panel at 120)
CAPTIONS = ("speedup vs achieved sparsity · letters real, dots FLOPs-predicted",
            "speedup vs achieved sparsity · letters real, dots FLOPs",
            "speedup vs sparsity · letters real, dots FLOPs",
            "letters real, dots FLOPs-predicted", "letters real, dots FLOPs")


class FlopsChart(PlotextPlot):
    DEFAULT_CSS = """
    FlopsChart { width: 1fr; height: 1fr; min-height: 8; border: round $primary 40%; }
    """

    def __init__(self, phase: str, **kw):
        super().__init__(**kw)
        self.phase = phase
        self.summary = ""
        self.border_title = f"{phase}: estimating…"
        self._titles: Optional[list] = None

    def show(self, snapshot, family: Optional[str] = None) -> None:
        # the ticks are chosen for the size drawn at: a resize draws again (a chart first drawn
        # before its layout settled kept the first size's ticks: a flaky snapshot in CI)
        self._last, self._drawn_size = (snapshot, family), (self.size.width, self.size.height)
        result = snapshot.result
        pts = [p for p in result.phase_points(self.phase)
               if p.strategy != "dense" and family in (None, p.strategy)]
        plt = self.plt
        plt.clear_figure()
        xs_all, ys_all = [0.0], [1.0]
        for fam in family_names():
            fp = sorted((p for p in pts if p.strategy == fam), key=lambda p: p.achieved_sparsity)
            if not fp:
                continue
            marker, color = family_style(fam)
            xs = [0.0] + [100 * p.achieved_sparsity for p in fp]
            plt.plot(xs, [1.0] + [p.flops_speedup for p in fp], marker="braille", color=color)
            plt.scatter(xs[1:], [p.speedup for p in fp], marker=marker, color=color)
            xs_all += xs
            ys_all += [p.speedup for p in fp] + [p.flops_speedup for p in fp]
        if len(xs_all) == 1:
            self.border_title = f"{self.phase}: nothing to show"
            self.border_subtitle, self._titles = "", None
            self.summary = "empty"
            self.refresh()
            return
        hi = max(ys_all)
        lo = min(ys_all)
        pad = max(0.02, (hi - lo) * 0.06)
        plt.ylim(lo - pad, hi + pad)
        plt.xlim(0, max(xs_all) * 1.05 + 0.5)
        style_axes(plt, max(xs_all) * 1.05 + 0.5, lo - pad, hi + pad, self.size, "%")
        plt.horizontal_line(1.0, color=(110, 110, 110))
        scen = result.scenario
        self._titles = [scen.label(self.phase), short_label(scen, self.phase), self.phase]
        self._fit_titles()
        self.summary = f"{self.phase}: {len(pts)} points"
        self.refresh()

    def _fit_titles(self) -> None:
        """The longest title and caption that fit the border (each side loses 3 cells)."""
        if self._titles is None:
            return
        room = (self.outer_size.width or 40) - 6
        self.border_title = fit(self._titles, room)
        self.border_subtitle = fit(CAPTIONS, room)

    def on_resize(self, event) -> None:
        last = getattr(self, "_last", None)
        if last is not None and getattr(self, "_drawn_size", None) != (self.size.width, self.size.height):
            self.show(*last)
            return
        self._fit_titles()


def gap_lines(snapshot, phase: str, family: Optional[str] = None) -> list[tuple[str, float, float, float]]:
    """Per family, at its largest sparsity: (family, achieved, real speedup, FLOPs speedup)."""
    out = []
    for fam in family_names():
        if fam == "dense" or family not in (None, fam):
            continue
        fp = [p for p in snapshot.result.phase_points(phase) if p.strategy == fam]
        if not fp:
            continue
        p = max(fp, key=lambda p: p.achieved_sparsity)
        out.append((fam, p.achieved_sparsity, p.speedup, p.flops_speedup))
    return out


def tp_lines(snapshot, phase: str, family: Optional[str] = None) -> Optional[tuple]:
    """Tensor parallelism's effect (``None`` at tp 1): (degree, the share of dense's time one rank
    spends in collectives, [(family, share of dense's collective time its largest sparsity
    keeps)]).  Static depth drops its layers' all-reduces, static width keeps every one (the
    hidden size stays), hidden slicing shrinks their bytes."""
    from ..pricing.collectives import collective_ms

    result = snapshot.result
    tp = result.scenario.tp
    if tp == 1:
        return None
    dense = result.dense(phase)
    dc = collective_ms(dense)
    kept = []
    for fam in family_names():
        if fam == "dense" or family not in (None, fam):
            continue
        # the families (a combination's parts are each a family's: their lines say it)
        fp = [p for p in result.phase_points(phase) if p.strategy == fam and not p.parts]
        if not fp or dc <= 0:
            continue
        p = max(fp, key=lambda p: p.achieved_sparsity)
        kept.append((fam, collective_ms(result.estimate_for(p.strategy, p.sparsity, phase,
                                                            p.parts)) / dc))
    return tp, dc / dense.latency_ms if dense.latency_ms else 0.0, kept
