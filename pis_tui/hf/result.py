"""What real pruning reports: the achieved sparsity, a note, details, a live tracker."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# ---------------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------------

@dataclass
class PruneResult:
    strategy: str
    sparsity: float
    achieved_sparsity: float
    note: str = ""
    details: dict = field(default_factory=dict)
    #: for dynamic families: a live counter object (achieved share read after running)
    tracker: Any = None

    def final_achieved(self) -> float:
        if self.tracker is not None and self.tracker.total > 0:
            return self.tracker.share()
        return self.achieved_sparsity
