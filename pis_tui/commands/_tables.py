"""Rich renderings shared by the headless commands."""

from __future__ import annotations

from rich.table import Table

from ..taxonomy import FAMILY_AXIS


def pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def quality_cell(p) -> str:
    q = p.quality
    if q.value is None:
        return "–"
    v = pct(q.value) if q.metric == "accuracy_drop" else f"+{100 * q.value:.1f}% ppl"
    marks = ""
    if q.extrapolated:
        marks += "ᵉ"
    if q.borrowed_from:
        marks += "ᵇ"
    if q.secondary:
        marks += "ˢ"
    return v + marks


def points_table(result, phase: str, title: str | None = None, points=None) -> Table:
    dense = result.dense(phase)
    t = Table(title=title or f"{phase} — {result.scenario.label(phase)} on {result.device.display_name}"
              f" (dense {dense.latency_ms:.3f} ms)", title_justify="left")
    for col, j in (("strategy", "left"), ("axis", "left"), ("sparsity", "right"),
                   ("achieved", "right"), ("latency ms", "right"), ("speedup", "right"),
                   ("FLOPs speedup", "right"), ("quality loss", "right"), ("timing", "left")):
        t.add_column(col, justify=j)
    for p in result.phase_points(phase) if points is None else points:
        t.add_row(p.strategy, FAMILY_AXIS[p.strategy], pct(p.sparsity), pct(p.achieved_sparsity),
                  f"{p.latency_ms:.3f}", f"{p.speedup:.2f}×", f"{p.flops_speedup:.2f}×",
                  quality_cell(p), p.timing_source)
    return t


def source_line(result) -> str:
    s = result.source_summary()
    parts = [f"{n} {k}" for k, n in sorted(s.items(), key=lambda kv: -kv[1])]
    return "distinct kernels by timing source: " + ", ".join(parts)
