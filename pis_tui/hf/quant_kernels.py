"""Quantized GEMMs in torch: the real kernels behind ``--precision``, shared by the measuring
cases (:mod:`pis_tui.timing`) and the quantized linears of a real model (:mod:`pis_tui.hf.quantize`).

* int4 weight-only (W4A16): weights quantized per group of G input channels (asymmetric: a
  bf16 scale and zero per group), packed with ``_convert_weight_to_int4pack[_for_cpu]`` and
  multiplied by ``aten._weight_int4pack_mm`` (CUDA, tinygemm) or
  ``aten._weight_int4pack_mm_for_cpu`` (a real CPU kernel).  Dequantized value of a 4-bit
  code q in group g: (q − 8)·scale_g + zero_g.
* fp8 W8A8: weights per output row (or per tensor) in ``float8_e4m3fn``, activations
  quantized per token (or by a static per-tensor scale), multiplied by ``torch._scaled_mm``
  with an output in the activation dtype.  On a CPU ``_scaled_mm`` runs as a reference loop
  (about 1,800× slower than bf16): correct, never timed (:func:`fp8_kernel_on`).

Every function takes and returns tensors; the names say which aten op runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

#: the fp8 format (e4m3: max 448), and the largest magnitude it holds
FP8_MAX = 448.0


def _torch():
    import torch

    return torch


def int4_kernel_name(device_type: str) -> str:
    """The aten op an int4 weight-only GEMM runs on a device type."""
    return ("aten._weight_int4pack_mm_for_cpu" if device_type == "cpu"
            else "aten._weight_int4pack_mm")


FP8_KERNEL = "aten._scaled_mm"


def fp8_kernel_on(device) -> Optional[str]:
    """None where fp8 GEMMs have a real kernel (CUDA, compute capability 8.9 or newer); else
    one line saying what the device has instead."""
    torch = _torch()
    dev = torch.device(device)
    if dev.type != "cuda":
        return (f"{dev.type} has no fp8 GEMM kernel (torch's _scaled_mm runs there as a reference "
                "loop, ~1,800× slower than bf16): fp8 is estimated, not measured, here")
    major, minor = torch.cuda.get_device_capability(dev)
    if (major, minor) < (8, 9):
        name = torch.cuda.get_device_name(dev)
        return (f"{name} (compute capability {major}.{minor}) has no fp8 tensor cores (fp8 needs "
                "8.9+: Ada, Hopper, Blackwell): fp8 is estimated as its emulation, not measured")
    return None


@dataclass
class Int4Weight:
    """An [N, K] weight packed for the int4 kernel, with what dequantizing it needs."""

    packed: object  # the kernel's packed layout
    scales_zeros: object  # [K/G, N, 2]: scale and zero per group, in the activation dtype
    group: int
    n: int
    k: int
    codes: object = None  # [N, K] int32 codes 0..15 (kept only when asked: the float64 check)

    def dequantize(self):
        """The weight the kernel multiplies by, in float64 (the reference)."""
        torch = _torch()
        if self.codes is None:
            raise ValueError("quantize with keep_codes=True to dequantize")
        sz = self.scales_zeros.double()  # [K/G, N, 2]
        scale = sz[..., 0].t().repeat_interleave(self.group, dim=1)  # [N, K]
        zero = sz[..., 1].t().repeat_interleave(self.group, dim=1)
        return (self.codes.double() - 8.0) * scale + zero + torch.zeros((), dtype=torch.float64)


def quantize_int4(w, group: int, act_dtype=None, keep_codes: bool = False) -> Int4Weight:
    """Quantize an [N, K] weight to int4 with a scale and zero per group of ``group`` input
    channels (round to nearest, asymmetric min/max) and pack it for the device's kernel.
    N must be a multiple of 16 and K of the group (the kernels' layout)."""
    torch = _torch()
    n, k = w.shape
    if k % group or n % 16:
        raise ValueError(f"int4 needs K ({k}) a multiple of the group ({group}) and N ({n}) of 16")
    act_dtype = act_dtype or w.dtype
    wf = w.detach().float().reshape(n, k // group, group)
    lo = wf.amin(dim=-1, keepdim=True)
    hi = wf.amax(dim=-1, keepdim=True)
    scale = ((hi - lo) / 15.0).clamp(min=1e-8)
    # (q − 8)·scale + zero = w  with q = (w − lo)/scale  ⇒  zero = lo + 8·scale
    zero = lo + 8.0 * scale
    codes = ((wf - lo) / scale).round().clamp(0, 15).to(torch.int32).reshape(n, k)
    # the scales the kernel reads are rounded to its dtype: the codes must use the same ones
    sz = torch.stack([scale.squeeze(-1), zero.squeeze(-1)], dim=-1).transpose(0, 1).contiguous()
    sz = sz.to(act_dtype)
    if w.device.type == "cpu":
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
    else:
        # CUDA's layout packs two codes a byte first ([N, K/2] uint8), then tiles for the kernel
        u8 = (codes[:, ::2] << 4 | codes[:, 1::2]).to(torch.uint8)
        packed = torch.ops.aten._convert_weight_to_int4pack(u8.to(w.device), _inner_k_tiles(k))
    return Int4Weight(packed, sz.to(w.device), group, n, k, codes if keep_codes else None)


def _inner_k_tiles(k: int) -> int:
    """tinygemm's K tiling: the largest of 8, 4, 2 with K a multiple of 16 × tiles."""
    for t in (8, 4, 2):
        if k % (16 * t) == 0:
            return t
    raise ValueError(f"K = {k} is not a multiple of 32 (tinygemm's smallest K tile)")


def int4_mm(x, w: Int4Weight):
    """Y[M, N] = X[M, K] · dequant(W)ᵀ through the device's int4 kernel (X 2-D)."""
    torch = _torch()
    if x.device.type == "cpu":
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x, w.packed, w.group, w.scales_zeros)
    return torch.ops.aten._weight_int4pack_mm(x, w.packed, w.group, w.scales_zeros)


@dataclass
class Fp8Weight:
    """An [N, K] weight in float8_e4m3fn with its scale (per row [1, N] or per tensor)."""

    q: object  # [N, K] float8_e4m3fn
    scale: object  # float32: [1, N] (row) or a 0-d tensor (tensor)
    per_row: bool

    def dequantize(self):
        s = self.scale.reshape(-1, 1) if self.per_row else self.scale
        return self.q.double() * s.double()


def quantize_fp8(w, per_row: bool = True) -> Fp8Weight:
    """An [N, K] weight in fp8 e4m3 with a scale per output row (or one per tensor)."""
    torch = _torch()
    wf = w.detach().float()
    amax = wf.abs().amax(dim=1, keepdim=True) if per_row else wf.abs().amax()
    scale = (amax / FP8_MAX).clamp(min=1e-12)
    q = (wf / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    s = scale.reshape(1, -1).contiguous() if per_row else scale.reshape(())
    return Fp8Weight(q, s.float(), per_row)


def act_quant(x, static_scale=None):
    """Activations [M, K] to fp8: a scale per token (the absmax of its row / 448: dynamic
    W8A8) or the given per-tensor scale (static); returns (x_fp8, scale [M, 1] or 0-d)."""
    torch = _torch()
    if static_scale is None:
        scale = (x.abs().amax(dim=-1, keepdim=True).float() / FP8_MAX).clamp(min=1e-12)
    else:
        scale = static_scale
    q = (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q, scale


def fp8_mm(xq, x_scale, w: Fp8Weight, out_dtype):
    """Y = (X_q · s_x)(W_q · s_w)ᵀ through ``torch._scaled_mm`` (W passed transposed: the
    column-major operand it needs).  Row-wise scales need ``out_dtype`` bf16."""
    torch = _torch()
    sw = w.scale if w.per_row else w.scale.reshape(())
    if not w.per_row and x_scale.numel() != 1:
        raise ValueError("a per-tensor fp8 weight pairs with a per-tensor activation scale "
                         "(act_quant(x, static_scale))")
    sx = x_scale if w.per_row else x_scale.reshape(()).float()
    if w.per_row and sx.dim() == 0:  # a static per-tensor activation scale with row weights
        sx = sx.reshape(1, 1).expand(xq.shape[0], 1).contiguous()
    return torch._scaled_mm(xq, w.q.t(), scale_a=sx.float(), scale_b=sw.float(), out_dtype=out_dtype)
