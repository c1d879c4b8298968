"""Will the models a command is about to build fit in the memory that is free right now?

``validate`` holds the dense model and one pruned model at once (plus a KV cache and one op's
activations); ``quality`` holds the loaded model and one pruned copy.  Building a model that
does not fit gets the process killed by the kernel's out-of-memory killer with no message, and
takes whatever else the machine runs with it, so both commands check first:

- what is needed: the weights from the op lists (:func:`pis_tui.pricing.memory.weight_bytes`; a
  family whose built model masks dense weights counts as dense), the KV cache of the largest
  decode batch × context, and the largest single op's activations;
- what is available: on the CPU the kernel's ``MemAvailable`` (free memory plus what can be
  reclaimed without swapping, not the total), on CUDA the free bytes ``torch.cuda.mem_get_info``
  reports for the device.

A need above what is available is one line with both sizes, exit 2 (nothing is built).
"""

from __future__ import annotations

from typing import Iterable, Optional

from ..errors import UserError
from ..pricing.memory import GB, activation_bytes, kv_bytes_per_token_of, weight_bytes
from ..model.ops import dtype_bytes

#: the share of the available memory a run may plan to use: the allocator, Python, torch's
#: own buffers and the page cache the system keeps need the rest
HEADROOM = 0.90


def available_bytes(device: str = "cpu") -> tuple[float, str]:
    """(bytes available now, where that figure comes from).  CPU: ``MemAvailable`` of
    /proc/meminfo (else free pages from sysconf); CUDA: ``torch.cuda.mem_get_info``."""
    if str(device).startswith("cuda"):
        import torch

        free, _total = torch.cuda.mem_get_info()
        return float(free), f"free on {torch.cuda.get_device_name()} (torch.cuda.mem_get_info)"
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024.0, "MemAvailable in /proc/meminfo"
    except (OSError, ValueError, IndexError):
        pass
    import os

    try:
        return (float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")),
                "free pages (sysconf)")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - no way to tell
        return float("inf"), "unknown"


def model_weights(spec, strategy, dtype: str, precision: str = "") -> float:
    """Bytes of the weights of the model built for ``strategy`` (a taxonomy Strategy), its
    linears quantized to ``precision`` if given (a quantized format's canonical name)."""
    from .. import families
    from ..families.phase_ops import build_phase_ops
    from ..families.strategy import Strategy
    from ..model.scenario import Scenario

    scen = Scenario(prefill_batch=1, prompt_len=16, decode_batch=1, context_len=16, dtype=dtype,
                    precision=precision)
    fam = families.get(strategy.family)
    if fam.validate_dense_weights:
        strategy = Strategy("dense")
    ops = build_phase_ops(spec, strategy, scen, "prefill").ops
    # an MoE model's routed experts are all resident, whichever a step touches: weight_bytes
    # counts every expert of a grouped GEMM (E × N × K)
    return weight_bytes(ops, spec, dtype)


def validate_need(spec, strategies: Iterable, dtype: str, *, prefill_batch: int = 1,
                  prompt_len: int = 128, decode_batch: int = 1, context_len: int = 256,
                  phases=("prefill", "decode"), precision: str = "") -> dict:
    """What ``validate`` needs at its peak: the dense model and the largest pruned one, the
    KV cache of the largest decode, one op's activations (bytes).  At a quantized
    ``precision`` the dense model held throughout is quantized, and beside it one model is
    held unquantized: the dense one its quantization is timed against, then each pruned one
    while it is built (before its linears are quantized)."""
    from ..families.phase_ops import build_phase_ops
    from ..families.strategy import Strategy
    from ..model.scenario import Scenario

    dense = Strategy("dense")
    w_dense = model_weights(spec, dense, dtype, precision)
    w_pruned = max((model_weights(spec, st, dtype) for st in strategies), default=0.0)
    if precision:
        w_pruned = max(w_pruned, model_weights(spec, dense, dtype))
    scen = Scenario(prefill_batch=prefill_batch, prompt_len=prompt_len, decode_batch=decode_batch,
                    context_len=context_len, dtype=dtype)
    kv = act = 0.0
    for ph in phases:
        ops = build_phase_ops(spec, dense, scen, ph).ops
        act = max(act, activation_bytes(ops, dtype))
        if ph == "decode":
            pre = build_phase_ops(spec, dense, scen, "prefill").ops
            # validate's StaticCache holds context + 1 tokens, one cache per model timed
            kv = 2 * decode_batch * (context_len + 1) * kv_bytes_per_token_of(pre, dtype)
    # the logits of the last position (prefill) or of every sequence (decode), in fp32
    logits = max(prefill_batch, decode_batch) * spec.vocab_size * max(4, dtype_bytes(dtype))
    return {"weights_dense": w_dense, "weights_pruned": w_pruned, "kv_cache": kv,
            "activations": act + logits,
            "total": w_dense + w_pruned + kv + act + logits}


def quality_need(spec, dtype: str, seq_len: int = 512, batch: int = 1) -> dict:
    """What ``quality`` needs at its peak: the loaded model and one pruned copy of it, and one
    window's activations and logits."""
    weights = spec.total_params() * dtype_bytes(dtype)
    act = batch * seq_len * (4 * spec.hidden_size + 3 * spec.intermediate_size) * dtype_bytes(dtype)
    logits = batch * seq_len * spec.vocab_size * 4
    return {"weights_dense": weights, "weights_pruned": weights, "kv_cache": 0.0,
            "activations": act + logits, "total": 2 * weights + act + logits}


def check(need: dict, device: str, what: str, *, available: Optional[tuple] = None) -> dict:
    """Raise a one-line :class:`UserError` when ``need["total"]`` exceeds the memory available
    on ``device`` (× :data:`HEADROOM`); returns {"need", "available", "source"}."""
    avail, source = available if available is not None else available_bytes(device)
    total = need["total"]
    if total > HEADROOM * avail:
        parts = [f"weights {need['weights_dense'] / GB:.1f} GB dense"]
        if need.get("weights_pruned"):
            parts.append(f"{need['weights_pruned'] / GB:.1f} GB pruned")
        if need.get("kv_cache"):
            parts.append(f"KV cache {need['kv_cache'] / GB:.1f} GB")
        parts.append(f"activations {need['activations'] / GB:.1f} GB")
        where = "this GPU" if str(device).startswith("cuda") else "this machine"
        raise UserError(
            f"{what} needs about {total / GB:.1f} GB ({', '.join(parts)}) but {where} has "
            f"{avail / GB:.1f} GB available ({source}); use a smaller model, a 16-bit --dtype, "
            "or a machine with more free memory")
    return {"need": total, "available": avail, "source": source}
