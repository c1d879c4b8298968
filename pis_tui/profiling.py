"""Planning and running a measurement sweep on the local device.

* :func:`plan` lists the distinct kernel calls a sweep needs (deduped by op key across
  strategies, sparsities and phases; unstructured GEMMs run the dense kernel, so they are
  measured as dense), ordered by their share of their phase's time (the ops that decide the
  answer first, so charts fill in quickly), followed by a grid of M around tile boundaries
  for the GEMM (N, K) pairs of the model (up to the M each pair runs at), from which the estimator interpolates shapes that
  were not timed.
* :func:`run_profile` measures what the cache does not hold yet, storing measurements as they
  are taken (flushed at least every two seconds and on any exit, so Ctrl-C loses nothing), with a
  progress callback and cancellation between measurements.  CUDA out-of-memory on a shape
  marks that shape ``oom`` and goes on.

torch is imported only when something has to be measured: a profile served entirely from the
cache never imports it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Optional, Union

from .measured_table import Measurement
from .ops import Attention, Gemm, Op, Overhead
from .scenario import PHASES, Scenario

#: M values around typical GEMM tile boundaries (64/128/256) and powers of two
M_GRID = (1, 2, 4, 8, 16, 32, 64, 127, 128, 129, 255, 256, 257, 512, 1024, 2048, 4096)

#: statuses of a cached measurement that are not retried (an "error" is retried next time)
FINAL_STATUSES = ("ok", "unsupported", "oom")

#: CPU: each op is measured in this many rounds, interleaved with the other ops of its chunk
#: (a chunk is about CHUNK_S seconds of measuring per round in a profile, BATCH_CHUNK_S in
#: measure_ops, where an op's rounds then lie tens of seconds apart).  A burst of another process (during which every multithreaded kernel waits
#: a scheduler slice), or a slow spell of a shared host (which slows even a quiet VM by 20-30%
#: for seconds to minutes), then spoils some rounds, not the op.
CPU_ROUNDS = 3
#: ... and up to this many rounds in all until its two fastest rounds agree within ROUND_TOL;
#: the time kept is the second-fastest round (another process only ever slows a round down,
#: and one fast round alone is not trusted)
CPU_MAX_ROUNDS = 6
ROUND_TOL = 0.10
CHUNK_S = 2.0  # profile (the TUI): measurements arrive every few seconds
BATCH_CHUNK_S = 30.0  # measure_ops (validate): rounds far apart, results at the end
CHUNK_MAX_OPS = 400
#: GEMMs of one (N, K) must not get faster as M grows: a time more than this share above a
#: larger M's is re-measured (in rounds), at most MONOTONE_PASSES times
MONOTONE_TOL = 0.15
MONOTONE_PASSES = 2


@dataclass
class PlanOptions:
    granularity: str = "layer"
    align: int = 128
    phases: tuple = PHASES
    #: M grid for interpolation: "model" (the dense model's GEMM pairs), "all" (every pair
    #: in the plan), or "none"
    grid: str = "model"
    m_grid: tuple = M_GRID
    #: skip grid points whose roofline time exceeds this (ms); None: no cap
    grid_max_ms: Optional[float] = None

    @classmethod
    def of(cls, options) -> "PlanOptions":
        if options is None:
            return cls()
        if isinstance(options, cls):
            return options
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in dict(options).items() if k in known})


@dataclass
class PlannedOp:
    op: Op
    share: float  # largest share of a phase's (roofline) time this op accounts for
    grid: bool = False
    label: str = ""


def busy_warning(threads: Optional[int] = None) -> Optional[str]:
    """A warning when other processes keep the CPU busy (1-minute load above the cores this
    process uses): multithreaded kernels then wait for descheduled threads, and times are
    inflated and noisy.  None when the machine looks quiet (or on a GPU run)."""
    from .hardware import cpu_threads

    n = threads or cpu_threads()
    try:
        with open("/proc/loadavg", encoding="utf-8") as f:
            load = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    if load <= n + 0.5:
        return None
    return (f"the machine is busy (load {load:.1f} on {n} cores): CPU timings will be slow and "
            "noisy; measure when it is quiet, or clear the cache and measure again")


def contention_message(probe: dict) -> str:
    return (f"other processes are using this CPU's cores: a small GEMM took "
            f"{probe['threads_ms']:.2f} ms on {probe['threads']} threads against "
            f"{probe['single_thread_ms']:.3f} ms on one (each multithreaded kernel waits for a "
            "descheduled thread), so these timings will be inflated; measure when the machine is "
            "quiet, then 'pis-tui cache clear' and profile again")


def measuring_form(op: Op) -> Op:
    """The kernel call actually timed for an op: one call (count 1), unstructured GEMMs as
    the dense GEMM they run, and a neutral name (the key ignores names)."""
    if isinstance(op, Gemm) and op.kind == "unstructured":
        op = replace(op, kind="dense", density=1.0)
    return replace(op, count=1.0)


def _roofline(device):
    try:
        from .estimator import roofline_ms

        return lambda op: roofline_ms(op, device)
    except ImportError:  # pragma: no cover - estimator is part of the package
        def f(op):
            return max(op.flops() / device.peak(op.dtype), op.bytes() / device.bandwidth) * 1e3
        return f


def label_of(op: Op) -> str:
    if isinstance(op, Gemm):
        kind = "" if op.kind == "dense" else f" {op.kind}"
        return f"GEMM{kind} {op.m}×{op.n}×{op.k} {op.dtype}"
    if isinstance(op, Attention):
        bs = f" block-sparse {op.block_density:.0%}" if op.block_density < 1 else ""
        return (f"attention{bs} B{op.batch} H{op.q_heads}/{op.kv_heads} q{op.q_len} kv{op.kv_len} "
                f"d{op.head_dim} {op.dtype}")
    return f"{op.kind} {op.rows}×{op.width} {op.dtype}"


def plan_detailed(spec, device, scenario: Scenario, strategies=None, sparsities=None,
                  options=None) -> list[PlannedOp]:
    from . import families
    from .taxonomy import build_phase_ops, strategies_grid

    opt = PlanOptions.of(options)
    strategies = tuple(strategies) if strategies else families.pruned()
    sparsities = tuple(sparsities) if sparsities else None
    roof = _roofline(device)
    found: dict[str, PlannedOp] = {}
    dense_pairs: set = set()
    all_pairs: set = set()
    pair_max_m: dict = {}
    for strat in strategies_grid(strategies, sparsities, opt.granularity, opt.align):
        for ph in opt.phases:
            po = build_phase_ops(spec, strat, scenario, ph)
            times = [(o, roof(o) * o.count) for o in po.ops]
            total = sum(t for _, t in times) or 1.0
            for o, t in times:
                if isinstance(o, Overhead):  # measured by the dispatch probe, not as a kernel
                    continue
                mo = measuring_form(o)
                k = mo.key()
                share = t / total
                cur = found.get(k)
                if cur is None:
                    found[k] = PlannedOp(mo, share, label=f"{label_of(mo)} ({o.name})")
                elif share > cur.share:
                    cur.share = share
                if isinstance(mo, Gemm):
                    pair = (mo.n, mo.k, mo.kind, mo.dtype, mo.density)
                    all_pairs.add(pair)
                    pair_max_m[pair] = max(pair_max_m.get(pair, 0), mo.m)
                    if strat.family == "dense":
                        dense_pairs.add(pair)
    planned = sorted(found.values(), key=lambda p: -p.share)
    if opt.grid != "none":
        max_m = max(scenario.prefill_batch * scenario.prompt_len, scenario.decode_batch)
        pairs = dense_pairs if opt.grid == "model" else all_pairs
        grid = []
        for pair in sorted(pairs):
            n, k, kind, dtype, dens = pair
            # up to the first grid point at or above the largest M this pair runs at (an
            # lm_head runs at M = batch, never at the prompt's M), within the scenario
            top = min([g for g in opt.m_grid if g >= pair_max_m[pair]] or [pair_max_m[pair]])
            for m in opt.m_grid:
                if m > max_m or m > top:
                    continue
                g = Gemm("grid", m, n, k, 1.0, dtype, kind=kind, density=dens)
                if g.key() in found:
                    continue
                t = roof(g)
                if opt.grid_max_ms is not None and t > opt.grid_max_ms:
                    continue
                found[g.key()] = p = PlannedOp(g, 0.0, grid=True, label=f"{label_of(g)} (M grid)")
                grid.append((t, p))
        grid.sort(key=lambda tp: tp[0])  # cheap points first: the grid fills in quickly
        planned += [p for _, p in grid]
    return planned


def plan(spec, device, scenario: Scenario, strategies=None, sparsities=None,
         options=None) -> list[Op]:
    """The ops (one call each) to measure for a sweep, most important first, then the M grid."""
    return [p.op for p in plan_detailed(spec, device, scenario, strategies, sparsities, options)]


# ---------------------------------------------------------------- running


@dataclass
class ProfileReport:
    measured: int = 0
    reused: int = 0
    failed: int = 0
    cancelled: bool = False
    total: int = 0
    elapsed_s: float = 0.0
    calibrated: list = field(default_factory=list)  # dtypes whose peaks were measured now
    contention: dict = field(default_factory=dict)  # timing.contention_probe at the start (CPU)
    measurements: list = field(default_factory=list)  # the new Measurements
    failures: list = field(default_factory=list)  # (key, status, note)
    remeasured: int = 0  # GEMMs re-measured because they were slower than a larger M

    def to_dict(self) -> dict:
        return {"measured": self.measured, "reused": self.reused, "failed": self.failed,
                "cancelled": self.cancelled, "total": self.total,
                "elapsed_s": round(self.elapsed_s, 3), "calibrated": self.calibrated,
                "contention": self.contention, "remeasured": self.remeasured,
                "failures": [{"key": k, "status": s, "note": n} for k, s, n in self.failures]}


ProgressFn = Callable[[int, int, str, float, Optional[float]], None]
CancelArg = Union[threading.Event, Callable[[], bool], None]


def _is_cancelled(cancel: CancelArg) -> bool:
    if cancel is None:
        return False
    if hasattr(cancel, "is_set"):
        return bool(cancel.is_set())
    return bool(cancel())


def _cost_guess(op: Op, roof) -> float:
    """Rough seconds to measure an op (fixed overhead + about eight calls) for the ETA."""
    try:
        t = roof(op) / 1e3
    except Exception:  # noqa: BLE001
        t = 0.0
    return 0.06 + 8 * t


class _Writer:
    """Buffers new measurements and writes them once `flush_s` seconds have passed since the
    last write (each write opens and closes the DuckDB file: tens of ms)."""

    def __init__(self, cache, device_info: dict, flush_s: float):
        self.cache, self.info, self.flush_s = cache, device_info, flush_s
        self.pending: list[Measurement] = []
        self.last = time.monotonic()

    def add(self, m: Measurement) -> None:
        self.pending.append(m)
        if time.monotonic() - self.last >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        if self.pending and self.cache is not None:
            self.cache.put_measurements(self.pending, self.info)
        self.pending = []
        self.last = time.monotonic()


def run_profile(ops: Iterable[Op], device_ctx, cache, on_progress: Optional[ProgressFn] = None,
                cancel: CancelArg = None, *, repeats: Optional[int] = None,
                on_measurement: Optional[Callable[[Measurement], None]] = None,
                calibrate: bool = True, recalibrate: bool = False, flush_s: float = 2.0, device=None,
                labels: Optional[dict] = None,
                on_warning: Optional[Callable[[str], None]] = None,
                chunk_s: float = CHUNK_S) -> ProfileReport:
    """Measure the ops the cache does not hold yet (for this device and software).

    ``device_ctx``: a ``timing.DeviceContext``, or None to open the local device only when
    something must be measured.  ``on_progress(done, total, current_label, elapsed_s, eta_s)``
    is called before each measurement and once at the end (``eta_s`` None until known).
    ``cancel``: a threading.Event or a callable; checked between measurements.  With
    ``calibrate`` the device's peak matmul rate and copy bandwidth are measured once per dtype
    (for the estimator's roofline; ``recalibrate`` measures them again).  On the CPU a quick
    probe checks that no other process holds a core (``on_warning`` hears about it: timings
    would then measure waiting for descheduled threads).  KeyboardInterrupt is re-raised after
    what was measured has been written.
    """
    from .hardware import local_device

    t0 = time.monotonic()
    ops = list({measuring_form(o).key(): measuring_form(o) for o in ops
                if not isinstance(o, Overhead)}.values())
    fp = device_ctx.fingerprint if device_ctx is not None else local_device().fingerprint
    report = ProfileReport(total=len(ops))
    have = {}
    if cache is not None:
        have = {m.key: m for m in cache.get_measurements(fp) if m.status in FINAL_STATUSES}
    todo = [o for o in ops if o.key() not in have]
    report.reused = len(ops) - len(todo)
    dtypes = sorted({o.dtype for o in ops})
    need_cal = []
    if calibrate and cache is not None:
        need_cal = [d for d in dtypes if recalibrate or cache.get_calibration(fp, d) is None]
    roof = _roofline(device or local_device())
    guesses = [_cost_guess(o, roof) for o in todo]
    remaining_guess = sum(guesses) + 1.5 * len(need_cal)
    done_guess = 0.0
    measure_s = 0.0
    total = len(ops)
    done = report.reused

    # the chunk being measured: its ops finish together after their last round, so progress
    # and the ETA count the share of its calls made so far (the bar moves, the ETA updates)
    part = {"ops": 0, "guess": 0.0, "frac": 0.0, "since": None}

    def progress(label: str) -> None:
        if on_progress is None:
            return
        frac = part["frac"]
        spent = measure_s + (time.monotonic() - part["since"] if part["since"] else 0.0)
        dg = done_guess + frac * part["guess"]
        eta = None
        if dg > 0 and spent > 0:
            eta = max(0.0, spent / dg * (remaining_guess - frac * part["guess"]))
        on_progress(min(total, done + int(frac * part["ops"])), total, label,
                    time.monotonic() - t0, eta)

    if not todo and not need_cal:
        report.elapsed_s = time.monotonic() - t0
        progress("")
        return report

    from . import timing

    ctx = device_ctx
    if ctx is None:
        progress("opening the device (importing torch)")
        ctx = timing.open_device("local")
    if not ctx.is_cuda:
        report.contention = timing.contention_probe(ctx)
        if report.contention.get("contended") and on_warning is not None:
            on_warning(contention_message(report.contention))
    writer = _Writer(cache, {**ctx.device_info(), "contention": report.contention}, flush_s)
    try:
        for d in need_cal:
            if _is_cancelled(cancel):
                report.cancelled = True
                break
            progress(f"device peaks ({d}: large matmul, large copy)")
            ts = time.monotonic()
            if d not in ctx.dtypes:
                continue
            peaks = timing.measure_device_peaks(ctx, d)
            cache.put_calibration(fp, d, peaks["peak_tflops"], peaks["bandwidth_gbs"], peaks,
                                  software=ctx.software, method=peaks.get("method", ""))
            report.calibrated.append(d)
            measure_s += time.monotonic() - ts
            done_guess += 1.5
            remaining_guess -= 1.5
        rounds = 1 if ctx.is_cuda else CPU_ROUNDS
        for chunk in _chunks(list(zip(todo, guesses)), rounds, chunk_s):
            if report.cancelled or _is_cancelled(cancel):
                report.cancelled = True
                break
            ts = time.monotonic()
            pos = {o.key(): i for i, (o, _) in enumerate(chunk)}
            part.update(ops=len(chunk), guess=sum(g for _, g in chunk), frac=0.0, since=ts)

            def say(op, r):
                label = (labels or {}).get(op.key()) or label_of(op)
                part["frac"] = min(1.0, (r * len(chunk) + pos.get(op.key(), 0)) / (rounds * len(chunk)))
                progress(label if rounds == 1 else f"{label} (round {min(r, rounds - 1) + 1}/{rounds})")
            got = measure_rounds([o for o, _ in chunk], ctx, rounds, repeats, say, cancel)
            part.update(ops=0, guess=0.0, frac=0.0, since=None)
            measure_s += time.monotonic() - ts
            for op, guess in chunk:
                m = got.get(op.key())
                if m is None:  # cancelled before all its rounds: not stored
                    report.cancelled = True
                    continue
                done_guess += guess
                remaining_guess -= guess
                writer.add(m)
                report.measurements.append(m)
                if m.status == "ok":
                    report.measured += 1
                else:
                    if m.status in ("error", "oom"):
                        report.failed += 1
                    else:
                        report.measured += 1  # "unsupported" is a result: there is no kernel here
                    report.failures.append((m.key, m.status, m.note))
                done += 1
                if on_measurement is not None:
                    on_measurement(m)
                if _is_cancelled(cancel):
                    report.cancelled = True
                    break
            if report.cancelled:
                break
        if not ctx.is_cuda and not report.cancelled and report.measurements:
            cached_ok = [m for m in have.values() if m.status == "ok"]
            for _ in range(MONOTONE_PASSES):
                bad = monotone_violations(report.measurements + cached_ok)
                if not bad:
                    break
                progress(f"re-measuring {len(bad)} GEMM(s) slower than a larger M")
                ops_bad = [b.to_op() for b in bad]
                again = measure_rounds(ops_bad, ctx, rounds, repeats, None, cancel)
                old_by_key = {b.key: b for b in bad}
                for k, m in again.items():
                    prev = old_by_key[k]
                    if m.status != "ok" or m.ms >= prev.ms:
                        continue  # contention only inflates a time: keep the lower one
                    m.note = (m.note + f"; re-measured (was {prev.ms:.4g} ms, slower than a "
                              "larger M)").lstrip("; ")
                    writer.add(m)
                    report.measurements = [m if x.key == k else x for x in report.measurements]
                    cached_ok = [m if x.key == k else x for x in cached_ok]
                    report.remeasured += 1
    finally:
        writer.flush()  # also on KeyboardInterrupt / errors: nothing measured is lost
    report.elapsed_s = time.monotonic() - t0
    progress("")
    return report


def _chunks(items: list, rounds: int, chunk_s: float = CHUNK_S) -> list:
    """Consecutive groups of (op, cost guess) of about ``chunk_s`` seconds per round."""
    if rounds <= 1:
        return [[it] for it in items]
    out, cur, acc = [], [], 0.0
    for it in items:
        cur.append(it)
        acc += it[1]
        if acc >= chunk_s or len(cur) >= CHUNK_MAX_OPS:
            out.append(cur)
            cur, acc = [], 0.0
    if cur:
        out.append(cur)
    return out


def _load() -> Optional[float]:
    try:
        import os

        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def combine_rounds(ms: list) -> Measurement:
    """One measurement from the rounds of an op (each round the median of its batches): the
    second-fastest round (the fastest of one round alone), the spread across rounds, every
    round's time and the load average in the note."""
    first = ms[0]
    if len(ms) == 1 or first.status != "ok":
        return first
    ok = [m for m in ms if m.status == "ok" and m.ms]
    vals = sorted(m.ms for m in ok)
    med = vals[1] if len(vals) > 1 else vals[0]
    eagers = sorted(m.eager_ms or m.ms for m in ok)
    eager = eagers[1] if len(eagers) > 1 else eagers[0]
    rounds = ", ".join(f"{m.ms:.4g}" for m in ok)
    loads = [x for x in (getattr(m, "_load", None) for m in ok) if x is not None]
    load = f"; load {max(loads):.2f}" if loads else ""
    note = "; ".join(x for x in (first.note, f"2nd fastest of {len(ok)} rounds [{rounds}] ms{load}")
                     if x)
    return Measurement(key=first.key, op=first.op, ms=med, eager_ms=eager,
                       spread=(vals[-1] - vals[0]) / med if med > 0 else 0.0,
                       repeats=sum(m.repeats for m in ok), status="ok", note=note,
                       method=first.method, method_version=first.method_version,
                       fingerprint=first.fingerprint, software=first.software,
                       measured_at=ms[-1].measured_at)


def measure_rounds(ops: list, ctx, rounds: int, repeats: Optional[int] = None,
                   on_each: Optional[Callable] = None, cancel: CancelArg = None) -> dict:
    """Measure each op in ``rounds`` rounds (round r measures every op once, in order, so the
    rounds of one op are spread over the whole group's time) and combine them
    (:func:`combine_rounds`).  An op whose first round is not ``ok`` is not repeated.  Returns
    {key: Measurement} for the ops whose rounds all ran (cancellation stops between calls)."""
    from . import timing

    per: dict = {}
    if repeats is None and rounds > 1:
        repeats = 3  # batches per round
    max_rounds = max(rounds, CPU_MAX_ROUNDS) if rounds > 1 else rounds

    def settled(v) -> bool:
        if v[0].status != "ok":
            return True
        if len(v) < rounds:
            return False
        t = sorted(m.ms for m in v if m.ms)
        return len(t) < 2 or t[1] <= t[0] * (1 + ROUND_TOL)

    for r in range(max_rounds):
        for op in ops:
            k = op.key()
            if r > 0 and (k not in per or (r >= rounds and settled(per[k]))
                          or per[k][0].status != "ok"):
                continue
            if _is_cancelled(cancel):
                return {k: combine_rounds(v) for k, v in per.items()
                        if len(v) >= rounds or v[0].status != "ok"}
            if on_each is not None:
                on_each(op, r)
            m = timing.measure_op(op, ctx, repeats=repeats)
            m._load = _load()
            per.setdefault(k, []).append(m)
    return {k: combine_rounds(v) for k, v in per.items()}


def monotone_violations(measurements: Iterable[Measurement], tol: float = MONOTONE_TOL) -> list:
    """GEMM measurements slower than the same (N, K, kind, dtype) at a larger M by more than
    ``tol`` (a GEMM does not get faster with more rows: such a time was taken while the CPU
    was busy).  Returns the offending (smaller-M) measurements."""
    groups: dict = {}
    for m in measurements:
        if m.status != "ok" or not m.ms or m.op.get("op_type") != "gemm":
            continue
        o = m.op
        groups.setdefault((o["n"], o["k"], o.get("kind"), o.get("dtype"), o.get("density")),
                          {})[o["m"]] = m
    bad = []
    for by_m in groups.values():
        ms = sorted(by_m)
        # the fastest time at any larger M bounds each smaller M's time
        floor = float("inf")
        for mm in reversed(ms):
            cur = by_m[mm]
            if cur.ms > floor * (1 + tol):
                bad.append(cur)
            floor = min(floor, cur.ms)
    return bad


def measure_ops(ops: Iterable[Op], cache=None, dtype: Optional[str] = None,
                on_progress: Optional[Callable[[str], None]] = None, *, ctx=None,
                cancel: CancelArg = None, repeats: Optional[int] = None) -> list[Measurement]:
    """Measurements for exactly these ops (from the cache where present, measured otherwise).

    ``on_progress`` receives one-line messages (the validation command's convention).
    """
    ops = [measuring_form(o) for o in ops if not isinstance(o, Overhead)]
    if dtype:
        ops = [o for o in ops if o.dtype == dtype] or ops

    def say(done, total, label, elapsed, eta):
        if on_progress and label:
            eta_s = f", ETA {eta:.0f} s" if eta is not None else ""
            on_progress(f"measuring op {min(done + 1, total)}/{total}: {label}{eta_s}")

    if cache is None:
        from . import timing

        ctx = ctx or timing.open_device("local")
        pos = {o.key(): i for i, o in enumerate(ops)}
        got = measure_rounds(ops, ctx, 1 if ctx.is_cuda else CPU_ROUNDS, repeats,
                             lambda op, r: say(pos[op.key()], len(ops), label_of(op), 0.0, None),
                             cancel)
        return [got[o.key()] for o in ops if o.key() in got]
    report = run_profile(ops, ctx, cache, on_progress=say, cancel=cancel, repeats=repeats,
                         calibrate=False, chunk_s=BATCH_CHUNK_S)
    from .hardware import local_device

    fp = ctx.fingerprint if ctx is not None else local_device().fingerprint
    want = {o.key() for o in ops}
    got = {m.key: m for m in cache.get_measurements(fp) if m.key in want}
    for m in report.measurements:
        got.setdefault(m.key, m)
    return list(got.values())


def source_counts(spec, device, scenario: Scenario, strategies=None, sparsities=None,
                  options=None, cache=None) -> dict:
    """How the sweep's distinct ops would be priced now: {measured, shipped, interpolated,
    roofline, unsupported} (what `profile` reports at the end)."""
    from .engine import make_estimator
    from . import families
    from .taxonomy import build_phase_ops, strategies_grid

    opt = PlanOptions.of(options)
    est = make_estimator(device, scenario.dtype, cache)
    seen: dict = {}
    for strat in strategies_grid(tuple(strategies or families.pruned()),
                                 tuple(sparsities) if sparsities else None, opt.granularity,
                                 opt.align):
        for ph in opt.phases:
            for o in build_phase_ops(spec, strat, scenario, ph).ops:
                k = o.key()
                if k not in seen:
                    seen[k] = est.price(o).source
    out: dict = {}
    for s in seen.values():
        out[s] = out.get(s, 0) + 1
    return out
