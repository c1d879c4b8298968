"""`pis-tui calibrate`: measure a standard grid on the local device and write a measured table.

The table (format ``pis-tui-measured/1``, see ``pis_tui.measured_table``) is what
``profiles/measured/`` ships: a table measured on one GPU server, used as ``shipped`` timings
on machines without that GPU.  This path needs torch only (no duckdb, no textual, no rich):
GPU servers often have nothing else, so the file is written directly.

The grid: for each model, every op of the default scenario's sweep (all families and
sparsities) plus an M grid around tile boundaries for the dense model's GEMM shapes; unless
``--quick``, also the dense and 2:4 ops of a few more scenarios (other batch sizes, a longer
context).  ``--quick`` keeps the dense model and a coarse M grid.  The table is rewritten
every 30 s while measuring and on Ctrl-C (marked ``"partial": true``), so nothing measured
is lost.
"""

from __future__ import annotations

import sys
import threading
import time

from ..errors import EXIT_INTERRUPTED, UserError
from .common import check_writable, positive_int

#: default models per device kind (the CPU default is sized to finish in minutes)
CPU_DEFAULT_MODELS = ("qwen2.5-0.5b",)
QUICK_M_GRID = (1, 16, 128, 1024)


def register(sub) -> None:
    p = sub.add_parser("calibrate", help="measure a standard grid on the local device into a table file",
                       description="Measure the shapes of the bundled presets on the local device and "
                                   "write a measured table (the format of profiles/measured/) that "
                                   "can be shipped for machines without this GPU.")
    p.add_argument("--gpu", "-g", default="local", help="only 'local' can be measured")
    p.add_argument("--out", "-o", required=True, help="the table file to write (JSON)")
    p.add_argument("--dtype", default=None, help="bf16 (GPU default), fp16, fp32 (CPU default)")
    p.add_argument("--models", default=None,
                   help="comma-separated presets or config paths (default: every preset on a "
                        f"GPU, {', '.join(CPU_DEFAULT_MODELS)} on the CPU)")
    p.add_argument("--quick", action="store_true", help="dense ops and a coarse M grid only")
    p.add_argument("--repeats", type=positive_int("repeats"), default=None)
    p.add_argument("--progress-jsonl", action="store_true", help="progress as JSON lines on stdout")
    p.set_defaults(func=run)


def scenarios_for(device, dtype: str, quick: bool) -> list:
    """(scenario, strategies, grid) triples measured for each model."""
    from .. import families
    from ..scenario import Scenario

    main = Scenario(dtype=dtype)
    if quick:
        return [(main, ("dense",), "model")]
    out = [(main, families.pruned(), "model")]
    # the dense GEMMs and the families that run kernels of their own, at more shapes
    extra = ("dense",) + tuple(f.name for f in families.all_families() if f.distinct_kernels)
    if device.kind == "gpu":
        out += [(Scenario(prefill_batch=8, prompt_len=1024, decode_batch=64, context_len=1024, dtype=dtype),
                 extra, "model"),
                (Scenario(prefill_batch=1, prompt_len=4096, decode_batch=1, context_len=4096, dtype=dtype),
                 extra, "none")]
    else:
        out += [(Scenario(prefill_batch=1, prompt_len=256, decode_batch=1, context_len=256, dtype=dtype),
                 extra, "none")]
    return out


def build_plan(models, device, dtype: str, quick: bool) -> list:
    from .. import profiling
    from ..model_spec import load_model_spec

    planned: dict = {}
    for name in models:
        spec = load_model_spec(name)
        for scenario, strategies, grid in scenarios_for(device, dtype, quick):
            opts = profiling.PlanOptions(grid=grid, m_grid=QUICK_M_GRID if quick else profiling.M_GRID)
            for p in profiling.plan_detailed(spec, device, scenario, strategies, None, opts):
                planned.setdefault(p.op.key(), p)
    return list(planned.values())


def run(args) -> int:
    from .. import __version__, profiling, timing
    from ..hardware import local_device
    from ..measured_table import build_table, write_table
    from ..model_spec import preset_names
    from .profile import cancel_on_signals, emit, measurable_dtypes, progress_display

    if args.gpu not in (None, "local"):
        raise UserError(f"can only measure the local device: use --gpu local, not {args.gpu!r}")
    out = check_writable(args.out)
    device = local_device()
    dtype = args.dtype or ("fp32" if device.kind == "cpu" else "bf16")
    if dtype not in measurable_dtypes(device):
        raise UserError(f"cannot measure {dtype} on {device.display_name}: "
                        f"use one of {', '.join(measurable_dtypes(device))}")
    if args.models:
        models = [m.strip() for m in args.models.split(",") if m.strip()]
        if not models:
            raise UserError("no model given in --models")
    else:
        models = list(preset_names()) if device.kind == "gpu" else list(CPU_DEFAULT_MODELS)
    planned = build_plan(models, device, dtype, args.quick)
    labels = {p.op.key(): p.label for p in planned}
    jsonl = args.progress_jsonl
    say = (lambda m: emit({"event": "message", "message": m})) if jsonl else \
        (lambda m: print(f"pis-tui: {m}", file=sys.stderr, flush=True))
    say(f"calibrating {device.display_name} ({dtype}): {len(planned)} ops from "
        f"{', '.join(models)}{' (quick)' if args.quick else ''} → {out}")
    busy = profiling.busy_warning() if device.kind == "cpu" else None
    if busy:
        say("warning: " + busy)
    ctx = timing.open_device("local")
    measured: dict = {}  # key -> the latest measurement (a re-measure replaces the first)
    state = {"last": time.monotonic(), "peaks": None}

    def save(partial: bool) -> None:
        cal = {dtype: state["peaks"]} if state["peaks"] else {}
        table = build_table(list(measured.values()), ctx.device_info(), software={**ctx.software, "runtime": ctx.runtime},
                            calibration=cal, method=ctx.method,
                            extra={"pis_tui_version": __version__, "models": models, "quick": args.quick,
                                   "partial": partial, "clocks_at_end": timing.read_clocks(),
                                   "contention": report.contention if report else {}})
        write_table(out, table)

    def on_measurement(m) -> None:
        measured[m.key] = m
        if jsonl:
            emit({"event": "measurement", "key": m.key, "status": m.status, "ms": m.ms, "note": m.note})
        if time.monotonic() - state["last"] > 30:
            save(partial=True)
            state["last"] = time.monotonic()

    cancel = threading.Event()
    report = None
    try:
        with cancel_on_signals(cancel, say), progress_display(jsonl) as disp:
            disp.update(0, len(planned), f"device peaks ({dtype})", 0.0, None)
            state["peaks"] = timing.measure_device_peaks(ctx, dtype)
            report = profiling.run_profile([p.op for p in planned], ctx, None, on_progress=disp.update,
                                           cancel=cancel, repeats=args.repeats,
                                           on_measurement=on_measurement, calibrate=False,
                                           device=device, labels=labels,
                                           on_warning=None if busy else (lambda m: say("warning: " + m)))
    finally:
        # on Ctrl-C too: keep what was measured
        save(partial=report is None or report.cancelled)
    ok = sum(1 for m in measured.values() if m.status == "ok")
    unstable = sum(1 for m in measured.values() if m.status == "unstable")
    summary = {"out": str(out), "ops": len(measured), "ok": ok, "unstable": unstable,
               "planned": len(planned),
               "failed": report.failed, "cancelled": report.cancelled,
               "peak_tflops": state["peaks"]["peak_tflops"], "bandwidth_gbs": state["peaks"]["bandwidth_gbs"],
               "elapsed_s": round(report.elapsed_s, 1)}
    if jsonl:
        emit({"event": "done", **summary})
    else:
        print(f"{'cancelled' if report.cancelled else 'done'}: {ok} ops measured ok, "
              f"{unstable} unstable, {len(measured) - ok - unstable} unsupported/failed, of "
              f"{len(planned)} planned, in "
              f"{report.elapsed_s:.0f} s; peaks {state['peaks']['peak_tflops']:.3f} TFLOP/s matmul, "
              f"{state['peaks']['bandwidth_gbs']:.1f} GB/s copy → {out}")
    return EXIT_INTERRUPTED if report.cancelled else 0
