"""Measuring ops in interleaved rounds (a burst of another process spoils a round, not the op),
combining the rounds into one measurement, and the rules that decide a measurement is not to
be trusted as it is.

The rules (stated once here, in docs/accuracy.md and in the measured
table's method doc):

* **contended rounds**: on the CPU a contention probe runs before each round (a small GEMM on
  all threads against one thread: another process on a core makes every multithreaded kernel
  wait for a descheduled thread); rounds taken while it says *contended* are not used.
* **instability**: an op with fewer than 2 uncontended rounds, or whose two fastest
  uncontended rounds differ by more than :data:`UNSTABLE_TOL` (on a GPU: whose replays spread
  more than that, IQR / median), is *unstable*; it is re-measured once later in the run and
  stored with status ``unstable`` if it stays so (priced no better than interpolated, never
  shown as measured).
* **consistency**: a kernel that does less work than another of its kind on the same device
  (every dimension at most the other's, and no less aligned) but is slower than it by more
  than :data:`MONOTONE_TOL` (a GEMM of the same N, K at a larger M) or :data:`DOMINANCE_TOL`
  (any other such pair) is re-measured; if it still is, it is stored ``unstable`` too.
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import replace
from typing import Callable, Iterable, Optional, Union

from ..model.ops import work_shape
from ..pricing.measured_table import Measurement
from ..timing.cpu_share import OthersMeter

#: CPU: each op is measured in this many rounds, interleaved with the other ops of its chunk
#: (a chunk is about CHUNK_S seconds of measuring per round in a profile, BATCH_CHUNK_S in
#: measure_ops, where an op's rounds then lie tens of seconds apart).  A burst of another
#: process (during which every multithreaded kernel waits a scheduler slice), or a slow spell
#: of a shared host (which slows even a quiet VM by 20-30% for seconds to minutes), then
#: spoils some rounds, not the op.
CPU_ROUNDS = 3
#: ... and up to this many rounds in all until its two fastest rounds agree within ROUND_TOL;
#: the time kept is the second-fastest round (another process only ever slows a round down,
#: and one fast round alone is not trusted)
CPU_MAX_ROUNDS = 6
ROUND_TOL = 0.10
#: the two fastest uncontended rounds (CPU) or the replays' IQR / median (GPU) differ by more
#: than this: unstable
UNSTABLE_TOL = 0.25

#: a GEMM more than this share slower than the same (N, K) at a larger M is inconsistent
MONOTONE_TOL = 0.15
#: ... and any kernel more than this share slower than one of its kind doing more work
DOMINANCE_TOL = 0.25
#: re-measure passes for inconsistent kernels
MONOTONE_PASSES = 2


ProgressFn = Callable[[int, int, str, float, Optional[float]], None]
CancelArg = Union[threading.Event, Callable[[], bool], None]
#: returns the contention probe's dict ({"contended": bool, "ratio": float, ...})
ProbeFn = Callable[[], dict]


def is_cancelled(cancel: CancelArg) -> bool:
    if cancel is None:
        return False
    if hasattr(cancel, "is_set"):
        return bool(cancel.is_set())
    return bool(cancel())


def _load() -> Optional[float]:
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def _cores() -> int:
    from ..device.local import cpu_threads

    return cpu_threads()


#: what a single timing says about itself and the rounds keep (an estimate's reason, a failed
#: CUDA-graph capture, the kernel a quantized GEMM ran)
CARRIED_CONDITIONS = ("estimated", "graph_capture", "kernel")


def combine_rounds(ms: list) -> Measurement:
    """One measurement from the rounds of an op (each round the median of its batches, each
    marked contended or not by the probe run before it; see the module's rules): the
    second-fastest uncontended round, its agreement with the fastest as ``spread``, every
    round's time, load and contention in ``conditions``, and status ``unstable`` with the
    reasons where the rules say so."""
    first = ms[0]
    if first.status != "ok":
        return first
    ok = [m for m in ms if m.status == "ok" and m.ms]
    if len(ms) == 1:  # one round (a GPU): its replays' spread decides
        m = first
        cond = dict(m.conditions)
        reasons = list(cond.get("unstable", ()))
        if m.spread is not None and m.spread > UNSTABLE_TOL:
            reasons.append(f"its replays spread {m.spread:.0%} (IQR / median)")
        if cond.get("contended"):
            reasons.append(cond.get("contended_why") or "taken while the device was contended")
        if reasons:
            cond["unstable"] = reasons
            return replace(m, status="unstable", conditions=cond)
        return m
    contended = [bool(getattr(m, "_contended", False)) for m in ok]
    quiet = [m for m, c in zip(ok, contended) if not c]
    use = quiet if quiet else ok
    vals = sorted(m.ms for m in use)
    est = vals[1] if len(vals) > 1 else vals[0]
    eagers = sorted(m.eager_ms or m.ms for m in use)
    eager = eagers[1] if len(eagers) > 1 else eagers[0]
    agree = (vals[1] - vals[0]) / vals[1] if len(vals) > 1 and vals[1] > 0 else 0.0
    loads = [getattr(m, "_load", None) for m in ok]
    ratios = [getattr(m, "_probe_ratio", None) for m in ok]
    reasons = []
    if len(quiet) < 2:
        reasons.append(f"{sum(contended)} of {len(ok)} rounds taken while other processes held "
                       "the CPU's cores (contention probe, CPU use of other processes)")
    elif agree > UNSTABLE_TOL:
        reasons.append(f"its two fastest uncontended rounds differ by {agree:.0%}")
    used_loads = [getattr(m, "_load", None) for m in use]
    used_loads = [x for x in used_loads if x is not None]
    carried = {k: first.conditions[k] for k in CARRIED_CONDITIONS if k in (first.conditions or {})}
    cond = {**carried, "rounds_ms": [round(m.ms, 6) for m in ok], "contended_rounds": sum(contended),
            "loads": [None if x is None else round(x, 2) for x in loads],
            "probe_ratios": [None if x is None else round(x, 2) for x in ratios],
            # cores' worth of CPU other processes used during each round (pis_tui.timing.cpu_share)
            "others_cores": [None if x is None else round(x, 2)
                             for x in (getattr(m, "_others", None) for m in ok)],
            # no quiet round to keep, or (where the meter could not read the other processes'
            # CPU use) the rounds kept were taken while the load average exceeded the cores:
            # the meter reads the load of the round itself, the load average lags a minute
            "loaded": not quiet or (bool(used_loads) and max(used_loads) > _cores() + 0.5 and
                                    any(getattr(m, "_others", None) is None for m in use))}
    if reasons:
        cond["unstable"] = reasons
    rounds = ", ".join(f"{m.ms:.4g}{'*' if c else ''}" for m, c in zip(ok, contended))
    real = [x for x in loads if x is not None]
    load = f"; load {max(real):.2f}" if real else ""
    star = "; * contended" if any(contended) else ""
    note = "; ".join(x for x in (first.note, f"2nd fastest of {len(use)} rounds [{rounds}] ms"
                                 f"{load}{star}") if x)
    return Measurement(key=first.key, op=first.op, ms=est, eager_ms=eager, spread=agree,
                       repeats=sum(m.repeats for m in ok), status="unstable" if reasons else "ok",
                       note=note, method=first.method, method_version=first.method_version,
                       fingerprint=first.fingerprint, software=first.software,
                       measured_at=ms[-1].measured_at, conditions=cond)


def measure_rounds(ops: list, ctx, rounds: int, repeats: Optional[int] = None,
                   on_each: Optional[Callable] = None, cancel: CancelArg = None,
                   probe: Optional[ProbeFn] = None) -> dict:
    """Measure each op in ``rounds`` rounds (round r measures every op once, in order, so the
    rounds of one op are spread over the whole group's time) and combine them
    (:func:`combine_rounds`).  ``probe`` (the CPU contention probe) runs before each round and
    marks that round's measurements.  An op whose first round is not ``ok`` is not repeated.
    Returns {key: Measurement} for the ops whose rounds all ran (cancellation stops between
    calls)."""
    from .. import timing

    per: dict = {}
    if repeats is None and rounds > 1:
        repeats = 3  # batches per round
    max_rounds = max(rounds, CPU_MAX_ROUNDS) if rounds > 1 else rounds

    def quiet_times(v) -> list:
        return sorted(m.ms for m in v if m.ms and not getattr(m, "_contended", False))

    def settled(v) -> bool:
        if v[0].status != "ok":
            return True
        if len(v) < rounds:
            return False
        t = quiet_times(v)
        return len(t) >= 2 and t[1] <= t[0] * (1 + ROUND_TOL)

    for r in range(max_rounds):
        todo = [op for op in ops if r == 0 or (op.key() in per and per[op.key()][0].status == "ok"
                                                 and not (r >= rounds and settled(per[op.key()])))]
        if not todo:
            break
        state = probe() if probe is not None and rounds > 1 else {}
        this_round: list = []
        meter = OthersMeter() if probe is not None and rounds > 1 else None
        cancelled = False
        with meter or contextlib.nullcontext():
            for op in todo:
                k = op.key()
                if is_cancelled(cancel):
                    cancelled = True
                    break
                if on_each is not None:
                    on_each(op, r)
                m = timing.measure_op(op, ctx, repeats=repeats)
                m._load = _load()
                m._contended = bool(state.get("contended"))
                m._probe_ratio = state.get("ratio")
                per.setdefault(k, []).append(m)
                this_round.append(m)
        # the meter over the whole round: other processes that loaded every core alike (which
        # the probe before it cannot see) make each of its measurements contended
        if meter is not None and meter.cores is not None:
            for m in this_round:
                m._others = meter.cores
                m._contended = m._contended or meter.contended
        if cancelled:
            return {k: combine_rounds(v) for k, v in per.items()
                    if len(v) >= rounds or v[0].status != "ok"}
    return {k: combine_rounds(v) for k, v in per.items()}


# ---------------------------------------------------------------- consistency


def consistency_violations(measurements: Iterable[Measurement]) -> list:
    """Kernels slower than one of their kind that does more work (see the module's rules):
    [(the suspect, the kernel it should not be slower than)], each suspect once (its worst
    reference).  Only timed, ok measurements take part."""
    groups: dict = {}
    for m in measurements:
        if m.status != "ok" or not m.ms:
            continue
        sh = work_shape(m.op)
        if sh is not None:
            groups.setdefault(sh[0], []).append((sh[1], sh[2], m))
    out = {}
    for items in groups.values():
        items.sort(key=lambda it: it[0])
        for i, (da, aa, a) in enumerate(items):
            for db, ab, b in items[i + 1:]:  # a dominating shape sorts after (all dims ≥)
                if any(x > y for x, y in zip(da, db)) or da == db:
                    continue
                if any(x < y for x, y in zip(aa, ab)):  # a is less aligned: may be slower
                    continue
                gemm_along_m = a.op.get("op_type") == "gemm" and da[1:] == db[1:]
                tol = MONOTONE_TOL if gemm_along_m else DOMINANCE_TOL
                if a.ms > b.ms * (1 + tol):
                    worst = out.get(a.key)
                    if worst is None or b.ms < worst[1].ms:
                        out[a.key] = (a, b)
    return list(out.values())


def monotone_violations(measurements: Iterable[Measurement]) -> list:
    """The suspects of :func:`consistency_violations` (kernels slower than one doing more work)."""
    return [a for a, _ in consistency_violations(measurements)]
