"""The quantized formats a model can be served in: what each stores per weight (bytes, scales,
group) and which kernel family a measurement of it runs.  The data only: parsing a
``--precision`` and serving an op list at it is :mod:`pis_tui.model.precision`'s.  No torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

#: unquantized precisions: the activation dtype itself
PLAIN = ("bf16", "fp16", "fp32")
#: int4 group sizes torch's kernels take (``_weight_int4pack_mm``: 32, 64, 128, 256)
INT4_GROUPS = (32, 64, 128, 256)


@dataclass(frozen=True)
class Precision:
    """One served precision (quantized or not)."""

    name: str  # canonical: bf16 | fp16 | fp32 | fp8-row | fp8-tensor | int4-g128 | mxfp4
    scheme: str  # W16A16 | W8A8 | W4A16
    weight_bytes: float  # bytes per stored weight, before scales
    group: int = 0  # weights sharing one scale along K (0: per output row or per tensor)
    scale_bytes: float = 0.0  # bytes of scales (and zeros) per group / per row / per tensor
    act_quant: str = ""  # "" | "per-token" (dynamic) | "per-tensor" (static)
    #: the kernel family a measurement runs (in the cache key): "" when it is never measured
    kernel: str = ""

    @property
    def quantized(self) -> bool:
        return self.scheme != "W16A16"

    @property
    def weight_only(self) -> bool:
        return self.scheme == "W4A16"

    @property
    def label(self) -> str:
        """``int4-g128 (W4A16)``; an unquantized precision its name."""
        return f"{self.name} ({self.scheme})" if self.quantized else self.name

    def weight_nbytes(self, n: float, k: float) -> float:
        """Bytes of an [N, K] weight at this precision, scales included."""
        if not self.quantized:
            raise ValueError("an unquantized weight's bytes are its dtype's")
        body = n * k * self.weight_bytes
        if self.group:
            return body + n * (k / self.group) * self.scale_bytes
        if self.name == "fp8-row":
            return body + n * self.scale_bytes
        return body + self.scale_bytes

    def to_dict(self) -> dict:
        return {"name": self.name, "scheme": self.scheme, "weight_bits": self.weight_bytes * 8,
                "group": self.group or None, "activation_quant": self.act_quant or None,
                "kernel": self.kernel or None}


QUANTIZED = {
    "fp8-row": Precision("fp8-row", "W8A8", 1.0, 0, 4.0, "per-token", "scaled_mm"),
    "fp8-tensor": Precision("fp8-tensor", "W8A8", 1.0, 0, 4.0, "per-tensor", "scaled_mm"),
    # tinygemm's scales_and_zeros: [K/G, N, 2] in bf16 = 4 bytes per group of G
    **{f"int4-g{g}": Precision(f"int4-g{g}", "W4A16", 0.5, g, 4.0, "", "int4pack_mm")
       for g in INT4_GROUPS},
    # OCP MX: e2m1 values, one e8m0 (1 byte) scale per block of 32
    "mxfp4": Precision("mxfp4", "W4A16", 0.5, 32, 1.0, "", ""),
}


def get(name: str) -> Optional[Precision]:
    """A quantized precision by its canonical name (None: unquantized or empty)."""
    return QUANTIZED.get(name) if name else None
