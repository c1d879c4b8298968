"""Engines: how the serving stack runs the ops of an op list, kernel by kernel (`--engine`).

An op of the taxonomy's list (an RMSNorm, a rotary embedding, a SiLU·mul, attention) is not
one kernel: what the framework launches for it decides what pruning cannot remove.  Two
engines:

* ``eager``: transformers' modules as ``pis-tui validate`` builds them and as the reference
  study measured them (fp32 RMSNorm, rotate-half rotary, SiLU then mul, SDPA, unfused), timed
  under CUDA graphs on a GPU.  Its kernels are **traced**, not typed: ``profiles/kernels/
  eager.json`` is what :mod:`pis_tui.validation.kernel_trace` recorded from the real modules, per family
  and phase (the transformers and torch versions inside).
* ``fused``: what serving engines such as vLLM and SGLang run: RMSNorm fused with the residual
  add (one kernel, ``fused_add_rms_norm``), one rotary kernel for q and k, one SiLU·mul kernel,
  one KV-cache write (``reshape_and_cache``), FlashAttention-class attention, q/k/v and
  gate/up merged into one GEMM each, CUDA graphs.  Written by hand from those engines' kernels
  (``profiles/kernels/fused.json``, a source per entry).

A kernel is a list of tensors read and written, each as a multiple of its op's size (elements
of an Elementwise op's [rows, width], of a GEMM's output, of attention's queries) with its
dtype (``act``: the activation dtype).  The estimator prices each kernel as
max(bytes / (bandwidth × share), FLOPs / (peak × share)) plus the device's per-kernel floor
(:meth:`pis_tui.pricing.estimator.Estimator.analytical_ms`).  Pure data and arithmetic: no torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Optional

from ..errors import UserError
from ..model.ops import dtype_bytes
from ..model.scenario import ENGINES  # the one list of engines

DEFAULT_ENGINE = ENGINES[0]
#: how a combined strategy's name joins its parts (pis_tui.families.combinations.SEP; not
#: imported: the registry loads every family module)
COMBO_SEP = "+"
#: bytes per element of the dtypes a kernel names besides the activation's
_DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "int64": 8, "int32": 4, "bool": 1, "fp8": 1}


@dataclass(frozen=True)
class Kernel:
    aten: str
    reads: tuple  # ((multiple of the op's size, dtype), ...)
    writes: tuple

    def bytes(self, unit: float, act_dtype: str) -> float:
        act = dtype_bytes(act_dtype)

        def size(parts):
            return sum(f * unit * (act if dt == "act" else _DTYPE_BYTES.get(dt, 4)) for f, dt in parts)
        return size(self.reads) + size(self.writes)


@dataclass(frozen=True)
class Engine:
    name: str
    doc: str
    ops: dict  # family -> phase -> op name -> (Kernel, ...); "*" for every family / phase
    merged_gemms: dict  # the GEMM that computes several: {"q_proj": ("q_proj", "k_proj", "v_proj")}
    sources: dict
    traced_with: dict
    #: the kernel assumed for each quantized GEMM ({"fp8" | "int4" | "mxfp4" | "fp8_emulated" |
    #: "sparse_fp8" | "sparse_int4" | "act_quant": {"kernel", "source"}}; the profile's
    #: "quantized" block)
    quantized: dict = field(default_factory=dict)
    #: kernels() answers, by (family, phase, op name): a plan asks the same ones thousands of times
    _looked_up: dict = field(default_factory=dict, compare=False, repr=False)

    def kernels(self, family: str, phase: Optional[str], op_name: str, arch: str = "",
                device: str = "") -> Optional[tuple]:
        """The kernels of one call of an op (None: not described: one kernel of its own; an
        empty tuple: it runs inside another op's kernel).

        A combined strategy (``first+second``, :mod:`pis_tui.families.combinations`) has no
        trace of its own: each op is looked up in its parts' traces, the later part first (it
        was applied to what the earlier one kept, so its trace has the shapes of the op list:
        low rank's factors of width-pruned linears), then the earlier part's (dynamic depth's
        router, top-k, gather and scatter), then dense's.

        ``arch`` (:attr:`pis_tui.model.architecture.Architecture.key`): under ``eager``, an
        architecture other than the Llama layout the engine's own trace came from is priced by
        the kernels traced from its own modules first (its LayerNorm, its GELU, its attention
        path, its MoE block), the engine's trace covering only what a family adds (routers,
        factors).  ``device`` (the priced device's kind, ``cpu`` or ``gpu``): the kernels the
        architecture traced for that kind where they differ (an MoE block's experts run other
        glue on the CPU: histc of float expert ids, on a GPU of int ones)."""
        key = (family, phase, op_name, arch, device)
        try:
            return self._looked_up[key]
        except KeyError:
            got = None
            if arch and self.name == "eager" and arch not in LLAMA_TRACED:
                got = _arch_kernels(arch, phase, op_name, device)
            elif arch and self.name != "eager" and op_name.endswith("_residual") \
                    and _arch_norm(arch) == "layernorm":
                # the engines fuse a residual add into the next RMSNorm only: a LayerNorm model
                # (OPT, GPT-2, GPT-NeoX) runs its adds as kernels of their own
                return self._looked_up.setdefault(key, None)
            if got is None:
                got = self._find(family, phase, op_name)
            self._looked_up[key] = got
            return got

    def _find(self, family: str, phase: Optional[str], op_name: str) -> Optional[tuple]:
        phases = tuple(dict.fromkeys(p for p in (phase, "prefill", "decode", "*") if p))
        parts = tuple(reversed(family.split(COMBO_SEP))) if COMBO_SEP in family else (family,)
        for fam in dict.fromkeys(parts + ("dense", "*")):
            for ph in phases:
                got = self.ops.get(fam, {}).get(ph, {}).get(op_name)
                if got is not None:
                    return got
        base = op_name.split(".")[0]
        return self.kernels(family, phase, base) if base != op_name else None


#: architectures whose layer is the one ``eager.json`` was traced from (op names and kernels)
LLAMA_TRACED = ("", "llama", "mistral", "qwen2", "qwen3")


def _arch_norm(arch: str) -> str:
    """The normalisation an architecture's layers run (``rmsnorm`` or ``layernorm``)."""
    from ..model.architecture import template_norm

    return template_norm(arch)


def _arch_kernels(arch: str, phase: Optional[str], op_name: str, device: str = "") -> Optional[tuple]:
    """An architecture's own traced kernels for one op on a device kind (None: it has none for
    that op)."""
    from ..model.architecture import template_kernels

    by_phase = template_kernels(arch, device)
    for ph in dict.fromkeys(p for p in (phase, "prefill", "decode") if p):
        raw = by_phase.get(ph, {}).get(op_name)
        if raw is not None:
            return _kernels(raw)
    base = op_name.split(".")[0]
    return _arch_kernels(arch, phase, base, device) if base != op_name else None


#: kernels that are the op itself, priced by the GEMM or attention model rather than by bytes
LEAF_KERNELS = ("mm", "addmm", "bmm", "matmul", "linear", "_int_mm", "_sparse_semi_structured",
                "scaled_dot_product", "flash_attention", "efficient_attention", "cudnn_attention",
                "flex_attention")


def is_leaf(k: Kernel) -> bool:
    return _is_leaf_aten(k.aten)


@lru_cache(maxsize=None)
def _is_leaf_aten(aten: str) -> bool:
    return any(s in aten for s in LEAF_KERNELS)


def unit(op) -> float:
    """The size a kernel's tensors are multiples of: an Elementwise op's rows × width, a GEMM's
    output M × N, a grouped GEMM's output (routed rows × N), attention's queries (batch ×
    heads × q_len × head_dim)."""
    t = op.op_type
    if t == "gemm":
        return float(op.m * op.n)
    if t == "grouped_gemm":
        return float(op.rows * op.n)
    if t == "attention":
        return float(op.batch * op.q_heads * op.q_len * op.head_dim)
    return float(op.rows * op.width)


def _kernels(raw) -> tuple:
    return tuple(Kernel(k["aten"], tuple((float(f), d) for f, d in k.get("in", ())),
                        tuple((float(f), d) for f, d in k.get("out", ()))) for k in raw)


@lru_cache(maxsize=None)
def load(name: str = DEFAULT_ENGINE) -> Engine:
    """An engine from ``profiles/kernels/<name>.json``."""
    from ..shipped import profile_path

    if name not in ENGINES:
        raise UserError(f"unknown engine {name!r}; choose from {', '.join(ENGINES)}")
    path = profile_path("kernels", f"{name}.json")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: cannot read the {name} engine ({e})") from None
    ops = {fam: {ph: {op: _kernels(ks) for op, ks in by_op.items() if not op.startswith("_")}
                 for ph, by_op in by_phase.items()}
           for fam, by_phase in data.get("families", {}).items()}
    return Engine(name, data.get("doc", ""), ops,
                            {k: tuple(v) for k, v in data.get("merged_gemms", {}).items()},
                            data.get("sources", {}), data.get("traced_with", {}),
                            data.get("quantized", {}))


def check_engine(name: Optional[str]) -> str:
    name = name or DEFAULT_ENGINE
    if name not in ENGINES:
        raise UserError(f"unknown engine {name!r}; choose from {', '.join(ENGINES)}")
    return name
