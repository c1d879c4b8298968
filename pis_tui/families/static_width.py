"""static_width (static NK): whole GQA groups of heads and MLP channels removed.

Under tensor parallelism over ``tp`` ranks the kept widths must split over them: the KV groups
kept are a multiple of tp (query heads a multiple of tp × the group size) or, fewer than tp, a
divisor of tp (each KV head replicated, as vLLM does); the nearest such count to the asked one
is kept (a tie keeps more), and the MLP channels are rounded to a multiple of tp × ``--align``
(each rank's share a multiple of the alignment).
"""

from __future__ import annotations

from dataclasses import replace

from ..model.layer import decoder_params, gemm_params, round_half_up, round_to
from ..model.tensor_parallel import nearest_valid, valid_kv_groups
from .base import Family, dims_align


def asked_kv_groups(spec, s: float) -> int:
    return max(1, spec.num_kv_heads - round_half_up(s * spec.num_kv_heads))


def kept_kv_groups(spec, s: float, tp: int = 1, k_align: int = 1) -> int:
    """The KV groups kept: the asked count, the nearest that splits over ``tp`` ranks, and, at a
    quantized precision, one whose widths its kernels take (``k_align``: o's K, the query
    heads' channels, a multiple of it; k/v's N of 16) — all of them where none below does."""
    g = asked_kv_groups(spec, s)
    valid = (valid_kv_groups(spec.num_kv_heads, spec.gqa_group, tp) if tp > 1
             else range(1, spec.num_kv_heads + 1))
    if k_align > 1:
        hd = spec.head_dim
        valid = [v for v in valid if (v * spec.gqa_group * hd // tp) % k_align == 0
                 and (v * hd) % 16 == 0] or [spec.num_kv_heads]
    return nearest_valid(g, list(valid))


def kept_intermediate(spec, s: float, align: int, tp: int = 1) -> int:
    return min(spec.intermediate_size, round_to((1 - s) * spec.intermediate_size, align * tp))


class StaticWidth(Family):
    name = "static_width"
    label = "static width"
    axis = "static NK"
    description = ("whole GQA groups of heads (q/k/v lose N, o loses K) and MLP channels rounded to "
                   "`--align` (gate/up lose N, down loses K)")
    mark, color, short = "W", (90, 200, 90), "width"
    needs_calibration = True
    validate_standard = True

    def shape(self, ctx, shape):
        spec, s, align, tp = ctx.spec, ctx.sparsity, ctx.width_align(ctx.strategy.align), ctx.tp
        g = kept_kv_groups(spec, s, tp, ctx.k_align)
        inter = kept_intermediate(spec, s, align, tp)
        shape.widths = replace(shape.widths, q_heads=g * spec.gqa_group, kv_heads=g, inter=inter)
        at = f", a multiple of {tp} × {align} at TP {tp}" if tp > 1 else ""
        shape.dims += [("query heads", f"{spec.num_heads} → {shape.widths.q_heads}"),
                      ("KV heads", f"{spec.num_kv_heads} → {g}"),
                      ("MLP channels", f"{spec.intermediate_size} → {inter} (align {align}{at})"),
                      ("N of q/k/v/gate/up, K of o/down", "shrunk")]
        asked = asked_kv_groups(spec, s)
        if tp > 1 and g != asked:
            valid = valid_kv_groups(spec.num_kv_heads, spec.gqa_group, tp)
            shape.notes.append(
                f"TP {tp}: {spec.num_kv_heads} KV groups split over {tp} ranks only as "
                f"{', '.join(map(str, sorted(valid, reverse=True)))} (a multiple of {tp}, or a "
                f"divisor with the KV heads replicated): {s:.1%} asks {asked}, kept {g}"
                + (" (heads not cut)" if g == spec.num_kv_heads else ""))
        elif g != asked and ctx.k_align > 1:
            shape.notes.append(
                f"{ctx.scenario.precision}: {asked} of {spec.num_kv_heads} KV groups leave the "
                f"attention widths off the kernel's multiple of {ctx.k_align}: kept {g}"
                + (" (heads not cut)" if g == spec.num_kv_heads else ""))
        elif g == spec.num_kv_heads and s > 0:
            shape.notes.append(f"{spec.num_kv_heads} KV groups: heads cannot be cut by {s:.1%}, kept all")

    def achieved_sparsity(self, ctx, shape, ops):
        return 1.0 - gemm_params(ops) / decoder_params(ctx.spec)

    def prune(self, model, sparsity, cal, *, align=None, **kw):
        from ..hf.structured import prune_static_width

        return prune_static_width(model, sparsity, cal, align)

    def validate_dims(self, spec, strategy, dims):
        tp = dims.get("tp", 1)
        g = kept_kv_groups(spec, strategy.effective_sparsity, tp, dims.get("k_align", 1))
        dims.update(num_heads=g * spec.gqa_group, num_kv_heads=g,
                    intermediate_size=kept_intermediate(spec, strategy.effective_sparsity,
                                                        dims_align(strategy.align, dims), tp))

    def validate_transform(self, model, built, seed):
        """OLMoE normalises q and k over all the heads at once, its norms sized from the
        hidden size: with fewer heads they are sized to the kept heads' q and k."""
        for a in model.modules():
            for norm, proj in (("q_norm", "q_proj"), ("k_norm", "k_proj")):
                n, lin = getattr(a, norm, None), getattr(a, proj, None)
                w = getattr(n, "weight", None)
                if w is None or not hasattr(lin, "out_features"):
                    continue
                if w.shape[0] not in (lin.out_features, getattr(a, "head_dim", -1)):
                    setattr(a, norm, type(n)(lin.out_features, eps=n.variance_epsilon))


FAMILY = StaticWidth()
