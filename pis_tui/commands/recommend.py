"""`pis-tui recommend`: the fastest strategy per phase within a quality-loss budget."""

from __future__ import annotations

from ._run import add_budget_args, add_quality_args, add_ranking_args, add_sweep_args
from .common import add_outputs


def register(sub) -> None:
    p = sub.add_parser("recommend", help="recommend a strategy per phase under a quality budget")
    add_sweep_args(p)
    add_quality_args(p)
    add_budget_args(p)
    p.add_argument("--phase", choices=("prefill", "decode", "both"), default="both")
    p.add_argument("--include-flagged", action="store_true",
                   help="also recommend points flagged as above their physical ceiling or "
                        "measured under mixed conditions (skipped by default)")
    add_ranking_args(p)
    add_outputs(p, csv=False)
    p.set_defaults(func=run)


def recommendations(result, budget: float, phases, include_flagged: bool = False,
                    allow_extrapolated: bool = False) -> dict:
    from ..decide.frontier import recommend

    return {ph: recommend(result.phase_points(ph), budget, ph, include_flagged, allow_extrapolated,
                          pair=result.pair)
            for ph in phases}


def run(args) -> int:
    from ..present.export import to_json
    from ._run import budget_from_args, run_sweep
    from .common import check_writable, console, write_text

    budget = budget_from_args(args)
    if args.json_out and args.json_out != "-":
        check_writable(args.json_out)
    result = run_sweep(args)
    phases = ("prefill", "decode") if args.phase == "both" else (args.phase,)
    recs = recommendations(result, budget, phases, args.include_flagged, args.allow_extrapolated)
    if args.json_out:
        write_text(args.json_out, to_json(result, recs))
    if args.json_out != "-":
        print_recommendations(console(), result, recs)
    return 0


def print_recommendations(con, result, recs) -> None:
    from rich.markup import escape
    from rich.table import Table
    from ..display import served_text
    from ..decide.precision import precision_line

    from ..pricing.uncertainty import flag_words
    from ._tables import interval_text, legend_lines, pct, quality_cell, sparsity_text, trust_marks

    metric = "perplexity increase" if result.quality_metric == "ppl_increase" else "accuracy drop"
    method = f", method {escape(result.quality_method)}" if result.quality_method else ""
    tp = result.scenario.tp
    on = f"{tp} × " if tp > 1 else ""  # tensor parallelism: the figures are one rank's
    con.print(f"[bold]{escape(result.spec.name)}[/] on {on}{escape(result.device.display_name)} · "
              f"{served_text(result.scenario.dtype, result.scenario.precision)} · quality: {metric}, {result.quality_protocol} protocol{method}")
    if getattr(result, "precision", None):
        con.print(precision_line(result.precision), markup=False)
    for ph, r in recs.items():
        con.print(f"\n[bold]{ph}[/] ({result.scenario.label(ph)}), budget {pct(r.budget)}:")
        # reasons, citations and notes hold brackets ("[quality borrowed ...]"): not markup
        con.print(f"  {r.reason}", markup=False)
        if r.best is not None and r.best.strategy != "dense":
            con.print(f"  speedup interval {interval_text(r.best)} (about 95 %); ceiling "
                      f"{r.best.ceiling:.2f}×" if r.best.ceiling else "", markup=False)
        for p in r.skipped[:3]:
            con.print(f"  skipped: {p.strategy} {sparsity_text(p)} {p.speedup:.2f}× "
                      f"({'; '.join(flag_words(p))})", markup=False)
        if len(r.skipped) > 3:
            con.print(f"  … and {len(r.skipped) - 3} more flagged points (--include-flagged to "
                      "rank them)", markup=False)
        faster_x = [p for p in r.skipped_extrapolated
                    if r.best is None or p.speedup > r.best.speedup]
        for p in faster_x[:3]:
            con.print(f"  skipped: {p.strategy} {sparsity_text(p)} {p.speedup:.2f}× at "
                      f"{quality_cell(p)} (quality extrapolated; --allow-extrapolated ranks it)",
                      markup=False)
        if len(faster_x) > 3:
            con.print(f"  … and {len(faster_x) - 3} more with extrapolated quality", markup=False)
        if r.best is not None and r.best.strategy != "dense" and r.best.quality.method:
            con.print(f"  quality method: {r.best.quality.method}", markup=False)
        if r.best is not None and r.best.quality.citations:
            con.print("  quality source: " + "; ".join(r.best.quality.citations[:3]), markup=False)
        if r.best is not None and r.best.quality.note:
            con.print(f"  note: {r.best.quality.note}", markup=False)
        t = Table(title=f"{ph} frontier", title_justify="left")
        for c in ("strategy", "sparsity", "speedup", "interval", "FLOPs speedup", "quality loss",
                  "timing"):
            t.add_column(c, justify="left" if c in ("strategy", "timing") else "right")
        for p in r.frontier:
            mark = " ◀" if r.best is not None and p == r.best else ""
            t.add_row(p.strategy + mark, sparsity_text(p), f"{p.speedup:.2f}×{trust_marks(p)}",
                      interval_text(p), f"{p.flops_speedup:.2f}×", quality_cell(p), p.timing_source)
        con.print(t)
    shown = [p for r in recs.values() for p in r.frontier]
    if shown:
        con.print("◀ recommended; " + legend_lines(result, shown)[0], markup=False)
        for line in legend_lines(result, shown)[1:]:
            con.print(line, markup=False)
