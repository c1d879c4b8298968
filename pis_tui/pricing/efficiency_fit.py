"""The analytical model's figures measured on a device: an "efficiency" block (the format of a
GPU profile's, :func:`pis_tui.device.gpus.parse_efficiency`) from the kernels ``calibrate`` timed.

Each figure is what the timed kernels of its kind reached, with its source saying how many and
of which kind (never a default presented as measured; a figure no timed kernel supports is left
out, so the profile's or the default applies):

* ``kernel_floor_us``: the time of the smallest kernels timed (the least of those moving under
  64 KiB; a fixed cost no kernel goes below);
* ``bandwidth``: the median share of the bandwidth the memory-bound elementwise kernels of at
  least 1 MiB reached, after their floor: bytes / ((t - floor) × bandwidth);
* ``gemm`` / ``attention`` / ``sparse24``: the median share of the peak reached by the
  compute-bound GEMMs (dense; 2:4) and attention kernels;
* ``gemm_latency_us``: the median time memory-bound GEMMs (M <= 64) took beyond the floor and
  their bytes at the bandwidth share above (the wait for first bytes and the last wave);
* ``sparse24_bandwidth``: the median bandwidth share of memory-bound 2:4 GEMMs.

Shares are of the peaks the estimator will divide by: the measured peaks when the table
carries them (``calibration``), else the datasheet's.  Pure arithmetic: no torch.
"""

from __future__ import annotations

import statistics
from typing import Iterable, Optional

from ..model.ops import Attention, Elementwise, Gemm, op_from_dict

SMALL_BYTES = 64 * 1024
LARGE_EW_BYTES = 1 << 20
MEMORY_BOUND_M = 64


def _ops(measurements: Iterable) -> list:
    out = []
    for m in measurements:
        if getattr(m, "status", "ok") != "ok" or not getattr(m, "ms", None):
            continue
        if (getattr(m, "conditions", None) or {}).get("estimated"):
            continue  # a scaled stand-in is no measurement of its kernel
        d = dict(m.op)
        d.setdefault("count", 1.0)
        try:
            out.append((op_from_dict(d), float(m.ms)))
        except (KeyError, TypeError, ValueError):
            continue
    return out


def fit_efficiency(measurements: Iterable, device, calibration: Optional[dict] = None,
                   where: str = "this device") -> dict:
    """The "efficiency" block measured on ``device`` (a DeviceProfile) from ``measurements``
    (Measurement objects); ``calibration`` {dtype: {"peak_tflops", "bandwidth_gbs"}}."""
    cal = calibration or {}
    ops = _ops(measurements)
    if not ops:
        return {}

    def peak(dtype: str, sparse: bool = False) -> float:
        c = cal.get(dtype) or {}
        if c.get("peak_tflops"):
            ratio = device.peak(dtype, True) / device.peak(dtype) if sparse else 1.0
            return float(c["peak_tflops"]) * 1e12 * ratio
        return device.peak(dtype, sparse)

    def bandwidth(dtype: str) -> float:
        c = cal.get(dtype) or next(iter(cal.values()), {}) or {}
        return float(c["bandwidth_gbs"]) * 1e9 if c.get("bandwidth_gbs") else device.bandwidth

    what = ("of the measured peaks" if cal else "of the datasheet peaks")
    block: dict = {}

    def put(key: str, value: float, n: int, kind: str) -> None:
        block[key] = {"value": round(value, 4 if not key.endswith("_us") else 2),
                      "source": f"measured by pis-tui calibrate on {where}: {kind} ({n} kernels)"}

    small = [ms for op, ms in ops if op.bytes() < SMALL_BYTES]
    floor_ms = min(small) if small else None
    if floor_ms is not None:
        put("kernel_floor_us", floor_ms * 1e3, len(small), "the least time of the kernels moving under 64 KiB")
    floor = floor_ms or 0.0

    def bw_share(op, ms):
        t = (ms - floor) * 1e-3
        return op.bytes() / (t * bandwidth(op.dtype)) if t > 0 else None

    ew = [s for s in (bw_share(op, ms) for op, ms in ops
                      if isinstance(op, Elementwise) and op.bytes() >= LARGE_EW_BYTES) if s]
    bw_eff = None
    if ew:
        bw_eff = min(1.0, statistics.median(ew))
        put("bandwidth", bw_eff, len(ew), "median bandwidth share of elementwise kernels of 1 MiB or more")

    def compute_bound(op) -> bool:
        sparse = isinstance(op, Gemm) and op.kind == "sparse_24"
        return op.flops() / peak(op.dtype, sparse) > op.bytes() / bandwidth(op.dtype)

    for key, pick, sparse, kind in (
            ("gemm", lambda o: isinstance(o, Gemm) and o.kind != "sparse_24", False, "dense GEMMs"),
            ("sparse24", lambda o: isinstance(o, Gemm) and o.kind == "sparse_24", True, "2:4 GEMMs"),
            ("attention", lambda o: isinstance(o, Attention), False, "attention kernels")):
        shares = [op.flops() / (ms * 1e-3) / peak(op.dtype, sparse)
                  for op, ms in ops if pick(op) and compute_bound(op)]
        if shares:
            put(key, min(1.0, statistics.median(shares)), len(shares),
                f"median share {what} reached by compute-bound {kind}")
    share = bw_eff or 1.0
    lat = [(ms - floor) * 1e3 - op.bytes() / (bandwidth(op.dtype) * share) * 1e6
           for op, ms in ops if isinstance(op, Gemm) and op.kind != "sparse_24"
           and op.m <= MEMORY_BOUND_M and not compute_bound(op)]
    if lat:
        put("gemm_latency_us", max(0.0, statistics.median(lat)), len(lat),
            "median time of memory-bound GEMMs (M <= 64) beyond the floor and their bytes")
    sp = [s for s in (bw_share(op, ms) for op, ms in ops if isinstance(op, Gemm)
                      and op.kind == "sparse_24" and not compute_bound(op)) if s]
    if sp:
        put("sparse24_bandwidth", min(1.0, statistics.median(sp)), len(sp),
            "median bandwidth share of memory-bound 2:4 GEMMs")
    return block
