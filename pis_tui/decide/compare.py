"""Two candidates compared by their own ratio: the one comparison behind every decision.

Whether a is faster than b is not read from their marginal intervals against dense.  Both
come from the same kernels priced by the same model, so their errors move together; the ratio
S_a / S_b = latency_b / latency_a has its own, narrower interval, in which the kernels both
run cancel as they already do against dense (:func:`pis_tui.pricing.uncertainty.log_sigma`
between the two estimates).  And where one op list does no more work than the other op by op
(:func:`no_more_work`: the consistency rule's order, :func:`pis_tui.model.ops.work_shape`), it
is at least as fast whatever the intervals say, so the ratio's interval is cut at 1 on that
side.

The verdict (:class:`Pair`): ``a`` or ``b`` when the interval lies wholly on one side of 1,
``tie`` when it reaches 1.  Ties are not transitive (a ~ b and b ~ c, yet a > c), so the
selection rule (:data:`SELECTION_RULE`, :func:`pis_tui.decide.frontier.recommend`) compares
every candidate with one point only, the fastest.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Optional

from ..model.ops import work_shape
from ..pricing import uncertainty

#: the rule every decision uses (recommend, frontier, plan, the explorer), in words
SELECTION_RULE = (
    "the fastest feasible point is the leader; a point ties with it when the interval of their "
    "own speedup ratio (the kernels both run cancel; cut at 1 where one op list does no more "
    "work than the other, op by op) reaches 1; among the leader and the points tied with it, "
    "less those a faster feasible point beats beyond doubt (ties are not transitive), the "
    "lowest quality loss wins (then the higher speedup, then the least pruning): when the tool "
    "cannot tell which is faster, the lower loss is the safer pick")


@dataclass(frozen=True)
class Pair:
    """a against b: ``ratio`` = S_a / S_b with its ~95 % interval [lo, hi]; ``dominant``: the
    side whose op list does no more work op by op ('a', 'b', 'both' for equal lists, None);
    ``verdict``: 'a' (a faster beyond doubt), 'b', or 'tie'; ``basis``: how the interval was
    made ('paired': from the two estimates' kernels; 'independent': no kernels known, the two
    marginal intervals combined as independent errors, the widest assumption)."""

    ratio: float
    lo: float
    hi: float
    dominant: Optional[str]
    verdict: str
    basis: str = "paired"
    sigma: float = 0.0  # σ(log ratio) before any cut

    def words(self) -> str:
        """'1.23× (1.09–1.40)': the ratio and its interval."""
        return f"{self.ratio:.2f}× ({self.lo:.2f}–{self.hi:.2f})"

    def verdict_words(self) -> str:
        """What the pair says of a against b, in words."""
        work = {"a": "no more work op by op", "b": "no less work op by op",
                "both": "the same work"}.get(self.dominant or "", "")
        v = {"a": "faster beyond doubt", "b": "slower beyond doubt", "tie": "a tie"}[self.verdict]
        return f"{v}: {work}" if work else v


def _shapes(est) -> Optional[dict]:
    """{op name: sorted [(class, dims, aligns, count)]} of an estimate's ops (None: an op the
    order cannot place, so no dominance is claimed)."""
    out: dict = {}
    for p in est.ops:
        op = p.op
        d = asdict(op)
        t = d.get("op_type")
        if t == "overhead":
            sh = (("overhead", d["kind"], d.get("phase")), (), ())
        elif t == "collective":
            sh = (("collective", d["kind"], d.get("dtype"), d["world"]), (d["elems"],), ())
        else:
            sh = work_shape(d)
            if sh is None:
                return None
        out.setdefault(op.name, []).append((sh[0], tuple(sh[1]), tuple(sh[2]), float(op.count)))
    for v in out.values():
        v.sort(key=lambda x: (repr(x[0]), x[1], x[3]))
    return out


def no_more_work(a: dict, b: dict) -> bool:
    """Op list ``a`` does no more work than ``b``, op by op: every op of a has one of the same
    name in b of its class with every dimension and the call count at most b's and every
    alignment at least b's (ops b runs and a does not only add to b's work)."""
    for name, ops_a in a.items():
        ops_b = b.get(name)
        if ops_b is None or len(ops_a) != len(ops_b):
            return False
        for (ca, da, aa, na), (cb, db, ab, nb) in zip(ops_a, ops_b):
            if ca != cb or na > nb + 1e-9 or len(da) != len(db):
                return False
            if any(x > y for x, y in zip(da, db)) or any(x < y for x, y in zip(aa, ab)):
                return False
    return True


def verdict_of(lo: float, hi: float) -> str:
    if lo > 1.0 + 1e-12:
        return "a"
    if hi < 1.0 - 1e-12:
        return "b"
    return "tie"


def pair_from(ratio: float, sigma: float, dominant: Optional[str], basis: str = "paired") -> Pair:
    lo, hi = uncertainty.interval(ratio, sigma)
    if dominant == "a":  # a does no more work: not slower
        lo, hi = max(lo, 1.0), max(hi, 1.0)
    elif dominant == "b":
        lo, hi = min(lo, 1.0), min(hi, 1.0)
    elif dominant == "both":  # the same work: the same speed
        lo = hi = 1.0
    return Pair(ratio, lo, hi, dominant, verdict_of(lo, hi), basis, sigma)


class Comparer:
    """Pairs of one phase's estimates, each estimate's kernel table and work shapes computed
    once (a sweep of 50 candidates compares each with its leader only)."""

    def __init__(self, estimate_of: Callable[[object], Optional[object]]):
        self.estimate_of = estimate_of  # a point → its PhaseEstimate (None: unknown)
        self._tables: dict = {}
        self._shapes: dict = {}

    def _table(self, est):
        t = self._tables.get(id(est))
        if t is None:
            t = self._tables[id(est)] = (est, uncertainty.kernel_table(est))
        return t[1]

    def _shape(self, est):
        k = id(est)
        if k not in self._shapes:
            self._shapes[k] = (est, _shapes(est))
        return self._shapes[k][1]

    def __call__(self, a, b) -> Pair:
        ea, eb = self.estimate_of(a), self.estimate_of(b)
        if ea is None or eb is None or not ea.latency_ms or not eb.latency_ms:
            return independent_pair(a, b)
        ratio = eb.latency_ms / ea.latency_ms
        sigma = uncertainty.log_sigma_tables(self._table(eb), eb.latency_ms,
                                             self._table(ea), ea.latency_ms)
        sa, sb = self._shape(ea), self._shape(eb)
        dom = None
        if sa is not None and sb is not None:
            a_le, b_le = no_more_work(sa, sb), no_more_work(sb, sa)
            dom = "both" if a_le and b_le else ("a" if a_le else ("b" if b_le else None))
        return pair_from(ratio, sigma, dom)


def independent_pair(a, b) -> Pair:
    """a against b from their marginal intervals alone (points without kernels, e.g. read
    back from JSON): the two log-errors combined as independent, the widest assumption for
    errors that in truth share kernels."""
    def sigma(p) -> float:
        lo, hi = p.interval
        if not lo or not hi or lo <= 0:
            return 0.0
        return max(math.log(hi / p.speedup), math.log(p.speedup / lo), 0.0) / uncertainty.Z

    ratio = a.speedup / b.speedup if b.speedup else float("inf")
    s = math.hypot(sigma(a), sigma(b))
    return pair_from(ratio, s, None, "independent")
