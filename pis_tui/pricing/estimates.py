"""Value types of results: priced ops, phase estimates, Pareto points, recommendations.

Small frozen dataclasses so results are easy to cache, compare and serialise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ..model.ops import Op


def strategy_key(strategy: str, sparsity: float, parts: tuple = ()) -> tuple:
    """(strategy, sparsity) of a family; a combination's parts too (two pairs of part
    sparsities can compose to the same sparsity)."""
    base = (strategy, round(float(sparsity), 9))
    return base + (tuple(parts),) if parts else base


@dataclass(frozen=True)
class PricedOp:
    op: Op
    ms_per_call: float
    source: str  # one of sources.TIMING_SOURCES
    note: str = ""
    uncertainty: float = 0.0  # relative 1σ of ms_per_call (sources.uncertainty)
    loaded: bool = False  # measured while the machine was loaded (a mixed-conditions check)
    kernels: Optional[int] = None  # kernel launches per call under the engine

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
    #: a combination: ((family, sparsity), ...) of its parts, as the Strategy holds them
    parts: tuple = ()


