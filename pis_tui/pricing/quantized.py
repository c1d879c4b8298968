"""How a quantized GEMM runs on a device under an engine: the mode, the peak it computes at, the
attainable shares, and the kernel assumed (named in the engine's profile with its source).

* ``w8a8``: fp8 weights and activations on fp8 tensor cores (the fp8 peak; the share of it
  the profile's ``fp8_gemm`` says);
* ``weight_only``: 4-bit (int4, MXFP4) weights dequantized in the kernel's main loop, the
  MMA at the activation dtype's peak (the share ``gemm`` × ``w4a16``: what a mixed-input
  kernel keeps of the dense kernel's rate), the weights streamed at ``w4a16_bandwidth``;
* ``emulated``: fp8 weights on a device without fp8 tensor cores (A100, a CPU): under
  ``fused`` a W8A16 mixed-input kernel (vLLM's FP8 Marlin on Ampere), under ``eager`` a
  dequantization kernel of its own (fp8 → the activation dtype) and the dense GEMM;
  labelled ``emulated``, and its activation quantization does not run.

No torch.  Pure arithmetic over a device profile and its efficiency figures.
"""

from __future__ import annotations

from typing import Optional

from ..device.gpus import DeviceProfile
from ..model.ops import dtype_bytes
from ..model.quant_formats import Precision, get


def fp8_native(device: DeviceProfile) -> bool:
    """Whether the device has fp8 tensor cores (a GPU profile with an fp8 peak; SM89+)."""
    return device.kind != "cpu" and bool(device.peak_tflops.get("fp8"))


def precision_of(op) -> Optional[Precision]:
    return get(getattr(op, "quant", ""))


def mode(op, device: DeviceProfile) -> str:
    """``w8a8`` | ``weight_only`` | ``emulated`` for a quantized GEMM ("" unquantized)."""
    p = precision_of(op)
    if p is None:
        return ""
    if p.act_quant:
        return "w8a8" if fp8_native(device) else "emulated"
    return "weight_only"


def compute_dtype(op, device: DeviceProfile) -> str:
    """The dtype whose peak the GEMM's MMA runs at: fp8 for native W8A8, else the activation
    dtype (weight-only kernels dequantize to it)."""
    return "fp8" if mode(op, device) == "w8a8" else op.dtype


def kernel_key(op, device: DeviceProfile) -> str:
    """The engine profile's "quantized" entry that names the kernel: ``fp8``, ``int4``,
    ``mxfp4``, ``fp8_emulated``; with 2:4 weights ``sparse_fp8`` / ``sparse_int4``."""
    p = precision_of(op)
    if p is None:
        return ""
    m = mode(op, device)
    base = "fp8_emulated" if m == "emulated" else ("fp8" if p.act_quant else
                                                   ("mxfp4" if p.name == "mxfp4" else "int4"))
    if getattr(op, "kind", "") == "sparse_24" and base in ("fp8", "int4"):
        return "sparse_" + base
    return base


def dequant_bytes(op) -> float:
    """The eager emulation's dequantization kernel: read the fp8 weight, write it at the
    activation dtype's width (per call)."""
    groups = getattr(op, "groups", 1.0)
    return groups * op.n * op.k * (1 + dtype_bytes(op.dtype))
