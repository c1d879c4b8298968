"""`pis-tui cache info|clear|export PATH`: look into, empty or export the DuckDB cache."""

from __future__ import annotations

import json

from .common import add_cache, add_scenario


def register(sub) -> None:
    p = sub.add_parser("cache", help="show, clear or export the measurement cache",
                       description="The DuckDB cache holds op timings measured on this machine, "
                                   "device peaks, saved sweeps, validation and quality results.")
    csub = p.add_subparsers(dest="cache_cmd", metavar="ACTION", required=True)
    i = csub.add_parser("info", help="where the cache is and what it holds")
    i.add_argument("--json", action="store_true", help="print the info as JSON")
    add_cache(i)
    c = csub.add_parser("clear", help="delete cached results (settings are kept unless --all)")
    c.add_argument("--table", action="append", default=None,
                   help="only this table (repeatable): op_timings, device_calibration, sweeps, "
                        "validations, quality_results, collective_timings, settings")
    c.add_argument("--all", action="store_true", help="also the TUI's saved settings")
    c.add_argument("--device", default=None, metavar="FINGERPRINT|local",
                   help="only this device's rows (see 'cache info' for the fingerprints)")
    c.add_argument("--op-kind", choices=("gemm", "attention", "elementwise", "overhead",
                                          "collective"),
                   default=None, help="only op timings of this kind (collective: the collectives "
                                      "measured through torch.distributed)")
    c.add_argument("--status", choices=("ok", "unstable", "unsupported", "oom", "error"),
                   default=None, help="only op timings with this status")
    c.add_argument("--model", default=None,
                   help="only this model's rows: its validations and quality results, and the "
                        "op timings of every kernel its sweep uses (kernels of the same shape "
                        "in other models go too); the scenario flags pick the sweep")
    add_scenario(c)
    add_cache(c)
    e = csub.add_parser("export", help="write a table to Parquet or CSV (by the file suffix)")
    e.add_argument("path", help="output file: .parquet or .csv")
    e.add_argument("--table", default="op_timings", help="table to export (default op_timings)")
    e.add_argument("--format", choices=("parquet", "csv"), default=None,
                   help="override the format the suffix implies")
    add_cache(e)
    for q in (i, c, e):
        q.set_defaults(func=run)
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from ..cache import DATA_TABLES, MEMORY, Cache, default_path
    from ..errors import UserError
    from .common import console

    where = args.cache or default_path()
    if where != MEMORY and not Path(where).expanduser().exists():
        # looking into a cache that is not there: a typo, or nothing measured yet; never a
        # request to create an empty one
        msg = (f"no cache at {where} (nothing measured there yet; the default is "
               f"{default_path()}, or set PIS_TUI_CACHE / --cache)")
        if args.cache_cmd == "info":
            print(json.dumps({"path": where, "exists": False}) if args.json else msg)
            return 0
        raise UserError(msg)
    cache = Cache.open(args.cache)
    con = console()
    if args.cache_cmd == "info":
        info = cache.info()
        if args.json:
            print(json.dumps(info, indent=2, default=str))
            return 0
        where = "in memory (" + info["fallback_reason"] + ")" if info["in_memory"] else info["path"]
        size = f", {info['size_bytes'] / 2**20:.1f} MiB" if info.get("size_bytes") else ""
        con.print(f"cache: {where}{size}, schema v{info['schema_version']}", markup=False)
        con.print("rows: " + ", ".join(f"{k} {v}" for k, v in info["tables"].items()))
        for d in info["devices"]:
            con.print(f"  {d['fingerprint']}: {d['ops']} op timings ({d['ok']} ok), torch {d['torch']}"
                      f"{', CUDA ' + d['cuda'] if d['cuda'] else ''}, method {d['method']}, last {d['last']}",
                      markup=False)
        for c in info.get("collectives", ()):
            con.print(f"  {c['fingerprint']}: {c['rows']} collectives over {c['world_size']} ranks "
                      f"({c['backend']}, {c['unstable']} unstable), last {c['last']}", markup=False)
        for c in info["calibrations"]:
            con.print(f"  peaks {c['fingerprint']} {c['dtype']}: {c['peak_tflops'] * 1e3:.1f} GFLOP/s, "
                      f"{c['bandwidth_gbs']:.1f} GB/s (torch {c['torch']})", markup=False)
        return 0
    if args.cache_cmd == "clear":
        tables = args.table or (DATA_TABLES + ("settings",) if args.all else None)
        device = args.device
        if device == "local":
            from ..device.local import local_device

            device = local_device().fingerprint
        keys = model = None
        if args.model:
            keys, model = _model_keys(args)
        removed = cache.clear(tables, fingerprint=device, op_type=args.op_kind, op_keys=keys,
                              model=model, status=args.status)
        con.print("cleared: " + ", ".join(f"{k} {v}" for k, v in removed.items()) + f" ({cache.path})",
                  markup=False)
        return 0
    r = cache.export(args.path, table=args.table, fmt=args.format)
    con.print(f"wrote {r['rows']} rows of {r['table']} to {r['path']} ({r['format']})", markup=False)
    return 0


def _model_keys(args) -> tuple[list, str]:
    """The kernels a sweep of ``--model`` uses (every family, each family's default grid, both
    phases, the scenario flags; the M grid of its GEMMs), and its name."""
    from .. import profiling
    from ..device.local import local_device
    from ..model.spec import load_model_spec
    from ._run import scenario_from_args

    spec = load_model_spec(args.model)
    device = local_device()
    planned = profiling.worklist(spec, device, scenario_from_args(args, device))
    return [o.key() for o in planned], spec.name
