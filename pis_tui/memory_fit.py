"""Does the dense model fit on the device in this scenario?  Weights plus the KV cache.

A latency estimate for a model that cannot be loaded, or a KV cache larger than the GPU,
is a number about nothing: the sweep reports the footprint and says when it does not fit
(pruning may make it fit: the footprint is the dense model's).

- weights: every decoder and embedding parameter (``ModelSpec.total_params``) in the
  scenario's dtype (fp8/int8 weights: one byte each);
- KV cache: ``2 × layers × kv_heads × head_dim`` values per token, kept in 16-bit when the
  weights are 8-bit (the common serving setup) and in the weights' dtype otherwise; prefill
  holds ``batch × prompt_len`` tokens, decode ``batch × context_len``.

Activations and the framework's workspace come on top; a footprint over 90 % of the
device's memory is flagged as tight.
"""

from __future__ import annotations

from .ops import dtype_bytes

TIGHT = 0.90  # of the device's memory: activations and workspace need the rest
GB = 1e9  # datasheets count memory in decimal GB (H200: 141 GB)


def kv_bytes_per_token(spec, dtype: str) -> int:
    return 2 * spec.num_layers * spec.num_kv_heads * spec.head_dim * max(2, dtype_bytes(dtype))


def footprint(spec, device, scenario) -> dict:
    """Bytes (in GB) the dense model needs per phase, against the device's memory."""
    weights = spec.total_params() * dtype_bytes(scenario.dtype) / GB
    per_tok = kv_bytes_per_token(spec, scenario.dtype) / GB
    kv = {"prefill": scenario.prefill_batch * scenario.prompt_len * per_tok,
          "decode": scenario.decode_batch * scenario.context_len * per_tok}
    cap = float(device.memory_gb or 0.0)
    need = {ph: weights + kv[ph] for ph in kv}
    return {"weights_gb": round(weights, 3), "kv_cache_gb": {ph: round(v, 3) for ph, v in kv.items()},
            "device_gb": cap,
            "fits": {ph: (cap <= 0 or need[ph] <= cap) for ph in need},
            "warnings": fit_warnings(spec, device, scenario, weights, kv, cap)}


def fit_warnings(spec, device, scenario, weights: float, kv: dict, cap: float) -> list[str]:
    if cap <= 0:
        return []
    out = []
    name = device.display_name
    if weights > cap:
        out.append(f"{spec.name} does not fit on the {name}: its {scenario.dtype} weights alone are "
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
