"""Rich renderings shared by the headless commands."""

from __future__ import annotations

from rich import box
from rich.table import Table

from ..display import (MARKS_NOTE, SPARSITY_NOTE, TRUST_NOTE, interval_text, loss_text, pct,
                       quality_marks, sparsity_text, trust_marks)


def quality_cell(p) -> str:
    return loss_text(p.quality) + (quality_marks(p.quality) if p.quality.value is not None else "")


def points_table(result, phase: str, title: str | None = None, points=None) -> Table:
    dense = result.dense(phase)
    t = Table(title=title or f"{phase} — {result.scenario.label(phase)} on {result.device.display_name}"
              f" (dense {dense.latency_ms:.3f} ms)", title_justify="left")
    t.box = box.SIMPLE_HEAD
    t.pad_edge = False
    # the achieved sparsity, after the asked one where rounding made them differ
    for col, j in (("strategy", "left"), ("sparsity", "right"), ("ms", "right"),
                   ("speedup", "right"), ("interval", "right"), ("FLOPs×", "right"),
                   ("quality", "right"), ("timing", "left")):
        t.add_column(col, justify=j, no_wrap=col != "timing")
    for p in result.phase_points(phase) if points is None else points:
        t.add_row(p.strategy, sparsity_text(p),
                  f"{p.latency_ms:.3f}", f"{p.speedup:.2f}×{trust_marks(p)}", interval_text(p),
                  f"{p.flops_speedup:.2f}×", quality_cell(p), p.timing_source)
    return t


def legend_lines(result, points) -> list[str]:
    """What the tables' marks mean: the quality metric and its marks, and the arrow of a
    sparsity asked → achieved (when a point shows one)."""
    method = f"; method {result.quality_method}" if getattr(result, "quality_method", "") else ""
    out = [f"quality: {result.quality_metric} ({result.quality_protocol} protocol){method}",
           MARKS_NOTE, TRUST_NOTE]
    if any(sparsity_text(p) != pct(p.achieved_sparsity) for p in points):
        out.append(SPARSITY_NOTE)
    if any(getattr(p.quality, "oracle", False) and p.quality.value is not None for p in points):
        from ..quality.measured import ORACLE_RULE

        out.append(f"ᵒ {ORACLE_RULE}")
    if any(getattr(p, "parts", ()) for p in points):
        from ..quality.compose import COMBO_RULE_TEXT

        rule = getattr(result, "combo_rule", "") or "multiplicative"
        out.append(f"combinations (first+second): sparsity is each part's; their quality is "
                   f"composed ({rule}: {COMBO_RULE_TEXT.get(rule, rule)}) unless measured on the "
                   "real combined model")
    return out


def source_line(result) -> str:
    from ..pricing.sources import ordered

    parts = [f"{n} {k}" for k, n in ordered(result.source_summary())]
    return "distinct kernels by timing source: " + ", ".join(parts)


def batch_table(curve, title: str = ""):
    """Decode speedup by batch (:class:`pis_tui.decide.batch_curve.BatchCurve`): dense's step,
    an MoE model's experts touched, each strategy's speedup."""
    from rich.table import Table

    t = Table(title=title or None, title_justify="left")
    t.add_column("batch", justify="right")
    t.add_column("dense ms", justify="right")
    if curve.experts_touched is not None:
        t.add_column(f"experts touched (of {curve.experts})", justify="right")
    for name in curve.speedups:
        t.add_column(name, justify="right")
    for i, b in enumerate(curve.batches):
        row = [str(b), f"{curve.dense_ms[i]:.3f}"]
        if curve.experts_touched is not None:
            row.append(f"{curve.experts_touched[i]:.1f}")
        row += [f"{curve.speedups[n][i]:.2f}×" for n in curve.speedups]
        t.add_row(*row)
    return t

