"""Devices: the GPU profiles shipped in ``profiles/gpus/`` and the local device.

A GPU profile is data (JSON, each value with its source); the local device is detected
without importing torch (``/proc/cpuinfo``, ``nvidia-smi``), so estimating stays fast.
Its fingerprint keys every measurement made on it.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Optional

from .errors import UserError
from .profiles import list_names, read_json

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
        }


def gpu_names() -> list[str]:
    return list_names("gpus")


def profile_from_dict(d: dict) -> DeviceProfile:
    l2 = d["l2_mb"]
    return DeviceProfile(
        name=d["name"], display_name=d["display_name"], kind=d.get("kind", "gpu"),
        peak_tflops=dict(d["peak_tflops"]), sparse_peak_tflops=dict(d.get("sparse_peak_tflops", {})),
        bandwidth_gbs=float(d["memory_bandwidth_gbs"]), memory_gb=float(d["memory_gb"]),
        l2_mb=float(l2["used"] if isinstance(l2, dict) else l2), sm_count=int(d.get("sm_count", 0)),
        sparse_24=bool(d.get("sparse_24", False)),
        launch_overhead_us=float(d.get("launch_overhead_us", 3.0)),
        fingerprint=d.get("fingerprint", "profile:" + d["name"]), sources=d.get("sources", {}),
        notes=d.get("notes", ""), measured_table=d.get("measured_table"),
    )


def load_gpu(name: str) -> DeviceProfile:
    if name == LOCAL:
        return local_device()
    if name not in gpu_names():
        raise UserError(f"unknown GPU {name!r}; choose local or one of {', '.join(gpu_names())}")
    return profile_from_dict(read_json("gpus", name + ".json"))


# ---------------------------------------------------------------- local device


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_threads() -> int:
    """Threads torch uses by default here (the cores this process may run on)."""
    env = os.environ.get("OMP_NUM_THREADS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


@lru_cache(maxsize=1)
def local_cuda_name() -> Optional[str]:
    """The first CUDA GPU's name, from nvidia-smi (no torch import), or None."""
    if os.environ.get("PIS_TUI_NO_CUDA"):
        return None
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=name,driver_version,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    line = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else ""
    return line or None


def _match_profile(cuda_line: str) -> Optional[DeviceProfile]:
    name = cuda_line.split(",")[0].lower()
    best = None
    for g in gpu_names():
        d = read_json("gpus", g + ".json")
        for m in d.get("match", []):
            if m.lower() in name and (best is None or len(m) > best[0]):
                best = (len(m), g)
    return load_gpu(best[1]) if best else None


def _cpu_nominal_peak(threads: int) -> tuple[float, str]:
    """A nominal fp32 peak (TFLOP/s) from core count, SIMD width and an assumed clock.
    Used only until a measured peak is in the cache (``pis-tui profile`` measures it)."""
    flags = _cpu_flags()
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    fma_units = 2
    ghz = 2.5
    peak = threads * lanes * 2 * fma_units * ghz / 1e3
    return peak, (f"nominal: {threads} threads × {lanes} fp32 lanes × 2 FMA units × 2 FLOP × "
                  f"{ghz} GHz (assumed clock; replaced by the measured peak after a profile)")


@lru_cache(maxsize=1)
def local_device() -> DeviceProfile:
    """The device this process runs on: the first CUDA GPU, else the CPU."""
    cuda = local_cuda_name()
    if cuda:
        base = _match_profile(cuda)
        name = cuda.split(",")[0].strip()
        fp = "cuda:" + name.replace(" ", "_")
        if base is None:
            raise UserError(f"local GPU {name!r} has no profile in profiles/gpus; add one "
                            "(see README: adding a GPU profile)")
        return DeviceProfile(**{**base.__dict__, "name": LOCAL, "display_name": f"{name} (local)",
                                "fingerprint": fp, "is_local": True})
    threads = cpu_threads()
    model = _cpu_model()
    peak, src = _cpu_nominal_peak(threads)
    return DeviceProfile(
        name=LOCAL, display_name=f"{model} ({threads} threads, local CPU)", kind="cpu",
        peak_tflops={"fp32": peak, "bf16": peak, "fp16": peak}, sparse_peak_tflops={},
        bandwidth_gbs=20.0, memory_gb=_mem_gb(), l2_mb=_llc_mb(), sm_count=threads,
        sparse_24=False, launch_overhead_us=2.0,
        fingerprint=f"cpu:{model.replace(' ', '_')}:{threads}t",
        sources={"peak_tflops": src,
                 "memory_bandwidth_gbs": "nominal 20 GB/s (replaced by the measured bandwidth after a profile)"},
        is_local=True,
    )


def _mem_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        return 0.0


def _llc_mb() -> float:
    """Size of the largest CPU cache (the last level), from sysfs."""
    best = 0.0
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for idx in os.listdir(base):
            try:
                with open(f"{base}/{idx}/size", encoding="utf-8") as f:
                    s = f.read().strip()
                v = float(s[:-1]) / (1024 if s.endswith("K") else 1) if s[-1] in "KM" else float(s) / 2**20
                best = max(best, v)
            except (OSError, ValueError):
                continue
    except OSError:
        pass
    return best or 32.0


def default_gpu() -> str:
    """``local`` when a CUDA GPU is present, else h200-sxm."""
    return LOCAL if local_cuda_name() else "h200-sxm"
