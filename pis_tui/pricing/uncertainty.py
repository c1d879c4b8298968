"""How far a speedup can be trusted: its interval, its physical ceiling, and its flags.

**The interval.**  Each op's time carries a relative standard uncertainty by the rule of
:mod:`pis_tui.pricing.sources` (a measurement's own spread, or a stated figure per source).  The same
kernel has the same error wherever it runs: the dense and the pruned model share most
kernels, and a shared kernel's error cancels from their ratio to the extent that it takes the
same share of both.  Measurement noise is independent between kernels; the model errors of
two estimated kernels playing the same role on the two sides (the dense gate_proj and the
pruned one) are correlated by their distance in shape (:data:`NUGGET`, :data:`RANGE`, fitted to
a third party's H200 table).  To first order, with Δ_k = w_dense,k − w_pruned,k (w: the share
of the phase's time spent in kernel k, u: its relative uncertainty),

    σ²(log S) = Σ_k (u_k Δ_k)² + Σ_{a≠b, same role} ρ_ab · u_a Δ_a · u_b Δ_b

and the interval is S · exp(±Z·σ) with Z = 2 (about 95 %).  Static depth keeps the same
kernels at the same shares, so its interval is narrow even from estimates; a family that
brings kernels of its own (low rank) carries their whole uncertainty.

**The ceiling.**  The family's hook (``Family.speedup_ceiling``) over each op's least possible
time (``Estimator.work_ms``: roofline of the kernel that runs + the per-kernel floor, host
overhead at its priced cost): pruning removes work, it does not make the work it keeps faster.

**The flags.**  ``above_ceiling``: the interval lies wholly above the ceiling.
``mixed_conditions``: the kernels that differ between the two sides were measured under
different conditions (one side's mostly while the machine was loaded, the other's not), so the
ratio may measure the load rather than the pruning.  The recommender skips flagged points
unless asked to include them.
"""

from __future__ import annotations

import math
from typing import Optional

from ..model.ops import kernel_of

#: the interval's half-width in standard deviations (about 95 %)
Z = 2.0
#: an interval is never narrower than this either side (estimates are not finer)
MIN_HALF_WIDTH = 0.005
#: mixed conditions: the loaded shares of the two sides' own kernels differ by more than this
MIXED_SHARE = 0.5
BLOCKING_FLAGS = ("above_ceiling", "mixed_conditions", "alpha_upper_bound")
#: validate: a prediction with more than this share of either side's time from op times taken
#: under load is flagged ``loaded_ops`` (:func:`loaded_ops`)
LOADED_SHARE = 0.10


#: sources whose errors are model errors (correlated between near shapes), not measurement noise
MODEL_SOURCES = ("roofline", "interpolated", "estimated")
#: sources that are timings taken on a machine (their conditions can differ)
MEASURED_SOURCES = ("measured", "shipped", "solved", "unstable")
#: correlation of the model errors of two shapes of one op (the same role, e.g. the dense and
#: the pruned gate_proj) at L1 distance d of their log dimensions: NUGGET · max(0, 1 − d/RANGE).
#: Fitted to the third party's H200 GEMM table (not shipped): the analytical model's log errors
#: of shapes within d ≤ 0.5 correlate at 0.81, at d ≈ 1.4 at 0.61, at d ≈ 2.4 at 0.25, beyond
#: d = 3 not at all (tests/benchmarks/h200_reference_check.py prints the figures)
NUGGET, RANGE = 0.85, 3.0


def _dims(op) -> tuple:
    t = op.op_type
    if t == "gemm":
        v = (op.m, op.n, op.k)
    elif t == "attention":
        v = (op.batch * op.q_heads, op.q_len, op.kv_len, op.head_dim)
    elif t == "elementwise":
        v = (op.rows, op.width)
    elif t == "grouped_gemm":
        v = (op.groups, op.rows, op.n, op.k)
    else:
        v = ()
    return tuple(math.log(max(x, 1)) for x in v)


def correlation(a: dict, b: dict) -> float:
    """Model-error correlation of two distinct kernels of one role (see NUGGET, RANGE)."""
    if a["cls"] != b["cls"] or a["source"] not in MODEL_SOURCES or b["source"] not in MODEL_SOURCES:
        return 0.0
    d = sum(abs(x - y) for x, y in zip(a["dims"], b["dims"]))
    return NUGGET * max(0.0, 1.0 - d / RANGE)


def _kernels(est) -> dict:
    """{kernel key: {ms, u, loaded ms, roles, source, class, dims}} of a phase estimate."""
    out: dict = {}
    for p in est.ops:
        if p.total_ms <= 0:
            continue
        kop = kernel_of(p.op)
        v = out.get(kop.key())
        if v is None:
            cls = (kop.op_type, getattr(kop, "kind", ""), kop.dtype)
            v = out[kop.key()] = {"ms": 0.0, "u": 0.0, "loaded": 0.0, "roles": set(),
                                  "source": p.source, "cls": cls, "dims": _dims(kop)}
        v["ms"] += p.total_ms
        v["u"] = max(v["u"], p.uncertainty)
        v["loaded"] += p.total_ms if p.loaded else 0.0
        v["roles"].add(p.op.name.split(".")[0])  # q_proj.A and q_proj.B play q_proj's role
    return out


def kernel_table(est) -> dict:
    """An estimate's kernels, for :func:`log_sigma_tables` (compute once, compare many)."""
    return _kernels(est)


def log_sigma(dense, pruned) -> float:
    """σ(log speedup) of pruned against dense (PhaseEstimates): Σ over kernels of
    (Δshare · u)², plus the covariance of the model errors of distinct kernels that play the
    same role on the two sides (the dense gate_proj and the pruned one)."""
    return log_sigma_tables(_kernels(dense), dense.latency_ms, _kernels(pruned), pruned.latency_ms)


def log_sigma_tables(d: dict, dense_ms: float, p: dict, pruned_ms: float) -> float:
    """:func:`log_sigma` from the two sides' kernel tables (:func:`kernel_table`) and latencies:
    any two estimates of one phase, the second taken against the first."""
    td, tp = dense_ms or 1.0, pruned_ms or 1.0
    items = []
    for k in set(d) | set(p):
        a, b = d.get(k), p.get(k)
        info = a or b
        delta = (a["ms"] / td if a else 0.0) - (b["ms"] / tp if b else 0.0)
        u = max(a["u"] if a else 0.0, b["u"] if b else 0.0)
        roles = (a["roles"] if a else set()) | (b["roles"] if b else set())
        items.append((delta * u, roles, info))
    s2 = sum(x * x for x, _, _ in items)
    by_role: dict = {}
    for i, (_, roles, _) in enumerate(items):
        for r in roles:
            by_role.setdefault(r, []).append(i)
    pairs = {(i, j) for idx in by_role.values() for n, i in enumerate(idx) for j in idx[n + 1:]}
    for i, j in pairs:
        (xa, _, ia), (xb, _, ib) = items[i], items[j]
        if xa and xb:
            s2 += 2.0 * xa * xb * correlation(ia, ib)
    return math.sqrt(max(s2, 0.0))


def mixed_conditions(dense, pruned) -> Optional[str]:
    """Why the kernels only one side runs were measured under different conditions, or None."""
    d, p = _kernels(dense), _kernels(pruned)

    def loaded_share(own) -> Optional[float]:  # over measured kernels only
        own = [v for v in own if v["source"] in MEASURED_SOURCES]
        ms = sum(v["ms"] for v in own)
        return sum(v["loaded"] for v in own) / ms if ms > 0 else None
    a = loaded_share([v for k, v in d.items() if k not in p])
    b = loaded_share([v for k, v in p.items() if k not in d])
    if a is None or b is None or abs(a - b) <= MIXED_SHARE:
        return None
    return (f"the kernels only the dense model runs were {a:.0%} measured under load, the pruned "
            f"model's own {b:.0%}: re-measure both when the machine is quiet "
            "('pis-tui profile --remeasure all')")


def loaded_ops(dense, pruned) -> Optional[str]:
    """Why a prediction rests on op times taken under load, or None: more than
    :data:`LOADED_SHARE` of either side's predicted time comes from kernels measured while
    other processes held the cores (``loaded``) or stored ``unstable``.  Load slows kernels
    unequally (a multithreaded GEMM waits for its descheduled thread, a one-thread copy does
    not), so such a prediction measures the load as much as the pruning, whatever the two
    sides share; validate compares it with nothing (``pred~``)."""
    shares = []
    for est in (dense, pruned):
        total = est.latency_ms or 0.0
        if total <= 0:
            shares.append(0.0)
            continue
        bad = sum(p.total_ms for p in est.ops if p.total_ms > 0 and
                  (p.source == "unstable" or (p.loaded and p.source in MEASURED_SOURCES)))
        shares.append(bad / total)
    if max(shares) <= LOADED_SHARE:
        return None
    return (f"{shares[0]:.0%} of the dense prediction and {shares[1]:.0%} of the pruned one come "
            "from op times measured while other processes held the cores: re-measure them on a "
            "quiet machine ('pis-tui profile --remeasure all')")


#: the widest half-width (log) an interval takes: e^±40 is already "any value at all"; a sigma
#: from ops timed on a machine 300× slower than itself (seen under load) would overflow exp
MAX_HALF_WIDTH = 40.0


def interval(speedup: float, sigma: float, z: float = Z) -> tuple[float, float]:
    half = min(max(z * sigma, MIN_HALF_WIDTH), MAX_HALF_WIDTH)
    return speedup * math.exp(-half), speedup * math.exp(half)


def cut_at_ceiling(speedup: float, lo: float, hi: float,
                   ceiling: Optional[float]) -> tuple[float, float, str]:
    """The interval cut at what physics allows: pruning removes work, it does not make the
    work it keeps faster, so no speedup exceeds the family's ceiling (each op's least possible
    time, roofline plus the per-kernel floor; where a phase is compute-bound that is at most
    the FLOPs ratio).  Returns (lo, hi, "ceiling" when cut else "").  An estimate itself above
    the ceiling is not cut: it is flagged (``above_ceiling`` when its whole interval is)."""
    if ceiling is None or not math.isfinite(ceiling) or hi <= ceiling:
        return lo, hi, ""
    if speedup > ceiling * math.exp(MIN_HALF_WIDTH):  # the estimate itself above physics
        return lo, hi, ""
    return lo, max(ceiling, speedup), "ceiling"  # an interval holds its own estimate


def flags(speedup_lo: float, ceiling: Optional[float], mixed: Optional[str]) -> tuple:
    out = []
    if ceiling is not None and speedup_lo > ceiling:
        out.append("above_ceiling")
    if mixed:
        out.append("mixed_conditions")
    return tuple(out)


def flag_words(point) -> list[str]:
    """The point's flags in words (CLI tables, the explorer, reasons)."""
    out = []
    if "above_ceiling" in point.flags:
        out.append(f"above its ceiling {point.ceiling:.2f}×" if point.ceiling else "above its ceiling")
    if "mixed_conditions" in point.flags:
        out.append("dense and pruned measured under different load")
    if "alpha_upper_bound" in point.flags:
        out.append("its acceptance rate is a trained draft's (an upper bound for a pruned one)")
    return out
