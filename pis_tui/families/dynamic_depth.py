"""dynamic_depth (dynamic M): each sublayer runs on a routed share of the tokens.

Every attention and MLP sublayer runs on a routed share 1−s of the tokens, plus the router
GEMM (N=1), top-k, gather and scatter per sublayer (prefill: plus the gather of the kept
tokens' rotary rows; decode with batch > 1: plus the gather of the kept rows' KV caches per
layer).  In decode the routing is across the batch; at batch 1 a sublayer either runs or
not, so its cost is the expectation.
"""

from __future__ import annotations

from ..model.layer import attn_block, kept_tokens, mlp_block, round_half_up
from ..model.ops import Elementwise, Gemm, Op
from ..model.tensor_parallel import rank_heads
from .base import Family


def achieved(batch: int, q_len: int, s: float, phase: str) -> float:
    if phase == "decode" and batch == 1:
        return s
    n = batch * q_len if phase == "decode" else q_len
    return 1.0 - kept_tokens(n, s) / n


class DynamicDepth(Family):
    name = "dynamic_depth"
    label = "dynamic depth"
    axis = "dynamic M"
    description = ("every sublayer runs on a routed share 1−s of the tokens, plus router GEMM, top-k, "
                   "gather, scatter; decode routes across the batch (batch 1: expected cost)")
    mark, color, short = "R", (240, 160, 60), "dyn-depth"
    quality_oracle = True
    validate_standard = True

    def layer_ops(self, ctx, shape):
        spec, w, phase, s, dt = ctx.spec, shape.widths, ctx.phase, ctx.sparsity, ctx.dtype
        batch, q_len, kv_len, L = ctx.batch, ctx.q_len, ctx.kv_len, ctx.layers
        m = batch * q_len
        ops: list[Op] = []
        kept = 0
        if phase == "prefill":
            kept = kept_tokens(q_len, s)  # per sequence
            kb, kq, kkv = batch, kept, kept
            expect = 1.0
            shape.dims.append(("M of each sublayer", f"{m} → {batch * kept} (routed)"))
        elif batch == 1:
            kb, kq, kkv = 1, 1, kv_len
            expect = 1.0 - s
            shape.notes.append("decode batch 1: a sublayer runs or is skipped; cost is the expectation")
            shape.dims.append(("sublayers run per token", f"expected {1 - s:.0%}"))
        else:
            kb, kq, kkv = kept_tokens(batch, s), 1, kv_len
            expect = 1.0
            shape.dims.append(("M of each sublayer", f"{m} → {kb} (routed across the batch)"))
        mk = kb * kq
        count = L * expect
        # routing per sublayer (attention and MLP): router GEMM, top-k, gather, scatter (under
        # tensor parallelism every rank routes alike: the residual stream is replicated)
        for sub in ("attn", "mlp"):
            ops.append(Gemm(f"{sub}_router", m, 1, w.hidden, float(L), dt))
            ops.append(Elementwise(f"{sub}_topk", "topk", batch if phase == "prefill" else 1,
                                   q_len if phase == "prefill" else batch, float(L), dt,
                                   extra=kept if phase == "prefill" else max(kb, 1)))
            if not (phase == "decode" and batch == 1):
                ops.append(Elementwise(f"{sub}_gather", "gather", mk, w.hidden, float(L), dt))
                ops.append(Elementwise(f"{sub}_scatter", "scatter", mk, w.hidden, float(L), dt))
        kvd = rank_heads(w.q_heads, w.kv_heads, ctx.tp)[1] * w.head_dim  # the rank's KV cache
        if phase == "prefill":
            # the kept tokens' rotary cos/sin rows are gathered (positions follow the tokens)
            ops.append(Elementwise("attn_pos_gather", "gather", mk, 2 * w.head_dim, float(L), dt))
        elif batch > 1:
            # the kept rows' KV caches are gathered for attention (index_select over the batch)
            ops.append(Elementwise("attn_kv_gather", "gather", kb * kv_len, 2 * kvd, float(L), dt,
                                   extra=batch * kv_len))  # source: the whole batch's cache
        ops += attn_block(spec, w, phase, kb, kq, kkv, count, dt, shape.linear, tp=ctx.tp)
        ops += mlp_block(w, mk, count, dt, shape.linear, tp=ctx.tp, spec=spec,
                         routing=ctx.scenario.routing, phase=phase)
        # tokens that skip a sublayer still pass through the residual stream: nothing to compute
        return ops

    def overhead_counts(self, ctx, shape):
        L, s = ctx.layers, ctx.sparsity
        run = 1.0 - s if (ctx.phase == "decode" and ctx.batch == 1) else 1.0
        return 2.0 * L * run, 2.0 * L

    def achieved_sparsity(self, ctx, shape, ops):
        return achieved(ctx.batch, ctx.q_len, ctx.sparsity, ctx.phase)

    def prune(self, model, sparsity, cal, **kw):
        from ..hf.oracles import enable_dynamic_depth

        return enable_dynamic_depth(model, sparsity)

    def validate_transform(self, model, built, seed):
        import torch

        from ..hf.modules import routed_layer

        layers = model.model.layers
        s = built.strategy.effective_sparsity
        L = len(layers)
        g = torch.Generator().manual_seed(seed)
        run = max(0, min(L, round_half_up((1 - s) * L)))
        plan_attn = set(torch.randperm(L, generator=g, device="cpu")[:run].tolist())
        plan_mlp = set(torch.randperm(L, generator=g, device="cpu")[:run].tolist())
        for i in range(L):
            layers[i] = routed_layer(layers[i], built.dims.hidden_size, s, built.state,
                                     i in plan_attn, i in plan_mlp)


FAMILY = DynamicDepth()
