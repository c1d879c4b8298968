"""`pis-tui frontier`: the Pareto frontier (speedup vs quality loss) of both phases."""

from __future__ import annotations

from ._run import add_quality_args, add_ranking_args, add_sweep_args
from .common import add_outputs


def register(sub) -> None:
    p = sub.add_parser("frontier", help="print the Pareto frontier of both phases")
    add_sweep_args(p)
    add_quality_args(p)
    p.add_argument("--include-flagged", action="store_true",
                   help="keep points flagged as above their physical ceiling or measured under "
                        "mixed conditions (left out by default)")
    add_ranking_args(p)
    add_outputs(p, csv=False)
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from ..present.export import point_dict
    from ..decide.frontier import extrapolated, flagged, frontier
    from ._run import run_sweep
    from ._tables import legend_lines, points_table
    from .common import check_writable, console, write_text

    if args.json_out and args.json_out != "-":
        check_writable(args.json_out)
    result = run_sweep(args)
    fronts = {ph: frontier([p for p in result.phase_points(ph)
                            if (args.include_flagged or not flagged(p))
                            and (args.allow_extrapolated or not extrapolated(p))])
              for ph in ("prefill", "decode")}
    if args.json_out:
        write_text(args.json_out, json.dumps(
            {"schema": "pis-tui/1", "frontier": {ph: [point_dict(p, result) for p in pts]
                                                 for ph, pts in fronts.items()}}, indent=2))
        return 0
    con = console()
    for ph, pts in fronts.items():
        con.print(points_table(result, ph, points=pts, title=f"{ph} frontier — "
                               f"{result.scenario.label(ph)} on {result.device.display_name}"))
    for line in legend_lines(result, [p for pts in fronts.values() for p in pts]):
        con.print(line, markup=False)
    return 0
