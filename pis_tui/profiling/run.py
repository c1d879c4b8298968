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
from .rounds import (CPU_ROUNDS, MONOTONE_PASSES, CancelArg, ProgressFn, consistency_violations,
                     is_cancelled, measure_rounds)

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
                chunk_s: float = CHUNK_S, remeasure: str = "none") -> ProfileReport:
    """Measure the ops the cache does not hold yet (for this device and software).

    ``device_ctx``: a ``timing.DeviceContext``, or None to open the local device only when
    something must be measured.  ``on_progress(done, total, current_label, elapsed_s, eta_s)``
    is called before each measurement and once at the end (``eta_s`` None until known; ``done``
    and ``total`` never go down: re-measures add to both).  ``cancel``: a threading.Event or a
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
    ops = list({measuring_form(o).key(): measuring_form(o) for o in ops
                if not isinstance(o, (Overhead, Collective))}.values())
    fp = device_ctx.fingerprint if device_ctx is not None else local_device().fingerprint
    report = ProfileReport(total=len(ops))
    have = {}
    if cache is not None:
        have = {m.key: m for m in cache.get_measurements(fp) if m.status in FINAL_STATUSES}
        if remeasure == "all":
            have = {}
        elif remeasure == "unstable":
            have = {k: m for k, m in have.items() if m.status != "unstable"}
    todo = [o for o in ops if o.key() not in have]
    report.reused = len(ops) - len(todo)
    dtypes = sorted({o.dtype for o in ops})
    need_cal = []
    if calibrate and cache is not None:
        need_cal = [d for d in dtypes if recalibrate or cache.get_calibration(fp, d) is None]
    roof = roofline_fn(device or local_device())
    guesses = [_cost_guess(o, roof) for o in todo]
    est = {"remaining": sum(guesses) + 1.5 * len(need_cal), "done": 0.0, "spent": 0.0}
    count = {"total": len(ops), "done": report.reused, "shown": 0}

    # the chunk being measured: its ops finish together after their last round, so progress
    # and the ETA count the share of its calls made so far (the bar moves, the ETA updates)
    part = {"ops": 0, "guess": 0.0, "frac": 0.0, "since": None}

    def progress(label: str) -> None:
        if on_progress is None:
            return
        frac = part["frac"]
        spent = est["spent"] + (time.monotonic() - part["since"] if part["since"] else 0.0)
        dg = est["done"] + frac * part["guess"]
        eta = None
        if dg > 0 and spent > 0:
            eta = max(0.0, spent / dg * (est["remaining"] - frac * part["guess"]))
        # never backwards: a cancelled chunk's partial progress stays shown
        count["shown"] = max(count["shown"], min(count["total"], count["done"] + int(frac * part["ops"])))
        on_progress(count["shown"], count["total"], label, time.monotonic() - t0, eta)

    if not todo and not need_cal:
        report.elapsed_s = time.monotonic() - t0
        progress("")
        return report

    from .. import timing

    ctx = device_ctx
    if ctx is None:
        progress("opening the device (importing torch)")
        ctx = timing.open_device("local")
    probe = None
    if not ctx.is_cuda:
        report.contention = timing.contention_probe(ctx)
        if report.contention.get("contended") and on_warning is not None:
            on_warning(contention_message(report.contention))
        probe = lambda: timing.contention_probe(ctx)  # noqa: E731 - before each round
    writer = _Writer(cache, {**ctx.device_info(), "contention": report.contention}, flush_s)
    rounds = 1 if ctx.is_cuda else CPU_ROUNDS
    fresh: dict = {}  # key -> the newest measurement of this run

    def store(m: Measurement) -> None:
        writer.add(m)
        if m.key not in fresh:
            report.measurements.append(m)
        else:
            report.measurements = [m if x.key == m.key else x for x in report.measurements]
        fresh[m.key] = m

    def again(pairs: list, label: str) -> dict:
        """Re-measure [(op, why)] in rounds, counted in the progress and the ETA."""
        ops_ = [o for o, _ in pairs]
        g = [_cost_guess(o, roof) for o in ops_]
        count["total"] += len(ops_)
        est["remaining"] += sum(g)
        ts = time.monotonic()
        part.update(ops=len(ops_), guess=sum(g), frac=0.0, since=ts)
        pos = {o.key(): i for i, o in enumerate(ops_)}

        def say(op, r):
            part["frac"] = min(1.0, (r * len(ops_) + pos.get(op.key(), 0)) / (rounds * len(ops_)))
            progress(f"{label}: {(labels or {}).get(op.key()) or label_of(op)}")
        got = measure_rounds(ops_, ctx, rounds, repeats, say, cancel, probe)
        part.update(ops=0, guess=0.0, frac=0.0, since=None)
        est["spent"] += time.monotonic() - ts
        for o, gg in zip(ops_, g):
            if o.key() in got:
                est["done"] += gg
                est["remaining"] -= gg
                count["done"] += 1
        if len(got) < len(ops_):
            report.cancelled = True
        return got

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
            est["spent"] += time.monotonic() - ts
            est["done"] += 1.5
            est["remaining"] -= 1.5
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
            got = measure_rounds([o for o, _ in chunk], ctx, rounds, repeats, say, cancel, probe)
            part.update(ops=0, guess=0.0, frac=0.0, since=None)
            est["spent"] += time.monotonic() - ts
            for op, guess in chunk:
                m = got.get(op.key())
                if m is None:  # cancelled before all its rounds: not stored
                    report.cancelled = True
                    continue
                est["done"] += guess
                est["remaining"] -= guess
                store(m)
                if m.status in ("ok", "unstable"):
                    report.measured += 1
                else:
                    if m.status in ("error", "oom"):
                        report.failed += 1
                    else:
                        report.measured += 1  # "unsupported" is a result: there is no kernel here
                    report.failures.append((m.key, m.status, m.note))
                count["done"] += 1
                if on_measurement is not None:
                    on_measurement(m)
                if is_cancelled(cancel):
                    report.cancelled = True
                    break
            if report.cancelled:
                break
            _stop_if_sticky(ctx, report)
        # unstable ops: once more, later (the machine may be quiet now)
        shaky = [m for m in report.measurements if m.status == "unstable"]
        if shaky and not report.cancelled:
            got = again([(m.to_op(), "unstable") for m in shaky], "re-measuring unstable ops")
            for m in shaky:
                new = got.get(m.key)
                if new is None:
                    continue
                if new.status == "unstable":
                    new.conditions = {**new.conditions, "remeasured": 1,
                                      "first": {"ms": m.ms, "unstable": m.conditions.get("unstable")}}
                store(new)
                report.remeasured += 1
                if on_measurement is not None:
                    on_measurement(new)
        # kernels slower than one of their kind doing more work (on a CPU: contention; on a GPU
        # graph replays are steady and a smaller shape can really be slower — another kernel)
        cached_ok = [m for k, m in have.items() if m.status == "ok" and k not in fresh]
        for _ in range(MONOTONE_PASSES if not ctx.is_cuda else 0):
            if report.cancelled or not report.measurements:
                break
            bad = consistency_violations(list(fresh.values()) + cached_ok)
            if not bad:
                break
            got = again([(a.to_op(), b) for a, b in bad],
                        f"re-measuring {len(bad)} kernel(s) slower than one doing more work")
            for a, b in bad:
                m = got.get(a.key)
                if m is None or m.status != "ok" or m.ms >= a.ms:
                    continue  # contention only inflates a time: keep the lower one
                m.note = (m.note + f"; re-measured (was {a.ms:.4g} ms, slower than "
                          f"{label_of(b.to_op())} at {b.ms:.4g} ms)").lstrip("; ")
                store(m)
                cached_ok = [x for x in cached_ok if x.key != a.key]
                report.remeasured += 1
                if on_measurement is not None:
                    on_measurement(m)
        if not ctx.is_cuda and not report.cancelled and report.measurements:
            for a, b in consistency_violations(list(fresh.values()) + cached_ok):
                reason = (f"slower ({a.ms:.4g} ms) than {label_of(b.to_op())} ({b.ms:.4g} ms), "
                          "which does more work, after re-measuring")
                m = replace(a, status="unstable", conditions={
                    **a.conditions, "unstable": list(a.conditions.get("unstable", ())) + [reason],
                    "inconsistent_with": b.key})
                store(m)
                report.inconsistent += 1
                if on_measurement is not None:
                    on_measurement(m)
        report.unstable = sum(1 for m in report.measurements if m.status == "unstable")
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
