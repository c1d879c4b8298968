"""Quantized GEMM cases: a :class:`~pis_tui.model.ops.Gemm` served at a precision
(``op.quant``) through the real torch kernels of :mod:`pis_tui.hf.quant_kernels`.

* ``int4-g32|64|128|256`` (W4A16): the weight quantized per group and packed for the device's
  kernel (``aten._weight_int4pack_mm_for_cpu`` on a CPU: fp32, bf16 or fp16 activations;
  tinygemm ``aten._weight_int4pack_mm`` on CUDA 8.0+: bf16), X in the op's dtype; CUDA-graph
  capturable.
* ``fp8-row`` / ``fp8-tensor`` (W8A8): only where :func:`~pis_tui.hf.quant_kernels.fp8_kernel_on`
  finds fp8 tensor cores (CUDA 8.9+; a CPU's ``_scaled_mm`` is a reference loop, never timed).
  X is quantized once, outside the timed call (the activation quantization is an op of its
  own, ``act_quant``, timed apart); the weight per output row or per tensor; ``_scaled_mm``
  writes bf16 (per-tensor: fp16 too).
* ``mxfp4``: no torch kernel (estimated only); a quantized grouped GEMM: not timed (torch has
  no grouped int4 kernel, grouped fp8 is not timed yet).

Rotation: the packed weight (and its scales) is quantized once and copied as many times as
:func:`~.case.copies_for` says a dense weight of its bytes needs, so each call streams a weight
from memory as a forward pass does (the copies hold the same random values at distinct
addresses).  The reference is the float64 product of the dequantized operands the kernel
multiplies, so a check measures the kernel's accumulation only (CPU int4: ~4e-7 relative in
fp32, ~2e-3 in bf16; fp8: ~2e-3 in bf16); a code off by one is off by 10–50 %.

The measurement names the aten op that ran: the case's note and ``conditions["kernel"]``
(priced as "kernel <name>" by the estimator).  :func:`measurable_precision` tells a command,
before it profiles, whether this device times a precision at all.
"""

from __future__ import annotations

from typing import Optional

from ..errors import MeasureError, UserError
from ..hf.quant_kernels import (FP8_KERNEL, FP8_MAX, Fp8Weight, Int4Weight, act_quant, fp8_kernel_on,
                                fp8_mm, int4_kernel_name, int4_mm, quantize_fp8, quantize_int4)
from ..model.ops import Gemm, GroupedGemm
from ..model.precision import INT4_N_ALIGN, parse_precision
from ..model.quant_formats import Precision
from ..model.quant_formats import get as quant_format
from .case import Case, Unsupported, copies_for, rand_tensor, views
from .device import DeviceContext, fp8_dtype_unmeasurable, torch_dtype, torch_module

#: the dims ``_scaled_mm`` needs multiples of (its fp8 tensor-core tiles)
FP8_ALIGN = 16
#: tinygemm's smallest K tile (:func:`pis_tui.hf.quant_kernels._inner_k_tiles`)
TINYGEMM_K_ALIGN = 32


def measurable_precision(ctx: DeviceContext, precision_name: str, dtype: str = "") -> Optional[str]:
    """None where the device times GEMMs served at ``precision_name`` (any ``--precision``
    spelling: ``fp8``, ``int4``, ``int4-g64``, ``bf16``…) with activations in ``dtype`` (""
    unchecked); else one line saying why not (an fp8 precision on a CPU: fp8_kernel_on's)."""
    try:
        p = parse_precision(precision_name, dtype or "bf16")
    except UserError as e:
        return str(e)
    return ctx.precision_unmeasurable(p.name, dtype)


def measurable_precisions(ctx: DeviceContext) -> tuple:
    """The quantized precisions the device times (:attr:`DeviceContext.precisions`)."""
    return ctx.precisions


def quantized_case(op, ctx: DeviceContext, check: bool, *, reference_loop: bool = False) -> Case:
    """The case of a quantized GEMM (``op.quant`` set); :class:`Unsupported` with one line where
    it has no kernel here.  ``reference_loop`` (tests only): build an fp8 case where
    ``_scaled_mm`` is a reference loop (a CPU), to check it on a tiny shape."""
    if isinstance(op, GroupedGemm):
        raise Unsupported(f"{op.quant} grouped GEMM: torch has no grouped int4 kernel and grouped "
                          "fp8 is not timed yet: estimated")
    if not isinstance(op, Gemm):
        raise Unsupported(f"{op.quant}: only GEMMs are quantized")
    p = quant_format(op.quant)
    if p is None:
        raise Unsupported(f"unknown precision {op.quant!r}")
    if not p.kernel:
        raise Unsupported(f"{op.quant} has no torch kernel: estimated only")
    if op.kind != "dense":
        raise Unsupported(f"torch has no {op.kind} {op.quant} kernel")
    if p.weight_only:
        return _int4_case(op, ctx, check, p)
    return _fp8_case(op, ctx, check, p, reference_loop)


def _int4_case(op: Gemm, ctx: DeviceContext, check: bool, p: Precision) -> Case:
    g = p.group
    if op.k % g:
        raise Unsupported(f"{op.quant}: K = {op.k} is not a multiple of the group ({g}), which the "
                          "int4 kernels need")
    if op.n % INT4_N_ALIGN:
        raise Unsupported(f"{op.quant}: N = {op.n} is not a multiple of {INT4_N_ALIGN}, which torch's "
                          "int4 packing needs")
    if ctx.is_cuda and op.k % TINYGEMM_K_ALIGN:
        raise Unsupported(f"{op.quant}: K = {op.k} is not a multiple of {TINYGEMM_K_ALIGN}, "
                          "tinygemm's smallest K tile")
    why = ctx.precision_unmeasurable(p.name, op.dtype)
    if why:
        raise Unsupported(why)
    kernel = int4_kernel_name(ctx.kind)
    dt = torch_dtype(op.dtype)
    w = views(ctx, op.dtype, (op.n, op.k), 1, check=check)[0]
    w0 = quantize_int4(w, g, act_dtype=dt, keep_codes=check)
    state = _nbytes(w0.packed) + _nbytes(w0.scales_zeros)
    copies = copies_for(ctx, state, check)
    ws = [w0] + [Int4Weight(w0.packed.clone(), w0.scales_zeros.clone(), g, op.n, op.k)
                 for _ in range(copies - 1)]
    x = rand_tensor(ctx, (op.m, op.k), op.dtype, seed=1)
    C = len(ws)
    return Case(fn=lambda i: int4_mm(x, ws[i % C]),
                ref=lambda: x.double() @ w0.dequantize().t(), copies=C,
                note=f"{kernel}: int4 weights, group {g}, scales and zeros in {op.dtype}",
                conditions={"kernel": kernel})


def _fp8_case(op: Gemm, ctx: DeviceContext, check: bool, p: Precision, reference_loop: bool) -> Case:
    per_row = p.act_quant == "per-token"
    loop = fp8_kernel_on(ctx.torch_device)  # None: a real kernel
    if loop and not reference_loop:
        raise Unsupported(loop)
    why = fp8_dtype_unmeasurable(p.name, per_row, op.dtype)
    if why:
        raise Unsupported(why)
    if op.k % FP8_ALIGN or op.n % FP8_ALIGN:
        raise Unsupported(f"{op.quant}: {FP8_KERNEL} needs N and K multiples of {FP8_ALIGN} "
                          f"(N = {op.n}, K = {op.k})")
    out_dtype = torch_dtype(op.dtype)
    w = views(ctx, op.dtype, (op.n, op.k), 1, check=check)[0]
    w0 = quantize_fp8(w, per_row=per_row)
    copies = copies_for(ctx, _nbytes(w0.q) + _nbytes(w0.scale), check)
    ws = [w0] + [Fp8Weight(w0.q.clone(), w0.scale.clone(), per_row) for _ in range(copies - 1)]
    x = rand_tensor(ctx, (op.m, op.k), op.dtype, seed=1)
    # quantized once, outside the timed call: the activation quantization is its own op
    if per_row:
        xq, sx = act_quant(x)  # dynamic: a scale per token
    else:  # static: a calibrated per-tensor scale
        xq, sx = act_quant(x, (x.abs().amax().float() / FP8_MAX).clamp(min=1e-12))
    C = len(ws)
    how = "row-wise weight scales, per-token activation scales" if per_row else \
        "per-tensor weight and activation scales"
    return Case(fn=lambda i: fp8_mm(xq, sx, ws[i % C], out_dtype),
                ref=lambda: (xq.double() * sx.double()) @ w0.dequantize().t(), copies=C,
                note=f"{FP8_KERNEL}: fp8 e4m3 W8A8, {how}, {op.dtype} out"
                     + ("; torch's reference loop, not a kernel (a check only)" if loop else ""),
                conditions={"kernel": FP8_KERNEL})


def _nbytes(t) -> int:
    return t.numel() * t.element_size()


def fp8_e4m3_round(v):
    """``v`` (float64, |v| ≤ 448) rounded to the nearest float8 e4m3 value, ties to even,
    computed in float64 (the reference of torch's cast): 3 mantissa bits, normals from 2⁻⁶,
    subnormals in steps of 2⁻⁹."""
    torch = torch_module()
    a = v.abs()
    e = torch.floor(torch.log2(a)).clamp(min=-6.0)  # log2(0) = -inf: clamped
    step = torch.pow(2.0, e - 3.0)
    return torch.sign(v) * torch.round(a / step) * step


def act_quant_case(x, extra: int, check: bool) -> Case:
    """The ``act_quant`` op (W8A8's activation quantization) on ``x``: ``extra`` 0 dynamic
    per-token (absmax of each row / 448, then the cast), 1 a static per-tensor scale (the
    cast).  The reference rounds the float64 quotient to e4m3 with the same scale: a tie of the
    fp32 quotient may round the other way (one element one fp8 step off, ~1e-4 of the whole),
    while a wrong scale or format is off by a few % everywhere."""
    if extra not in (0, 1):
        raise MeasureError(f"act_quant extra {extra}: 0 (dynamic per-token) or 1 (static per-tensor)")
    static = None
    if extra == 1:
        static = (x.abs().amax().float() / FP8_MAX).clamp(min=1e-12)

    def fn(i):
        return act_quant(x) if static is None else act_quant(x, static)

    def ref():
        xd = x.double()
        s = static.double() if static is not None else \
            (xd.abs().amax(dim=-1, keepdim=True) / FP8_MAX).clamp(min=1e-12)
        return fp8_e4m3_round((xd / s).clamp(-FP8_MAX, FP8_MAX)) * s

    how = "dynamic per-token scales" if static is None else "a static per-tensor scale"
    return Case(fn, ref, note=f"fp8 e4m3 activation quantization, {how}",
                post=lambda out: out[0].double() * out[1].double())
