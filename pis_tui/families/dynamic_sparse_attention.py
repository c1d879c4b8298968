"""dynamic_sparse_attention (dynamic NK): block-sparse attention, GEMMs unchanged.

Keeps 1−s of the causal 64-token blocks of each query block (at least the diagonal one), plus
the block-selection cost of SeerAttention-like gating: q and k pooled into blocks, block
scores, top-k.
"""

from __future__ import annotations

import math

from ..model.layer import ATTN_BLOCK
from ..model.ops import Elementwise, Gemm
from ..model.tensor_parallel import rank_heads
from .base import Family


def causal_blocks(q_len: int, kv_len: int) -> int:
    nq = max(1, math.ceil(q_len / ATTN_BLOCK))
    nk = max(1, math.ceil(kv_len / ATTN_BLOCK))
    if q_len == 1:
        return nk
    off = nk - nq
    return sum(min(nk, off + i + 1) for i in range(nq))


def kept_block_density(q_len: int, kv_len: int, s: float) -> float:
    """Share of causal blocks computed when each query block keeps ceil((1−s)·visible) blocks
    (at least the diagonal one)."""
    nq = max(1, math.ceil(q_len / ATTN_BLOCK))
    nk = max(1, math.ceil(kv_len / ATTN_BLOCK))
    if q_len == 1:
        rows = [nk]
    else:
        off = nk - nq
        rows = [min(nk, off + i + 1) for i in range(nq)]
    kept = sum(max(1, math.ceil((1 - s) * r - 1e-9)) for r in rows)
    return kept / sum(rows)


class DynamicSparseAttention(Family):
    name = "dynamic_sparse_attention"
    label = "dynamic sparse attention"
    axis = "dynamic NK"
    description = "block-sparse attention keeping 1−s of the causal blocks, plus block selection; GEMMs unchanged"
    mark, color, short = "A", (170, 170, 170), "dyn-attn"
    quality_oracle = True

    def shape(self, ctx, shape):
        shape.block_density = kept_block_density(ctx.q_len, ctx.kv_len, ctx.sparsity)
        nblocks = causal_blocks(ctx.q_len, ctx.kv_len)
        shape.dims.append(("attention blocks", f"{nblocks} → {round(nblocks * shape.block_density)} "
                          f"(block {ATTN_BLOCK})"))

    def extra_ops(self, ctx, shape):
        """SeerAttention-like gating: pool q and k into blocks, score blocks, pick the top ones."""
        w, batch, q_len, kv_len, dt = shape.widths, ctx.batch, ctx.q_len, ctx.kv_len, ctx.dtype
        L = float(ctx.layers)
        nq = max(1, math.ceil(q_len / ATTN_BLOCK))
        nk = max(1, math.ceil(kv_len / ATTN_BLOCK))
        qh, kvh, _ = rank_heads(w.q_heads, w.kv_heads, ctx.tp)  # the rank's heads
        qd, kvd = qh * w.head_dim, kvh * w.head_dim
        rows = batch * qh * nq
        return [
            Elementwise("block_pool", "block_pool", batch * q_len, qd + (kvd if q_len > 1 else 0), L, dt),
            Gemm("block_score", rows, nk, w.head_dim, L, dt),
            Elementwise("block_topk", "topk", rows, nk, L, dt,
                        extra=max(1, math.ceil(nk * (1 - ctx.sparsity)))),
        ]

    def achieved_sparsity(self, ctx, shape, ops):
        return 1.0 - shape.block_density

    def prune(self, model, sparsity, cal, *, block=64, **kw):
        from ..hf.oracles import enable_block_sparse_attention

        return enable_block_sparse_attention(model, sparsity, block)

    def validate_finish(self, built, seed):
        from ..hf.attention import BLOCK_SPARSE_IMPL

        built.model.config._attn_implementation = BLOCK_SPARSE_IMPL
        for a in built.attention_modules():
            a.pis_keep = 1.0 - built.strategy.effective_sparsity
        built.notes.append("block-sparse attention: gather-based approximation (SDPA over the "
                           "kept 64-token blocks), not a fused kernel")


FAMILY = DynamicSparseAttention()
