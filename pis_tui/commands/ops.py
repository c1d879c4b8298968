"""`pis-tui ops`: the op list of one strategy in one phase, priced on a device."""

from __future__ import annotations

import sys

from .common import add_cache, add_model_gpu, add_scenario, add_strategy_options, parse_fraction


def register(sub) -> None:
    p = sub.add_parser("ops", help="show what a family does to the GEMMs: the priced op list")
    add_model_gpu(p)
    p.add_argument("--strategy", "-s", default="dense",
                   help="a family, or a combination: first+second (each part at --sparsity) or "
                        "first@0.125+second@0.25 (each part at its own)")
    p.add_argument("--sparsity", default=None,
                   help="fraction removed (default 0.25; a combination: each part's; not with dense)")
    p.add_argument("--phase", choices=("prefill", "decode"), default="prefill")
    add_scenario(p)
    add_strategy_options(p)
    add_cache(p)
    p.add_argument("--json", dest="json_out", metavar="FILE|-", default=None)
    p.set_defaults(func=run)


def run(args) -> int:
    from dataclasses import asdict

    from rich.table import Table

    from ..display import served_text
    from ..decide.sweep import check_collectives, make_estimator, resolve, tensor_parallel_device
    from ..errors import UserError
    from ..families import MAX_SPARSITY
    from ..families.phase_ops import build_phase_ops
    from ..families.strategy import family_axis, from_token
    from ._run import check_align, open_cache_if_local, scenario_from_args
    from .common import align_of, console, dump_json, resolve_gpu

    spec, device = resolve(args.model, resolve_gpu(args.gpu))
    scenario = scenario_from_args(args, device)
    if args.strategy == "dense" and args.sparsity is not None:
        raise UserError("--sparsity needs a pruning --strategy (dense is the unpruned baseline)")
    if args.sparsity is not None and not args.sparsity.strip():
        raise UserError("--sparsity '' is empty: give a fraction like 0.25 (or leave it out "
                        "for 0.25)")
    if "@" in args.strategy and args.sparsity is not None:
        raise UserError(f"--strategy {args.strategy} gives each part's sparsity: leave --sparsity out")
    sparsity = 0.0 if args.strategy == "dense" else parse_fraction(
        "0.25" if args.sparsity is None else args.sparsity, "sparsity", 0.0, MAX_SPARSITY)
    strat = from_token(args.strategy, sparsity, args.granularity, align_of(args))
    pairs = [(f, s) for f, s in strat.parts] or [(strat.family, strat.effective_sparsity)]
    for w in check_align(spec, pairs, strat.align, scenario,
                         explicit=args.align is not None, families_flag=""):
        print(f"pis-tui: warning: {w}", file=sys.stderr)
    device = tensor_parallel_device(spec, device, scenario.tp)  # one rank's device
    po = build_phase_ops(spec, strat, scenario, args.phase)
    estimator = make_estimator(device, scenario.dtype, open_cache_if_local(args, device),
                               engine=scenario.engine)
    check_collectives(estimator, scenario.tp)
    est = estimator.estimate(po)
    if args.json_out:
        dump_json(args.json_out, {
            "strategy": strat.family, "sparsity": strat.sparsity,
            "achieved_sparsity": po.achieved_sparsity, "phase": args.phase, "tp": scenario.tp,
            "parts": [{"family": f, "sparsity": s, "achieved_sparsity": a}
                      for (f, s), a in zip(strat.parts, po.part_achieved)],
            "latency_ms": est.latency_ms, "dims": dict(po.dims), "notes": list(po.notes),
            "ops": [{**asdict(p.op), "flops": p.op.flops(), "bytes": p.op.bytes(),
                     "kernels": p.kernels, "ms_per_call": p.ms_per_call, "total_ms": p.total_ms,
                     "source": p.source, "note": p.note} for p in est.ops],
            "engine": scenario.engine})
        return 0
    from rich.markup import escape

    con = console()
    parts = ""
    if strat.parts:
        parts = " (" + " + ".join(f"{f} {s:.1%} → {a:.1%}" for (f, s), a in
                                  zip(strat.parts, po.part_achieved)) + ", composed)"
    con.print(f"[bold]{escape(spec.name)}[/] · {strat.family} ({family_axis(strat.family)}) "
              + (f"asked {escape(strat.token.split('@', 1)[1])}" if strat.k_dist
                 else f"asked {strat.sparsity:.1%}")
              + f", achieved {po.achieved_sparsity:.1%}{parts} · "
              f"{scenario.label(args.phase)} · {escape(device.display_name)} · {served_text(scenario.dtype, scenario.precision)} · "
              f"{scenario.engine} kernels")
    for k, v in po.dims:
        con.print(f"  {k}: {v}", markup=False)
    for n in po.notes:
        con.print(f"  note: {n}", markup=False)
    t = Table(title_justify="left")
    for c in ("op", "kind", "shape", "count", "kernels", "GFLOP", "MB", "ms/call", "total ms", "share",
              "source"):
        t.add_column(c, justify="left" if c in ("op", "kind", "shape", "source") else "right")
    for p in est.ops:
        o = p.op
        kind = "grouped" if o.op_type == "grouped_gemm" else getattr(o, "kind", o.op_type)
        if getattr(o, "quant", ""):
            kind = f"{kind} {o.quant}"
        t.add_row(o.name, kind if o.op_type != "attention" else "attention", o.shape(),
                  f"{o.count:g}", "" if p.kernels is None else str(p.kernels),
                  f"{o.flops() / 1e9:.3f}", f"{o.bytes() / 1e6:.2f}",
                  f"{p.ms_per_call:.4f}", f"{p.total_ms:.3f}",
                  f"{p.total_ms / est.latency_ms:.1%}", p.source + (f" ({p.note})" if p.note else ""))
    con.print(t)
    con.print(f"total {est.latency_ms:.3f} ms · {est.flops / 1e12:.3f} TFLOP · timing: {est.timing_source}")
    if scenario.tp > 1:
        from ..pricing.collectives import collective_ms

        c = collective_ms(est)
        con.print(f"TP {scenario.tp}: one rank's ops; collectives {c:.3f} ms "
                  f"({c / est.latency_ms:.1%} of the phase)", markup=False)
    return 0
