"""Does the dense model fit on the device in this scenario?  Weights plus the KV cache.

A latency estimate for a model that cannot be loaded, or a KV cache larger than the GPU,
is a number about nothing: the sweep reports the footprint and says when it does not fit
(pruning may make it fit: the footprint is the dense model's).

- weights: every decoder and embedding parameter (``ModelSpec.total_params``) in the
  scenario's dtype (fp8/int8 weights: one byte each), or at its served precision
  (``Scenario.precision``: the quantized GEMMs' bytes with their scales, from the op list;
  the embedding, lm_head and routers stay in the dtype);
- KV cache: ``2 × layers × kv_heads × head_dim`` values per token, kept in 16-bit when the
  weights are 8-bit (the common serving setup) and in the weights' dtype otherwise; prefill
  holds ``batch × prompt_len`` tokens, decode ``batch × context_len``.

Activations and the framework's workspace come on top; a footprint over 90 % of the
device's memory is flagged as tight.

Under tensor parallelism over ``tp`` ranks every GPU holds one rank's share: its shards of the
weights (from the rank's dense op list: sharded GEMMs, its rows of the embedding) and its KV
heads (kv/tp, at least one: replicated beyond tp = kv); the fit is checked against one GPU.
"""

from __future__ import annotations

from dataclasses import replace

from ..model.ops import dtype_bytes

TIGHT = 0.90  # of the device's memory: activations and workspace need the rest
GB = 1e9  # datasheets count memory in decimal GB (H200: 141 GB)


def kv_bytes(kv_heads: int, head_dim: int, blocks: float, dtype: str) -> float:
    """KV-cache bytes one token holds in ``blocks`` attention blocks of ``kv_heads`` ×
    ``head_dim``: K and V, 16-bit when the weights are 8-bit, else in the weights' dtype."""
    return 2 * kv_heads * head_dim * blocks * max(2, dtype_bytes(dtype))


def kv_bytes_per_token(spec, dtype: str) -> int:
    """KV-cache bytes per token of the dense model."""
    return kv_bytes(spec.num_kv_heads, spec.head_dim, spec.num_layers, dtype)


def rank_kv_bytes_per_token(spec, dtype: str, tp: int) -> int:
    """KV-cache bytes per token one rank of ``tp`` holds (its KV heads, at least one)."""
    from ..model.tensor_parallel import rank_heads

    kvh = rank_heads(spec.num_heads, spec.num_kv_heads, tp)[1]
    return kv_bytes(kvh, spec.head_dim, spec.num_layers, dtype)


def rank_weight_bytes(spec, scenario) -> float:
    """Bytes of the dense model's weights one rank of ``scenario.tp`` holds."""
    from ..families.strategy import Strategy
    from ..families.phase_ops import build_phase_ops

    scen = replace(scenario, prefill_batch=1, prompt_len=1)
    return weight_bytes(build_phase_ops(spec, Strategy("dense"), scen, "prefill").ops, spec,
                        scenario.dtype)


def footprint(spec, device, scenario) -> dict:
    """Bytes (in GB) the dense model needs per phase, against the device's memory (one rank's
    against one GPU under tensor parallelism: ``per_rank``)."""
    tp = getattr(scenario, "tp", 1)
    quantized = bool(getattr(scenario, "precision", ""))
    weights = (rank_weight_bytes(spec, replace(scenario, tp=1)) if quantized
               else spec.total_params() * dtype_bytes(scenario.dtype)) / GB
    per_tok = kv_bytes_per_token(spec, scenario.dtype) / GB
    kv = {"prefill": scenario.prefill_batch * scenario.prompt_len * per_tok,
          "decode": scenario.decode_batch * scenario.context_len * per_tok}
    cap = float(device.memory_gb or 0.0)
    out = {"weights_gb": round(weights, 3), "kv_cache_gb": {ph: round(v, 3) for ph, v in kv.items()},
           "device_gb": cap, "tp": tp}
    if tp > 1:  # what one GPU holds
        weights = rank_weight_bytes(spec, scenario) / GB
        per_tok = rank_kv_bytes_per_token(spec, scenario.dtype, tp) / GB
        kv = {"prefill": scenario.prefill_batch * scenario.prompt_len * per_tok,
              "decode": scenario.decode_batch * scenario.context_len * per_tok}
        out["per_rank"] = {"weights_gb": round(weights, 3),
                           "kv_cache_gb": {ph: round(v, 3) for ph, v in kv.items()}}
    need = {ph: weights + kv[ph] for ph in kv}
    out["fits"] = {ph: (cap <= 0 or need[ph] <= cap) for ph in need}
    out["warnings"] = fit_warnings(spec, device, scenario, weights, kv, cap)
    return out


def fit_warnings(spec, device, scenario, weights: float, kv: dict, cap: float) -> list[str]:
    if cap <= 0:
        return []
    out = []
    tp = getattr(scenario, "tp", 1)
    name = device.display_name + (f" (one of {tp} ranks: its share of the weights and KV cache)"
                                  if tp > 1 else "")
    if weights > cap:
        out.append(f"{spec.name} does not fit on the {name}: its {scenario.served} weights alone are "
                   f"{weights:.0f} GB of {cap:.0f} GB (these figures assume it would; pruning by "
                   f"{1 - cap / weights:.0%} or more, or more GPUs, would be needed)")
        return out
    for ph in ("prefill", "decode"):
        need = weights + kv[ph]
        label = scenario.label(ph)
        if need > cap:
            out.append(f"{ph} does not fit on the {name}: weights {weights:.0f} GB + KV cache "
                       f"{kv[ph]:.0f} GB ({label}) = {need:.0f} GB of {cap:.0f} GB; these "
                       f"timings assume it would (a smaller batch or context would fit)")
        elif need > TIGHT * cap:
            out.append(f"{ph} barely fits on the {name}: weights {weights:.0f} GB + KV cache "
                       f"{kv[ph]:.0f} GB ({label}) = {need:.0f} GB of {cap:.0f} GB, leaving little "
                       "for activations")
    return out


# --------------------------------------------------------------------------- a pruned model
# What `pis-tui plan` needs: the memory of the pruned model itself, from its op list, and how
# many sequences fit beside it.  Pruning frees weight memory, and the KV cache takes it.

#: the share of the device's memory a serving framework may use; the rest (10 %) is the reserve
#: for the CUDA context, the framework's workspace and the allocator's fragmentation (vLLM's
#: default gpu_memory_utilization is 0.9: the same rule)
USABLE = 0.90

#: GEMMs that hold no weight (block-sparse attention's block scores multiply activations)
_NO_WEIGHT = ("block_score",)


def usable_bytes(device) -> float:
    """Bytes a serving framework may use: ``memory_gb`` in decimal GB (1e9 bytes) × USABLE."""
    return float(device.memory_gb or 0.0) * GB * USABLE


def weight_bytes(ops, spec, dtype: str) -> float:
    """Bytes of the weights behind the op list of ONE forward of the pruned model (use the
    prefill's: every kept layer runs once per forward there, routed families included).

    Each GEMM stores what its kernel reads (``Gemm.bytes`` less its activations): dense and
    unstructured weights whole (zeros are stored), 2:4 the kept half plus its metadata, low
    rank its two factors; the embedding table (vocabulary × the embedding's width) once more
    unless it is tied to the lm_head; a mixture of experts' grouped GEMMs every resident expert
    (E × N × K each, not only the experts a step touches)."""
    b = dtype_bytes(dtype)
    total = 0.0
    emb = 0.0
    for o in ops:
        kind = getattr(o, "op_type", "")
        if kind == "gemm" and o.name not in _NO_WEIGHT:
            total += o.weight_nbytes() * o.count
        elif kind == "grouped_gemm":
            total += o.experts * o.weight_nbytes() * o.count
        elif kind == "elementwise" and o.kind == "embedding":
            emb = float(o.extra) * o.width * b
    return total + (0.0 if spec.tie_embeddings else emb)


def kv_bytes_per_token_of(ops, dtype: str) -> int:
    """KV-cache bytes one token of one sequence holds in the pruned model: K and V of every
    attention block that runs (``count``) at its KV heads × head_dim, 16-bit when the weights
    are 8-bit (:func:`kv_bytes`).  Give the prefill's op list: depth pruning keeps
    fewer attention blocks, width pruning fewer KV heads; low rank, 2:4, unstructured, dynamic
    depth and block-sparse attention keep the dense cache."""
    return int(round(sum(kv_bytes(o.kv_heads, o.head_dim, o.count, dtype)
                         for o in ops if getattr(o, "op_type", "") == "attention")))


def activation_bytes(ops, dtype: str) -> float:
    """The rule for activations: the largest working set of one op of the op list, its inputs
    and outputs other than weights and the KV cache (a GEMM's X and Y; an elementwise op what
    it reads and writes, e.g. SiLU·mul's gate, up and product; attention's Q and O).  Frameworks
    free each op's temporaries before the next, so the peak is one op's, not their sum."""
    b = dtype_bytes(dtype)
    best = 0.0
    for o in ops:
        kind = getattr(o, "op_type", "")
        if kind == "gemm":
            v = (o.m * o.k + o.m * o.n) * b
        elif kind == "attention":
            v = 2.0 * o.batch * o.q_heads * o.q_len * o.head_dim * b
        elif kind == "elementwise" and o.kind != "kv_write":
            v = o.bytes()
        else:
            continue
        best = max(best, v)
    return best


#: the tensor-parallel degrees :func:`gpus_needed` tries (one node's GPUs)
TP_DEGREES = (1, 2, 4, 8)


def gpus_needed(usable: float, weights: float, per_sequence: float, sequences: int,
                kv_heads: int) -> int | None:
    """The fewest GPUs of this kind (a tensor-parallel degree of :data:`TP_DEGREES`) whose
    memory holds the model's weights and ``sequences`` sequences at once: each GPU a 1/tp share
    of the weights and of each sequence's KV cache and activations — the KV cache no finer than
    one KV head a GPU (heads replicate beyond ``kv_heads`` ranks).  An estimate of what fits
    (the embedding and norms split or replicate a little differently); None: not on one node."""
    for tp in TP_DEGREES:
        per = per_sequence * max(1.0 / tp, 1.0 / max(kv_heads, 1))
        if weights / tp + sequences * per <= usable:
            return tp
    return None


def max_sequences(usable: float, weights: float, per_sequence: float, cap: int = 1 << 20) -> int:
    """The most sequences whose memory (``per_sequence`` bytes each) fits beside the weights
    in ``usable`` bytes (0 when the weights alone do not fit)."""
    room = usable - weights
    if room <= 0 or per_sequence <= 0:
        return 0 if room <= 0 else cap
    return int(min(cap, room // per_sequence))
