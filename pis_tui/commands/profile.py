"""`pis-tui profile`: measure on the local device every op a sweep needs, into the cache.

A second identical run is served from the cache (torch is not even imported).  Ctrl-C
(or SIGTERM) stops cleanly between two measurements, keeping everything measured; a second
Ctrl-C interrupts at once (still keeping what was written).  ``--progress-jsonl`` prints one
JSON object per line on stdout (the TUI's measuring subprocess reads them)::

    {"event": "plan", "total": 376, "cached": 0, "to_measure": 376, ...}
    {"event": "progress", "done": 3, "total": 376, "current": "GEMM ...", "elapsed_s": 1.2, "eta_s": 80.0}
    {"event": "progress", "done": 378, "total": 388, ..., "eta_s": 40.0,   (re-measures: their own count)
     "remeasure": {"done": 3, "total": 12, "what": "unstable ops", "current": "GEMM ...", "eta_s": 40.0}}
    {"event": "measurement", "key": "gemm:dense:fp32:...", "status": "ok", "ms": 1.23, ...}
    {"event": "done", "measured": 370, "reused": 0, "failed": 0, "cancelled": false,
     "remeasured": 4, "unstable": 1, "inconsistent": 0,
     "sources": {"measured": 300, "interpolated": 2, ...}, "elapsed_s": 150.3}
    {"event": "error", "message": "...", "exit_code": 3}          (instead of "done")
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from contextlib import contextmanager

from ..errors import EXIT_INTERRUPTED, PisError, UserError
from ._store import add_store_arg
from .common import add_model_gpu, add_scenario, add_strategy_options, positive_int


def register(sub) -> None:
    p = sub.add_parser("profile", help="measure every op a sweep needs on the local device (cached)",
                       description="Measure, on the local device (a CUDA GPU, or the CPU), every "
                                   "op the sweep of a model needs, and keep the times in the "
                                   "DuckDB cache that sweep/recommend/the TUI use.")
    add_model_gpu(p)
    add_scenario(p)
    p.add_argument("--strategies", "-s", default=None,
                   help="comma-separated families and combinations (default: every family and "
                        "combination a sweep prices)")
    p.add_argument("--sparsities", default=None, help="comma-separated, e.g. 0.25,0.5 "
                                                      "(default 0.125,0.25,0.375,0.5)")
    add_strategy_options(p)
    p.add_argument("--phase", choices=("prefill", "decode", "both"), default="both")
    p.add_argument("--grid", choices=("model", "all", "none"), default="model",
                   help="M grid around tile boundaries for interpolation: for the dense model's "
                        "GEMM shapes (default), for every GEMM shape, or none")
    p.add_argument("--repeats", type=positive_int("repeats"), default=None,
                   help="timed repeats per op (default 5 on CPU, 7 on CUDA)")
    p.add_argument("--recalibrate", action="store_true",
                   help="measure the device's peak matmul rate and copy bandwidth again")
    p.add_argument("--remeasure", choices=("unstable", "all"), default=None,
                   help="measure again the cached ops that are unstable, or all of them "
                        "(default: only what the cache lacks)")
    p.add_argument("--progress-jsonl", action="store_true",
                   help="print progress as JSON lines on stdout (for the TUI)")
    add_store_arg(p)
    p.set_defaults(func=run)


# ------------------------------------------------------------------ progress displays


class _Plain:
    """Progress as occasional plain lines on stderr (no rich, or not a terminal)."""

    def __init__(self, every_s: float = 5.0):
        self.every, self.last = every_s, 0.0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, done, total, label, elapsed, eta):
        now = time.monotonic()
        if label and now - self.last < self.every and done < total:
            return
        self.last = now
        eta_s = f", ETA {_fmt_s(eta)}" if eta is not None else ""
        print(f"[{done}/{total}] {_fmt_s(elapsed)} elapsed{eta_s}  {label}", file=sys.stderr, flush=True)

    def status(self, st) -> None:
        """run_profile's on_status: re-measures with their own count and ETA."""
        re = st.remeasure
        if re is None:
            self.update(st.done, st.total, st.current, st.elapsed_s, st.eta_s)
            return
        now = time.monotonic()
        if now - self.last < self.every:
            return
        self.last = now
        eta_s = f", ETA {_fmt_s(re.eta_s)}" if re.eta_s is not None else ""
        print(f"[re-measuring {re.done}/{re.total} {re.what}] {_fmt_s(st.elapsed_s)} elapsed{eta_s}  "
              f"{re.current}", file=sys.stderr, flush=True)


class _Rich:
    def __init__(self):
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn)

        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("ETA {task.fields[eta]}"),
            TextColumn("{task.fields[label]}", style="dim"),
            console=Console(stderr=True), transient=False)
        self.task = None

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def update(self, done, total, label, elapsed, eta, what: str = "measuring"):
        if self.task is None:
            self.task = self.progress.add_task(what, total=total, eta="…", label="")
        self.progress.update(self.task, description=what, completed=done, total=total,
                             eta=_fmt_s(eta) if eta is not None else "…", label=label[:60])

    def status(self, st) -> None:
        """run_profile's on_status: the bar counts a re-measure pass on its own (3/12), its ETA."""
        re = st.remeasure
        if re is None:
            self.update(st.done, st.total, st.current, st.elapsed_s, st.eta_s)
        else:
            self.update(re.done, re.total, f"{re.what}: {re.current}", st.elapsed_s, re.eta_s,
                        what="re-measuring")


class _Jsonl:
    def __init__(self):
        self.last = 0.0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, done, total, label, elapsed, eta, remeasure=None):
        ev = {"event": "progress", "done": done, "total": total, "current": label,
              "elapsed_s": round(elapsed, 3), "eta_s": None if eta is None else round(eta, 1)}
        if remeasure is not None:  # a re-measure pass: its own count and ETA
            ev["remeasure"] = remeasure.to_dict()
        emit(ev)

    def status(self, st) -> None:
        self.update(st.done, st.total, st.current, st.elapsed_s, st.eta_s, st.remeasure)


def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


def _fmt_s(s) -> str:
    if s is None:
        return "?"
    s = int(round(s))
    return f"{s // 60}:{s % 60:02d}" if s >= 60 else f"{s}s"


def progress_display(jsonl: bool = False):
    if jsonl:
        return _Jsonl()
    if sys.stderr.isatty():
        try:
            return _Rich()
        except ImportError:
            pass
    return _Plain()


@contextmanager
def cancel_on_signals(event: threading.Event, say=None):
    """SIGTERM, and a first Ctrl-C, set `event` (stop between measurements); a second Ctrl-C
    raises KeyboardInterrupt at once.  Only in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if event.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        event.set()
        if say:
            say("stopping after the current measurement (Ctrl-C again to stop at once)")

    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in old:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# ------------------------------------------------------------------ the command


def _check_local(gpu) -> None:
    if gpu not in (None, "local"):
        raise UserError(f"can only measure the local device: use --gpu local (or omit --gpu), "
                        f"not {gpu!r}")


def _precision_unmeasurable(scen, dev) -> str:
    """One line why the local device cannot time GEMMs at the scenario's precision ("" it can)."""
    from ..hf.quant_kernels import fp8_kernel_on
    from ..model.quant_formats import get

    p = get(scen.precision)
    if p is None or not p.kernel:
        return f"{scen.precision} has no torch kernel: it is estimated, never measured"
    if dev.kind == "cpu":
        return (fp8_kernel_on("cpu") or "") if p.act_quant else ""
    cap = tuple(int(x) for x in (dev.capability or "0.0").split(".")[:2])
    if p.act_quant and cap < (8, 9):
        return (f"compute capability {dev.capability or '?'} has no fp8 tensor cores (fp8 needs "
                "8.9+): fp8 is estimated as its emulation, not measured")
    if not p.act_quant and cap < (8, 0):
        return f"tinygemm (aten._weight_int4pack_mm) needs compute capability 8.0+, not {dev.capability}"
    if not p.act_quant and scen.dtype != "bf16":
        return f"tinygemm (aten._weight_int4pack_mm) takes bf16 activations, not {scen.dtype}"
    return ""


def measurable_dtypes(device) -> tuple:
    return ("fp32", "bf16") if device.kind == "cpu" else ("bf16", "fp16", "fp32", "tf32")


def run(args) -> int:
    from ..device import local

    try:
        # tensor parallelism on the CPU: this process measures as one rank, on its share of
        # the cores (the rank device's fingerprint); a no-op at --tp 1 and on a GPU
        with local.rank_threads(getattr(args, "tp", 1)):
            return _run(args)
    except PisError as e:
        if getattr(args, "progress_jsonl", False):
            emit({"event": "error", "message": str(e), "exit_code": e.exit_code})
        raise


def _needs_measuring(planned, cache, device, dtypes) -> bool:
    from .. import profiling

    have = {m.key for m in cache.get_measurements(device.fingerprint)
            if m.status in profiling.FINAL_STATUSES}
    return any(p.op.key() not in have for p in planned) or any(
        cache.get_calibration(device.fingerprint, d) is None for d in dtypes)


def _run(args) -> int:
    from .. import profiling
    from ..model.spec import load_model_spec
    from ._store import open_store

    from ..model.tensor_parallel import check_model

    _check_args(args)
    jsonl = args.progress_jsonl
    spec = load_model_spec(args.model)
    check_model(spec, args.tp)
    device = _named_device(args)
    sweep = _sweep_of(args, spec)
    warn = (lambda m: emit({"event": "warning", "message": m})) if jsonl else None
    cache = open_store(args.cache, on_warning=warn)
    if getattr(cache, "read_only", False):  # refused before anything is measured
        cache.check_writable("measure: nothing it measures could be stored")
    device, scenario, planned, align_warnings = _plan(args, sweep, device, cache, warn)
    labels = {p.op.key(): p.label for p in planned}
    say = (lambda m: emit({"event": "message", "message": m})) if jsonl else \
        (lambda m: print(f"pis-tui: {m}", file=sys.stderr))
    if device.unknown:
        say(f"{device.display_name}: no profile in profiles/gpus matches it; its figures come "
            "from its own properties, and the peaks measured now replace the nominal ones")
    cancel = threading.Event()
    warn_fn = warn or (lambda m: print(f"pis-tui: warning: {m}", file=sys.stderr, flush=True))
    busy = _warn_before_measuring(align_warnings, device, warn_fn)
    if jsonl:
        _emit_plan(args, spec, device, scenario, planned, cache)
    coll = None
    if args.tp > 1:  # the collectives first: a group that cannot start says so at once
        coll = _measure_collectives(args, sweep, scenario, device, cache, jsonl, say)
    with cancel_on_signals(cancel, say), progress_display(jsonl) as disp:
        report = profiling.run_profile([p.op for p in planned], None, cache, on_status=disp.status,
                                       cancel=cancel, repeats=args.repeats,
                                       on_measurement=_measurement_emitter(jsonl), device=device,
                                       labels=labels, recalibrate=args.recalibrate,
                                       on_warning=None if busy else warn_fn,
                                       remeasure=args.remeasure or "none")
    return _finish(jsonl, report, sweep, device, scenario, cache, coll)


def _check_args(args) -> None:
    """What profile refuses before loading anything: another device, another engine."""
    _check_local(args.gpu)
    if getattr(args, "engine", None) not in (None, "eager"):
        raise UserError(f"--engine {args.engine}: profile times the ops' own kernels on this "
                        "device; the engine only changes estimates (sweep, recommend, plan)")


def _named_device(args):
    """The local device as named without torch (a profile the cache already holds never
    imports it); a tensor-parallel group this CPU cannot start is refused first."""
    from ..device import local

    device = local.local_device()
    if args.tp > 1 and device.kind == "cpu":  # a group this CPU cannot start: say so first
        from ..timing.collectives import check_world

        check_world(args.tp, device)
    return device


class _Sweep:
    """What the profile covers: the model, the families and sparsities, the worklist options."""

    def __init__(self, spec, strategies, sparsities, options):
        self.spec, self.strategies, self.sparsities, self.options = spec, strategies, sparsities, options

    def plan_for(self, args, dev):
        """(scenario, planned ops) of the sweep on ``dev``; a dtype ``dev`` cannot measure is refused."""
        from .. import profiling
        from ._run import scenario_from_args

        scen = scenario_from_args(args, dev)
        if scen.dtype not in measurable_dtypes(dev):
            raise UserError(f"cannot measure {scen.dtype} on {dev.display_name}: "
                            f"use one of {', '.join(measurable_dtypes(dev))}")
        if scen.precision:
            why = _precision_unmeasurable(scen, dev)
            if why:
                raise UserError(f"cannot measure {scen.precision} on {dev.display_name}: {why}")
        return scen, profiling.worklist_detailed(self.spec, dev, scen, self.strategies,
                                                 self.sparsities, self.options)


def _sweep_of(args, spec) -> _Sweep:
    from .. import profiling
    from ..model.scenario import PHASES
    from .common import align_of, parse_families, sweep_sparsities
    from ..decide.sweep import default_strategies

    strategies = parse_families(args.strategies) or default_strategies()
    sparsities = None if args.sparsities is None else sweep_sparsities(args.sparsities)
    phases = PHASES if args.phase == "both" else (args.phase,)
    options = profiling.WorklistOptions(granularity=args.granularity, align=align_of(args),
                                    phases=phases, grid=args.grid)
    return _Sweep(spec, strategies, sparsities, options)


def _plan(args, sweep: _Sweep, device, cache, warn) -> tuple:
    """(device, scenario, planned ops, alignment warnings).  When something must be measured,
    torch decides which device that is (the one calibrate and validate use), and the plan
    follows it if NVML/nvidia-smi named another."""
    from ..device import local
    from ._run import check_align, grid_pairs
    from .common import align_of

    scenario, planned = sweep.plan_for(args, device)
    align_warnings = check_align(sweep.spec, grid_pairs(sweep.strategies, sweep.sparsities, spec=sweep.spec),
                                 align_of(args), scenario, explicit=args.align is not None)
    if (device.kind == "cpu" and local.gpu_hint()) or \
            _needs_measuring(planned, cache, device, {p.op.dtype for p in planned}):
        named = device
        device = local.measuring_device()
        if device.fingerprint != named.fingerprint:
            (warn or (lambda m: print(f"pis-tui: warning: {m}", file=sys.stderr)))(
                f"torch measures on {device.display_name}, not on {named.display_name} "
                "(as NVML/nvidia-smi named it): measuring that one (CUDA_DEVICE_ORDER=PCI_BUS_ID "
                "makes both orders agree)")
            scenario, planned = sweep.plan_for(args, device)
    return device, scenario, planned, align_warnings


def _warn_before_measuring(align_warnings, device, warn_fn):
    """Tell the alignment warnings, and on the CPU a busy machine; returns the busy warning
    (None when quiet)."""
    from .. import profiling

    for w in align_warnings:
        warn_fn(w)
    busy = profiling.busy_warning() if device.kind == "cpu" else None
    if busy:
        warn_fn(busy)
    return busy


def _emit_plan(args, spec, device, scenario, planned, cache) -> None:
    """The "plan" event: how many planned ops the cache holds and how many are to measure."""
    from .. import profiling

    cached = {m.key for m in cache.get_measurements(device.fingerprint)
              if m.status in profiling.FINAL_STATUSES and args.remeasure != "all"
              and not (args.remeasure == "unstable" and m.status == "unstable")}
    n_cached = sum(1 for p in planned if p.op.key() in cached)
    emit({"event": "plan", "model": spec.name, "device": device.display_name,
          "fingerprint": device.fingerprint, "scenario": scenario.to_dict(),
          "total": len(planned), "cached": n_cached, "to_measure": len(planned) - n_cached,
          "grid": sum(1 for p in planned if p.grid), "cache": cache.path})


def _measurement_emitter(jsonl: bool):
    """run_profile's on_measurement: a "measurement" event per new measurement with --progress-jsonl."""
    def on_measurement(m):
        if jsonl:
            emit({"event": "measurement", "key": m.key, "op": m.op, "status": m.status, "ms": m.ms,
                  "eager_ms": m.eager_ms, "spread": m.spread, "note": m.note})
    return on_measurement


def _measure_collectives(args, sweep: _Sweep, scenario, device, cache, jsonl, say):
    """The collectives of a tensor-parallel sweep, each row told as it arrives."""
    from .. import profiling

    wanted = profiling.collective_worklist(sweep.spec, scenario, sweep.strategies,
                                           sweep.sparsities, sweep.options)

    def on_collective(row):
        if jsonl:
            emit({"event": "measurement", "key": f"coll:{row['collective']}:{row['dtype']}:"
                  f"w{row['world_size']}:{row['bytes']}B:{row['backend']}",
                  "status": row["status"], "ms": row["ms"], "spread": row["spread"],
                  "note": row["note"]})
        else:
            say(f"{row['collective']} {row['bytes']:,} B over {row['world_size']} ranks "
                f"({row['backend']}): {row['ms']:.4g} ms, spread {row['spread']:.0%}"
                + (" [unstable]" if row["status"] == "unstable" else ""))
    return profiling.measure_collectives(wanted, device, cache,
                                         remeasure=args.remeasure or "none",
                                         on_result=on_collective)


def _finish(jsonl, report, sweep: _Sweep, device, scenario, cache, coll) -> int:
    """The "done" event or the printed summary; the exit code (interrupted when cancelled)."""
    from .. import profiling

    sources = profiling.source_counts(sweep.spec, device, scenario, sweep.strategies,
                                      sweep.sparsities, sweep.options, cache)
    cal = cache.get_calibration(device.fingerprint, scenario.dtype)
    summary = {**report.to_dict(), "sources": sources, "cache": cache.path,
               **({"collectives": coll.to_dict()} if coll is not None else {}),
               "calibration": {"peak_tflops": cal["peak_tflops"], "bandwidth_gbs": cal["bandwidth_gbs"]}
               if cal else None}
    if jsonl:
        emit({"event": "done", **summary})
    else:
        _print_summary(report, sources, cal, cache, device, scenario, coll)
    return EXIT_INTERRUPTED if report.cancelled else 0


def _print_summary(report, sources, cal, cache, device, scenario, coll=None) -> None:
    from rich.markup import escape

    from .common import console

    con = console()
    state = "cancelled" if report.cancelled else "done"
    con.print(f"[bold]{state}[/bold] in {_fmt_s(report.elapsed_s)} on {escape(device.display_name)}: "
              f"{report.measured} measured, {report.reused} reused from the cache, "
              f"{report.failed} failed (of {report.total} distinct ops incl. the M grid)")
    if report.remeasured or report.unstable:
        con.print(f"{report.remeasured} re-measured (unstable, or slower than a kernel doing more "
                  f"work); {report.unstable} stored unstable"
                  + (f" ({report.inconsistent} of them still slower than a kernel doing more work)"
                     if report.inconsistent else "")
                  + (": priced no better than interpolated; 'pis-tui profile --remeasure unstable' "
                     "when the machine is quiet" if report.unstable else ""))
    if report.kept_stable:
        con.print(f"{report.kept_stable} re-measured op(s) came out worse than their stable cached "
                  "figure (unstable or failed, a busy machine): the stable figure was kept")
    from ..pricing.sources import TIMING_SOURCES

    parts = [f"{sources.get(k, 0)} {k}" for k in TIMING_SOURCES
             if sources.get(k) or k in ("measured", "interpolated")]
    con.print("sweep ops by timing source now: " + (", ".join(parts) or "none"))
    if coll is not None:
        bad = sum(1 for r in coll.measured if r.get("status") == "unstable")
        con.print(f"collectives over {coll.world} ranks ({coll.backend}): {len(coll.measured)} "
                  f"measured, {coll.reused} reused from the cache"
                  + (f"; {bad} unstable (their rounds disagree: priced no better than "
                     "interpolated)" if bad else ""), markup=False)
    if cal:
        con.print(f"device peaks ({scenario.dtype}, measured): {cal['peak_tflops'] * 1e3:.1f} GFLOP/s "
                  f"matmul, {cal['bandwidth_gbs']:.1f} GB/s copy")
    shown = 0
    for key, status, note in report.failures:
        if status == "unsupported" and shown >= 3:
            continue
        con.print(f"  {status}: {key} — {note}", markup=False)
        shown += 1
    if report.cancelled:
        con.print("everything measured so far is kept in the cache; run the same command to resume")
    con.print(f"cache: {cache.path}" + (f" (in memory: {cache.fallback_reason})"
                                        if getattr(cache, "in_memory", False) else ""), markup=False)
