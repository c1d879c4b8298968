"""What serving at a precision does to the dense model itself, beside what pruning buys at it.

A sweep or a plan at ``--precision P`` serves every point at P and compares each with the dense
model at P (what pruning buys on top of the quantization); this says what P itself does: the
dense model at P against the unquantized dense model per phase (both priced by the same
estimator: measured where the kernels were timed, else the analytical model), the kernel each
quantized GEMM is priced as under the engine, and the quality cost of P alone
(:mod:`pis_tui.quality.precision`).  No torch.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Optional

from ..families.phase_ops import build_phase_ops
from ..families.strategy import Strategy
from ..model.precision import parse_precision
from ..pricing import quantized


def precision_effect(spec, scenario, est, quality=None, phases=("prefill", "decode"),
                     dense: Optional[dict] = None) -> dict:
    """{} unquantized; else the precision's facts (the ``precision`` key of the JSON).
    ``dense``: the dense estimates at the precision already priced, by phase."""
    if not scenario.precision:
        return {}
    p = parse_precision(scenario.precision)
    plain = replace(scenario, precision="")
    out = {**p.to_dict(), "activations": scenario.dtype, "engine": scenario.engine,
           "speedup_over_unquantized": {}, "latency_ms": {}, "unquantized_latency_ms": {},
           "timing_source": {}}
    probe = None
    for ph in phases:
        at = (dense or {}).get(ph) or est.estimate(build_phase_ops(spec, Strategy("dense"), scenario, ph))
        base = est.estimate(build_phase_ops(spec, Strategy("dense"), plain, ph))
        out["latency_ms"][ph] = round(at.latency_ms, 6)
        out["unquantized_latency_ms"][ph] = round(base.latency_ms, 6)
        out["speedup_over_unquantized"][ph] = round(base.latency_ms / at.latency_ms, 4)
        out["timing_source"][ph] = at.timing_source
        probe = probe or next((o.op for o in at.ops if getattr(o.op, "quant", "")), None)
    key = quantized.kernel_key(probe, est.device) if probe is not None else ""
    k = est.profile.quantized.get(key) or {}
    out["kernel"] = {"assumed": k.get("kernel", ""), "source": k.get("source", ""),
                     "mode": quantized.mode(probe, est.device) if probe is not None else "",
                     "measured_kernel": p.kernel or None}
    if quality is not None:
        from ..quality.precision import precision_estimate

        q = precision_estimate(spec.name, p.name, getattr(quality, "metric", "accuracy_drop"),
                               getattr(quality, "protocol", "lora"))
        out["quality"] = {"loss": q.value, "source": q.source, "borrowed_from": q.borrowed_from,
                          "citations": list(q.citations), "note": q.note}
    out["rule"] = ("every point is served at this precision; its speedup is over the dense model "
                   "at this precision, its quality loss against the unquantized model (the "
                   "precision's own loss composed with the pruning's, or a published figure of "
                   "both)")
    return out


def precision_line(effect: dict) -> str:
    """One line for a console header (empty unquantized)."""
    if not effect:
        return ""
    sp = effect["speedup_over_unquantized"]
    each = ", ".join(f"{ph} {v:.2f}×" for ph, v in sp.items())
    kern = effect.get("kernel", {}).get("assumed") or ""
    q = effect.get("quality") or {}
    loss = (f"; its own quality cost {q['loss'] * 100:.1f}%" if q.get("loss") is not None
            else "; no published quality figure of it" if q else "")
    return (f"{effect['name']} ({effect['scheme']}): the dense model at it runs {each} against "
            f"the unquantized dense{loss}{f' (kernel: {kern})' if kern else ''}; speedups below "
            "are over the dense model at it, losses against the unquantized model")
