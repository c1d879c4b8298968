"""dense: the unpruned model, the baseline every speedup is measured against."""

from __future__ import annotations

from .base import Family


class Dense(Family):
    name = "dense"
    label = "dense"
    axis = "baseline"
    description = "nothing"
    mark, color, short = "D", (220, 220, 220), "dense"
    is_baseline = True
    fixed_sparsity = 0.0

    def prune(self, model, sparsity, cal, **kw):
        from ..hf.result import PruneResult

        return PruneResult("dense", 0.0, 0.0)


FAMILY = Dense()
