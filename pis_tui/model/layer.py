"""The op list of one decoder layer, and the pieces of a forward pass around it.

Pure functions over widths and token counts, shared by the generic phase builder
(:func:`pis_tui.families.phase_ops.build_phase_ops`) and the family modules (``pis_tui/families``),
which change the widths, the layer counts or the linears and call these to emit ops.
Each layer's ops come from the model's architecture template (:mod:`pis_tui.model.architecture`,
traced from its own transformers class); a decoder layer of a Llama-like model is, per call
(M tokens, hidden H)::

    rmsnorm → q,k,v GEMMs (+bias, +qk-norm) → rotary → kv_write (decode) → attention → o GEMM
    → residual add → rmsnorm → gate,up GEMMs → SiLU·mul → down GEMM → residual add

GEMM convention: Y[M,N] = X[M,K]·Wᵀ, M = tokens (prefill B·S, decode B).  No torch, no I/O.

With tensor parallelism over ``tp`` ranks (:mod:`pis_tui.model.tensor_parallel`) the ops are one
rank's: q/k/v and gate/up keep N/tp of their outputs (column-parallel), o and down K/tp of
their inputs (row-parallel) and are each followed by an all-reduce of M × hidden; attention
runs over the rank's heads.  ``tp`` = 1 emits exactly the single-GPU op list.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Optional

from .spec import ModelSpec
from .ops import ACTIVATIONS, Attention, Collective, Elementwise, Gemm, GroupedGemm, Op, Overhead
from .tensor_parallel import kv_shards, rank_heads

ATTN_BLOCK = 64  # block size of block-sparse attention (the attention op's block_size)

#: a linear layer as ops: (name, M, N, K, count) → the GEMMs that compute it
Linear = Callable[[str, int, int, int, float], list]


def round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def round_to(x: float, align: int, lo: int | None = None) -> int:
    """x rounded (half up) to a multiple of ``align``, at least ``lo`` (default one ``align``)."""
    v = round_half_up(x / align) * align
    return max(lo if lo is not None else align, v)


@dataclass(frozen=True)
class LayerWidths:
    """Widths of one decoder layer (after static pruning)."""

    hidden: int
    q_heads: int
    kv_heads: int
    head_dim: int
    inter: int
    #: an MoE layer's routed experts after expert-level pruning (0: as the config says): the
    #: experts each layer keeps, the experts per token, each expert's width, and a per-token
    #: distribution of k ((k, probability), …; empty: every token takes ``top_k``)
    experts: int = 0
    top_k: int = 0
    expert_inter: int = 0
    k_dist: tuple = ()

    @classmethod
    def of(cls, spec: ModelSpec) -> "LayerWidths":
        return cls(spec.hidden_size, spec.num_heads, spec.num_kv_heads, spec.head_dim,
                   spec.intermediate_size)


def dense_linear(dtype: str) -> Linear:
    def lin(name: str, m: int, n: int, k: int, count: float) -> list[Op]:
        return [Gemm(name, m, n, k, count, dtype)]
    return lin


def sharded(lin: Linear, tp: int, shards: int) -> Linear:
    """A linear whose weight is split over the ranks: its GEMMs (one rank's shard) carry how
    many distinct shards the ranks hold (``Gemm.shards``), so the model's parameters count
    each once.  ``tp`` = 1: ``lin`` itself."""
    if tp == 1:
        return lin

    def split(name: str, m: int, n: int, k: int, count: float) -> list:
        return [replace(g, shards=shards) if isinstance(g, Gemm) else g
                for g in lin(name, m, n, k, count)]
    return split


def all_reduce(name: str, m: int, width: int, count: float, dtype: str, tp: int) -> list[Op]:
    """The all-reduce after a row-parallel linear (none without tensor parallelism)."""
    return [Collective(name, "all_reduce", m * width, tp, count, dtype)] if tp > 1 else []


def attn_block(spec: ModelSpec, w: LayerWidths, phase: str, batch: int, q_len: int, kv_len: int,
               count: float, dtype: str, lin: Linear, block_density: float = 1.0,
               tp: int = 1) -> list[Op]:
    """Ops of the attention sublayer for `batch` sequences of `q_len` new tokens, as the model's
    architecture template lists them (one rank's at ``tp`` > 1: its query and KV heads, then
    the all-reduce of the output projection's result)."""
    m = batch * q_len
    qh, kvh, _ = rank_heads(w.q_heads, w.kv_heads, tp)
    qd, kvd = qh * w.head_dim, kvh * w.head_dim
    col, kv_col = sharded(lin, tp, tp), sharded(lin, tp, kv_shards(w.kv_heads, tp))
    arch = spec.architecture or _llama()
    entries = _ordered(arch.attention)
    last_qkv = max(i for i, e in enumerate(entries) if e.role in ("q", "k", "v", "qkv"))
    ops: list[Op] = []
    for i, e in enumerate(entries):
        if e.op == "norm":
            ops.append(Elementwise(e.name, e.kind, m, w.hidden, count, dtype))
        elif e.op == "linear":
            if e.role == "q":
                ops += col(e.name, m, qd, w.hidden, count)
            elif e.role in ("k", "v"):
                ops += kv_col(e.name, m, kvd, w.hidden, count)
            elif e.role == "qkv":
                ops += col(e.name, m, qd + 2 * kvd, w.hidden, count)
            elif e.role == "o":
                ops += col(e.name, m, w.hidden, qd, count)
                ops += all_reduce("attn_all_reduce", m, w.hidden, count, dtype, tp)
            if i == last_qkv and spec.attention_bias:
                ops.append(Elementwise("qkv_bias", "bias_add", m, qd + 2 * kvd, count, dtype))
        elif e.op == "qk_norm":
            ops.append(Elementwise("qk_norm", e.kind or "rmsnorm", m * (qh + kvh), w.head_dim,
                                   count, dtype))
        elif e.op == "rotary":
            rot = spec.rotary_dim or w.head_dim
            ops.append(Elementwise("rotary", "rotary", m, (qh + kvh) * rot, count, dtype, extra=rot))
        elif e.op == "kv_write":
            if phase == "decode":
                ops.append(Elementwise("kv_write", "kv_write", m, 2 * kvd, count, dtype))
        elif e.op == "attention":
            ops += _attention(spec, e, batch, qh, kvh, q_len, kv_len, w.head_dim, block_density,
                              count, dtype)
        elif e.op == "residual":
            ops.append(Elementwise(e.name, "residual_add", m, w.hidden, count, dtype))
    return ops


def _attention(spec: ModelSpec, e, batch: int, qh: int, kvh: int, q_len: int, kv_len: int,
               head_dim: int, block_density: float, count: float, dtype: str) -> list[Op]:
    """The attention op, split into sliding-window and global layers where the model has both
    (each count its share of the layers: static depth keeps the model's mix)."""
    a = Attention("attention", batch, qh, kvh, q_len, kv_len, head_dim, causal=True,
                  block_density=block_density, block_size=ATTN_BLOCK, count=count, dtype=dtype,
                  softcap=e.softcap)
    win, n = spec.sliding_window, spec.sliding_layers
    if not win or not n or win >= kv_len:
        return [a]
    share = n / spec.num_layers
    if share >= 1.0:
        return [replace(a, window=win)]
    return [replace(a, name="attention_sliding", window=win, count=count * share),
            replace(a, count=count * (1.0 - share))]


def _ordered(entries: tuple) -> list:
    """A template's ops in the order the op list shows them: a merged op (q and k norms as one
    ``qk_norm``, an activation whose product needs the up projection) sits at its last kernel,
    after the linears it reads."""
    out = [e for e in entries if e.op not in ("qk_norm", "act")]
    for e in entries:
        if e.op == "qk_norm":
            at = max(i for i, x in enumerate(out) if x.role in ("q", "k", "v", "qkv")) + 1
            out.insert(at, e)
        elif e.op == "act":
            at = max(i for i, x in enumerate(out) if x.role in ("gate", "up", "gate_up", "in")) + 1
            out.insert(at, e)
    return out


def mlp_block(w: LayerWidths, m: int, count: float, dtype: str, lin: Linear,
              tp: int = 1, spec: ModelSpec | None = None, routing: str = "balanced",
              phase: Optional[str] = None) -> list[Op]:
    """Ops of the MLP sublayer as the architecture template lists them (one rank's at ``tp`` >
    1: its channels, then the all-reduce of the output projection's result)."""
    inter = w.inter // tp
    col = sharded(lin, tp, tp)
    arch = (spec.architecture if spec is not None else None) or _llama()
    ops: list[Op] = []
    if spec is not None and spec.moe is not None and arch.moe:
        return _moe_mlp(spec, arch, w, m, count, dtype, lin, routing, tp, phase)
    for e in _ordered(arch.mlp):
        if e.op == "norm":
            ops.append(Elementwise(e.name, e.kind, m, w.hidden, count, dtype))
        elif e.op == "linear":
            if e.role in ("gate", "up", "in"):
                ops += col(e.name, m, inter, w.hidden, count)
            elif e.role == "gate_up":
                ops += col(e.name, m, 2 * inter, w.hidden, count)
            elif e.role == "down":
                ops += col(e.name, m, w.hidden, inter, count)
                ops += all_reduce("mlp_all_reduce", m, w.hidden, count, dtype, tp)
        elif e.op == "act":
            code = ACTIVATIONS.index(e.activation) if e.kind != "silu_mul" else 0
            ops.append(Elementwise(e.name, e.kind, m, inter, count, dtype, extra=code))
        elif e.op == "residual":
            ops.append(Elementwise(e.name, "residual_add", m, w.hidden, count, dtype))
    return ops


#: a fused-MoE kernel's rows per tile (vLLM's BLOCK_SIZE_M: 16 while experts get few rows, 64
#: beyond; vllm/model_executor/layers/fused_moe/fused_moe.py get_default_config)
MOE_TILES = (16, 64)


def _moe_mlp(spec: ModelSpec, arch, w: LayerWidths, m: int, count: float, dtype: str,
             lin: Linear, routing_name: str, tp: int = 1, phase: Optional[str] = None) -> list[Op]:
    """The MLP blocks of an MoE model: on its MoE layers the router GEMM [M, H]×[H, E], the
    top-k, the dispatch of the M·k routed rows to their experts, the experts' grouped GEMMs
    (gate+up [M_e, H]×[H, 2I], down [M_e, I]×[I, H]) over the distinct experts the step touches
    (:mod:`pis_tui.model.moe`, under the scenario's routing), their SiLU·mul, the weighted
    combine back into the M rows, and the shared experts as a dense MLP; on its dense layers
    (DeepSeek's first ones, Qwen-MoE's mlp_only_layers) a gated SiLU MLP.  Static width keeps
    its share of the dense and shared experts' channels; the routed experts' width is theirs.

    With tensor parallelism (``tp`` > 1) every rank holds every expert's slice of I (the
    serving engines' TP for MoE): the grouped GEMMs run N = 2I/tp and K = I/tp over the same
    touched experts, the router is replicated, the shared experts and dense MLPs are column-
    then row-parallel, and the block's output is all-reduced once."""
    from .moe import mean_step, measured_profile, pruned_routing, routing

    e = spec.moe
    E = w.experts or e.experts
    k = w.top_k or e.top_k
    inter = w.expert_inter or e.expert_inter
    h = w.hidden
    moe_share = e.moe_layers / max(spec.num_layers, 1)
    ops: list[Op] = []
    norms = [x for x in arch.mlp if x.op == "norm"]
    residuals = [x for x in arch.mlp if x.op == "residual"]
    for x in norms:
        ops.append(Elementwise(x.name, x.kind, m, h, count, dtype))
    c = count * moe_share
    if c > 0:
        # a histogram's layers each route their own way: the mean layer (moe.mean_step)
        r = routing(routing_name, e.experts, moe_layers=e.moe_layers, phase=phase)
        r = pruned_routing(r, E)  # expert pruning: the kept experts' shares (moe.pruned_routing)
        kd = tuple(w.k_dist)
        plain = mean_step(m, k, r, k_dist=kd)
        tile = MOE_TILES[0] if plain.rows_per_expert <= MOE_TILES[0] else MOE_TILES[1]
        st = mean_step(m, k, r, tile=tile, k_dist=kd)
        rows = st.routed_rows
        # what a measurement draws from: the routing's permutation-free profile (moe.measured_profile)
        prof_id, prof = measured_profile(r)
        routed = dict(tokens=int(m), routing=prof_id, shares=prof, k_dist=kd)
        ops.append(Gemm("moe_router", m, E, h, c, dtype))
        ops.append(Elementwise("moe_topk", "topk", m, E, c, dtype, extra=k))
        ops.append(Elementwise("moe_dispatch", "gather", int(round(rows)), h, c, dtype))
        ei = inter // tp
        ops.append(GroupedGemm("experts_gate_up", E, st.distinct, rows, st.padded_rows,
                               2 * ei, h, c, dtype, shards=tp, top_k=k, **routed))
        ops.append(Elementwise("experts_act", "silu_mul", int(round(rows)), ei, c, dtype))
        ops.append(GroupedGemm("experts_down", E, st.distinct, rows, st.padded_rows,
                               h, ei, c, dtype, shards=tp, top_k=k, **routed))
        ops.append(Elementwise("moe_combine", "scatter", int(round(rows)), h, c, dtype))
        col = sharded(lin, tp, tp)
        if e.shared_inter:
            si = max(1, round(e.shared_inter * w.inter / max(spec.intermediate_size, 1))) // tp
            ops += col("shared_gate_up", m, 2 * si, h, c)
            ops.append(Elementwise("shared_act", "silu_mul", m, si, c, dtype))
            ops += col("shared_down", m, h, si, c)
            if e.shared_gate:  # Qwen2-MoE: sigmoid(x·w) scales the shared experts' output
                ops.append(Gemm("shared_expert_gate", m, 1, h, c, dtype))
                ops.append(Elementwise("shared_gate_mul", "act_mul", m, h, c, dtype,
                                       extra=ACTIVATIONS.index("sigmoid")))
        ops += all_reduce("moe_all_reduce", m, h, c, dtype, tp)
    cd = count * (1.0 - moe_share)
    if cd > 0:  # the dense layers' MLP
        col = sharded(lin, tp, tp)
        di = w.inter // tp
        ops += col("gate_proj", m, di, h, cd)
        ops += col("up_proj", m, di, h, cd)
        ops.append(Elementwise("silu_mul", "silu_mul", m, di, cd, dtype))
        ops += col("down_proj", m, h, di, cd)
        ops += all_reduce("mlp_all_reduce", m, h, cd, dtype, tp)
    for x in residuals:
        ops.append(Elementwise(x.name, "residual_add", m, h, count, dtype))
    return ops


def _llama():
    from .architecture import llama_default

    return llama_default()


def decoder_params(spec: ModelSpec) -> float:
    return float(spec.num_layers * spec.layer_params())


#: GEMMs that hold no decoder weight (the head, the routers, the block scores)
NON_DECODER_GEMMS = ("lm_head", "router", "block_score")


def gemm_params(ops) -> float:
    """Weight parameters behind the decoder GEMMs of an op list (per-call weights × count; a
    rank's op list: × the distinct shards the ranks hold, so the whole model's)."""
    return sum(o.n * o.k * o.density * o.count * o.shards * getattr(o, "experts", 1) for o in ops
               if isinstance(o, (Gemm, GroupedGemm)) and o.name not in NON_DECODER_GEMMS)


def overhead_phase(phase: str, batch: int) -> str:
    """The code path whose host overhead an :class:`Overhead` op prices: prefill, decode of
    one sequence, or decode of a batch (routing across the batch runs other glue)."""
    return "decode_batched" if phase == "decode" and batch > 1 else phase


def overhead_ops(ops, phase: str, blocks: float, routed: float, dt: str) -> list[Op]:
    """Host overhead of an eager forward: once per forward, per attention/MLP block run, per
    nn.Linear call (every GEMM but the block-score einsum), per routed sublayer."""
    linears = sum(o.count for o in ops if isinstance(o, Gemm) and o.name != "block_score")
    out: list[Op] = [Overhead("forward_overhead", "forward", phase, 1.0, dt),
                     Overhead("block_overhead", "block", phase, float(blocks), dt),
                     Overhead("linear_overhead", "linear", phase, float(linears), dt)]
    if routed:
        out.append(Overhead("routing_overhead", "routing", phase, float(routed), dt))
    return out


def kept_tokens(n: int, s: float) -> int:
    return max(1, round_half_up((1 - s) * n))




def factor_rank(n: int, k: int, s: float, align: int = 8) -> int:
    """r = (1−s)·N·K/(N+K) rounded to a multiple of ``align`` (8; an int4 group's multiple
    when the factors are served in int4: the second factor's K is r), at least ``align``."""
    return max(align, round_half_up((1 - s) * n * k / (n + k) / align) * align)


