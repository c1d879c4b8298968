"""`pis-tui recommend`: the fastest strategy per phase within a quality-loss budget."""

from __future__ import annotations

from ._run import add_budget_args, add_quality_args, add_sweep_args
from .common import add_outputs


def register(sub) -> None:
    p = sub.add_parser("recommend", help="recommend a strategy per phase under a quality budget")
    add_sweep_args(p)
    add_quality_args(p)
    add_budget_args(p)
    p.add_argument("--phase", choices=("prefill", "decode", "both"), default="both")
    add_outputs(p, csv=False)
    p.set_defaults(func=run)


def recommendations(result, budget: float, phases) -> dict:
    from ..pareto import recommend

    return {ph: recommend(result.phase_points(ph), budget, ph) for ph in phases}


def run(args) -> int:
    from ..export import to_json
    from ._run import budget_from_args, run_sweep
    from .common import check_writable, console, write_text

    budget = budget_from_args(args)
    if args.json_out and args.json_out != "-":
        check_writable(args.json_out)
    result = run_sweep(args)
    phases = ("prefill", "decode") if args.phase == "both" else (args.phase,)
    recs = recommendations(result, budget, phases)
    if args.json_out:
        write_text(args.json_out, to_json(result, recs))
    if args.json_out != "-":
        print_recommendations(console(), result, recs)
    return 0


def print_recommendations(con, result, recs) -> None:
    from rich.table import Table

    from rich.markup import escape

    from ._tables import pct, quality_cell

    metric = "perplexity increase" if result.quality_metric == "ppl_increase" else "accuracy drop"
    con.print(f"[bold]{escape(result.spec.name)}[/] on {escape(result.device.display_name)} · "
              f"{result.scenario.dtype} · quality: {metric}, {result.quality_protocol} protocol")
    for ph, r in recs.items():
        con.print(f"\n[bold]{ph}[/] ({result.scenario.label(ph)}), budget {pct(r.budget)}:")
        # reasons, citations and notes hold brackets ("[quality borrowed ...]"): not markup
        con.print(f"  {r.reason}", markup=False)
        if r.best is not None and r.best.quality.citations:
            con.print("  quality source: " + "; ".join(r.best.quality.citations[:3]), markup=False)
        if r.best is not None and r.best.quality.note:
            con.print(f"  note: {r.best.quality.note}", markup=False)
        t = Table(title=f"{ph} frontier", title_justify="left")
        for c in ("strategy", "sparsity", "achieved", "speedup", "FLOPs speedup", "quality loss", "timing"):
            t.add_column(c, justify="left" if c in ("strategy", "timing") else "right")
        for p in r.frontier:
            mark = " ◀" if r.best is not None and p == r.best else ""
            t.add_row(p.strategy + mark, pct(p.sparsity), pct(p.achieved_sparsity), f"{p.speedup:.2f}×",
                      f"{p.flops_speedup:.2f}×", quality_cell(p), p.timing_source)
        con.print(t)
