"""Quality curves: knots from rows at each sparsity, a monotone (isotonic) fit, piecewise-linear reading and the extrapolation past the data."""

from __future__ import annotations
from dataclasses import dataclass
from typing import Optional
from .priors import method_key


EPS = 1e-9


#: an achieved sparsity at most this far past a curve's largest (0.5 percentage points: what
#: rounding ranks, channels or tokens adds) reads that last point, not an extrapolation
EDGE_TOL = 0.005


@dataclass(frozen=True)
class Obs:
    """A point standing behind a curve (internal: prior, user or measured)."""

    model: str
    family: str
    sparsity: float
    loss: float
    citation: str = ""
    secondary: bool = False
    params_b: Optional[float] = None
    note: str = ""
    method: str = ""  # the method's display name (method_name of the row's method)
    #: measured from a quality oracle (every update computed, then skipped): an upper bound
    oracle: bool = False

    @property
    def method_key(self) -> str:
        return method_key(self.method)


@dataclass(frozen=True)
class _Knot:
    sparsity: float
    loss: float
    obs: tuple  # the Obs behind this knot (after pooling)


def _isotonic(knots: list[_Knot]) -> list[_Knot]:
    """Pool adjacent violators, weights = number of observations behind each knot."""
    blocks: list[list] = []  # [sum_w*loss, sum_w, [knots]]
    for k in knots:
        w = max(len(k.obs), 1)
        blocks.append([k.loss * w, w, [k]])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1] + 1e-15:
            b = blocks.pop()
            blocks[-1][0] += b[0]
            blocks[-1][1] += b[1]
            blocks[-1][2].extend(b[2])
    out = []
    for total, w, ks in blocks:
        pooled = tuple(o for k in ks for o in k.obs)
        for k in ks:
            # the anchor (0, 0) keeps zero loss: it can only pool with zeros (losses are ≥ 0)
            out.append(_Knot(k.sparsity, total / w, pooled if len(ks) > 1 else k.obs))
    return out


@dataclass(frozen=True)
class Curve:
    family: str
    model: str  # the model whose points make the curve
    protocol: str
    metric: str
    source: str  # prior | user | measured
    knots: tuple  # of _Knot, the first is (0, 0)
    n_points: int  # observations behind the curve
    citations: tuple

    @property
    def max_sparsity(self) -> float:
        return self.knots[-1].sparsity

    def evaluate(self, s: float) -> tuple[float, bool, tuple]:
        """(loss, extrapolated, observations behind this value)."""
        ks = self.knots
        if s <= ks[0].sparsity + EPS:
            return 0.0, False, ()
        for a, b in zip(ks, ks[1:]):
            if s <= b.sparsity + EPS:
                if abs(s - b.sparsity) <= EPS:
                    return b.loss, False, b.obs
                t = (s - a.sparsity) / (b.sparsity - a.sparsity)
                return a.loss + t * (b.loss - a.loss), False, a.obs + b.obs
        last = ks[-1]
        if s <= last.sparsity + EDGE_TOL:
            # rounding (ranks to 8, channels, tokens) overshoots a round sparsity a little:
            # that reads the last point, it is no extrapolation
            return last.loss, False, last.obs
        if len(ks) >= 2:
            prev = ks[-2]
            slope = (last.loss - prev.loss) / (last.sparsity - prev.sparsity)
        else:
            slope = 0.0
        v = min(1.0, max(last.loss, last.loss + slope * (s - last.sparsity)))
        return v, True, (prev.obs if len(ks) >= 2 else ()) + last.obs


AGGREGATES = ("mean", "median", "lowest")


def _aggregate(group: list[Obs], how: str) -> tuple[float, tuple]:
    losses = sorted(max(0.0, o.loss) for o in group)
    if how == "lowest":
        best = min(group, key=lambda o: max(0.0, o.loss))
        return losses[0], (best,)
    if how == "median":
        n = len(losses)
        mid = losses[n // 2] if n % 2 else (losses[n // 2 - 1] + losses[n // 2]) / 2
        return mid, tuple(group)
    return sum(losses) / len(losses), tuple(group)


def build_curve(obs: list[Obs], family: str, model: str, protocol: str, metric: str,
                 source: str, aggregate: str = "mean") -> Curve:
    by_s: dict[float, list[Obs]] = {}
    for o in obs:
        by_s.setdefault(round(o.sparsity, 6), []).append(o)
    knots = [_Knot(0.0, 0.0, ())]
    for s in sorted(by_s):
        if s <= EPS:
            continue
        loss, behind = _aggregate(by_s[s], aggregate)
        knots.append(_Knot(s, loss, behind))
    knots = _isotonic(knots)
    cites = tuple(sorted({o.citation for o in obs if o.citation}))
    return Curve(family, model, protocol, metric, source, tuple(knots), len(obs), cites)


def curve_mean_loss(curve: Curve, upto: float) -> float:
    """Mean loss of a fitted curve over [0, upto] (the piecewise-linear area over upto)."""
    if upto <= EPS:
        return 0.0
    xs = sorted({k.sparsity for k in curve.knots if k.sparsity < upto - EPS} | {upto})
    area, px, py = 0.0, 0.0, 0.0
    for x in xs:
        y = curve.evaluate(x)[0]
        area += (x - px) * (py + y) / 2.0
        px, py = x, y
    return area / upto


