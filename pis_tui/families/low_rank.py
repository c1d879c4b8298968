"""low_rank (static K, low-rank): W[N,K] → two GEMMs through rank r."""

from __future__ import annotations

from ..model.layer import decoder_params, factor_rank, gemm_params
from ..model.ops import Gemm
from .base import Family, dims_align


def saves(n: int, k: int, r: int) -> bool:
    """A factorisation through rank r holds fewer weights than W[N,K]."""
    return r * (n + k) < n * k


class LowRank(Family):
    name = "low_rank"
    label = "low rank"
    axis = "static K (low-rank)"
    description = "W[N,K] → two GEMMs through r = (1−s)·N·K/(N+K), rounded to a multiple of 8"
    mark, color, short = "K", (100, 150, 255), "low-rank"
    replaces_linear = True
    validate_standard = True

    def shape(self, ctx, shape):
        dt, s = ctx.dtype, ctx.sparsity
        a = ctx.width_align(8)

        def lin(name, m, n, k, count):
            r = factor_rank(n, k, s, a)
            if not saves(n, k, r):  # no saving: keep the dense weight
                return [Gemm(name, m, n, k, count, dt)]
            return [Gemm(name + ".A", m, r, k, count, dt), Gemm(name + ".B", m, n, r, count, dt)]
        shape.linear = lin
        w = shape.widths  # the widths an earlier part of a combination may have cut
        tp = ctx.tp  # under tensor parallelism each rank's shard is factorised on its own
        r_q = factor_rank(w.q_heads * w.head_dim // tp, w.hidden, s, a)
        per = f" per shard (TP {tp})" if tp > 1 else ""
        shape.dims.append(("W[N,K] → B[N,r]·A[r,K]", f"e.g. q_proj r={r_q}; "
                          f"gate r={factor_rank(w.inter // tp, w.hidden, s, a)}{per}"))
        if a != 8:
            shape.dims.append(("rank alignment", f"a multiple of {a} (the {ctx.scenario.precision} "
                                                 "group: the second factor's K is r)"))

    def achieved_sparsity(self, ctx, shape, ops):
        return 1.0 - gemm_params(ops) / decoder_params(ctx.spec)

    def prune(self, model, sparsity, cal, *, svd_cache=None, **kw):
        from ..hf.structured import prune_low_rank

        return prune_low_rank(model, sparsity, svd_cache)

    def validate_dims(self, spec, strategy, dims):
        from ..hf.config import proj_shapes

        s = strategy.effective_sparsity
        a = dims_align(8, dims)  # a quantized model's ranks: multiples of its int4 group
        ranks = {}
        for name, (n, k) in proj_shapes(dims).items():
            r = factor_rank(n, k, s, a)
            if saves(n, k, r):
                ranks[name] = r
        dims["ranks"] = ranks

    def validate_transform(self, model, built, seed):
        from ..hf.layout import PROJ_NAMES
        from ..hf.modules import low_rank_linear, mlp_name

        ranks = built.dims.ranks
        for layer in model.model.layers:
            # an MoE block holds no gate/up/down linear (its experts are 3-D weights): only a
            # dense layer's MLP is factorised, as the prediction prices it
            for parent in (layer.self_attn, getattr(layer, mlp_name(layer))):
                for name in PROJ_NAMES:
                    lin = getattr(parent, name, None)
                    if lin is not None and name in ranks:
                        setattr(parent, name, low_rank_linear(lin, ranks[name]))


FAMILY = LowRank()
