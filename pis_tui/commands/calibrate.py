"""`pis-tui calibrate`: measure a standard grid on the local device and write a measured table.

The table (format ``pis-tui-measured/1``, see ``pis_tui.pricing.measured_table``) is what
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
    p.add_argument("--resume", action="store_true",
                   help="keep what an earlier (partial) run wrote to --out on this device and "
                        "measure only the rest")
    p.add_argument("--repeats", type=positive_int("repeats"), default=None)
    p.add_argument("--progress-jsonl", action="store_true", help="progress as JSON lines on stdout")
    p.set_defaults(func=run)


def scenarios_for(device, dtype: str, quick: bool) -> list:
    """(scenario, strategies, grid) triples measured for each model."""
    from .. import families
    from ..model.scenario import Scenario

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
    from ..model.spec import load_model_spec

    planned: dict = {}
    for name in models:
        spec = load_model_spec(name)
        for scenario, strategies, grid in scenarios_for(device, dtype, quick):
            opts = profiling.WorklistOptions(grid=grid, m_grid=QUICK_M_GRID if quick else profiling.M_GRID)
            for p in profiling.worklist_detailed(spec, device, scenario, strategies, None, opts):
                planned.setdefault(p.op.key(), p)
    return list(planned.values())


def run(args) -> int:
    from .. import __version__, profiling, timing
    from ..device import local
    from ..pricing.efficiency_fit import fit_efficiency
    from ..pricing.measured_table import build_table, write_table
    from ._store import read_local_table
    from .profile import cancel_on_signals, emit, progress_display

    out, device, dtype, models = _checked_args(args)
    planned = build_plan(models, device, dtype, args.quick)
    prior, prior_peaks = [], None
    if args.resume and out.exists():
        old = read_local_table(str(out), device.fingerprint)
        wanted = {p.op.key() for p in planned}
        prior = [m for m in old.entries if m.status in profiling.FINAL_STATUSES and m.key in wanted]
        prior_peaks = (old.calibration or {}).get(dtype)
    have = {m.key for m in prior}
    labels = {p.op.key(): p.label for p in planned}
    jsonl = args.progress_jsonl
    say = (lambda m: emit({"event": "message", "message": m})) if jsonl else \
        (lambda m: print(f"pis-tui: {m}", file=sys.stderr, flush=True))
    say(f"calibrating {device.display_name} ({dtype}): {len(planned)} ops from "
        f"{', '.join(models)}{' (quick)' if args.quick else ''} → {out}"
        + (f" (resuming: {len(have)} already in it)" if args.resume and have else ""))
    if device.unknown:
        say(f"no profile in profiles/gpus matches {device.display_name}: the table carries a "
            "suggested profile built from its properties and the peaks measured now")
    busy = profiling.busy_warning() if device.kind == "cpu" else None
    if busy:
        say("warning: " + busy)
    ctx = timing.open_device("local")
    measured: dict = {m.key: m for m in prior}  # key -> the latest measurement (a re-measure replaces the first)
    state = {"last": time.monotonic(), "peaks": prior_peaks, "start": timing.read_clocks(ctx)}

    def save(partial: bool) -> None:
        cal = {dtype: state["peaks"]} if state["peaks"] else {}
        extra = {"pis_tui_version": __version__, "models": models, "quick": args.quick,
                 "partial": partial, "conditions_at_start": state["start"],
                 "clocks_at_end": timing.read_clocks(ctx),
                 "contention": report.contention if report else {}}
        # the analytical model's figures as these kernels reached them (a profile's block)
        extra["efficiency"] = fit_efficiency(measured.values(), device, cal, device.display_name)
        if device.unknown:
            info = local.measuring_gpu()
            if info is not None:
                extra["suggested_profile"] = _suggested_profile(local.unknown_gpu_profile(info, cal),
                                                                extra["efficiency"])
        table = build_table(list(measured.values()), ctx.device_info(),
                            software={**ctx.software, "runtime": ctx.runtime},
                            calibration=cal, method=ctx.method, extra=extra)
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
            if state["peaks"] is None:
                disp.update(0, len(planned), f"device peaks ({dtype})", 0.0, None)
                state["peaks"] = timing.measure_device_peaks(ctx, dtype)
            report = profiling.run_profile([p.op for p in planned if p.op.key() not in have], ctx,
                                           None, on_status=disp.status,
                                           cancel=cancel, repeats=args.repeats,
                                           on_measurement=on_measurement, calibrate=False,
                                           device=device, labels=labels,
                                           on_warning=None if busy else (lambda m: say("warning: " + m)))
    finally:
        # on Ctrl-C, SIGTERM and a CUDA error too: keep what was measured
        save(partial=report is None or report.cancelled)
    _say_done(measured, planned, prior, report, state["peaks"], out, jsonl)
    return EXIT_INTERRUPTED if report.cancelled else 0


def _checked_args(args):
    """(output path, the measuring device, dtype, models) from the arguments, each checked
    before anything is measured (UserError, one line)."""
    from ..device import local
    from ..model.spec import preset_names
    from .profile import measurable_dtypes

    if args.gpu not in (None, "local"):
        raise UserError(f"can only measure the local device: use --gpu local, not {args.gpu!r}")
    out = check_writable(args.out)
    if args.models:
        models = [m.strip() for m in args.models.split(",") if m.strip()]
        if not models:
            raise UserError("no model given in --models")
    else:
        models = None
    device = local.measuring_device()  # torch decides, as for profile and validate
    dtype = args.dtype or ("fp32" if device.kind == "cpu" else "bf16")
    if dtype not in measurable_dtypes(device):
        raise UserError(f"cannot measure {dtype} on {device.display_name}: "
                        f"use one of {', '.join(measurable_dtypes(device))}")
    if models is None:
        models = list(preset_names()) if device.kind == "gpu" else list(CPU_DEFAULT_MODELS)
    return out, device, dtype, models


def _say_done(measured: dict, planned: list, prior: list, report, peaks: dict, out,
              jsonl: bool) -> None:
    """The closing line (or the NDJSON "done" event): what was measured, of what was planned."""
    from .profile import emit

    ok = sum(1 for m in measured.values() if m.status == "ok")
    unstable = sum(1 for m in measured.values() if m.status == "unstable")
    summary = {"out": str(out), "ops": len(measured), "ok": ok, "unstable": unstable,
               "planned": len(planned),
               "failed": report.failed, "cancelled": report.cancelled, "resumed": len(prior),
               "peak_tflops": peaks["peak_tflops"], "bandwidth_gbs": peaks["bandwidth_gbs"],
               "elapsed_s": round(report.elapsed_s, 1)}
    if jsonl:
        emit({"event": "done", **summary})
    else:
        print(f"{'cancelled' if report.cancelled else 'done'}: {ok} ops measured ok, "
              f"{unstable} unstable, {len(measured) - ok - unstable} unsupported/failed, of "
              f"{len(planned)} planned, in "
              f"{report.elapsed_s:.0f} s; peaks {peaks['peak_tflops']:.3f} TFLOP/s matmul, "
              f"{peaks['bandwidth_gbs']:.1f} GB/s copy → {out}")


def _suggested_profile(dev, efficiency: dict) -> dict:
    """A profiles/gpus file for a GPU that has none, from what was read and measured here
    (review it, add a datasheet source for each figure, and a ``match`` string)."""
    return {"name": dev.fingerprint.split(":", 1)[1].lower().replace("_", "-"),
            "display_name": dev.display_name.replace(" (local, no profile)", ""), "kind": "gpu",
            "match": [dev.display_name.replace(" (local, no profile)", "")],
            "peak_tflops": dev.peak_tflops, "sparse_peak_tflops": dev.sparse_peak_tflops,
            "memory_bandwidth_gbs": dev.bandwidth_gbs, "memory_gb": dev.memory_gb,
            "l2_mb": {"used": dev.l2_mb, "reported_by_torch": dev.l2_mb}, "sm_count": dev.sm_count,
            "sparse_24": dev.sparse_24, "efficiency": efficiency or {
                "kernel_floor_us": {"value": dev.launch_overhead_us,
                                    "source": "assumed (no small kernel was timed)"}},
            "sources": dev.sources, "notes": dev.notes}
