"""expert_slimming (static I): structured width inside every routed expert, I → I′ channels
(gate/up lose N, down loses K in each expert), rounded to ``--align`` like static width so the
grouped kernel keeps aligned rows.

Cuts the bytes of every expert a step touches and the FLOPs of every routed row, at every
batch.  Shared experts and dense layers are static width's, not this family's.
"""

from __future__ import annotations

from dataclasses import replace

from ..errors import UserError
from ..model.layer import decoder_params, gemm_params, round_to
from .base import Family


def kept_expert_inter(spec, s: float, align: int, tp: int = 1) -> int:
    """I′ = (1 − s)·I rounded to a multiple of ``align`` × tp; an alignment wider than the
    experts is an error (one line)."""
    inter = spec.moe.expert_inter
    if align * tp > inter:
        raise UserError(f"expert_slimming: --align {align}{f' × TP {tp}' if tp > 1 else ''} is wider "
                        f"than {spec.name}'s experts ({inter} channels): use a smaller --align")
    return min(inter, round_to((1 - s) * inter, align * tp))


class ExpertSlimming(Family):
    name = "expert_slimming"
    label = "expert slimming"
    axis = "static NK (experts)"
    description = ("channels removed inside every routed expert (I → I′, rounded to `--align`): "
                   "fewer bytes per expert touched and fewer FLOPs per routed row, at every batch")
    mark, color, short = "S", (200, 130, 255), "slim"
    moe_only = True
    quality_unsupported = ("real expert slimming (per-expert channel scores) is not built yet: "
                           "quality and validate refuse it")

    def shape(self, ctx, shape):
        spec = ctx.spec
        inter = kept_expert_inter(spec, ctx.sparsity, ctx.strategy.align, ctx.tp)
        shape.widths = replace(shape.widths, expert_inter=inter)
        shape.dims += [("channels per routed expert",
                        f"{spec.moe.expert_inter} → {inter} (align {ctx.strategy.align})"),
                       ("N of experts' gate/up, K of down", "shrunk")]

    def achieved_sparsity(self, ctx, shape, ops):
        return 1.0 - gemm_params(ops) / decoder_params(ctx.spec)


FAMILY = ExpertSlimming()
