"""static_width (static NK): whole GQA groups of heads and MLP channels removed."""

from __future__ import annotations

from dataclasses import replace

from ..layer_ops import decoder_params, gemm_params, round_half_up, round_to
from .base import Family


def kept_kv_groups(spec, s: float) -> int:
    return max(1, spec.num_kv_heads - round_half_up(s * spec.num_kv_heads))


def kept_intermediate(spec, s: float, align: int) -> int:
    return min(spec.intermediate_size, round_to((1 - s) * spec.intermediate_size, align))


class StaticWidth(Family):
    name = "static_width"
    label = "static width"
    axis = "static NK"
    description = ("whole GQA groups of heads (q/k/v lose N, o loses K) and MLP channels rounded to "
                   "`--align` (gate/up lose N, down loses K)")
    mark, color, short = "W", (90, 200, 90), "width"
    needs_calibration = True
    validate_standard = True

    def shape(self, ctx, plan):
        spec, s, align = ctx.spec, ctx.sparsity, ctx.strategy.align
        g = kept_kv_groups(spec, s)
        inter = kept_intermediate(spec, s, align)
        plan.widths = replace(plan.widths, q_heads=g * spec.gqa_group, kv_heads=g, inter=inter)
        plan.dims += [("query heads", f"{spec.num_heads} → {plan.widths.q_heads}"),
                      ("KV heads", f"{spec.num_kv_heads} → {g}"),
                      ("MLP channels", f"{spec.intermediate_size} → {inter} (align {align})"),
                      ("N of q/k/v/gate/up, K of o/down", "shrunk")]
        if g == spec.num_kv_heads and s > 0:
            plan.notes.append(f"{spec.num_kv_heads} KV groups: heads cannot be cut by {s:.1%}, kept all")

    def achieved_sparsity(self, ctx, plan, ops):
        return 1.0 - gemm_params(ops) / decoder_params(ctx.spec)

    def prune(self, model, sparsity, cal, *, align=None, **kw):
        from ..pruning import prune_static_width

        return prune_static_width(model, sparsity, cal, align)

    def validate_dims(self, spec, strategy, dims):
        g = kept_kv_groups(spec, strategy.effective_sparsity)
        dims.update(num_heads=g * spec.gqa_group, num_kv_heads=g,
                    intermediate_size=kept_intermediate(spec, strategy.effective_sparsity,
                                                        strategy.align))


FAMILY = StaticWidth()
