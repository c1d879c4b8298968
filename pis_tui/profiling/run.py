"""Running a profile: what the cache lacks is measured in chunks of rounds, stored as it is
taken (nothing measured is lost to Ctrl-C), with progress, an ETA and cancellation."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

from ..errors import MeasureError
from ..measured_table import Measurement
from ..ops import Op, Overhead, measuring_form
from .plan import label_of, roofline_fn
from .rounds import (CPU_ROUNDS, MONOTONE_PASSES, CancelArg, ProgressFn, is_cancelled,
                     measure_rounds, monotone_violations)

#: statuses of a cached measurement that are not retried (an "error" is retried next time)
FINAL_STATUSES = ("ok", "unsupported", "oom")


CHUNK_S = 2.0  # profile (the TUI): measurements arrive every few seconds
BATCH_CHUNK_S = 30.0  # measure_ops (validate): rounds far apart, results at the end
CHUNK_MAX_OPS = 400


def busy_warning(threads: Optional[int] = None) -> Optional[str]:
    """A warning when other processes keep the CPU busy (1-minute load above the cores this
    process uses): multithreaded kernels then wait for descheduled threads, and times are
    inflated and noisy.  None when the machine looks quiet (or on a GPU run)."""
    from ..hardware import cpu_threads

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
    from ..hardware import local_device

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
    roof = roofline_fn(device or local_device())
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

    from .. import timing

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
            if is_cancelled(cancel):
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
            if report.cancelled or is_cancelled(cancel):
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
                if is_cancelled(cancel):
                    report.cancelled = True
                    break
            if report.cancelled:
                break
            _stop_if_sticky(ctx, report)
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


def _stop_if_sticky(ctx, report: ProfileReport) -> None:
    """After a CUDA error that poisons the process (``ctx.sticky_error``, set by
    ``timing.measure_op``) nothing more can be measured here: stop with one message (the
    caller's ``finally`` has stored everything measured; a new run resumes from it)."""
    err = getattr(ctx, "sticky_error", None)
    if err:
        ok = sum(1 for m in report.measurements if m.status == "ok")
        raise MeasureError(f"the GPU hit an unrecoverable error ({err}); {ok} measurement(s) "
                           "taken so far are kept: run the same command again (a new process) "
                           "to measure the rest")


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
        from .. import timing

        ctx = ctx or timing.open_device("local")
        pos = {o.key(): i for i, o in enumerate(ops)}
        got = measure_rounds(ops, ctx, 1 if ctx.is_cuda else CPU_ROUNDS, repeats,
                             lambda op, r: say(pos[op.key()], len(ops), label_of(op), 0.0, None),
                             cancel)
        _stop_if_sticky(ctx, ProfileReport(measurements=list(got.values())))
        return [got[o.key()] for o in ops if o.key() in got]
    report = run_profile(ops, ctx, cache, on_progress=say, cancel=cancel, repeats=repeats,
                         calibrate=False, chunk_s=BATCH_CHUNK_S)
    from ..hardware import local_device

    fp = ctx.fingerprint if ctx is not None else local_device().fingerprint
    want = {o.key() for o in ops}
    got = {m.key: m for m in cache.get_measurements(fp) if m.key in want}
    for m in report.measurements:
        got.setdefault(m.key, m)
    return list(got.values())
