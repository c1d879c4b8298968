"""The precision a model is served in (``--precision``), apart from the dtype it is measured in.

Quantization changes what each GEMM reads and which peak it runs at, and adds kernels of its
own; pruning changes the GEMMs' shapes.  The two compose: :func:`apply_precision` turns any
family's op list (a combination's too) into the same list served at a precision, so every
family composes with every precision without knowing of it.

Precisions (``parse_precision``):

* ``bf16`` / ``fp16`` / ``fp32``: no quantization (the scenario's dtype; ``--precision bf16`` is
  ``--dtype bf16``);
* ``fp8`` (= ``fp8-row``): W8A8 with per-output-channel weight scales and dynamic per-token
  activation scales (an ``act_quant`` op before each quantized GEMM: per-token absmax and a
  cast); ``fp8-tensor``: one scale per weight and a static per-tensor activation scale (the
  ``act_quant`` op is a scale and a cast);
* ``int4`` (= ``int4-g128``), ``int4-g32|64|128|256``: 4-bit weights, one bf16 scale and zero
  per group of G input channels, activations unquantized (W4A16; the kernel dequantizes in its
  main loop);
* ``mxfp4``: 4-bit e2m1 weights with one e8m0 scale per 32 (OCP MX, as gpt-oss ships its
  experts), activations unquantized; estimated only (no torch kernel times it).

What stays in the activation dtype: the embedding, the lm_head and an MoE's router (serving
checkpoints keep them unquantized: Neural Magic's FP8-dynamic and W4A16 recipes ignore
``lm_head``; Qwen3-MoE FP8 and gpt-oss keep the router gate in bf16).  Attention runs in the
activation dtype (KV-cache quantization is not modelled).

Pure data: no torch, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Optional

from ..errors import UserError
from .ops import Elementwise
from .quant_formats import INT4_GROUPS, PLAIN, QUANTIZED, Precision, get

#: GEMMs served unquantized whatever the precision (see the module's docstring)
KEEP_UNQUANTIZED = ("lm_head", "moe_router", "shared_expert_gate", "router",
                    "block_score")  # block-sparse attention's scores: activations × activations
#: an int4 GEMM's output width must be a multiple of this (torch's int4 packing: N % 16 on the
#: CPU kernel, N % 8 on CUDA's; the stricter is checked everywhere)
INT4_N_ALIGN = 16

_ALIASES = {"fp8": "fp8-row", "w8a8": "fp8-row", "int4": "int4-g128", "w4a16": "int4-g128"}

#: every name ``--precision`` takes (help texts, the explorer's choices)
CHOICES = PLAIN + ("fp8", "fp8-tensor", "int4", "int4-g32", "int4-g64", "int4-g256", "mxfp4")


def parse_precision(text: Optional[str], dtype: str = "bf16") -> Precision:
    """The precision a name asks for (None or "": the dtype, unquantized); one line otherwise."""
    raw = (text or dtype or "bf16").strip().lower()
    name = _ALIASES.get(raw, raw)
    if name in PLAIN:
        return Precision(name, "W16A16", {"fp32": 4.0}.get(name, 2.0))
    if name in QUANTIZED:
        return QUANTIZED[name]
    if name.startswith("int4-g"):
        raise UserError(f"int4 group size {name[6:]!r}: torch's int4 kernels take "
                        f"{', '.join(map(str, INT4_GROUPS))}")
    raise UserError(f"unknown precision {text!r}; choose one of {', '.join(CHOICES)}")


#: fp8 GEMMs (torch's _scaled_mm) need K and N multiples of 16
FP8_ALIGN = 16


def served_dtypes(dtype: Optional[str], asked: Optional[str], default: str) -> tuple[str, str]:
    """(the activations' dtype, the quantized precision or "") from a dtype and a precision
    asked (either may be None; ``default``: the device's dtype).  An unquantized precision is
    the dtype (a different dtype beside it is refused); a quantized one keeps the dtype asked,
    else bf16 where the default is fp32: W8A8's output is bf16 (row-wise scaled_mm writes it)
    and a weight-only kernel's fast path takes bf16 (torch's int4 CPU kernel with fp32
    activations runs ~8× slower than the fp32 GEMM; asked with an explicit fp32 dtype, it is
    priced and measured as it is).  The one rule for the CLI, the explorer and validate."""
    p = parse_precision(asked, dtype or default)
    if p.name in PLAIN:
        if dtype and asked and dtype != p.name:
            raise UserError(f"--dtype {dtype} and --precision {asked} disagree: an unquantized "
                            "precision is the dtype (give one of them)")
        return p.name, ""
    act = dtype or default
    if act == "fp32" and (p.act_quant or not dtype):
        act = "bf16"
    return act, p.name


def k_alignment(name: str) -> int:
    """What each quantized GEMM's K must be a multiple of: an int4 group, an MX block (32), 16
    for fp8 (torch's _scaled_mm), 1 unquantized.  The families round the widths they cut to it
    (:attr:`pis_tui.families.base.PhaseContext.k_align`)."""
    p = get(name)
    if p is None:
        return 1
    return p.group if p.group else FP8_ALIGN


def lcm(a: int, b: int) -> int:
    return a * b // math.gcd(a, b)


def quantizes(op) -> bool:
    """Whether a GEMM of the op list is quantized at a quantized precision."""
    name = getattr(op, "name", "")
    return op.op_type in ("gemm", "grouped_gemm") and name not in KEEP_UNQUANTIZED \
        and not name.endswith("_router")


def apply_precision(ops: list, precision: Precision, engine: str = "eager") -> list:
    """The op list served at ``precision``: each quantized GEMM carries it (its bytes, its key,
    its kernel), and W8A8 adds the activation quantization before the GEMMs that read a new
    input.  ``eager`` quantizes each linear's input itself (as transformers' modules do, one
    per nn.Linear); ``fused`` once per input that merged GEMMs share (q/k/v, gate/up: vLLM's
    quantization runs once before the merged GEMM).  Unquantized: ``ops`` unchanged."""
    if not precision.quantized:
        return list(ops)
    out: list = []
    shared_input = None  # (m, k, count) of the GEMM run just before, if nothing came between
    for op in ops:
        if not quantizes(op):
            out.append(op)
            shared_input = None if op.op_type != "gemm" else shared_input
            continue
        q = replace(op, quant=precision.name)
        if precision.act_quant:
            rows = op.m if op.op_type == "gemm" else int(round(op.rows))
            here = (rows, op.k, op.count)
            if engine == "eager" or here != shared_input:
                out.append(_act_quant(op, rows, precision))
            shared_input = here
        out.append(q)
    return out


def _act_quant(op, rows: int, precision: Precision):
    return Elementwise(f"quant.{op.name}", "act_quant", rows, op.k, op.count, op.dtype,
                       extra=1 if precision.act_quant == "per-tensor" else 0)


class KernelShapeError(UserError):
    """A quantized GEMM of an op list that the precision's kernel cannot run (one line): a sweep
    or a plan leaves that strategy out, said; the dense model's is an error."""


def check_kernel_shapes(ops: list, precision: Precision) -> None:
    """One line for a quantized GEMM the precision's kernel cannot run (int4: K a multiple of
    the group, N of 16); the families align the widths they cut, so this names a model's own."""
    if not precision.kernel:
        return  # estimated only (MXFP4): no kernel's constraint to meet
    for op in ops:
        # grouped GEMMs at a precision are estimated (no torch kernel groups int4 experts)
        if getattr(op, "quant", "") and op.op_type == "gemm":
            if precision.group and (op.k % precision.group or op.n % INT4_N_ALIGN):
                raise KernelShapeError(
                    f"{precision.name}: {op.name} is {op.n}×{op.k} (N × K); the int4 kernels need "
                    f"K a multiple of the group ({precision.group}) and N of {INT4_N_ALIGN}: "
                    "try another group size (--precision int4-g32)")
            if not precision.group and (op.k % FP8_ALIGN or op.n % FP8_ALIGN):
                raise KernelShapeError(
                    f"{precision.name}: {op.name} is {op.n}×{op.k} (N × K); fp8 GEMMs "
                    f"(_scaled_mm) need both multiples of {FP8_ALIGN}")
