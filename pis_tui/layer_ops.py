"""The op list of one decoder layer, and the pieces of a forward pass around it.

Pure functions over widths and token counts, shared by the generic phase builder
(:func:`pis_tui.taxonomy.build_phase_ops`) and the family modules (``pis_tui/families``),
which change the widths, the layer counts or the linears and call these to emit ops.
A decoder layer of a Llama-like model is, per call (M tokens, hidden H)::

    rmsnorm → q,k,v GEMMs (+bias, +qk-norm) → rotary → kv_write (decode) → attention → o GEMM
    → residual add → rmsnorm → gate,up GEMMs → SiLU·mul → down GEMM → residual add

GEMM convention: Y[M,N] = X[M,K]·Wᵀ, M = tokens (prefill B·S, decode B).  No torch, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from .model_spec import ModelSpec
from .ops import Attention, Elementwise, Gemm, Op, Overhead

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

    @classmethod
    def of(cls, spec: ModelSpec) -> "LayerWidths":
        return cls(spec.hidden_size, spec.num_heads, spec.num_kv_heads, spec.head_dim,
                   spec.intermediate_size)


def dense_linear(dtype: str) -> Linear:
    def lin(name: str, m: int, n: int, k: int, count: float) -> list[Op]:
        return [Gemm(name, m, n, k, count, dtype)]
    return lin


def attn_block(spec: ModelSpec, w: LayerWidths, phase: str, batch: int, q_len: int, kv_len: int,
               count: float, dtype: str, lin: Linear, block_density: float = 1.0) -> list[Op]:
    """Ops of the attention sublayer for `batch` sequences of `q_len` new tokens."""
    m = batch * q_len
    qd, kvd = w.q_heads * w.head_dim, w.kv_heads * w.head_dim
    ops: list[Op] = [Elementwise("input_norm", "rmsnorm", m, w.hidden, count, dtype)]
    ops += lin("q_proj", m, qd, w.hidden, count)
    ops += lin("k_proj", m, kvd, w.hidden, count)
    ops += lin("v_proj", m, kvd, w.hidden, count)
    if spec.attention_bias:
        ops.append(Elementwise("qkv_bias", "bias_add", m, qd + 2 * kvd, count, dtype))
    if spec.qk_norm:
        ops.append(Elementwise("qk_norm", "rmsnorm", m * (w.q_heads + w.kv_heads), w.head_dim,
                               count, dtype))
    ops.append(Elementwise("rotary", "rotary", m, qd + kvd, count, dtype, extra=w.head_dim))
    if phase == "decode":
        ops.append(Elementwise("kv_write", "kv_write", m, 2 * kvd, count, dtype))
    ops.append(Attention("attention", batch, w.q_heads, w.kv_heads, q_len, kv_len, w.head_dim,
                         causal=True, block_density=block_density, block_size=ATTN_BLOCK,
                         count=count, dtype=dtype))
    ops += lin("o_proj", m, w.hidden, qd, count)
    ops.append(Elementwise("attn_residual", "residual_add", m, w.hidden, count, dtype))
    return ops


def mlp_block(w: LayerWidths, m: int, count: float, dtype: str, lin: Linear) -> list[Op]:
    ops: list[Op] = [Elementwise("post_attn_norm", "rmsnorm", m, w.hidden, count, dtype)]
    ops += lin("gate_proj", m, w.inter, w.hidden, count)
    ops += lin("up_proj", m, w.inter, w.hidden, count)
    ops.append(Elementwise("silu_mul", "silu_mul", m, w.inter, count, dtype))
    ops += lin("down_proj", m, w.hidden, w.inter, count)
    ops.append(Elementwise("mlp_residual", "residual_add", m, w.hidden, count, dtype))
    return ops


def decoder_params(spec: ModelSpec) -> float:
    return float(spec.num_layers * spec.layer_params())


#: GEMMs that hold no decoder weight (the head, the routers, the block scores)
NON_DECODER_GEMMS = ("lm_head", "router", "block_score")


def gemm_params(ops) -> float:
    """Weight parameters behind the decoder GEMMs of an op list (per-call weights × count)."""
    return sum(o.n * o.k * o.density * o.count for o in ops
               if isinstance(o, Gemm) and o.name not in NON_DECODER_GEMMS)


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
