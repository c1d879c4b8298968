"""Pareto frontier (speedup vs quality loss) and the recommendation under a budget.

Pure Python; works on :class:`pis_tui.decide.points.Point` from one run.

* A point *dominates* another when its speedup is at least as high and its loss at
  most as high, and it is strictly better on one of the two.  Only points with a known
  quality value and a finite speedup take part.
* Ties (identical speedup and identical loss): one representative is kept, the one
  with the smallest achieved sparsity (least pruning), then the strategy name in
  alphabetical order, then the asked sparsity (so ``dense`` wins a tie with any
  strategy at zero sparsity).
* Accuracy drops and perplexity increases never meet: mixing metrics raises
  ``ValueError``.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Optional, Sequence

from ..display import flag_words, strategy_name
from .compare import Pair, independent_pair
from .points import Point, Recommendation
from ..quality.estimate import QualityEstimate
from ..pricing.uncertainty import BLOCKING_FLAGS, MIN_HALF_WIDTH
from ..pricing.uncertainty import flag_words as point_flag_words

_TOL = 1e-12


def _loss(p: Point) -> Optional[float]:
    return p.quality.value if p.quality is not None else None


def _usable(p: Point) -> bool:
    v = _loss(p)
    return v is not None and math.isfinite(v) and p.speedup is not None and math.isfinite(p.speedup)


def _tiebreak(p: Point) -> tuple:
    return (p.achieved_sparsity, p.strategy, p.sparsity, tuple(getattr(p, "parts", ())))


def points_metric(points: Iterable[Point]) -> Optional[str]:
    """The one quality metric of these points (those with a known value); ValueError if mixed."""
    metrics = {p.quality.metric for p in points if _loss(p) is not None}
    if len(metrics) > 1:
        raise ValueError(f"points mix quality metrics {sorted(metrics)}: accuracy drops and "
                         "perplexity increases cannot share an axis")
    return metrics.pop() if metrics else None


def dominates(a: Point, b: Point) -> bool:
    la, lb = _loss(a), _loss(b)
    return (a.speedup >= b.speedup and la <= lb) and (a.speedup > b.speedup or la < lb)


def frontier(points: Iterable[Point], phase: Optional[str] = None) -> list[Point]:
    """Non-dominated points (known quality), sorted by loss (then speedup).

    Pass the points of one phase, or give ``phase`` to pick them; points of several
    phases without ``phase`` raise ``ValueError`` (phases are never compared).
    """
    pts = list(points)
    if phase is not None:
        pts = [p for p in pts if p.phase == phase]
    elif len({p.phase for p in pts}) > 1:
        raise ValueError("frontier() got points of several phases; give phase=")
    points_metric(pts)
    usable = sorted((p for p in pts if _usable(p)), key=lambda p: (_loss(p), -p.speedup, _tiebreak(p)))
    out: list[Point] = []
    best_speed = -math.inf
    for p in usable:
        if p.speedup > best_speed:
            out.append(p)
            best_speed = p.speedup
    return out


# --------------------------------------------------------------------------- wording

def _pct(v: float, digits: int = 1) -> str:
    return f"{v * 100:.{digits}f}%"


def _sparsity_label(p: Point) -> str:
    s = f"{p.achieved_sparsity * 100:.1f}".rstrip("0").rstrip(".")
    return f"{s}%"


def _name(p: Point) -> str:
    if p.strategy == "dense":
        return "dense (no pruning)"
    if getattr(p, "parts", ()):
        return strategy_name(p)
    return f"{p.strategy} {_sparsity_label(p)}"


def _loss_words(v: float, metric: str) -> str:
    if metric == "ppl_increase":
        return f"+{_pct(v)} perplexity"
    return f"{_pct(v)} loss"


def _describe(p: Point, metric: str, short: bool = False) -> str:
    v = _loss(p)
    if short:
        lw = _pct(v) if metric != "ppl_increase" else f"+{_pct(v)} perplexity"
    else:
        lw = _loss_words(v, metric)
    return f"{_name(p)}: {p.speedup:.2f}× at {lw}"


def _flags(p: Point) -> str:
    tags = flag_words(p.quality)
    return f" [{', '.join(tags)}]" if tags else ""


def _method(p: Point) -> str:
    """The method behind a point's quality figure, for the recommendation's reason."""
    m = getattr(p.quality, "method", "")
    return f" (quality: {m})" if m else ""


def extrapolated(p: Point) -> bool:
    """The quality figure lies beyond its curve's data (a combination: a part's does)."""
    return bool(p.quality is not None and p.quality.extrapolated)


#: the rule for extrapolated quality, in words (the JSON carries it)
EXTRAPOLATED_RULE = ("a point whose quality is extrapolated beyond its curve's data is shown "
                     "but not ranked unless --allow-extrapolated")


# --------------------------------------------------------------------------- recommendation

def _dense_baseline(pts: Sequence[Point], phase: str, metric: str) -> Point:
    for p in pts:
        if p.strategy == "dense" and _usable(p):
            return p
    ref = pts[0] if pts else None
    dense_ms = ref.dense_latency_ms if ref else 0.0
    src = ref.quality.source if ref else "prior"
    proto = ref.quality.protocol if ref else "lora"
    return Point(strategy="dense", sparsity=0.0, achieved_sparsity=0.0, phase=phase,
                 latency_ms=dense_ms, dense_latency_ms=dense_ms, speedup=1.0, flops_speedup=1.0,
                 timing_source=ref.timing_source if ref else "roofline",
                 quality=QualityEstimate(0.0, metric, src, proto, note="dense: nothing removed"))


#: the tie rule, in words (the JSON carries it with each recommendation)
TIE_RULE = ("a point ties with the fastest feasible one when the interval of their own speedup "
            "ratio reaches 1 (the kernels both run cancel; cut at 1 where one op list does no "
            "more work than the other, op by op); the lowest loss among the fastest and those "
            "tied with it wins; a point whose interval reaches dense's does not beat dense")


def _interval(p: Point) -> tuple[float, float]:
    """A point's speedup interval, at least ±MIN_HALF_WIDTH wide (estimates are not finer)."""
    lo, hi = p.interval
    return (min(lo, p.speedup * math.exp(-MIN_HALF_WIDTH)), max(hi, p.speedup * math.exp(MIN_HALF_WIDTH)))


def beats_dense(p: Point) -> bool:
    """Faster than the dense model beyond the tie rule: a point whose interval reaches down
    to dense's (1.0×, itself ±MIN_HALF_WIDTH) ties with dense, and dense (no loss, nothing
    removed) wins the tie.  Only such points are recommended or offered as the runner-up
    (2:4 on a CPU, priced as the dense kernel at 1.00×, is neither)."""
    return _interval(p)[0] > math.exp(MIN_HALF_WIDTH) + _TOL


def flagged(p: Point) -> bool:
    """Flagged as physically implausible or measured under mixed conditions."""
    return any(f in BLOCKING_FLAGS for f in p.flags)


def recommend(points: Iterable[Point], budget: float, phase: str,
              include_flagged: bool = False, allow_extrapolated: bool = False,
              pair: Optional[Callable[[Point, Point], Pair]] = None) -> Recommendation:
    """The fastest point of ``phase`` whose quality loss stays within ``budget``.

    * ``best``: by the selection rule below among pruned points with loss ≤ budget that beat
      dense; ``dense`` when no feasible pruned point
      beats dense (:func:`beats_dense`); ``None`` when no pruned point stays within the
      budget at all.  Flagged points (above their physical ceiling, or measured under mixed
      conditions) are skipped unless ``include_flagged``; those skipped that the budget
      allows are in ``skipped``.  Points whose quality is extrapolated beyond the data are
      skipped unless ``allow_extrapolated`` (in ``skipped_extrapolated``).
    * ``runner_up``: among the feasible points that beat dense, the best of a different
      strategy, else the next of the same strategy, else dense; ``None`` when dense is the
      best (a point with no speedup over dense is no runner-up); ``margin`` = best −
      runner-up speedup (``None`` with no runner-up).
    * ``frontier``: the phase's frontier, dense included.
    * ``pair(a, b)``: the comparison of two points by their own ratio
      (:class:`pis_tui.decide.compare.Comparer` over the sweep's estimates); without it, the
      two marginal intervals taken as independent errors (:func:`independent_pair`).

    The selection (:data:`pis_tui.decide.compare.SELECTION_RULE`): the fastest feasible point
    that beats dense leads; each other is compared with the leader only (ties are not
    transitive); the lowest loss among the leader and the points tied with it wins.  The
    reason says what the winner gave up: each faster feasible point passed over, by how much
    (the pair's ratio and interval) and for how much less loss.
    """
    pair = pair or independent_pair
    if budget is None or not math.isfinite(budget) or budget < 0:
        raise ValueError(f"budget must be a fraction ≥ 0, got {budget!r}")
    pts = [p for p in points if p.phase == phase]
    metric = points_metric(pts) or next((p.quality.metric for p in pts), "accuracy_drop")
    dense = _dense_baseline(pts, phase, metric)
    pruned = [p for p in pts if p.strategy != "dense" and _usable(p)]
    skipped = ()
    skipped_x: tuple = ()
    if not allow_extrapolated:
        skipped_x = tuple(sorted((p for p in pruned if extrapolated(p) and _loss(p) <= budget + _TOL),
                                 key=lambda p: -p.speedup))
        pruned = [p for p in pruned if not extrapolated(p)]
    if not include_flagged:
        skipped = tuple(sorted((p for p in pruned if flagged(p) and _loss(p) <= budget + _TOL),
                               key=lambda p: -p.speedup))
        pruned = [p for p in pruned if not flagged(p)]
    fr = tuple(frontier([dense] + pruned))
    budget_words = _loss_words(budget, metric)

    if not pruned and skipped_x and not skipped:
        reason = (f"{phase}: every point within {budget_words} has an extrapolated quality "
                  "figure; keep the dense model (--allow-extrapolated ranks them anyway)")
        return Recommendation(phase, budget, metric, dense, None, None, reason, fr, skipped, skipped_x, allow_extrapolated)
    if not pruned and skipped:
        reason = (f"{phase}: every point within {budget_words} is flagged "
                  f"({', '.join(dict.fromkeys(w for p in skipped for w in point_flag_words(p)))}); "
                  "keep the dense model (--include-flagged ranks them anyway)")
        return Recommendation(phase, budget, metric, dense, None, None, reason, fr, skipped, skipped_x, allow_extrapolated)
    if not pruned:
        reason = (f"{phase}: no strategy has a known quality cost, so none can be checked "
                  f"against the budget; keep the dense model")
        return Recommendation(phase, budget, metric, None, None, None, reason, fr, skipped, skipped_x, allow_extrapolated)

    rank = lambda p: (-p.speedup, _loss(p), _tiebreak(p))  # noqa: E731
    feasible = sorted((p for p in pruned if _loss(p) <= budget + _TOL), key=rank)
    if not feasible:
        smallest = min(pruned, key=lambda p: (_loss(p), -p.speedup, _tiebreak(p)))
        reason = (f"no strategy stays within {budget_words}; the smallest loss on offer is "
                  f"{_name(smallest)} at {_loss_words(_loss(smallest), metric).replace(' loss', '')}"
                  f" ({smallest.speedup:.2f}×); keep the dense model")
        return Recommendation(phase, budget, metric, None, None, None, reason, fr, skipped, skipped_x, allow_extrapolated)

    gainful = [p for p in feasible if beats_dense(p)]
    if not gainful:
        top = feasible[0]
        reason = (f"no pruning: nothing within {budget_words} beats dense in {phase} (beyond "
                  f"its interval); the fastest within budget is "
                  f"{_describe(top, metric, short=True)}")
        return Recommendation(phase, budget, metric, dense, None, None, reason, fr, skipped, skipped_x, allow_extrapolated)

    best, passed = select(gainful, pair)
    rest = [p for p in gainful if p is not best]
    runner = next((p for p in rest if p.strategy != best.strategy), rest[0] if rest else dense)
    margin = best.speedup - runner.speedup
    reason = f"{_describe(best, metric)}{_method(best)}{_flags(best)}"
    if passed:
        reason += "; " + _gave_up(best, passed, metric)
    reason += f"; next best {_describe(runner, metric, short=True)}"
    faster = [p for p in skipped if p.speedup > best.speedup]
    if faster:
        reason += (f"; {len(faster)} faster point{'s' * (len(faster) > 1)} skipped as flagged "
                   f"({', '.join(dict.fromkeys(w for p in faster for w in point_flag_words(p)))})")
    faster_x = [p for p in skipped_x if p.speedup > best.speedup]
    if faster_x:
        reason += (f"; {len(faster_x)} faster point{'s' * (len(faster_x) > 1)} skipped: quality "
                   "extrapolated (--allow-extrapolated ranks them)")
    return Recommendation(phase, budget, metric, best, runner, margin, reason, fr, skipped,
                          skipped_x, allow_extrapolated, passed)


def select(ranked: Sequence, pair: Callable) -> tuple:
    """The selection rule over candidates ``ranked`` fastest first (their point estimates):
    the first leads; each other is compared with it; the lowest loss among the leader and the
    points tied with it that no faster candidate beats beyond doubt wins (then the higher
    speedup, then the least pruning).
    Returns (the winner, ((faster point passed over, its pair against the winner), ...))."""
    leader = ranked[0]
    tied_with = [leader] + [p for p in ranked[1:] if pair(p, leader).verdict != "b"]
    # ties are not transitive: a point tied with the leader that a faster feasible point beats
    # beyond doubt is no contender (it is certainly not the fastest)
    contenders = [p for p in tied_with if p is leader or not any(
        pair(q, p).verdict == "a" for q in ranked if q.speedup > p.speedup and q is not p)]
    best = min(contenders, key=lambda p: (_loss(p), -p.speedup, _tiebreak(p)))
    passed = tuple((p, pair(p, best)) for p in ranked if p.speedup > best.speedup and p is not best)
    return best, passed


def _gave_up(best: Point, passed: Sequence, metric: str) -> str:
    """What the winner gave up: the faster feasible points passed over (at most three named)."""
    out = []
    for p, pr in passed[:3]:
        d = _loss(p) - _loss(best)
        out.append(f"{_name(p)} ({pr.words()} as fast, {pr.verdict_words()}) for "
                   f"{_loss_words(d, metric).replace(' loss', '')} more loss")
    more = f" and {len(passed) - 3} more" if len(passed) > 3 else ""
    return "passed over " + "; ".join(out) + more


# --------------------------------------------------------------------------- the rule, for others

def rank_key(p: Point) -> tuple:
    """The order :func:`recommend` ranks feasible points in: fastest first, then the lower
    loss, then the tie rule of the module docstring."""
    return (-p.speedup, _loss(p), _tiebreak(p))


