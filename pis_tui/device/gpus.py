"""GPU profiles: the data shipped in profiles/gpus/ (each figure with its source), and the efficiency block the analytical model reads from a profile."""

from __future__ import annotations
from dataclasses import dataclass, field
from typing import Optional

from ..errors import UserError
from ..shipped import list_names, read_json


LOCAL = "local"


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    display_name: str
    kind: str  # "gpu" | "cpu"
    peak_tflops: dict  # dense peak per dtype
    sparse_peak_tflops: dict  # 2:4 peak per dtype (empty when no sparse tensor cores)
    bandwidth_gbs: float
    memory_gb: float
    l2_mb: float  # the value the estimator uses
    sm_count: int
    sparse_24: bool
    launch_overhead_us: float  # per kernel, inside a CUDA graph / a CPU call
    fingerprint: str
    sources: dict = field(default_factory=dict, hash=False, compare=False)
    notes: str = ""
    measured_table: Optional[str] = None  # profiles/measured/<file> to load as "shipped"
    is_local: bool = False
    capability: Optional[str] = None  # compute capability of a local GPU ("9.0")
    unknown: bool = False  # a local GPU no profile matches: figures from its own properties
    # the analytical model's attainable shares and per-kernel floor ({key: value}; the
    # profile's "efficiency" block), per-engine overrides, and a source per value
    efficiency: dict = field(default_factory=dict, hash=False, compare=False)
    efficiency_by_engine: dict = field(default_factory=dict, hash=False, compare=False)
    efficiency_sources: dict = field(default_factory=dict, hash=False, compare=False)
    #: the link between the GPUs of one node (tensor parallelism): the profile's
    #: "interconnect" block (kind, label, bandwidth_gbs per direction, latency_us, max_gpus,
    #: sources); None where the profile has none (see pis_tui.pricing.collectives)
    interconnect: Optional[dict] = field(default=None, hash=False, compare=False)
    #: the tensor-parallel degree this profile is one rank of (the local CPU's threads shared
    #: out by :func:`rank_device`); 1 for a whole device
    ranks: int = 1

    def peak(self, dtype: str, sparse: bool = False) -> float:
        """Peak FLOP/s for a dtype (dense unless sparse=True)."""
        table = self.sparse_peak_tflops if sparse else self.peak_tflops
        v = table.get(dtype) or table.get("bf16") or self.peak_tflops.get("fp32")
        return float(v) * 1e12

    @property
    def bandwidth(self) -> float:
        return self.bandwidth_gbs * 1e9

    def to_dict(self) -> dict:
        return {
            "name": self.name, "display_name": self.display_name, "kind": self.kind,
            "peak_tflops": self.peak_tflops, "sparse_peak_tflops": self.sparse_peak_tflops,
            "bandwidth_gbs": self.bandwidth_gbs, "memory_gb": self.memory_gb,
            "l2_mb": self.l2_mb, "sm_count": self.sm_count, "sparse_24": self.sparse_24,
            "fingerprint": self.fingerprint, "measured_table": self.measured_table,
            "interconnect": self.interconnect,
        }


def gpu_names() -> list[str]:
    return list_names("gpus")


def parse_efficiency(block: dict, where: str) -> tuple[dict, dict, dict]:
    """({key: value}, {engine: {key: value}}, {key: source}) of a profile's "efficiency" block:
    each entry {"value", "source"[, "fitted_to"]}, and "by_engine" {engine: {key: entry}}
    (an engine's own figures: ``fused:gemm`` in the sources).  A fitted figure's source says
    what it was fitted to."""
    values: dict = {}
    by_engine: dict = {}
    srcs: dict = {}

    def one(key: str, e, label: str) -> float:
        if not isinstance(e, dict) or "value" not in e or "source" not in e:
            raise UserError(f"{where}: efficiency {label} needs a value and a source")
        try:
            v = float(e["value"])
        except (TypeError, ValueError):
            raise UserError(f"{where}: efficiency {label} value {e['value']!r} is not a number") from None
        if key not in EFFICIENCY_KEYS:
            raise UserError(f"{where}: unknown efficiency figure {key!r} "
                            f"(known: {', '.join(EFFICIENCY_KEYS)})")
        if not (0.0 <= v <= 1.0) and not key.endswith("_us"):
            raise UserError(f"{where}: efficiency {label} {v} is not a share between 0 and 1")
        if v < 0:
            raise UserError(f"{where}: efficiency {label} {v} is negative")
        src = str(e["source"])
        if e.get("fitted_to"):
            src = f"{src}: fitted to {e['fitted_to']}"
        srcs[label] = src
        return v

    for key, e in (block or {}).items():
        if key == "by_engine":
            for eng, entries in (e or {}).items():
                by_engine[eng] = {k: one(k, x, f"{eng}:{k}") for k, x in (entries or {}).items()}
        else:
            values[key] = one(key, e, key)
    return values, by_engine, srcs


def profile_from_dict(d: dict) -> DeviceProfile:
    l2 = d["l2_mb"]
    eff, by_engine, eff_src = parse_efficiency(d.get("efficiency") or {}, f"profile {d.get('name')}")
    floor = eff.get("kernel_floor_us", d.get("launch_overhead_us", 3.0))
    return DeviceProfile(
        name=d["name"], display_name=d["display_name"], kind=d.get("kind", "gpu"),
        peak_tflops=dict(d["peak_tflops"]), sparse_peak_tflops=dict(d.get("sparse_peak_tflops", {})),
        bandwidth_gbs=float(d["memory_bandwidth_gbs"]), memory_gb=float(d["memory_gb"]),
        l2_mb=float(l2["used"] if isinstance(l2, dict) else l2), sm_count=int(d.get("sm_count", 0)),
        sparse_24=bool(d.get("sparse_24", False)),
        launch_overhead_us=float(floor),
        fingerprint=d.get("fingerprint", "profile:" + d["name"]), sources=d.get("sources", {}),
        notes=d.get("notes", ""), measured_table=d.get("measured_table"),
        efficiency=eff, efficiency_by_engine=by_engine, efficiency_sources=eff_src,
        interconnect=d.get("interconnect"),
    )


#: the figures an "efficiency" block may hold: shares of the datasheet peaks (GEMM, attention,
#: 2:4 GEMM), of the bandwidth (every kernel's bytes; 2:4 GEMMs in the memory-bound regime), a
#: memory-bound GEMM's fixed latency beyond the floor, and the per-kernel floor (µs)
EFFICIENCY_KEYS = ("gemm", "attention", "bandwidth", "sparse24", "sparse24_bandwidth",
                   "gemm_latency_us", "kernel_floor_us", "fp8_gemm", "w4a16", "w4a16_bandwidth")


#: the analytical model's figures where a profile gives none (the local CPU, a GPU profile
#: written without an "efficiency" block): typical of cuBLAS/cuDNN/FlashAttention-class
#: kernels on recent datacenter GPUs and of oneDNN/OpenBLAS on CPUs; assumed, not measured
DEFAULT_EFFICIENCY = {
    "gpu": {"gemm": 0.80, "attention": 0.55, "bandwidth": 0.85, "sparse24": 0.50,
            "sparse24_bandwidth": 0.60, "gemm_latency_us": 1.0, "kernel_floor_us": 3.0},
    "cpu": {"gemm": 0.70, "attention": 0.70, "bandwidth": 0.80, "sparse24": 0.70,
            "sparse24_bandwidth": 0.80, "gemm_latency_us": 0.0, "kernel_floor_us": 2.0},
}


DEFAULT_EFFICIENCY_SOURCE = ("assumed (pis-tui's defaults: typical of cuBLAS/FlashAttention-class "
                             "kernels on datacenter GPUs, oneDNN-class kernels on CPUs)")

#: quantized kernels' figures where a profile gives none, by device kind and engine (the
#: engine's kernel: eager = torch's tinygemm ``_weight_int4pack_mm``, fused = Marlin-class):
#: ``w4a16`` is the share of the dense kernel's compute rate a 4-bit weight-only kernel keeps
#: (it dequantizes in its main loop), ``w4a16_bandwidth`` its share of the bandwidth;
#: ``fp8_gemm`` (the share of the fp8 peak) defaults to the profile's ``gemm`` share
DEFAULT_QUANT_EFFICIENCY = {
    ("gpu", "eager"): ({"w4a16": 0.5, "w4a16_bandwidth": 0.6},
                       "assumed: tinygemm-class int4 kernels (torch _weight_int4pack_mm) are "
                       "tuned for batch 1 and fall behind the dense GEMM as M grows; not measured"),
    ("gpu", "fused"): ({"w4a16": 0.9},
                       "assumed from the Marlin paper (Frantar et al., arXiv 2408.11743): "
                       "near-ideal 4-bit bandwidth up to batch 16-32, about 10 % below FP16 in "
                       "large prefills; bandwidth share as the dense GEMM's"),
    ("cpu", "eager"): ({"w4a16": 0.4},
                       "assumed from one check on a 2-core x86 CPU (torch 2.13): "
                       "_weight_int4pack_mm_for_cpu at M = 128 on 4096×4096 ran at 0.42× the "
                       "bf16 GEMM's rate; measure it (pis-tui validate --precision int4)"),
}


def _quant_defaults(kind: str, engine: Optional[str]) -> tuple[dict, str]:
    """The quantized kernels' default figures of a device kind under an engine (the CPU has
    one set: no fused engine runs there)."""
    return (DEFAULT_QUANT_EFFICIENCY.get((kind, engine or "eager"))
            or DEFAULT_QUANT_EFFICIENCY[(kind, "eager")])


def efficiency(device: DeviceProfile, engine: Optional[str] = None) -> dict:
    """The device's figures for the analytical model: its profile's "efficiency" block (and
    the engine's own figures in it) over the defaults; the floor is the device's."""
    kind = "cpu" if device.kind == "cpu" else "gpu"
    base = dict(DEFAULT_EFFICIENCY[kind])
    base.update(_quant_defaults(kind, engine)[0])
    base.update(device.efficiency or {})
    if engine:
        base.update((device.efficiency_by_engine or {}).get(engine, {}))
    base["kernel_floor_us"] = device.launch_overhead_us
    base.setdefault("fp8_gemm", base["gemm"])
    base.setdefault("w4a16", 1.0)
    base.setdefault("w4a16_bandwidth", base["bandwidth"])
    return base


def efficiency_sources(device: DeviceProfile, engine: Optional[str] = None) -> dict:
    """{figure: its source} for :func:`efficiency` (defaults say they are assumed)."""
    out = {k: DEFAULT_EFFICIENCY_SOURCE for k in EFFICIENCY_KEYS}
    kind = "cpu" if device.kind == "cpu" else "gpu"
    figures, why = _quant_defaults(kind, engine)
    for k in figures:
        out[k] = why
    out["fp8_gemm"] = "the profile's gemm share (no fp8 figure of its own)"
    if "w4a16_bandwidth" not in figures:
        out["w4a16_bandwidth"] = "the profile's bandwidth share (no weight-only figure of its own)"
    for k, v in (device.efficiency_sources or {}).items():
        if ":" in k:
            eng, key = k.split(":", 1)
            if eng == engine:
                out[key] = v
        else:
            out[k] = v
    return out




def shipped_gpu(name: str) -> DeviceProfile:
    """The GPU profile shipped as ``profiles/gpus/<name>.json`` (UserError naming the others)."""
    if name not in gpu_names():
        raise UserError(f"unknown GPU {name!r}; choose local or one of {', '.join(gpu_names())}")
    return profile_from_dict(read_json("gpus", name + ".json"))
