"""A point of a sweep (a strategy's speedup and quality cost in one phase) and a recommendation among them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ..pricing.estimates import strategy_key
from ..quality.estimate import QualityEstimate


@dataclass(frozen=True)
class Point:
    """A strategy × sparsity in one phase: its speed and its quality cost."""

    strategy: str
    sparsity: float
    achieved_sparsity: float
    phase: str
    latency_ms: float
    dense_latency_ms: float
    speedup: float
    flops_speedup: float
    timing_source: str
    quality: QualityEstimate = field(default_factory=lambda: QualityEstimate(None))
    #: the speedup's interval (about 95 %: see pis_tui.pricing.uncertainty); None where not computed
    speedup_lo: Optional[float] = None
    speedup_hi: Optional[float] = None
    #: the family's physical ceiling for this point (the share of work it keeps)
    ceiling: Optional[float] = None
    #: what makes the point untrustworthy: "above_ceiling", "mixed_conditions"
    flags: tuple = ()
    #: a combination: ((family, asked sparsity), ...) of its parts, and each part's achieved
    parts: tuple = ()
    part_achieved: tuple = ()
    #: "ceiling" when the interval's upper end was cut at the family's ceiling (physics)
    interval_cut: str = ""

    @property
    def key(self) -> tuple:
        """What tells this point's strategy from every other of its phase."""
        return strategy_key(self.strategy, self.sparsity, self.parts)

    @property
    def quality_loss(self) -> Optional[float]:
        return self.quality.value

    @property
    def interval(self) -> tuple[float, float]:
        lo = self.speedup if self.speedup_lo is None else self.speedup_lo
        hi = self.speedup if self.speedup_hi is None else self.speedup_hi
        return lo, hi

    @property
    def gap(self) -> float:
        """Relative shortfall of the real speedup against the FLOPs-predicted one."""
        return self.speedup / self.flops_speedup - 1.0 if self.flops_speedup else 0.0


@dataclass(frozen=True)
class Recommendation:
    phase: str
    budget: float
    metric: str
    best: Optional[Point]
    runner_up: Optional[Point]
    margin: Optional[float]  # best.speedup - runner_up.speedup
    reason: str
    frontier: tuple[Point, ...] = ()
    #: feasible points left out because they are flagged (faster than the best, or any)
    skipped: tuple[Point, ...] = ()
    #: feasible points left out because their quality is extrapolated (--allow-extrapolated)
    skipped_extrapolated: tuple[Point, ...] = ()
    allow_extrapolated: bool = False
    #: the faster feasible points the winner passed over, each with its pair against the winner
    #: (pis_tui.decide.compare.Pair): what the recommendation gave up
    passed_over: tuple = ()


