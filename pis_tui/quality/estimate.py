"""A point's quality cost: the loss a strategy costs, with where the figure comes from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


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
    #: the method behind the curve: a method's name, or "mean of N methods (...)" (the family
    #: mean), "your quality file", "measured here"; "" where nothing is known
    method: str = ""
    #: a combination's figure composed from its parts' by this rule (multiplicative |
    #: additive); None for a figure of its own (published, the user's, or measured)
    composed: Optional[str] = None
    #: a combination: each part's own estimate (the parts' order)
    parts: tuple = ()
    #: the borrowing rule raised a borrowed figure to this larger model's own
    floored_by: Optional[str] = None
    #: measured on a quality oracle (``pis-tui quality``'s dynamic depth and dynamic sparse
    #: attention compute every update, then skip it): an upper bound on quality, ranked below
    #: a measured figure of the same point (:data:`pis_tui.quality.measured.ORACLE_RULE`)
    oracle: bool = False


