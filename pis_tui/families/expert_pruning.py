"""expert_pruning (static E): routed experts removed from every MoE layer, E → E′, uniform per layer.

The router's rows and the experts' weights are sliced together (REAP, NAEE, frequency or
EAN-style criteria choose which; merging methods — MC-SMoE, HC-SMoE, Sub-MoE — produce the
same shapes at equal E′ and differ only in quality, so they are this family's quality methods).
Every token still takes k experts: its FLOPs do not change.  What changes is which experts a
step can touch: at decode batch 1 still k, so no gain; once a step touches every expert (a few
dozen tokens) up to E/E′ fewer expert bytes; in compute-bound prefill little again.  The
routing over the kept experts is the router's over them alone (:func:`pis_tui.model.moe.
pruned_routing`: each layer keeps the experts its routing uses most, the others' tokens spread
over them in proportion).  Memory: E′/E of the experts' weights.
"""

from __future__ import annotations

from dataclasses import replace

from ..errors import UserError
from ..model.layer import decoder_params, gemm_params, round_half_up
from .base import Family


def kept_experts(spec, s: float) -> int:
    """E′ = E − round(s·E); fewer than the experts each token takes is an error (one line)."""
    e = spec.moe
    kept = e.experts - round_half_up(s * e.experts)
    if kept < e.top_k:
        raise UserError(f"expert_pruning at {s:.1%} keeps {kept} of {e.experts} experts, fewer than "
                        f"the {e.top_k} each token is routed to: at most "
                        f"{(e.experts - e.top_k) / e.experts:.1%} for {spec.name}")
    return kept


class ExpertPruning(Family):
    name = "expert_pruning"
    label = "expert pruning"
    axis = "static E"
    description = ("routed experts removed from every MoE layer (E → E′; router rows and expert "
                   "weights together): the same FLOPs per token, fewer experts for a step to touch")
    mark, color, short = "E", (255, 120, 180), "experts"
    moe_only = True
    quality_unsupported = ("real expert pruning (a criterion over calibration routing, the router "
                           "sliced with the experts) is not built yet: quality and validate refuse it")

    def shape(self, ctx, shape):
        spec = ctx.spec
        kept = kept_experts(spec, ctx.sparsity)
        shape.widths = replace(shape.widths, experts=kept)
        e = spec.moe
        shape.dims += [("routed experts per MoE layer", f"{e.experts} → {kept}"),
                       ("experts per token", f"{e.top_k} (unchanged)"),
                       ("router N", f"{e.experts} → {kept}")]
        if ctx.phase == "decode" and ctx.batch * e.top_k <= kept:
            shape.notes.append(f"decode batch {ctx.batch}: a step touches at most "
                               f"{ctx.batch * e.top_k} experts, dense or pruned — expert pruning "
                               "saves memory here, not time")

    def achieved_sparsity(self, ctx, shape, ops):
        return 1.0 - gemm_params(ops) / decoder_params(ctx.spec)


FAMILY = ExpertPruning()
