"""`pis-tui sweep`: every strategy × sparsity × phase: latency, speedup, FLOPs speedup."""

from __future__ import annotations

from ._run import add_quality_args, add_sweep_args
from .common import add_outputs


def register(sub) -> None:
    p = sub.add_parser("sweep", help="estimate every strategy × sparsity in prefill and decode")
    add_sweep_args(p)
    add_quality_args(p)
    add_outputs(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..present.export import to_csv, to_json
    from ._run import run_sweep
    from ._tables import batch_table, legend_lines, points_table, source_line
    from .common import check_writable, console, write_text

    for out in (args.json_out, args.csv_out):
        if out and out != "-":
            check_writable(out)
    result = run_sweep(args)
    if args.json_out:
        write_text(args.json_out, to_json(result))
    if args.csv_out:
        write_text(args.csv_out, to_csv(result))
    if args.json_out != "-":
        con = console()
        if result.precision:
            from ..decide.precision import precision_line

            con.print(precision_line(result.precision), markup=False)
        for ph in ("prefill", "decode"):
            con.print(points_table(result, ph))
        if result.batch_curve is not None:
            con.print(batch_table(result.batch_curve, f"decode speedup by batch @ "
                                  f"{result.scenario.context_len} (the experts a step touches "
                                  "decide it; `pis-tui batch` for more)"))
        con.print(source_line(result))
        for line in legend_lines(result, result.points):
            con.print(line, markup=False)
    return 0
