"""Value types of results: priced ops, phase estimates, Pareto points, recommendations.

Small frozen dataclasses so results are easy to cache, compare and serialise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from .ops import Op


@dataclass(frozen=True)
class PricedOp:
    op: Op
    ms_per_call: float
    source: str  # one of sources.TIMING_SOURCES
    note: str = ""
    uncertainty: float = 0.0  # relative 1σ of ms_per_call (sources.uncertainty)
    loaded: bool = False  # measured while the machine was loaded (a mixed-conditions check)
    kernels: Optional[int] = None  # kernel launches per call under the execution profile

    @property
    def total_ms(self) -> float:
        return self.ms_per_call * self.op.count


@dataclass(frozen=True)
class PhaseEstimate:
    """One strategy × sparsity × phase, priced on one device."""

    strategy: str
    sparsity: float
    achieved_sparsity: float
    phase: str
    ops: tuple[PricedOp, ...]
    latency_ms: float
    flops: float
    timing_source: str  # weakest source over ops (measured > shipped > interpolated > roofline)
    source_counts: dict = field(default_factory=dict, hash=False, compare=False)
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class QualityEstimate:
    """The quality cost of a (model, strategy, sparsity).

    ``value`` is a fraction: the relative drop of average zero-shot accuracy when
    ``metric == "accuracy_drop"``; the relative perplexity increase when
    ``metric == "ppl_increase"``.  ``None`` when nothing is known.
    """

    value: Optional[float]
    metric: str = "accuracy_drop"
    source: str = "none"  # prior | user | measured | none
    protocol: str = "lora"
    extrapolated: bool = False
    borrowed_from: Optional[str] = None
    secondary: bool = False
    citations: tuple[str, ...] = ()
    n_points: int = 0
    note: str = ""


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
    #: the speedup's interval (about 95 %: see pis_tui.uncertainty); None where not computed
    speedup_lo: Optional[float] = None
    speedup_hi: Optional[float] = None
    #: the family's physical ceiling for this point (the share of work it keeps)
    ceiling: Optional[float] = None
    #: what makes the point untrustworthy: "above_ceiling", "mixed_conditions"
    flags: tuple = ()

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
