"""Rich renderings shared by the headless commands."""

from __future__ import annotations

from rich import box
from rich.table import Table

from ..display import loss_text, pct, quality_marks


def quality_cell(p) -> str:
    return loss_text(p.quality) + (quality_marks(p.quality) if p.quality.value is not None else "")


def points_table(result, phase: str, title: str | None = None, points=None) -> Table:
    dense = result.dense(phase)
    t = Table(title=title or f"{phase} — {result.scenario.label(phase)} on {result.device.display_name}"
              f" (dense {dense.latency_ms:.3f} ms)", title_justify="left")
    t.box = box.SIMPLE_HEAD
    t.pad_edge = False
    # tables show the achieved sparsity (rounding makes it differ from the asked one)
    for col, j in (("strategy", "left"), ("achieved", "right"), ("ms", "right"),
                   ("speedup", "right"), ("FLOPs×", "right"), ("quality", "right"),
                   ("timing", "left")):
        t.add_column(col, justify=j, no_wrap=col != "timing")
    for p in result.phase_points(phase) if points is None else points:
        t.add_row(p.strategy, pct(p.achieved_sparsity),
                  f"{p.latency_ms:.3f}", f"{p.speedup:.2f}×", f"{p.flops_speedup:.2f}×",
                  quality_cell(p), p.timing_source)
    return t


def source_line(result) -> str:
    from ..sources import ordered

    parts = [f"{n} {k}" for k, n in ordered(result.source_summary())]
    return "distinct kernels by timing source: " + ", ".join(parts)
