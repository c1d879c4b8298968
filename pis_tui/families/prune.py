"""Real pruning by family name: each family's prune hook, checked, and a combination's parts in turn."""

from __future__ import annotations

from ..errors import UserError
from ..hf.calibration import Calibration
from ..hf.result import PruneResult
from . import registry


def measurable() -> tuple[str, ...]:
    """Families that can be applied to a real model (the registry's, in its order)."""
    return tuple(f.name for f in registry.all_families() if not f.is_baseline and f.quality_supported)


def unsupported() -> dict[str, str]:
    """Families that cannot, with the reason shown to the user."""
    return {f.name: f.quality_unsupported_reason for f in registry.all_families()
            if not f.is_baseline and not f.quality_supported}


def apply(model, strategy: str, sparsity: float, cal: Calibration | None, *, align: int | None = None,
          granularity: str = "layer", block: int = 64, svd_cache: dict | None = None) -> PruneResult:
    """Prune ``model`` in place by family ``strategy`` at ``sparsity`` (its ``apply``: the
    ``prune`` hook, checked).  ``cal`` (from :func:`pis_tui.hf.calibration.calibrate`) is
    needed by the families whose ``needs_calibration`` is set."""
    return registry.get(strategy).apply(model, sparsity, cal, align=align, granularity=granularity,
                                        block=block, svd_cache=svd_cache)


def apply_combo(model, combo: str, parts, cal: Calibration | None, *, recalibrate=None,
                align: int | None = None, granularity: str = "layer", block: int = 64,
                svd_cache: dict | None = None) -> PruneResult:
    """Prune ``model`` in place by a combination, ``parts`` = ((family, sparsity), ...): each
    part in turn (:meth:`pis_tui.families.combinations.Combo.prune` says in which order and
    how each is calibrated)."""
    c = registry.get(combo)
    if not c.is_combo:
        raise UserError(f"{combo} is not a combination")
    if not c.quality_supported:
        raise UserError(c.quality_unsupported_reason)
    return c.prune(model, 0.0, cal, parts=parts, recalibrate=recalibrate, align=align,
                   granularity=granularity, block=block, svd_cache=svd_cache)
