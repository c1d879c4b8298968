"""The GEMM-centric taxonomy: each pruning family as a transformation of a phase's op list.

Pure functions from (ModelSpec, Strategy, Scenario, phase) to a :class:`PhaseOps`; no torch,
no I/O.  A decoder layer of a Llama-like model is, per call (M tokens, hidden H)::

    rmsnorm → q,k,v GEMMs (+bias, +qk-norm) → rotary → kv_write (decode) → attention → o GEMM
    → residual add → rmsnorm → gate,up GEMMs → SiLU·mul → down GEMM → residual add

plus the embedding gather, the final norm and the lm_head (last token of each sequence), and
the eager framework overhead (:class:`~pis_tui.ops.Overhead`: per forward, per attention/MLP
block, per nn.Linear call, per routed sublayer), which the estimator prices at zero on
devices timed through CUDA graphs.
GEMM convention: Y[M,N] = X[M,K]·Wᵀ, M = tokens (prefill B·S, decode B).

Families and what they do to M, N and K:

* ``static_depth`` (static M): drop floor(s·L+0.5) whole layers; ``granularity="sublayer"``
  drops floor(s·2L+0.5) attention/MLP blocks (attention blocks first on odd counts: half each).
* ``dynamic_depth`` (dynamic M): each sublayer runs on a routed share 1−s of the tokens, plus
  the router GEMM (N=1), top-k, gather and scatter per sublayer (prefill: plus the gather of
  the kept tokens' rotary rows; decode with batch > 1: plus the gather of the kept rows' KV
  caches per layer).  In decode the routing is
  across the batch; at batch 1 a sublayer either runs or not, so its cost is the expectation.
* ``static_width`` (static NK): drop whole GQA groups (q,k,v lose N; o loses K) and MLP
  channels rounded to ``align`` (gate,up lose N; down loses K).
* ``static_width_hidden`` (cross-layer NK, SliceGPT-like): hidden H → H' (rounded to
  ``align``) in every GEMM that reads or writes it, embeddings and lm_head too, plus an
  H'×H' residual mapping per sublayer.
* ``semi_structured_24`` (static K): every decoder linear is a 2:4 sparse GEMM (s = 0.5).
* ``unstructured`` (static K mask): weights zeroed at share s; the same dense kernels run.
* ``low_rank`` (static K low-rank): W[N,K] → two GEMMs through r = (1−s)·N·K/(N+K) (×8).
* ``dynamic_sparse_attention`` (dynamic NK): block-sparse attention keeping 1−s of the causal
  blocks, plus the block-selection cost (pooling, block scores, top-k); GEMMs unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from .errors import UserError
from .model_spec import ModelSpec
from .ops import Attention, Elementwise, Gemm, Op, Overhead
from .scenario import Scenario, check_phase

FAMILIES = (
    "dense",
    "static_depth",
    "dynamic_depth",
    "static_width",
    "static_width_hidden",
    "semi_structured_24",
    "unstructured",
    "low_rank",
    "dynamic_sparse_attention",
)

#: the GEMM dimension each family acts on (the study's taxonomy)
FAMILY_AXIS = {
    "dense": "baseline",
    "static_depth": "static M",
    "dynamic_depth": "dynamic M",
    "static_width": "static NK",
    "static_width_hidden": "cross-layer NK",
    "semi_structured_24": "static K (2:4)",
    "unstructured": "static K (mask)",
    "low_rank": "static K (low-rank)",
    "dynamic_sparse_attention": "dynamic NK",
}

DEFAULT_STRATEGIES = tuple(f for f in FAMILIES if f != "dense")
DEFAULT_SPARSITIES = (0.125, 0.25, 0.375, 0.5)
MAX_SPARSITY = 0.9
ATTN_BLOCK = 64  # block size of block-sparse attention


@dataclass(frozen=True)
class Strategy:
    family: str
    sparsity: float = 0.0
    granularity: str = "layer"  # static_depth: layer | sublayer
    align: int = 128  # static_width / static_width_hidden channel rounding

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise UserError(f"unknown strategy {self.family!r}; choose from {', '.join(FAMILIES)}")
        if not (0.0 <= self.sparsity <= MAX_SPARSITY) or self.sparsity != self.sparsity:
            raise UserError(f"sparsity {self.sparsity} is outside [0, {MAX_SPARSITY}]")
        if self.granularity not in ("layer", "sublayer"):
            raise UserError(f"granularity must be layer or sublayer, got {self.granularity!r}")
        if not isinstance(self.align, int) or self.align < 1:
            raise UserError(f"align must be a positive integer, got {self.align!r}")

    @property
    def effective_sparsity(self) -> float:
        if self.family == "dense":
            return 0.0
        if self.family == "semi_structured_24":
            return 0.5
        return self.sparsity


@dataclass(frozen=True)
class PhaseOps:
    strategy: Strategy
    phase: str
    ops: tuple[Op, ...]
    achieved_sparsity: float
    notes: tuple[str, ...] = ()
    dims: tuple[tuple[str, str], ...] = ()  # what the family changed, for the drill-down


def parse_strategies(text: str | None) -> tuple[str, ...]:
    if not text:
        return DEFAULT_STRATEGIES
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    for n in names:
        if n not in FAMILIES:
            raise UserError(f"unknown strategy {n!r}; choose from {', '.join(FAMILIES)}")
    return names


# ------------------------------------------------------------------ rounding rules


def round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def layers_dropped(spec: ModelSpec, s: float) -> int:
    return min(spec.num_layers - 1, round_half_up(s * spec.num_layers))


def sublayers_dropped(spec: ModelSpec, s: float) -> tuple[int, int]:
    """(attention blocks, MLP blocks) dropped at sublayer granularity."""
    n = min(2 * spec.num_layers - 1, round_half_up(s * 2 * spec.num_layers))
    attn = min(spec.num_layers, (n + 1) // 2)
    return attn, n - attn


def kept_kv_groups(spec: ModelSpec, s: float) -> int:
    return max(1, spec.num_kv_heads - round_half_up(s * spec.num_kv_heads))


def round_to(x: float, align: int, lo: int | None = None) -> int:
    v = round_half_up(x / align) * align
    return max(lo if lo is not None else align, v)


def kept_intermediate(spec: ModelSpec, s: float, align: int) -> int:
    return min(spec.intermediate_size, round_to((1 - s) * spec.intermediate_size, align))


def kept_hidden(spec: ModelSpec, s: float, align: int) -> int:
    return min(spec.hidden_size, round_to((1 - s) * spec.hidden_size, align))


def low_rank(n: int, k: int, s: float) -> int:
    return max(8, round_half_up((1 - s) * n * k / (n + k) / 8) * 8)


# ------------------------------------------------------------------ the layer


@dataclass(frozen=True)
class _Layer:
    """Widths of one decoder layer after static pruning."""

    hidden: int
    q_heads: int
    kv_heads: int
    head_dim: int
    inter: int


def _attn_block(spec: ModelSpec, w: _Layer, phase: str, batch: int, q_len: int, kv_len: int,
                count: float, dtype: str, lin, block_density: float = 1.0) -> list[Op]:
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


def _mlp_block(w: _Layer, m: int, count: float, dtype: str, lin) -> list[Op]:
    ops: list[Op] = [Elementwise("post_attn_norm", "rmsnorm", m, w.hidden, count, dtype)]
    ops += lin("gate_proj", m, w.inter, w.hidden, count)
    ops += lin("up_proj", m, w.inter, w.hidden, count)
    ops.append(Elementwise("silu_mul", "silu_mul", m, w.inter, count, dtype))
    ops += lin("down_proj", m, w.hidden, w.inter, count)
    ops.append(Elementwise("mlp_residual", "residual_add", m, w.hidden, count, dtype))
    return ops


def _dense_linear(dtype: str):
    def lin(name: str, m: int, n: int, k: int, count: float) -> list[Op]:
        return [Gemm(name, m, n, k, count, dtype)]
    return lin


def _decoder_params(spec: ModelSpec) -> float:
    return float(spec.num_layers * spec.layer_params())


def _gemm_params(ops) -> float:
    """Weight parameters behind the decoder GEMMs of an op list (per-call weights × count)."""
    return sum(o.n * o.k * o.density * o.count for o in ops
               if isinstance(o, Gemm) and o.name not in ("lm_head", "router", "block_score"))


# ------------------------------------------------------------------ phase builder


def build_phase_ops(spec: ModelSpec, strategy: Strategy, scenario: Scenario, phase: str) -> PhaseOps:
    """The ops of one phase of `spec` pruned by `strategy` under `scenario`."""
    check_phase(phase)
    fam, s, dt = strategy.family, strategy.effective_sparsity, scenario.dtype
    L = spec.num_layers
    batch = scenario.batch(phase)
    q_len = scenario.prompt_len if phase == "prefill" else 1
    kv_len = scenario.prompt_len if phase == "prefill" else scenario.context_len
    m = batch * q_len
    w = _Layer(spec.hidden_size, spec.num_heads, spec.num_kv_heads, spec.head_dim,
               spec.intermediate_size)
    lin = _dense_linear(dt)
    ops: list[Op] = []
    notes: list[str] = []
    dims: list[tuple[str, str]] = []
    attn_layers = mlp_layers = float(L)
    achieved = 0.0
    hidden_io = spec.hidden_size
    block_density = 1.0

    if fam == "static_depth":
        if strategy.granularity == "layer":
            d = layers_dropped(spec, s)
            attn_layers = mlp_layers = float(L - d)
            dims.append(("layers", f"{L} → {L - d} (dropped {d})"))
        else:
            da, dm = sublayers_dropped(spec, s)
            attn_layers, mlp_layers = float(L - da), float(L - dm)
            dims.append(("attention blocks", f"{L} → {L - da}"))
            dims.append(("MLP blocks", f"{L} → {L - dm}"))
        attn_p = spec.hidden_size * (spec.q_dim + 2 * spec.kv_dim) + spec.q_dim * spec.hidden_size
        mlp_p = 3 * spec.hidden_size * spec.intermediate_size
        achieved = ((L - attn_layers) * attn_p + (L - mlp_layers) * mlp_p) / _decoder_params(spec)
        dims.append(("M of the dropped blocks' GEMMs", f"{m} → 0"))
    elif fam == "static_width":
        g = kept_kv_groups(spec, s)
        inter = kept_intermediate(spec, s, strategy.align)
        w = replace(w, q_heads=g * spec.gqa_group, kv_heads=g, inter=inter)
        dims += [("query heads", f"{spec.num_heads} → {w.q_heads}"),
                 ("KV heads", f"{spec.num_kv_heads} → {g}"),
                 ("MLP channels", f"{spec.intermediate_size} → {inter} (align {strategy.align})"),
                 ("N of q/k/v/gate/up, K of o/down", "shrunk")]
        if g == spec.num_kv_heads and s > 0:
            notes.append(f"{spec.num_kv_heads} KV groups: heads cannot be cut by {s:.1%}, kept all")
    elif fam == "static_width_hidden":
        h2 = kept_hidden(spec, s, strategy.align)
        w = replace(w, hidden=h2)
        hidden_io = h2
        achieved = 1.0 - h2 / spec.hidden_size
        dims += [("hidden size", f"{spec.hidden_size} → {h2} (align {strategy.align})"),
                 ("K of q/k/v/gate/up, N of o/down, embeddings, lm_head", "shrunk"),
                 ("residual mapping", f"+2 GEMMs {h2}×{h2} per layer")]
    elif fam in ("semi_structured_24", "unstructured"):
        kind = "sparse_24" if fam == "semi_structured_24" else "unstructured"
        dens = 1.0 - s

        def lin(name, m_, n, k, count, _k=kind, _d=dens):  # noqa: E731 - closure per family
            return [Gemm(name, m_, n, k, count, dt, kind=_k, density=_d)]
        dims.append(("K of every decoder GEMM",
                     "2 of every 4 weights kept (2:4 sparse kernel)" if kind == "sparse_24"
                     else f"{s:.1%} of weights zeroed, dense kernel"))
        achieved = s
    elif fam == "low_rank":
        def lin(name, m_, n, k, count):  # noqa: E731
            r = low_rank(n, k, s)
            if r * (n + k) >= n * k:  # no saving: keep the dense weight
                return [Gemm(name, m_, n, k, count, dt)]
            return [Gemm(name + ".A", m_, r, k, count, dt), Gemm(name + ".B", m_, n, r, count, dt)]
        r_q = low_rank(spec.q_dim, spec.hidden_size, s)
        dims.append(("W[N,K] → B[N,r]·A[r,K]", f"e.g. q_proj r={r_q}; "
                     f"gate r={low_rank(spec.intermediate_size, spec.hidden_size, s)}"))
    elif fam == "dynamic_sparse_attention":
        block_density = _kept_block_density(q_len, kv_len, s)
        nblocks = _causal_blocks(q_len, kv_len)
        achieved = 1.0 - block_density
        dims.append(("attention blocks", f"{nblocks} → {round(nblocks * block_density)} "
                     f"(block {ATTN_BLOCK})"))

    # ---- embedding
    ops.append(Elementwise("embedding", "embedding", m, hidden_io, 1, dt, extra=spec.vocab_size))

    if fam == "dynamic_depth":
        ops += _dynamic_depth_layers(spec, w, phase, batch, q_len, kv_len, s, dt, lin, dims, notes)
        achieved = _dynamic_achieved(batch, q_len, s, phase)
    else:
        if attn_layers > 0:
            ops += _attn_block(spec, w, phase, batch, q_len, kv_len, attn_layers, dt, lin,
                               block_density)
        if mlp_layers > 0:
            ops += _mlp_block(w, m, mlp_layers, dt, lin)
        if fam == "static_width_hidden":
            ops.append(Gemm("residual_map", m, w.hidden, w.hidden, 2.0 * L, dt))
        if fam == "dynamic_sparse_attention":
            ops += _block_selection(w, batch, q_len, kv_len, L, s, dt)

    # ---- head
    ops.append(Elementwise("final_norm", "rmsnorm", m, hidden_io, 1, dt))
    ops.append(Gemm("lm_head", batch, spec.vocab_size, hidden_io, 1, dt))

    # ---- eager framework overhead (zero on devices timed through CUDA graphs)
    if fam == "dynamic_depth":
        blocks = 2.0 * L * (1.0 - s if (phase == "decode" and batch == 1) else 1.0)
    else:
        blocks = attn_layers + mlp_layers
    ops += _overhead_ops(ops, overhead_phase(phase, batch), blocks,
                         2.0 * L if fam == "dynamic_depth" else 0.0, dt)

    if fam in ("static_width", "low_rank"):
        achieved = 1.0 - _gemm_params(ops) / _decoder_params(spec)
    if fam == "static_width_hidden":
        kept = _gemm_params(ops) / _decoder_params(spec)
        notes.append(f"achieved sparsity is the sliced share of the hidden size; with the residual "
                     f"mappings the decoder keeps {kept:.1%} of its parameters")
    achieved = max(0.0, achieved)
    return PhaseOps(strategy, phase, tuple(ops), round(achieved, 6), tuple(notes), tuple(dims))


def overhead_phase(phase: str, batch: int) -> str:
    """The code path whose host overhead an :class:`Overhead` op prices: prefill, decode of
    one sequence, or decode of a batch (routing across the batch runs other glue)."""
    return "decode_batched" if phase == "decode" and batch > 1 else phase


def _overhead_ops(ops, phase: str, blocks: float, routed: float, dt: str) -> list[Op]:
    """Host overhead of an eager forward: once per forward, per attention/MLP block run, per
    nn.Linear call (every GEMM but the block-score einsum), per routed sublayer."""
    linears = sum(o.count for o in ops if isinstance(o, Gemm) and o.name != "block_score")
    out: list[Op] = [Overhead("forward_overhead", "forward", phase, 1.0, dt),
                     Overhead("block_overhead", "block", phase, float(blocks), dt),
                     Overhead("linear_overhead", "linear", phase, float(linears), dt)]
    if routed:
        out.append(Overhead("routing_overhead", "routing", phase, float(routed), dt))
    return out


# ------------------------------------------------------------------ dynamic depth


def _kept_tokens(n: int, s: float) -> int:
    return max(1, round_half_up((1 - s) * n))


def _dynamic_achieved(batch: int, q_len: int, s: float, phase: str) -> float:
    if phase == "decode" and batch == 1:
        return s
    n = batch * q_len if phase == "decode" else q_len
    return 1.0 - _kept_tokens(n, s) / n


def _dynamic_depth_layers(spec, w, phase, batch, q_len, kv_len, s, dt, lin, dims, notes) -> list[Op]:
    L = spec.num_layers
    m = batch * q_len
    ops: list[Op] = []
    if phase == "prefill":
        kept = _kept_tokens(q_len, s)  # per sequence
        kb, kq, kkv = batch, kept, kept
        expect = 1.0
        dims.append(("M of each sublayer", f"{m} → {batch * kept} (routed)"))
    elif batch == 1:
        kb, kq, kkv = 1, 1, kv_len
        expect = 1.0 - s
        notes.append("decode batch 1: a sublayer runs or is skipped; cost is the expectation")
        dims.append(("sublayers run per token", f"expected {1 - s:.0%}"))
    else:
        kb, kq, kkv = _kept_tokens(batch, s), 1, kv_len
        expect = 1.0
        dims.append(("M of each sublayer", f"{m} → {kb} (routed across the batch)"))
    mk = kb * kq
    count = L * expect
    # routing per sublayer (attention and MLP): router GEMM, top-k, gather, scatter
    for sub in ("attn", "mlp"):
        ops.append(Gemm(f"{sub}_router", m, 1, w.hidden, float(L), dt))
        ops.append(Elementwise(f"{sub}_topk", "topk", batch if phase == "prefill" else 1,
                               q_len if phase == "prefill" else batch, float(L), dt,
                               extra=kept if phase == "prefill" else max(kb, 1)))
        if not (phase == "decode" and batch == 1):
            ops.append(Elementwise(f"{sub}_gather", "gather", mk, w.hidden, float(L), dt))
            ops.append(Elementwise(f"{sub}_scatter", "scatter", mk, w.hidden, float(L), dt))
    kvd = w.kv_heads * w.head_dim
    if phase == "prefill":
        # the kept tokens' rotary cos/sin rows are gathered (positions follow the tokens)
        ops.append(Elementwise("attn_pos_gather", "gather", mk, 2 * w.head_dim, float(L), dt))
    elif batch > 1:
        # the kept rows' KV caches are gathered for attention (index_select over the batch)
        ops.append(Elementwise("attn_kv_gather", "gather", kb * kv_len, 2 * kvd, float(L), dt,
                               extra=batch * kv_len))  # source: the whole batch's cache
    ops += _attn_block(spec, w, phase, kb, kq, kkv, count, dt, lin)
    ops += _mlp_block(w, mk, count, dt, lin)
    # tokens that skip a sublayer still pass through the residual stream: nothing to compute
    return ops


# ------------------------------------------------------------------ block-sparse attention


def _causal_blocks(q_len: int, kv_len: int) -> int:
    nq = max(1, math.ceil(q_len / ATTN_BLOCK))
    nk = max(1, math.ceil(kv_len / ATTN_BLOCK))
    if q_len == 1:
        return nk
    off = nk - nq
    return sum(min(nk, off + i + 1) for i in range(nq))


def _kept_block_density(q_len: int, kv_len: int, s: float) -> float:
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


def _block_selection(w: _Layer, batch: int, q_len: int, kv_len: int, L: int, s: float,
                     dt: str) -> list[Op]:
    """SeerAttention-like gating: pool q and k into blocks, score blocks, pick the top ones."""
    nq = max(1, math.ceil(q_len / ATTN_BLOCK))
    nk = max(1, math.ceil(kv_len / ATTN_BLOCK))
    qd, kvd = w.q_heads * w.head_dim, w.kv_heads * w.head_dim
    rows = batch * w.q_heads * nq
    return [
        Elementwise("block_pool", "block_pool", batch * q_len, qd + (kvd if q_len > 1 else 0),
                    float(L), dt),
        Gemm("block_score", rows, nk, w.head_dim, float(L), dt),
        Elementwise("block_topk", "topk", rows, nk, float(L), dt,
                    extra=max(1, math.ceil(nk * (1 - s)))),
    ]


# ------------------------------------------------------------------ helpers for callers


def strategies_grid(families, sparsities, granularity="layer", align=128) -> list[Strategy]:
    """Dense first, then every family × sparsity (2:4 only at its fixed 0.5)."""
    out = [Strategy("dense", 0.0, granularity, align)]
    for f in families:
        if f == "dense":
            continue
        if f == "semi_structured_24":
            out.append(Strategy(f, 0.5, granularity, align))
            continue
        for s in sparsities:
            if s > 0:
                out.append(Strategy(f, s, granularity, align))
    return out
