"""Running a profile: what the cache lacks is measured in chunks of rounds, stored as it is
taken (nothing measured is lost to Ctrl-C), with progress, an ETA and cancellation."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Optional

from ..errors import MeasureError
from ..pricing.measured_table import Measurement
from ..model.ops import Collective, Op, Overhead, measuring_form
from .worklist import label_of, roofline_fn
from .rounds import (CPU_MAX_ROUNDS, CPU_ROUNDS, MONOTONE_PASSES, CancelArg, ProgressFn,
                     consistency_violations, is_cancelled, measure_rounds)

#: statuses of a cached measurement that are not retried (an "error" is retried next time)
FINAL_STATUSES = ("ok", "unstable", "unsupported", "oom")


CHUNK_S = 2.0  # profile (the TUI): measurements arrive every few seconds
BATCH_CHUNK_S = 30.0  # measure_ops (validate): rounds far apart, results at the end
CHUNK_MAX_OPS = 400


def busy_warning(threads: Optional[int] = None) -> Optional[str]:
    """A warning when other processes keep the CPU busy (1-minute load above the cores this
    process uses): multithreaded kernels then wait for descheduled threads, and times are
    inflated and noisy.  None when the machine looks quiet (or on a GPU run)."""
    from ..device.local import cpu_threads

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
    remeasured: int = 0  # ops measured again (unstable, or slower than one doing more work)
    unstable: int = 0  # new measurements stored unstable
    inconsistent: int = 0  # of those: still slower than a kernel doing more work

    def to_dict(self) -> dict:
        return {"measured": self.measured, "reused": self.reused, "failed": self.failed,
                "cancelled": self.cancelled, "total": self.total,
                "elapsed_s": round(self.elapsed_s, 3), "calibrated": self.calibrated,
                "contention": self.contention, "remeasured": self.remeasured,
                "unstable": self.unstable, "inconsistent": self.inconsistent,
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
                chunk_s: float = CHUNK_S, remeasure: str = "none",
                on_status: Optional[Callable[["ProgressStatus"], None]] = None) -> ProfileReport:
    """Measure the ops the cache does not hold yet (for this device and software).

    ``device_ctx``: a ``timing.DeviceContext``, or None to open the local device only when
    something must be measured.  ``on_progress(done, total, current_label, elapsed_s, eta_s)``
    is called before each measurement and once at the end (``eta_s`` None until known; ``done``
    and ``total`` never go down: re-measures add to both); ``on_status(ProgressStatus)`` hears the
    same, and while ops are re-measured the pass's own count and ETA too (the ETA both give is
    then the pass's).  ``cancel``: a threading.Event or a
    callable; checked between measurements.  With ``calibrate`` the device's peak matmul rate
    and copy bandwidth are measured once per dtype (for the estimator's roofline;
    ``recalibrate`` measures them again).  ``remeasure``: ``"unstable"`` measures the cached
    unstable ops again, ``"all"`` every op.  On the CPU a contention probe runs before each
    round (rounds it finds contended are not used; ``on_warning`` hears when the machine is
    busy at the start).  After the first pass, unstable ops are re-measured once, and kernels
    slower than one of their kind doing more work are re-measured, then stored ``unstable``
    if they still are (see :mod:`.rounds`).  KeyboardInterrupt is re-raised after what was
    measured has been written.
    """
    from ..device.local import local_device

    if remeasure not in ("none", "unstable", "all"):
        raise ValueError(f"remeasure must be none, unstable or all, not {remeasure!r}")
    t0 = time.monotonic()
    ops = _distinct_measurable(ops)
    fp = device_ctx.fingerprint if device_ctx is not None else local_device().fingerprint
    report = ProfileReport(total=len(ops))
    have = _cached_final(cache, fp, remeasure)
    todo = [o for o in ops if o.key() not in have]
    report.reused = len(ops) - len(todo)
    need_cal = _dtypes_to_calibrate(ops, cache, fp, calibrate, recalibrate)
    roof = roofline_fn(device or local_device())
    guesses = [_cost_guess(o, roof) for o in todo]
    progress = _Progress(on_progress, t0, total=len(ops), done=report.reused,
                         remaining=sum(guesses) + 1.5 * len(need_cal), on_status=on_status)
    if not todo and not need_cal:
        report.elapsed_s = time.monotonic() - t0
        progress("")
        return report

    run = _ProfileRun(device_ctx, cache, report, progress, roof, cancel=cancel, repeats=repeats,
                      labels=labels, on_measurement=on_measurement, on_warning=on_warning,
                      flush_s=flush_s)
    try:
        run.calibrate(need_cal, fp)
        run.measure_todo(todo, guesses, chunk_s)
        run.remeasure_unstable()
        run.settle_inconsistent(have)
        report.unstable = sum(1 for m in report.measurements if m.status == "unstable")
    finally:
        run.writer.flush()  # also on KeyboardInterrupt / errors: nothing measured is lost
    report.elapsed_s = time.monotonic() - t0
    progress("")
    return report


def _distinct_measurable(ops: Iterable[Op]) -> list:
    """The ops in their measuring form, once each (overheads and collectives are not timed here)."""
    return list({measuring_form(o).key(): measuring_form(o) for o in ops
                 if not isinstance(o, (Overhead, Collective))}.values())


def _cached_final(cache, fp: str, remeasure: str) -> dict:
    """key -> the cached measurement that is not taken again (``remeasure`` as run_profile's)."""
    have = {}
    if cache is not None:
        have = {m.key: m for m in cache.get_measurements(fp) if m.status in FINAL_STATUSES}
        if remeasure == "all":
            have = {}
        elif remeasure == "unstable":
            have = {k: m for k, m in have.items() if m.status != "unstable"}
    return have


def _dtypes_to_calibrate(ops: list, cache, fp: str, calibrate: bool, recalibrate: bool) -> list:
    """The ops' dtypes whose device peaks are to be measured now."""
    dtypes = sorted({o.dtype for o in ops})
    need_cal = []
    if calibrate and cache is not None:
        need_cal = [d for d in dtypes if recalibrate or cache.get_calibration(fp, d) is None]
    return need_cal


@dataclass(frozen=True)
class Remeasuring:
    """A re-measure pass's own progress: ``done`` of its ``total`` ops (its share of calls made,
    as the run's count), ``what`` it re-measures ("unstable ops", ...), the op being timed and
    the pass's ETA in seconds (None until known)."""

    done: int
    total: int
    what: str
    current: str
    eta_s: Optional[float]

    def to_dict(self) -> dict:
        return {"done": self.done, "total": self.total, "what": self.what, "current": self.current,
                "eta_s": None if self.eta_s is None else round(self.eta_s, 1)}


@dataclass(frozen=True)
class ProgressStatus:
    """What ``on_progress`` hears, and while ops are re-measured the pass's own progress."""

    done: int
    total: int
    current: str
    elapsed_s: float
    eta_s: Optional[float]
    remeasure: Optional[Remeasuring] = None


class _Progress:
    """Progress and the ETA of a run, told to ``on_progress`` (the ETA scales the time spent by
    the cost guesses still to do against those done).

    The chunk being measured (the part): its ops finish together after their last round, so
    progress and the ETA count the share of its calls made so far (the bar moves, the ETA
    updates).  An op whose rounds disagree gets extra rounds (up to ``CPU_MAX_ROUNDS``): the
    share then counts the rest of the round as still to do, never all of it done.

    A re-measure pass (``begin_part(..., what=...)``, at the end of a run) has its own count and
    its own ETA, from the time its calls have taken so far (the ops re-measured are the slow or
    noisy ones: the run's cost guesses say little about them)."""

    def __init__(self, on_progress: Optional[ProgressFn], t0: float, *, total: int, done: int,
                 remaining: float, on_status: Optional[Callable[[ProgressStatus], None]] = None):
        self.on_progress, self.on_status, self.t0 = on_progress, on_status, t0
        self.total, self.done, self.shown = total, done, 0  # ops
        self.remaining, self.done_guess, self.spent = remaining, 0.0, 0.0  # seconds (guessed, spent)
        self.part_ops, self.part_guess, self.frac, self.since = 0, 0.0, 0.0, None
        # the part's calls: rounds expected, position of the one starting, made, expected in all
        self.part_rounds, self.part_pos, self.part_calls, self.expected, self.extra = 1, 0, 0, 0, 0
        self.what: Optional[str] = None  # the re-measure pass running
        self.pass_shown = 0

    def __call__(self, label: str) -> None:
        """Tell where the run stands; ``label``: what is being done (the op being timed)."""
        if self.on_progress is None and self.on_status is None:
            return
        frac = self.frac
        now = time.monotonic()
        spent = self.spent + (now - self.since if self.since else 0.0)
        dg = self.done_guess + frac * self.part_guess
        eta = None
        if dg > 0 and spent > 0:
            eta = max(0.0, spent / dg * (self.remaining - frac * self.part_guess))
        re = None
        if self.what is not None and self.since is not None:
            re = self._remeasuring(label, now, eta)
            eta = re.eta_s
            label = f"re-measuring {re.done}/{re.total} {re.what}: {label}"
        # never backwards: a cancelled chunk's partial progress stays shown
        self.shown = max(self.shown, min(self.total, self.done + int(frac * self.part_ops)))
        elapsed = now - self.t0
        if self.on_progress is not None:
            self.on_progress(self.shown, self.total, label, elapsed, eta)
        if self.on_status is not None:
            self.on_status(ProgressStatus(self.shown, self.total, label, elapsed, eta, re))

    def _remeasuring(self, op_label: str, now: float, run_eta: Optional[float]) -> Remeasuring:
        """The pass's count and ETA: the time per call it has taken so far times the calls still
        to make (before its first call ends, the run's guess)."""
        n, pos = self.part_ops, self.part_pos
        eta = run_eta
        if self.part_calls > 1 and pos > 0:
            eta = (now - self.since) / pos * (self.expected - pos)
        self.pass_shown = max(self.pass_shown, min(n - 1, int(self.frac * n)) if n else 0)
        return Remeasuring(self.pass_shown, n, self.what, op_label, eta)

    def add_work(self, n_ops: int, guess: float) -> None:
        """Ops added to the run (re-measures)."""
        self.total += n_ops
        self.remaining += guess

    def credit(self, guess: float) -> None:
        """Work of this guessed cost is done."""
        self.done_guess += guess
        self.remaining -= guess

    def spend_since(self, ts: float) -> None:
        self.spent += time.monotonic() - ts

    def begin_part(self, n_ops: int, guess: float, rounds: int = 1, what: Optional[str] = None) -> None:
        """A part of ``n_ops`` ops expected to take ``rounds`` rounds each; ``what``: a
        re-measure pass's (what it re-measures)."""
        self.part_ops, self.part_guess, self.frac, self.since = n_ops, guess, 0.0, time.monotonic()
        self.part_rounds, self.part_pos, self.part_calls = rounds, 0, 0
        self.expected, self.extra = rounds * n_ops, 0
        self.what, self.pass_shown = what, 0

    def set_share(self, r: int, i: int, n: int) -> None:
        """The part's share done as its op ``i`` of ``n`` starts round ``r``.  A round past those
        expected (an op whose rounds disagree gets more, up to ``CPU_MAX_ROUNDS``): the rest of
        that round (at most) is counted as still to come, never the part as all done."""
        self.part_calls += 1
        if r < self.part_rounds:
            self.part_pos = r * n + i
        else:
            self.part_pos = self.part_rounds * n + self.extra
            self.extra += 1
            self.expected = max(self.expected, self.part_pos + n - i)
        self.frac = min(1.0, self.part_pos / max(1, self.expected))

    def end_part(self) -> None:
        ts = self.since
        self.part_ops, self.part_guess, self.frac, self.since = 0, 0.0, 0.0, None
        self.part_rounds, self.part_pos, self.part_calls, self.expected, self.extra = 1, 0, 0, 0, 0
        self.what = None
        self.spend_since(ts)


class _ProfileRun:
    """The measuring side of :func:`run_profile`: the opened device, the writer, and the
    passes (calibration, the ops to do, the re-measures) that fill ``report``."""

    def __init__(self, device_ctx, cache, report: ProfileReport, progress: _Progress, roof, *,
                 cancel: CancelArg, repeats: Optional[int], labels: Optional[dict],
                 on_measurement: Optional[Callable[[Measurement], None]],
                 on_warning: Optional[Callable[[str], None]], flush_s: float):
        self.cache, self.report, self.progress, self.roof = cache, report, progress, roof
        self.cancel, self.repeats, self.labels = cancel, repeats, labels
        self.on_measurement = on_measurement
        self.ctx = self._open_device(device_ctx)
        self.probe = self._contention_probe(on_warning)
        self.writer = _Writer(cache, {**self.ctx.device_info(), "contention": report.contention},
                              flush_s)
        self.rounds = 1 if self.ctx.is_cuda else CPU_ROUNDS
        self.fresh: dict = {}  # key -> the newest measurement of this run

    def _open_device(self, device_ctx):
        from .. import timing

        if device_ctx is not None:
            return device_ctx
        self.progress("opening the device (importing torch)")
        return timing.open_device("local")

    def _contention_probe(self, on_warning) -> Optional[Callable[[], dict]]:
        """On the CPU: probe once now (warning when contended), and the probe to run before
        each round; None on a GPU."""
        from .. import timing

        ctx = self.ctx
        if ctx.is_cuda:
            return None
        self.report.contention = timing.contention_probe(ctx)
        if self.report.contention.get("contended") and on_warning is not None:
            on_warning(contention_message(self.report.contention))
        return lambda: timing.contention_probe(ctx)

    def _label(self, op: Op) -> str:
        return (self.labels or {}).get(op.key()) or label_of(op)

    def _tell(self, m: Measurement) -> None:
        if self.on_measurement is not None:
            self.on_measurement(m)

    def store(self, m: Measurement) -> None:
        """Write ``m`` (buffered) and keep it as this run's newest for its key."""
        report = self.report
        self.writer.add(m)
        if m.key not in self.fresh:
            report.measurements.append(m)
        else:
            report.measurements = [m if x.key == m.key else x for x in report.measurements]
        self.fresh[m.key] = m

    # ------------------------------------------------------------ the first pass

    def calibrate(self, need_cal: list, fp: str) -> None:
        """The device's peaks for each dtype of ``need_cal`` (that the device has), stored."""
        from .. import timing

        ctx = self.ctx
        for d in need_cal:
            if is_cancelled(self.cancel):
                self.report.cancelled = True
                break
            self.progress(f"device peaks ({d}: large matmul, large copy)")
            ts = time.monotonic()
            if d not in ctx.dtypes:
                continue
            peaks = timing.measure_device_peaks(ctx, d)
            self.cache.put_calibration(fp, d, peaks["peak_tflops"], peaks["bandwidth_gbs"], peaks,
                                       software=ctx.software, method=peaks.get("method", ""))
            self.report.calibrated.append(d)
            self.progress.spend_since(ts)
            self.progress.credit(1.5)

    def measure_todo(self, todo: list, guesses: list, chunk_s: float) -> None:
        """The ops the cache lacks, chunk by chunk, each stored as its chunk finishes."""
        report = self.report
        for chunk in _chunks(list(zip(todo, guesses)), self.rounds, chunk_s):
            if report.cancelled or is_cancelled(self.cancel):
                report.cancelled = True
                break
            got = self._measure_chunk(chunk)
            self._take_chunk(chunk, got)
            if report.cancelled:
                break
            _stop_if_sticky(self.ctx, report)

    def _measure_chunk(self, chunk: list) -> dict:
        """key -> measurement of the chunk's [(op, cost guess)] that finished all rounds."""
        rounds = self.rounds
        pos = {o.key(): i for i, (o, _) in enumerate(chunk)}
        self.progress.begin_part(len(chunk), sum(g for _, g in chunk), rounds)

        def say(op, r):
            label = self._label(op)
            self.progress.set_share(r, pos.get(op.key(), 0), len(chunk))
            self.progress(label if rounds == 1 else f"{label} (round {min(r, rounds - 1) + 1}/{rounds})")
        got = measure_rounds([o for o, _ in chunk], self.ctx, rounds, self.repeats, say,
                             self.cancel, self.probe)
        self.progress.end_part()
        return got

    def _take_chunk(self, chunk: list, got: dict) -> None:
        """Store and count what a chunk measured (stopping early when cancelled)."""
        report = self.report
        for op, guess in chunk:
            m = got.get(op.key())
            if m is None:  # cancelled before all its rounds: not stored
                report.cancelled = True
                continue
            self.progress.credit(guess)
            self.store(m)
            self._count_result(m)
            self.progress.done += 1
            self._tell(m)
            if is_cancelled(self.cancel):
                report.cancelled = True
                break

    def _count_result(self, m: Measurement) -> None:
        report = self.report
        if m.status in ("ok", "unstable"):
            report.measured += 1
        else:
            if m.status in ("error", "oom"):
                report.failed += 1
            else:
                report.measured += 1  # "unsupported" is a result: there is no kernel here
            report.failures.append((m.key, m.status, m.note))

    # ------------------------------------------------------------ re-measures

    def _remeasure(self, pairs: list, what: str) -> dict:
        """Re-measure [(op, why)] in rounds, counted in the progress, with the pass's own count
        and ETA (``what`` it re-measures: "unstable ops", ...)."""
        rounds, progress = self.rounds, self.progress
        ops_ = [o for o, _ in pairs]
        g = [_cost_guess(o, self.roof) for o in ops_]
        progress.add_work(len(ops_), sum(g))
        # the ops re-measured are the noisy ones: expect every round they may take (their ETA
        # an upper bound, not one that reads 0 s for minutes while their extra rounds run)
        progress.begin_part(len(ops_), sum(g), max(rounds, CPU_MAX_ROUNDS) if rounds > 1 else rounds,
                            what=what)
        pos = {o.key(): i for i, o in enumerate(ops_)}

        def say(op, r):
            progress.set_share(r, pos.get(op.key(), 0), len(ops_))
            progress(self._label(op))
        got = measure_rounds(ops_, self.ctx, rounds, self.repeats, say, self.cancel, self.probe)
        progress.end_part()
        for o, gg in zip(ops_, g):
            if o.key() in got:
                progress.credit(gg)
                progress.done += 1
        if len(got) < len(ops_):
            self.report.cancelled = True
        return got

    def remeasure_unstable(self) -> None:
        """Unstable ops: once more, later (the machine may be quiet now)."""
        report = self.report
        shaky = [m for m in report.measurements if m.status == "unstable"]
        if not shaky or report.cancelled:
            return
        got = self._remeasure([(m.to_op(), "unstable") for m in shaky], "unstable ops")
        for m in shaky:
            new = got.get(m.key)
            if new is None:
                continue
            if new.status == "unstable":
                new.conditions = {**new.conditions, "remeasured": 1,
                                  "first": {"ms": m.ms, "unstable": m.conditions.get("unstable")}}
            self.store(new)
            report.remeasured += 1
            self._tell(new)

    def settle_inconsistent(self, have: dict) -> None:
        """Kernels slower than one of their kind doing more work (on a CPU: contention; on a
        GPU graph replays are steady and a smaller shape can really be slower — another
        kernel): re-measured, then stored unstable if they still are."""
        cached_ok = [m for k, m in have.items() if m.status == "ok" and k not in self.fresh]
        cached_ok = self._remeasure_slower(cached_ok)
        self._mark_inconsistent(cached_ok)

    def _remeasure_slower(self, cached_ok: list) -> list:
        """Up to MONOTONE_PASSES re-measures of the violations (CPU only); a lower time
        replaces the old one.  Returns ``cached_ok`` less the cached ops so replaced."""
        report = self.report
        for _ in range(MONOTONE_PASSES if not self.ctx.is_cuda else 0):
            if report.cancelled or not report.measurements:
                break
            bad = consistency_violations(list(self.fresh.values()) + cached_ok)
            if not bad:
                break
            got = self._remeasure([(a.to_op(), b) for a, b in bad],
                                  "kernels slower than one doing more work")
            for a, b in bad:
                m = got.get(a.key)
                if m is None or m.status != "ok" or m.ms >= a.ms:
                    continue  # contention only inflates a time: keep the lower one
                m.note = (m.note + f"; re-measured (was {a.ms:.4g} ms, slower than "
                          f"{label_of(b.to_op())} at {b.ms:.4g} ms)").lstrip("; ")
                self.store(m)
                cached_ok = [x for x in cached_ok if x.key != a.key]
                report.remeasured += 1
                self._tell(m)
        return cached_ok

    def _mark_inconsistent(self, cached_ok: list) -> None:
        """What is still slower than a kernel doing more work is stored unstable (CPU only)."""
        report = self.report
        if self.ctx.is_cuda or report.cancelled or not report.measurements:
            return
        for a, b in consistency_violations(list(self.fresh.values()) + cached_ok):
            reason = (f"slower ({a.ms:.4g} ms) than {label_of(b.to_op())} ({b.ms:.4g} ms), "
                      "which does more work, after re-measuring")
            m = replace(a, status="unstable", conditions={
                **a.conditions, "unstable": list(a.conditions.get("unstable", ())) + [reason],
                "inconsistent_with": b.key})
            self.store(m)
            report.inconsistent += 1
            self._tell(m)


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
                cancel: CancelArg = None, repeats: Optional[int] = None,
                remeasure: str = "none") -> list[Measurement]:
    """Measurements for exactly these ops (from the cache where present, measured otherwise;
    ``remeasure`` as :func:`run_profile`'s).

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
                         calibrate=False, chunk_s=BATCH_CHUNK_S, remeasure=remeasure)
    from ..device.local import local_device

    fp = ctx.fingerprint if ctx is not None else local_device().fingerprint
    want = {o.key() for o in ops}
    got = {m.key: m for m in cache.get_measurements(fp) if m.key in want}
    for m in report.measurements:
        if remeasure != "none":
            got[m.key] = m  # what was just measured, not what the cache held before
        else:
            got.setdefault(m.key, m)
    return list(got.values())


# ---------------------------------------------------------------- collectives


@dataclass
class CollectiveReport:
    measured: list = field(default_factory=list)  # the rows measured now
    reused: int = 0
    backend: str = ""
    world: int = 0

    def to_dict(self) -> dict:
        return {"measured": len(self.measured), "reused": self.reused, "backend": self.backend,
                "world_size": self.world,
                "unstable": sum(1 for r in self.measured if r.get("status") == "unstable"),
                "rows": [{k: r.get(k) for k in ("collective", "dtype", "bytes", "ms", "spread",
                                                 "busbw_gbs", "status")} | {
                          "min_ms": (r.get("conditions") or {}).get("min_ms"),
                          "max_ms": (r.get("conditions") or {}).get("max_ms")}
                         for r in self.measured]}


def measure_collectives(collectives_, device, cache, *, remeasure: str = "none",
                        rounds: Optional[int] = None,
                        on_result: Optional[Callable[[dict], None]] = None,
                        timeout_s: Optional[float] = None) -> CollectiveReport:
    """Measure the collectives (:class:`~pis_tui.model.ops.Collective`, one world size) the cache
    does not hold for ``device`` yet, through torch.distributed (``pis_tui.timing.collectives``:
    NCCL on a GPU, gloo on the CPU), storing each row as it arrives.  A world size that cannot
    be started is a UserError (exit 2) before anything is measured."""
    from ..pricing.collectives import backend_of
    from ..timing import collectives as tc

    colls = list(collectives_)
    report = CollectiveReport(backend=backend_of(device))
    if not colls:
        return report
    worlds = {c.world for c in colls}
    if len(worlds) != 1:
        raise ValueError(f"one world size at a time, not {sorted(worlds)}")
    world = report.world = worlds.pop()
    have = set()
    if cache is not None and remeasure != "all":
        for r in cache.get_collectives(device.fingerprint, report.backend, world):
            if remeasure == "unstable" and r.get("status") == "unstable":
                continue
            have.add((r["collective"], r["dtype"], int(r["bytes"])))
    todo = [c for c in colls if (c.kind, c.dtype, int(c.bytes())) not in have]
    report.reused = len(colls) - len(todo)
    if not todo:
        return report

    def got(row: dict) -> None:
        report.measured.append(row)
        if cache is not None:
            cache.put_collectives([row])
        if on_result is not None:
            on_result(row)

    tc.measure([(c.kind, c.dtype, c.elems) for c in todo], world, device,
               rounds=rounds or tc.DEFAULT_ROUNDS, on_result=got, timeout_s=timeout_s)
    return report
