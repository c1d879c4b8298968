"""A real model served at a quantized precision: its ``nn.Linear`` modules replaced by modules
that run the quantized kernels of :mod:`pis_tui.hf.quant_kernels` (what ``validate
--precision`` times end to end).

What is quantized is what :func:`pis_tui.model.precision.apply_precision` quantizes in the op
list: every linear of the decoder (attention q/k/v/o, the MLP's gate/up/down, a shared
expert's, SliceGPT-like residual maps, both factors of a low-rank linear), and nothing else:

* the ``lm_head`` and the embeddings stay in the activation dtype (serving checkpoints keep
  them so; the embedding is no linear);
* routers stay too: an MoE block's ``gate`` / ``router``, Qwen2-MoE's ``shared_expert_gate``,
  dynamic depth's ``attn_router`` / ``mlp_router`` (any ``*_router``);
* an MoE model is refused: its routed experts are 3-D weights run by ``grouped_mm``, and torch
  has no grouped int4 or fp8 kernel, while the op list quantizes the grouped GEMMs.

The modules:

* :class:`Int4Linear` (W4A16, ``int4-g<G>``): the weight quantized per group of G input
  channels and packed for ``aten._weight_int4pack_mm[_for_cpu]``; forward: x reshaped to 2-D,
  the int4 kernel, the bias added, reshaped back.  The CPU kernel takes fp32, bf16 or fp16
  activations (its scales are in the activation dtype).
* :class:`Fp8Linear` (W8A8, ``fp8-row`` / ``fp8-tensor``): the weight in ``float8_e4m3fn``
  with a scale per output row (or one per tensor); forward: the activations quantized, then
  ``torch._scaled_mm``.  ``fp8-row`` quantizes them per token (dynamic: each row's absmax,
  as the op list's ``act_quant`` op prices it).  ``fp8-tensor``'s activation scale is static:
  the absmax of the first input the module sees over 448, kept from then on (weight
  independent; the first call of a validate run is an untimed warm-up over the same inputs
  as the timed ones, so it is calibrated on them).  The output is in the activation dtype,
  except where ``_scaled_mm`` cannot write it: row-wise scales need a bf16 output on CUDA,
  so an fp32 or fp16 model computes those in bf16 and casts back (the module's ``note``
  says so).  On a CPU ``_scaled_mm`` is a reference loop: correct, never timed.

:func:`quantize_model` checks every linear first (one line naming a module whose shape the
kernel cannot take, and the group sizes that would fit it), then replaces them, and returns
what it did.  torch is imported inside the functions only.
"""

from __future__ import annotations

from typing import Optional

from ..errors import UserError
from ..model.precision import INT4_N_ALIGN, KEEP_UNQUANTIZED, parse_precision
from ..model.quant_formats import INT4_GROUPS
from .quant_kernels import (FP8_KERNEL, act_quant, fp8_mm, int4_kernel_name, int4_mm,
                            quantize_fp8, quantize_int4)

#: module attribute names kept in the activation dtype besides ``lm_head`` and ``*_router``:
#: an MoE block's router (``gate`` in Qwen-MoE, Mixtral, OLMoE; ``router`` in Granite-MoE)
#: and Qwen2-MoE's shared-expert gate
ROUTER_ATTRS = ("gate", "router", "shared_expert_gate")

_CLASSES: dict = {}


def _classes() -> dict:
    """The quantized linear classes (torch.nn imported here, on first use)."""
    if _CLASSES:
        return _CLASSES
    import torch

    nn = torch.nn

    class Int4Linear(nn.Module):
        """Y = X·dequant(W)ᵀ + b through the device's int4 weight-only kernel."""

        def __init__(self, lin, group: int, keep_codes: bool = False):
            super().__init__()
            w = lin.weight.detach()
            self.in_features, self.out_features = lin.in_features, lin.out_features
            self.group = group
            q = quantize_int4(w, group, act_dtype=w.dtype, keep_codes=keep_codes)
            self.register_buffer("packed", q.packed)
            self.register_buffer("scales_zeros", q.scales_zeros)
            self._q = q  # the packed weight as the kernel takes it (same tensors)
            self.bias = (nn.Parameter(lin.bias.detach().clone(), requires_grad=False)
                         if lin.bias is not None else None)
            self.kernel = int4_kernel_name(w.device.type)

        def _apply(self, fn, *args, **kw):  # .to(): keep the kernel's view on the moved buffers
            out = super()._apply(fn, *args, **kw)
            self._q.packed, self._q.scales_zeros = self.packed, self.scales_zeros
            return out

        def forward(self, x):
            shape = x.shape
            y = int4_mm(x.reshape(-1, self.in_features), self._q)
            if self.bias is not None:
                y = y + self.bias
            return y.reshape(*shape[:-1], self.out_features)

        def dequantized(self):
            """The weight the kernel multiplies by, in float64 (quantized with keep_codes)."""
            return self._q.dequantize()

        def weight_bytes(self) -> int:
            return _nbytes(self.packed) + _nbytes(self.scales_zeros) + _nbytes(self.bias)

        def extra_repr(self) -> str:
            return (f"in_features={self.in_features}, out_features={self.out_features}, "
                    f"group={self.group}, bias={self.bias is not None}, kernel={self.kernel}")

    class Fp8Linear(nn.Module):
        """Y = (X_q·s_x)(W_q·s_w)ᵀ + b through ``torch._scaled_mm``: per-token activation
        scales (``per_row``) or a static per-tensor one (the first input's absmax / 448)."""

        def __init__(self, lin, per_row: bool):
            super().__init__()
            w = lin.weight.detach()
            self.in_features, self.out_features = lin.in_features, lin.out_features
            self.per_row = per_row
            q = quantize_fp8(w, per_row=per_row)
            self.register_buffer("weight_fp8", q.q)
            self.register_buffer("weight_scale", q.scale)
            self._q = q
            self.bias = (nn.Parameter(lin.bias.detach().clone(), requires_grad=False)
                         if lin.bias is not None else None)
            # the static activation scale of fp8-tensor: set by the first forward
            self.register_buffer("input_scale", torch.zeros((), dtype=torch.float32))
            self.calibrated = per_row
            self.act_dtype = w.dtype
            self.compute_dtype = _fp8_out_dtype(w.dtype, per_row, w.device.type)
            self.kernel = FP8_KERNEL

        def _apply(self, fn, *args, **kw):
            out = super()._apply(fn, *args, **kw)
            self._q.q, self._q.scale = self.weight_fp8, self.weight_scale
            return out

        def quantize_input(self, x2):
            """(x_fp8, scale) of a 2-D input: per token, or by the static scale."""
            if self.per_row:
                return act_quant(x2)
            if not self.calibrated:  # the first input sets the static scale (no host sync)
                self.input_scale.copy_((x2.detach().abs().amax().float() / 448.0).clamp(min=1e-12))
                self.calibrated = True
            return act_quant(x2, self.input_scale)

        def forward(self, x):
            shape = x.shape
            xq, s = self.quantize_input(x.reshape(-1, self.in_features))
            y = fp8_mm(xq, s, self._q, self.compute_dtype)
            if y.dtype != x.dtype:
                y = y.to(x.dtype)
            if self.bias is not None:
                y = y + self.bias
            return y.reshape(*shape[:-1], self.out_features)

        def reference(self, x):
            """The same product in float64 from the quantized operands (the check)."""
            x2 = x.reshape(-1, self.in_features)
            xq, s = self.quantize_input(x2)
            y = (xq.double() * s.double()) @ self._q.dequantize().t()
            if self.bias is not None:
                y = y + self.bias.double()
            return y.reshape(*x.shape[:-1], self.out_features)

        def weight_bytes(self) -> int:
            return _nbytes(self.weight_fp8) + _nbytes(self.weight_scale) + _nbytes(self.bias)

        def extra_repr(self) -> str:
            return (f"in_features={self.in_features}, out_features={self.out_features}, "
                    f"{'per-row weights, per-token' if self.per_row else 'per-tensor weights, static'}"
                    f" activations, out {str(self.compute_dtype).replace('torch.', '')}")

    _CLASSES.update(Int4Linear=Int4Linear, Fp8Linear=Fp8Linear)
    return _CLASSES


def _nbytes(t) -> int:
    return 0 if t is None else t.numel() * t.element_size()


def _fp8_out_dtype(act_dtype, per_row: bool, device_type: str):
    """What ``_scaled_mm`` writes: the activation dtype, except bf16 where CUDA's row-wise
    scaling takes no other output (an fp32 / fp16 model casts back after)."""
    import torch

    if per_row and device_type == "cuda" and act_dtype != torch.bfloat16:
        return torch.bfloat16
    return act_dtype


def is_quantized_linear(mod) -> bool:
    """``mod`` is one of the quantized linears :func:`quantize_model` puts in."""
    return isinstance(mod, tuple(_classes().values()))


def keep_reason(qualified: str) -> Optional[str]:
    """Why the linear at ``qualified`` (a module path) stays in the activation dtype, or None
    when it is quantized: the op list's rule (:data:`KEEP_UNQUANTIZED`, ``*_router``)."""
    last = qualified.rsplit(".", 1)[-1]
    parts = qualified.split(".")
    if "lm_head" in parts:  # also a tensor-parallel lm_head's inner ``head``
        return "lm_head (kept in the activation dtype)"
    if last in ROUTER_ATTRS or last in KEEP_UNQUANTIZED or last.endswith("_router"):
        return "router (kept in the activation dtype)"
    return None


def _linears(model) -> list:
    """[(qualified name, parent, attribute, nn.Linear)] of every nn.Linear in ``model``."""
    import torch.nn as nn

    out = []
    for pname, parent in model.named_modules():
        for attr, child in parent.named_children():
            if isinstance(child, nn.Linear):
                out.append((f"{pname}.{attr}" if pname else attr, parent, attr, child))
    return out


def _refuse_experts(model, precision: str) -> None:
    """An MoE model's routed experts (3-D weights): no grouped quantized kernel in torch."""
    for name, p in model.named_parameters():
        if p.dim() == 3:
            raise UserError(f"{precision}: {name} is a 3-D expert weight {tuple(p.shape)}: torch "
                            "has no grouped int4 / fp8 kernel for an MoE model's routed experts, "
                            "so a quantized MoE model cannot be built (validate it unquantized)")


def _check_shapes(todo: list, group: int, precision: str) -> None:
    """One line for the first linear whose shape the kernel cannot take: int4 (``group``)
    needs K a multiple of the group and N of 16; fp8 (``group`` 0: ``_scaled_mm``) K and N
    multiples of 16."""
    for name, _parent, _attr, lin in todo:
        n, k = lin.out_features, lin.in_features
        if not group:
            if k % 16 or n % 16:
                raise UserError(f"{precision}: {name} is {n}×{k} (N × K): torch._scaled_mm "
                                "needs K and N multiples of 16")
            continue
        if k % group == 0 and n % INT4_N_ALIGN == 0:
            continue
        if n % INT4_N_ALIGN:
            raise UserError(f"{precision}: {name} is {n}×{k} (N × K): the int4 kernels need N a "
                            f"multiple of {INT4_N_ALIGN}, which no group size changes")
        fits = [g for g in INT4_GROUPS if all(x[3].in_features % g == 0 for x in todo)]
        hint = (f"try --precision int4-g{max(fits)}" if fits
                else f"no group size ({', '.join(map(str, INT4_GROUPS))}) divides every K")
        raise UserError(f"{precision}: {name} is {n}×{k} (N × K): the int4 kernels need K a "
                        f"multiple of the group ({group}); {hint}")


def quantize_model(model, precision_name: str, *, keep_codes: bool = False) -> dict:
    """Replace ``model``'s linears (in place) by quantized ones at ``precision_name`` (any
    name ``--precision`` takes: ``int4``, ``int4-g64``, ``fp8``, ``fp8-tensor``).  Returns
    {"precision", "kernel", "quantized": [names], "skipped": {name: why},
    "bytes_before", "bytes_after"} (bytes of the linears it replaced, scales and biases
    included).  ``keep_codes`` keeps int4 codes to dequantize in float64 (checks only).
    UserError (one line): an unquantized or estimated-only precision, an MoE model, a shape
    the kernel cannot take; nothing is changed then."""
    prec = parse_precision(precision_name)
    if not prec.quantized:
        raise UserError(f"{prec.name} is not a quantized precision: nothing to quantize")
    if not prec.kernel:
        raise UserError(f"{prec.name}: torch has no kernel for it (estimated only): a model "
                        "cannot be quantized to it")
    _refuse_experts(model, prec.name)
    todo, skipped = [], {}
    for entry in _linears(model):
        why = keep_reason(entry[0])
        if why:
            skipped[entry[0]] = why
        else:
            todo.append(entry)
    import torch

    for name, _p, _a, lin in todo:
        w = lin.weight.data
        if type(w) is not torch.Tensor or w.layout != torch.strided:
            raise UserError(f"{prec.name}: {name} holds a {type(w).__name__} weight (2:4 "
                            "sparse?): torch has no kernel running it quantized")
    _check_shapes(todo, prec.group if prec.weight_only else 0, prec.name)
    cls = _classes()
    before = after = 0
    for name, parent, attr, lin in todo:
        before += _nbytes(lin.weight) + _nbytes(lin.bias)
        if prec.weight_only:
            q = cls["Int4Linear"](lin, prec.group, keep_codes=keep_codes)
        else:
            q = cls["Fp8Linear"](lin, per_row=prec.act_quant == "per-token")
        after += q.weight_bytes()
        setattr(parent, attr, q)
    device_type = next((lin.weight.device.type for *_x, lin in todo), "cpu")
    return {"precision": prec.name, "scheme": prec.scheme,
            "kernel": int4_kernel_name(device_type) if prec.weight_only else FP8_KERNEL,
            "quantized": [t[0] for t in todo], "skipped": skipped,
            "bytes_before": before, "bytes_after": after}

