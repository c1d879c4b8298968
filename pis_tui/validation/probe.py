"""The eager framework-overhead probe: tiny clones of the model whose run time is almost all
host overhead, solved for the cost of each overhead kind."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..families.phase_ops import build_phase_ops
from ..families.strategy import Strategy
from ..errors import MeasureError
from ..model.layer import overhead_phase
from ..model.spec import ModelSpec
from ..model.scenario import Scenario
from ..timing.cpu_share import OthersMeter
from ..pricing.uncertainty import LOADED_SHARE
from .build import build_from_spec
from .run import PhaseRun, _summary, measure_interleaved

if TYPE_CHECKING:  # pragma: no cover
    from .op_times import OpTimes

def tiny_clone(raw: dict, spec: ModelSpec, precision: str = "") -> tuple[dict, ModelSpec]:
    """The same architecture (layers, GQA ratio, biases, tying) with every width tiny: its
    forward time is almost all framework overhead (Python, module calls, dispatch, glue ops).

    ``precision`` an int4 format (its linears quantized, as the model's): every K a multiple
    of the group G and every N of 16, and wide enough that low rank still factorises through
    a rank of G (hidden and MLP widths 3G, head_dim G/2: q is gqa·G wide, k and v G)."""
    from ..model.precision import k_alignment
    from ..model.spec import spec_from_config

    cfg = dict(raw)
    group = spec.gqa_group
    g = k_alignment(precision)
    width, hd = (64, 16) if g <= 1 else (max(64, 3 * g), max(16, g // 2))
    cfg.update(hidden_size=width, intermediate_size=width, num_attention_heads=2 * group,
               num_key_value_heads=2, head_dim=hd, vocab_size=64)
    for k in ("bos_token_id", "eos_token_id", "pad_token_id"):
        cfg.pop(k, None)
    return cfg, spec_from_config(cfg, spec.name + "-tiny")


# ============================================================== dispatch (framework) overhead

#: tiny clones timed by :func:`dispatch_probe`: their overhead counts (per forward, per block,
#: per linear, per routed sublayer) differ enough to solve for each kind's cost.  Five clones
#: for four kinds, so the solve has more equations than unknowns even before the rounds (each
#: clone's every round is an equation too): the residual then says how well the kinds fit,
#: and the shallow clone (a few layers left) pins the per-forward cost, which the four others
#: left to the difference of two large numbers (a run solved it 0.0000 ms ± 1,000,000 %)
PROBE_STRATEGIES = (("dense", 0.0), ("static_depth", 0.5), ("static_depth", 0.875),
                    ("low_rank", 0.5), ("dynamic_depth", 0.5))
#: a kind's cost whose rounds spread wider than this (IQR over the median), or that the solve
#: pins no better than this (its standard error over its value), is stored unstable
PROBE_SPREAD_LIMIT = 0.5
#: clones whose overhead counts (columns scaled to unit length) have a condition number above
#: this barely tell the kinds apart: every kind is stored unstable
PROBE_CONDITION_LIMIT = 1000.0


def _solve(a: list, b: list) -> list:
    """Non-negative least squares a·x ≈ b, x ≥ 0 (a cost is never negative): the least-squares
    solution over every subset of the kinds (the others held at 0) that is feasible, with the
    smallest residual — exact for the handful of kinds here.  Clamping an unconstrained solve
    instead would leave the other kinds fitted to a negative one (a noisy probe once priced
    routing at 0 that way)."""
    from itertools import combinations

    n = len(a[0])
    if not a or not any(any(row) for row in a):
        raise MeasureError("dispatch probe: the tiny clones' overhead counts are degenerate")
    # the empty subset (every kind at 0) is always feasible: the answer when the clones ran no
    # slower than their kernels (residuals ≤ 0)
    best, best_res = [0.0] * n, sum(y * y for y in b)
    for size in range(n, 0, -1):
        for cols in combinations(range(n), size):
            sub = [[row[j] for j in cols] for row in a]
            try:
                x = _lstsq(sub, b)
            except MeasureError:
                continue
            if any(v < -1e-12 for v in x):
                continue
            res = sum((sum(r[i] * x[i] for i in range(size)) - y) ** 2 for r, y in zip(sub, b))
            if res < best_res - 1e-15:
                full = [0.0] * n
                for j, v in zip(cols, x):
                    full[j] = max(0.0, v)
                best, best_res = full, res
    return best


def _lstsq(a: list, b: list) -> list:
    """Least squares a·x ≈ b (normal equations, Gaussian elimination with pivoting)."""
    n = len(a[0])
    ata = [[sum(r[i] * r[j] for r in a) for j in range(n)] for i in range(n)]
    atb = [sum(r[i] * y for r, y in zip(a, b)) for i in range(n)]
    m = [row + [v] for row, v in zip(ata, atb)]
    for c in range(n):
        p = max(range(c, n), key=lambda r: abs(m[r][c]))
        if abs(m[p][c]) < 1e-12:
            raise MeasureError("dispatch probe: the tiny clones' overhead counts are degenerate")
        m[c], m[p] = m[p], m[c]
        for r in range(n):
            if r != c:
                f = m[r][c] / m[c][c]
                m[r] = [x - f * y for x, y in zip(m[r], m[c])]
    return [m[i][n] / m[i][i] for i in range(n)]


def _inverse(m: list) -> list:
    """The inverse of a small square matrix (Gauss-Jordan, partial pivoting); MeasureError when
    it is singular."""
    n = len(m)
    a = [list(map(float, row)) + [1.0 if i == j else 0.0 for j in range(n)] for i, row in enumerate(m)]
    scale = max((abs(x) for row in m for x in row), default=0.0) or 1.0
    for c in range(n):
        p = max(range(c, n), key=lambda r: abs(a[r][c]))
        if abs(a[p][c]) <= 1e-12 * scale:
            raise MeasureError("dispatch probe: the tiny clones' overhead counts are degenerate")
        a[c], a[p] = a[p], a[c]
        piv = a[c][c]
        a[c] = [x / piv for x in a[c]]
        for r in range(n):
            if r != c and a[r][c]:
                f = a[r][c]
                a[r] = [x - f * y for x, y in zip(a[r], a[c])]
    return [row[n:] for row in a]


def _eigenvalues(m: list) -> list:
    """The eigenvalues of a small symmetric matrix (cyclic Jacobi rotations)."""
    import math

    a = [list(map(float, row)) for row in m]
    n = len(a)
    for _ in range(100):
        off = sum(a[i][j] ** 2 for i in range(n) for j in range(n) if i != j)
        if off <= 1e-30 * max(1.0, sum(a[i][i] ** 2 for i in range(n))):
            break
        for p in range(n):
            for q in range(p + 1, n):
                if abs(a[p][q]) < 1e-300:
                    continue
                theta = (a[q][q] - a[p][p]) / (2.0 * a[p][q])
                t = (1.0 if theta >= 0 else -1.0) / (abs(theta) + math.sqrt(theta * theta + 1.0))
                c = 1.0 / math.sqrt(t * t + 1.0)
                s_ = t * c
                for k in range(n):  # columns p, q
                    akp, akq = a[k][p], a[k][q]
                    a[k][p], a[k][q] = c * akp - s_ * akq, s_ * akp + c * akq
                for k in range(n):  # rows p, q
                    apk, aqk = a[p][k], a[q][k]
                    a[p][k], a[q][k] = c * apk - s_ * aqk, s_ * apk + c * aqk
    return sorted(a[i][i] for i in range(n))


def condition_number(a: list) -> float:
    """The 2-norm condition number of the count matrix ``a`` with each column scaled to unit
    length (so a kind counted once a forward and one counted hundreds of times weigh alike):
    how far the clones tell the kinds apart (1: perfectly; inf: not at all)."""
    import math

    n = len(a[0])
    norms = [math.sqrt(sum(row[j] ** 2 for row in a)) for j in range(n)]
    if not all(norms):
        return float("inf")
    g = [[sum(row[i] * row[j] for row in a) / (norms[i] * norms[j]) for j in range(n)]
         for i in range(n)]
    ev = _eigenvalues(g)
    return math.sqrt(ev[-1] / ev[0]) if ev[0] > 1e-15 * ev[-1] else float("inf")


@dataclass
class _Fit:
    """How well the solve pins each kind: every clone's every round is an equation
    (``equations`` of them for ``unknowns`` kinds), ``residual_ms`` the RMS of their residuals
    at the solved costs, ``condition`` the counts' condition number, ``se`` each kind's standard
    error (ms a call: s·√[(AᵀA)⁻¹]ₖₖ, s² the residuals' sum of squares over the degrees of
    freedom; inf where the counts cannot tell the kind apart)."""
    equations: int
    unknowns: int
    clones: int
    residual_ms: float
    condition: float
    se: list


def _fit_stats(counts: list, clones: list, timed: list, coef: list) -> _Fit:
    """:class:`_Fit` of the solved costs ``coef`` over every round of every clone."""
    import math

    n = len(counts[0])
    rows, ys = [], []
    for row, c, t in zip(counts, clones, timed):
        for sample in t.samples:
            rows.append(row)
            ys.append(sample - c["kernels_ms"])
    m = len(rows)
    rss = sum((sum(r[j] * coef[j] for j in range(n)) - y) ** 2 for r, y in zip(rows, ys))
    cond = condition_number(counts)
    try:
        inv = _inverse([[sum(r[i] * r[j] for r in rows) for j in range(n)] for i in range(n)])
    except MeasureError:
        inv = None
    if inv is None or m <= n:
        se = [float("inf")] * n
    else:
        s2 = rss / (m - n)
        se = [math.sqrt(max(0.0, s2 * inv[j][j])) for j in range(n)]
    return _Fit(m, n, len(counts), math.sqrt(rss / m) if m else 0.0, cond, se)


def _round_solves(counts: list, clones: list, timed: list) -> list:
    """One solve per interleaved round (the clones' i-th samples were taken side by side);
    a round whose solve fails is left out."""
    out = []
    for i in range(min(len(t.samples) for t in timed)):
        try:
            out.append(_solve(counts, [t.samples[i] - c["kernels_ms"]
                                       for c, t in zip(clones, timed)]))
        except MeasureError:
            continue
    return out


def dispatch_probe(raw: dict, spec: ModelSpec, phase: str, batch: int, length: int,
                   times: "OpTimes", *, cache=None, repeats: int = 9,
                   precision: str = "") -> dict:
    """Measure the eager framework overhead of this device (CPU) for one code path.

    Tiny clones of the model (same layers, wrappers and Python; every width tiny, so their
    kernels cost little) are built dense, at half depth, low-rank (twice the linears) and
    dynamic-depth (routed sublayers), timed end to end (interleaved), and their own kernel ops
    (the taxonomy's op list, measured like any op) are subtracted.  What is left is
    ``F + blocks·B + linears·Lin + routed·R``; solving the four clones gives the cost of each
    :class:`~pis_tui.model.ops.Overhead` kind, stored as measurements (keys ``ovh:<kind>:<path>:<dtype>``)
    so the estimator prices the overhead ops of every strategy with them, as ``solved`` (never
    timed themselves).  Five clones for four kinds (a shallow one too), each round of each an
    equation: the fit's residual and the counts' condition number give each kind a standard
    error, stored with it (its uncertainty when priced); a kind pinned no better than
    ±:data:`PROBE_SPREAD_LIMIT` of its value, or clones whose counts are ill-conditioned, is
    stored ``unstable`` with the reason.  Returns {"path", "ms": {kind: ms per call},
    "clones": [...], "spread", "bounded", "contended", "remeasured", "solve": {"equations",
    "unknowns", "residual_ms", "condition_number", "standard_error_ms": {kind: ms}}}.

    ``precision`` (a quantized format): the clones are built quantized as the model is (its
    linears' Python is not nn.Linear's: :func:`pis_tui.hf.quantize.quantize_model`), their
    kernel ops priced at it.  Their costs share the unquantized ones' keys: give such a probe
    an :meth:`OpTimes.with_overheads` view and no cache.
    """
    if precision and cache is not None:
        raise ValueError("a quantized probe's costs would replace the unquantized ones in the "
                         "cache (their keys name no precision): give it no cache")
    traw, tspec = tiny_clone(raw, spec, precision)
    path = overhead_phase(phase, batch)
    probe = _time_clones(traw, tspec, phase, batch, length, times, repeats, precision)
    clones = probe.clones
    for c, t in zip(clones, probe.timed):
        c["measured_ms"] = t.median_ms
        c["residual_ms"] = t.median_ms - c["kernels_ms"]
    solved = _solve_kinds(clones, probe.timed)
    contended = _contended(probe.others)
    out = _measurements(spec, phase, batch, length, path, times.dtype, repeats, probe, solved,
                        contended, precision)
    times.add(out)
    if cache is not None:
        cache.put_measurements(out)
    fit = solved.fit
    return {"path": path, "precision": precision or None, "ms": solved.ms, "clones": clones,
            "spread": solved.spread, "bounded": solved.bounded, "contended": contended, "remeasured": probe.remeasured,
            "solve": {"equations": fit.equations, "unknowns": fit.unknowns,
                      "residual_ms": fit.residual_ms, "condition_number": _finite(fit.condition),
                      "standard_error_ms": {k: _finite(v) for k, v in solved.se.items()}}}


def _finite(x: float):
    """``x``, or None where it is not finite (JSON has no infinity)."""
    return x if x == x and abs(x) != float("inf") else None


@dataclass
class _ClonesTimed:
    """The tiny clones timed end to end: each clone's overhead counts and kernel time
    (``clones``), their interleaved samples (``timed``), the meter of other processes' CPU
    meanwhile, whether they were timed twice, and the clones' kernel time with its part
    measured under load."""
    clones: list
    timed: list
    others: OthersMeter
    remeasured: bool
    kernels_ms: float
    loaded_ms: float


def _time_clones(traw: dict, tspec: ModelSpec, phase: str, batch: int, length: int,
                 times: "OpTimes", repeats: int, precision: str = "") -> _ClonesTimed:
    """Build the tiny clones of :data:`PROBE_STRATEGIES`, price their kernel ops and time them
    end to end, interleaved (once more, pooled, when a kind's cost spreads too wide); their
    runs are closed after, whatever happened."""
    from ..pricing.estimator import Estimator
    from ..device.local import local_device
    from ..model.ops import Overhead

    dtype = times.dtype
    scen = Scenario(prefill_batch=batch, prompt_len=length if phase == "prefill" else 1,
                    decode_batch=batch, context_len=length if phase == "decode" else 1,
                    dtype=dtype, precision=precision)
    clones, runs, builts = [], [], []
    remeasured = False
    pos = [build_phase_ops(tspec, Strategy(fam, s, align=8), scen, phase)
           for fam, s in PROBE_STRATEGIES]
    times.ensure([o for po in pos for o in po.ops if not isinstance(o, Overhead)])
    est = Estimator(local_device(), [r for r in times.records()
                                     if not str(r.get("key", "")).startswith("ovh:")])
    loaded_ms = kernels_ms = 0.0  # the clones' kernel time, and its part measured under load
    try:
        for (fam, s), po in zip(PROBE_STRATEGIES, pos):
            strat = Strategy(fam, s, align=8)
            kernel_ops = [o for o in po.ops if not isinstance(o, Overhead)]
            priced = [est.price(o) for o in kernel_ops]
            pred = sum(p.total_ms for p in priced)
            loaded_ms += sum(p.total_ms for p in priced if p.source == "unstable" or p.loaded)
            kernels_ms += pred
            built = build_from_spec(traw, tspec, strat, dtype=dtype, precision=precision)
            run = PhaseRun(built, phase, batch, length)
            run.prepare()
            builts.append(built)
            runs.append(run)
            clones.append({"strategy": fam, "sparsity": s, "counts": _overhead_counts(po),
                           "kernels_ms": pred})
        with OthersMeter() as others:  # processes that load every core alike, meanwhile
            timed = measure_interleaved(runs, repeats, warmup=2, target_ms=60)
            if _too_wide(clones, timed):  # once more, pooled (as an unstable op is re-measured once)
                again = measure_interleaved(runs, repeats, warmup=0, target_ms=60)
                timed = [_summary(t.samples + u.samples) for t, u in zip(timed, again)]
                remeasured = True
    finally:
        for r in runs:
            r.close()
    return _ClonesTimed(clones, timed, others, remeasured, kernels_ms, loaded_ms)


def _overhead_counts(po) -> dict:
    """How many calls of each overhead kind a clone's op list makes."""
    from ..model.ops import OVERHEAD_KINDS, Overhead

    counts = {k: 0.0 for k in OVERHEAD_KINDS}
    for o in po.ops:
        if isinstance(o, Overhead):
            counts[o.kind] += o.count
    return counts


@dataclass
class _Solved:
    """Each overhead kind's cost a call (``ms``, bounded by :func:`overhead_bound`), its
    spread over the rounds' own solves, the kinds whose solve went above the bound (solved,
    bound), the rounds' solves, each kind's standard error (``se``, ms a call) and the fit
    behind it."""
    ms: dict
    spread: dict
    bounded: dict
    per_round: list
    se: dict
    fit: _Fit

    def relative_se(self, k: str) -> float:
        """Kind ``k``'s standard error over its cost (inf where the solve cannot pin it)."""
        v = self.ms[k]
        return self.se[k] / v if v > 0 else float("inf")


def _solve_kinds(clones: list, timed: list) -> _Solved:
    """Solve the clones' residuals (measured − kernels) for each overhead kind's cost."""
    from ..model.ops import OVERHEAD_KINDS

    kinds = [k for k in OVERHEAD_KINDS if any(c["counts"][k] for c in clones)]
    counts = [[c["counts"][k] for k in kinds] for c in clones]
    coef = _solve(counts, [c["residual_ms"] for c in clones])
    # one solve per interleaved round as well (the clones' i-th samples were taken side by
    # side): the spread of a kind's cost over the rounds is stored with it
    per_round = _round_solves(counts, clones, timed)
    # every round of every clone an equation: the residual and the counts' conditioning give
    # each kind's standard error
    fit = _fit_stats(counts, clones, timed, coef)
    ms, spread, bounded, se = {}, {}, {}, {}
    for j, k in enumerate(kinds):
        limit = overhead_bound(clones, k)
        v = min(max(1e-6, coef[j]), limit)
        if coef[j] > limit:
            bounded[k] = (coef[j], limit)
        ms[k] = v
        se[k] = fit.se[j]
        vals = sorted(min(max(1e-6, r[j]), limit) for r in per_round)
        spread[k] = _iqr(vals) / v if len(vals) >= 2 and v > 0 else None
    return _Solved(ms, spread, bounded, per_round, se, fit)


def _contended(others: OthersMeter) -> bool:
    """Whether other processes used this machine's cores while the clones were timed (the
    meter), or do now (the probe of contention, advisory)."""
    contended = others.contended
    try:
        from .stability import cpu_contended

        contended = contended or bool(cpu_contended().get("contended"))
    except Exception:  # noqa: BLE001 - the probe of contention is advisory
        pass
    return contended


def _measurements(spec: ModelSpec, phase: str, batch: int, length: int, path: str, dtype: str,
                  repeats: int, probe: _ClonesTimed, solved: _Solved, contended: bool,
                  precision: str = "") -> list:
    """Each kind's cost as a measurement of its overhead op, unstable (with the reasons in
    its conditions) when its rounds disagree, its solve was bounded, the machine was busy or
    the kernel time subtracted was measured under load."""
    from dataclasses import asdict

    from ..device.local import local_device
    from ..pricing.measured_table import METHOD_VERSIONS, Measurement, now_iso, software_versions
    from ..model.ops import Overhead

    clones = probe.clones
    fp = local_device().fingerprint
    sw = software_versions()
    out = []
    fit = solved.fit
    names = ", ".join(f"{f} {s:g}" if s else f for f, s in PROBE_STRATEGIES)
    for k, v in solved.ms.items():
        op = Overhead(f"{k}_overhead", k, path, 1.0, dtype)
        reasons = _unstable_reasons(k, probe, solved, contended)
        rel = solved.relative_se(k)
        cond = {"probe": {"clones": [{kk: c[kk] for kk in ("strategy", "sparsity", "measured_ms",
                                                             "kernels_ms")} for c in clones],
                          "bound_ms": overhead_bound(clones, k), "rounds": len(solved.per_round),
                          "remeasured": probe.remeasured,
                          "solve": {"equations": fit.equations, "unknowns": fit.unknowns,
                                    "clones": fit.clones, "residual_ms": fit.residual_ms,
                                    "condition_number": _finite(fit.condition),
                                    "standard_error_ms": _finite(solved.se[k]),
                                    # None: the solve cannot pin it at all (stored unstable)
                                    "relative_uncertainty": _finite(rel)}}}
        if reasons:
            cond["unstable"] = reasons
        out.append(Measurement(
            key=op.key(), op=asdict(op), ms=v, eager_ms=v, spread=solved.spread[k], repeats=repeats,
            status="unstable" if reasons else "ok", method="cpu-wall",
            method_version=METHOD_VERSIONS["cpu-wall"],
            fingerprint=fp, software=sw, measured_at=now_iso(), conditions=cond,
            note=(f"dispatch probe: tiny clones of {spec.name} ({names}"
                  f"{f'; linears quantized to {precision}' if precision else ''}), "
                  f"{phase} batch {batch} × {length}; measured − kernel ops, solved per kind "
                  f"(not timed itself: {fit.equations} equations for {fit.unknowns} kinds, "
                  f"residual {fit.residual_ms:.3g} ms, condition number {fit.condition:.3g}; "
                  f"±{solved.se[k]:.3g} ms), bounded by {overhead_bound(clones, k):.4g} ms a call")))
    return out


def _unstable_reasons(k: str, probe: _ClonesTimed, solved: _Solved, contended: bool) -> list:
    """Why kind ``k``'s cost is not to be trusted (none: it is)."""
    spread, bounded = solved.spread, solved.bounded
    loaded_ms, kernels_ms = probe.loaded_ms, probe.kernels_ms
    reasons = []
    fit, rel = solved.fit, solved.relative_se(k)
    if fit.condition > PROBE_CONDITION_LIMIT:
        reasons.append(f"the clones' overhead counts barely tell the kinds apart (condition "
                       f"number {fit.condition:.3g}, above {PROBE_CONDITION_LIMIT:g})")
    if not rel <= PROBE_SPREAD_LIMIT:
        pinned = (f"±{solved.se[k]:.3g} ms a call on {solved.ms[k]:.3g} ms"
                  if solved.se[k] != float("inf") else "not at all")
        reasons.append(f"ill-conditioned: the solve pins it only to {pinned} (standard error "
                       f"from a residual of {fit.residual_ms:.3g} ms over {fit.equations} "
                       f"equations for {fit.unknowns} kinds, condition number "
                       f"{fit.condition:.3g})")
    if spread[k] is not None and spread[k] > PROBE_SPREAD_LIMIT:
        reasons.append(f"its rounds disagree (IQR {spread[k]:.0%} of the median)")
    if k in bounded:
        reasons.append(f"the solve gave {bounded[k][0]:.4g} ms a call, above the bound "
                       f"{bounded[k][1]:.4g} ms (a tiny clone's whole forward over its "
                       f"{k} calls)")
    if contended:
        reasons.append("taken while other processes used this machine's cores"
                       + (f" ({probe.others.words()})" if probe.others.contended else ""))
    if kernels_ms > 0 and loaded_ms / kernels_ms > LOADED_SHARE:
        reasons.append(f"{loaded_ms / kernels_ms:.0%} of the clones' kernel time it "
                       "subtracts was measured under load")
    return reasons


def _too_wide(clones: list, timed: list) -> bool:
    """Whether a kind's cost, solved round by round, spreads wider than PROBE_SPREAD_LIMIT."""
    from ..model.ops import OVERHEAD_KINDS

    kinds = [k for k in OVERHEAD_KINDS if any(c["counts"][k] for c in clones)]
    counts = [[c["counts"][k] for k in kinds] for c in clones]
    try:
        coef = _solve(counts, [t.median_ms - c["kernels_ms"] for c, t in zip(clones, timed)])
    except MeasureError:
        return True
    rounds = _round_solves(counts, clones, timed)
    for j in range(len(kinds)):
        vals = sorted(r[j] for r in rounds)
        if len(vals) >= 2 and coef[j] > 0 and _iqr(vals) / coef[j] > PROBE_SPREAD_LIMIT:
            return True
    return False


def overhead_bound(clones: list, kind: str) -> float:
    """The most one call of overhead ``kind`` can cost: every clone that makes such calls runs
    all of them inside its own measured forward, so one call costs at most that forward's
    time over the clone's count of ``kind`` calls (the least over the clones).  A model's
    priced overhead therefore never exceeds the measured forward of its tiny clone, however
    noisy the solve."""
    limits = [c["measured_ms"] / c["counts"][kind] for c in clones
              if c["counts"].get(kind) and c.get("measured_ms") is not None]
    return min(limits) if limits else float("inf")


def _iqr(vals: list) -> float:
    if len(vals) < 4:
        return vals[-1] - vals[0]
    import statistics

    q = statistics.quantiles(vals, n=4)
    return q[2] - q[0]
