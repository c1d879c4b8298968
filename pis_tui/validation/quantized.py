"""``validate --precision``: what can be validated quantized, and the quantization's own
speedup (the quantized dense model against the unquantized one) beside the rows.

A quantized run builds every model as today, then replaces its linears by ones running the
quantized kernels (:func:`pis_tui.hf.quantize.quantize_model`); each row compares a pruned
model with the dense one at the same precision, predicted from the op list at that precision
(``Scenario(precision=…)``).  Refused in one line, before anything is built: a precision with
no kernel here (fp8 off CUDA 8.9+: :func:`pis_tui.hf.quant_kernels.fp8_kernel_on`; mxfp4
anywhere), an MoE model (no grouped quantized kernel in torch, while the op list quantizes
the experts' grouped GEMMs), a model or pruned width the kernel cannot take.
"""

from __future__ import annotations

import statistics
from typing import Optional

from ..errors import UserError


def check_precision(spec, strategies: list, precision: Optional[str], device: str,
                    dtype: str = "") -> str:
    """The canonical name of the quantized ``precision`` validate is to run at ("" for none
    or an unquantized one), or one line saying why it cannot (with activations in ``dtype``:
    CUDA's int4 kernel, tinygemm, takes bf16 only and needs compute capability 8.0+)."""
    from ..families.phase_ops import build_phase_ops
    from ..families.strategy import Strategy
    from ..model.precision import parse_precision
    from ..model.scenario import Scenario

    if not precision:
        return ""
    prec = parse_precision(precision)
    if not prec.quantized:
        return ""
    if not prec.kernel:
        raise UserError(f"--precision {prec.name}: torch has no kernel for it (estimated only), "
                        "so validate cannot time a model served in it")
    if prec.act_quant:  # fp8
        from ..hf.quant_kernels import fp8_kernel_on

        why = fp8_kernel_on(device)
        if why:
            raise UserError(f"--precision {prec.name}: {why}")
    elif str(device).startswith("cuda"):  # int4 through tinygemm
        import torch

        cap = torch.cuda.get_device_capability()
        if cap < (8, 0):
            raise UserError(f"--precision {prec.name}: tinygemm (aten._weight_int4pack_mm) needs "
                            f"compute capability 8.0+, this GPU has {cap[0]}.{cap[1]}")
        if dtype and dtype != "bf16":
            raise UserError(f"--precision {prec.name}: tinygemm (aten._weight_int4pack_mm) takes "
                            f"bf16 activations, not {dtype}: give --dtype bf16")
    if spec.moe is not None:
        raise UserError(f"{spec.name}: --precision {prec.name} is not offered for mixture-of-"
                        "experts models: torch has no grouped int4 / fp8 kernel for their routed "
                        "experts, which the prediction quantizes")
    scen = Scenario(prefill_batch=1, prompt_len=16, decode_batch=1, context_len=16,
                    precision=prec.name)
    for st in [Strategy("dense")] + list(strategies):  # a shape the kernel cannot take: now
        build_phase_ops(spec, st, scen, "prefill")
    return prec.name


#: the keys of a row's ``quantization`` (the case's quantized dense against the unquantized)
QUANT_KEYS = ("predicted_ms", "measured_ms", "dense_predicted_ms", "dense_measured_ms",
              "predicted_speedup", "measured_speedup", "error", "status", "measured_interval",
              "speedup_ceiling", "above_ceiling", "contended", "prediction_flags",
              "latency_error", "dense_latency_error")


def quantization_dict(row, precision: str, dtype: str) -> dict:
    """A row's ``quantization`` in the JSON: the ``precision`` dense model (``predicted_ms``,
    ``measured_ms``) against the unquantized ``dtype`` one (``dense_…``) at the same case."""
    d = row.to_dict()
    out = {"precision": precision, "unquantized": dtype}
    out.update({k: d[k] for k in QUANT_KEYS})
    return out


def quantization_rows(rows: list) -> list:
    """The quantization comparisons the rows carry, once per case (phase, batch, length)."""
    seen, out = set(), []
    for r in rows:
        q = getattr(r, "quantization", None)
        case = (r.phase, r.batch, r.length)
        if q is not None and case not in seen:
            seen.add(case)
            out.append(q)
    return out


def quantization_summary(rows: list) -> dict:
    """Median, p90 and worst |error| of the predicted quantization speedups (stable and
    unflagged comparisons), and how many were left out."""
    qs = quantization_rows(rows)
    if not qs:
        return {}
    ok = [q for q in qs if q.stable and not q.prediction_flags]
    out = {"n": len(ok), "cases": len(qs), "unstable": sum(1 for q in qs if not q.stable),
           "prediction_flagged": sum(1 for q in qs if q.stable and q.prediction_flags)}
    if ok:
        errs = sorted(abs(q.error) for q in ok)
        import math

        out.update(median_abs_error=statistics.median(errs),
                   p90_abs_error=errs[min(len(errs) - 1, max(0, math.ceil(0.9 * len(errs)) - 1))],
                   worst_abs_error=errs[-1])
    return out
