"""Measuring ops in interleaved rounds (a burst of another process spoils a round, not the op),
combining the rounds into one measurement, and the consistency rules between measurements."""

from __future__ import annotations

import threading
from typing import Callable, Iterable, Optional, Union

from ..measured_table import Measurement

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


#: GEMMs of one (N, K) must not get faster as M grows: a time more than this share above a
#: larger M's is re-measured (in rounds), at most MONOTONE_PASSES times
MONOTONE_TOL = 0.15
MONOTONE_PASSES = 2


ProgressFn = Callable[[int, int, str, float, Optional[float]], None]
CancelArg = Union[threading.Event, Callable[[], bool], None]


def is_cancelled(cancel: CancelArg) -> bool:
    if cancel is None:
        return False
    if hasattr(cancel, "is_set"):
        return bool(cancel.is_set())
    return bool(cancel())


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
    from .. import timing

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
            if is_cancelled(cancel):
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
