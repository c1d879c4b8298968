"""`pis-tui batch`: decode speedup against decode batch, per strategy (where pruning pays off)."""

from __future__ import annotations

from .common import add_cache, add_model_gpu, add_scenario, add_strategy_options, dump_json


def register(sub) -> None:
    p = sub.add_parser("batch", help="decode speedup against decode batch: where each family pays "
                                     "off (an MoE model: the experts a step touches)")
    add_model_gpu(p)
    p.add_argument("--strategies", default=None,
                   help="comma-separated family@sparsity (default: static_depth@0.5,"
                        "static_width@0.5,low_rank@0.5,dynamic_depth@0.5; a mixture of experts: "
                        "static_depth@0.5,expert_pruning@0.5,topk_reduction@0.5,"
                        "dynamic_topk@0.25,expert_slimming@0.5)")
    p.add_argument("--batches", default=None,
                   help="comma-separated decode batches (default 1,2,4,…,256)")
    add_scenario(p)
    add_strategy_options(p)
    add_cache(p)
    p.add_argument("--json", dest="json_out", metavar="FILE|-", default=None)
    p.set_defaults(func=run)


def _strategies(text, granularity, align):
    from ..errors import UserError
    from ..families import MAX_SPARSITY
    from ..families.strategy import from_token
    from .common import parse_fraction

    if text is None:
        return None
    out = []
    for tok in (t.strip() for t in text.split(",")):
        if not tok:
            continue
        if tok.count("@") != 1 or "+" in tok:
            raise UserError(f"--strategies: {tok!r} is not family@sparsity (e.g. static_depth@0.25)")
        fam, sp = tok.split("@")
        out.append(from_token(fam.strip(), parse_fraction(sp, "sparsity", 0.0, MAX_SPARSITY),
                              granularity, align))
    if not out:
        raise UserError("--strategies is empty: give family@sparsity items")
    return out


def _batches(text):
    from ..errors import UserError

    if text is None:
        return None
    try:
        vals = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UserError(f"--batches {text!r}: give whole numbers, e.g. 1,8,64") from None
    if not vals or any(v < 1 or v > 1 << 20 for v in vals):
        raise UserError(f"--batches {text!r}: each batch must be 1…{1 << 20}")
    return sorted(set(vals))


def run(args) -> int:
    from ..display import served_text
    from ..decide.batch_curve import BATCHES, batch_curve
    from ..decide.sweep import check_collectives, make_estimator, resolve, tensor_parallel_device
    from ._run import open_cache_if_local, scenario_from_args
    from ._tables import batch_table
    from .common import align_of, console, resolve_gpu

    spec, device = resolve(args.model, resolve_gpu(args.gpu))
    scenario = scenario_from_args(args, device)
    strategies = _strategies(args.strategies, args.granularity, align_of(args))
    batches = _batches(args.batches) or list(BATCHES)
    device = tensor_parallel_device(spec, device, scenario.tp)
    est = make_estimator(device, scenario.dtype, open_cache_if_local(args, device),
                         engine=scenario.engine)
    check_collectives(est, scenario.tp)
    curve = batch_curve(spec, est, scenario, strategies, batches)
    if args.json_out:
        dump_json(args.json_out, {"model": spec.name, "gpu": device.display_name,
                                  "context_len": scenario.context_len, "engine": scenario.engine,
                                  "dtype": scenario.dtype, **curve.to_dict()})
        return 0
    con = console()
    con.print(f"[bold]{spec.name}[/] · decode @ {scenario.context_len} · {device.display_name} · "
              f"{served_text(scenario.dtype, scenario.precision)} · {scenario.engine} kernels: speedup over dense by decode batch")
    con.print(batch_table(curve))
    for name in curve.speedups:
        con.print(f"{name}: largest at batch {curve.best_batch(name)}", markup=False)
    con.print("estimates (sources as in `pis-tui ops`); routing: " + scenario.routing, markup=False)
    return 0
