"""topk_reduction (static k): each token routed to k′ < k experts (a config edit:
``num_experts_per_tok``).

The routed rows fall to T·k′ (FLOPs ∝ k′: prefill gains up to k/k′) and, at small batch, so do
the experts a step touches (k′ at batch 1); once every expert is touched the bytes are the
same.  Each expert's inclusion probability is the law's at k′ (:func:`pis_tui.model.moe.
inclusion`).  No weight is removed: memory is unchanged.
"""

from __future__ import annotations

from dataclasses import replace

from ..errors import UserError
from ..model.layer import round_half_up
from .base import Family


def kept_top_k(spec, s: float) -> int:
    """k′ = k − round(s·k); below 1 is an error (one line)."""
    return _kept(spec.moe.top_k, s)


def _kept(k: int, s: float) -> int:
    kept = k - round_half_up(s * k)
    if kept < 1:
        raise UserError(f"topk_reduction at {s:.1%} leaves k′ = {kept} of {k} experts per token: "
                        "each token needs at least one")
    return kept


class TopKReduction(Family):
    name = "topk_reduction"
    label = "top-k reduction"
    axis = "static k (rows)"
    description = ("each token routed to k′ < k experts: T·k′ routed rows (FLOPs ∝ k′), fewer "
                   "experts touched while the batch is small")
    mark, color, short = "T", (255, 170, 90), "top-k"
    moe_only = True

    def shape(self, ctx, shape):
        spec = ctx.spec
        k = spec.moe.top_k
        kept = kept_top_k(spec, ctx.sparsity)
        shape.widths = replace(shape.widths, top_k=kept)
        shape.dims += [("experts per token", f"{k} → {kept}"),
                       ("routed rows", f"T·{k} → T·{kept}")]
        if kept == k and ctx.sparsity > 0:
            shape.notes.append(f"k = {k}: {ctx.sparsity:.1%} removes no expert per token (kept {k})")

    def achieved_sparsity(self, ctx, shape, ops):
        """The share of routed-expert FLOPs per token removed (k − k′)/k: no weight is removed."""
        k = ctx.spec.moe.top_k
        return (k - (shape.widths.top_k or k)) / k

    # ------------------------------------------------------------ real pruning

    def prune(self, model, sparsity, cal, **kw):
        """k′ on every router (and the config): no weight removed; the achieved share is the
        routed rows' (k − k′)/k, as the prediction counts it."""
        from ..hf.experts import set_top_k, shape_of
        from ..hf.result import PruneResult

        k = shape_of(model)["top_k"]
        kept = _kept(k, sparsity)
        set_top_k(model, kept)
        return PruneResult(self.name, sparsity, (k - kept) / k,
                           note=f"each token routed to {kept} of its router's top {k} experts "
                                "(the highest-scored)")

    # ------------------------------------------------------------ validate

    def validate_dims(self, spec, strategy, dims):
        kept_top_k(spec, strategy.effective_sparsity)  # k′ < 1: one line, before building

    def validate_finish(self, built, seed):
        from ..hf.experts import set_top_k

        kept = kept_top_k(built.spec, built.strategy.effective_sparsity)
        set_top_k(built.model, kept)
        built.notes.append(f"experts per token: {built.spec.moe.top_k} → {kept} (every router)")


FAMILY = TopKReduction()
