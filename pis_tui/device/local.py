"""Devices: the GPU profiles shipped in ``profiles/gpus/`` and the local device.

A GPU profile is data (JSON, each value with its source).  Which device is local is decided
once (:func:`choose_local_gpu`): measuring commands ask torch (CUDA_VISIBLE_DEVICES
honoured, :func:`measuring_device`), the estimate path names the same GPU without importing
torch (NVML through nvidia-ml-py, else ``nvidia-smi``; ``/proc/cpuinfo`` for the CPU), so
estimating stays fast.  A GPU no profile matches gets one built from its own properties
(:func:`unknown_gpu_profile`).  The device's fingerprint keys every measurement made on it.
NVML also reports the conditions measurements are taken under (:func:`gpu_conditions`):
clocks, throttle reasons, other processes on the GPU.  Nothing here changes a GPU setting.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

from .gpus import LOCAL, DeviceProfile, gpu_names, shipped_gpu
from ..shipped import read_json


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


def cpu_cores() -> int:
    """The cores this process may run on (OMP_NUM_THREADS aside): how many ranks of a
    tensor-parallel group can each have one."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def cpu_threads() -> int:
    """Threads torch uses by default here (the cores this process may run on)."""
    env = os.environ.get("OMP_NUM_THREADS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


# ---------------------------------------------------------------- the local GPU
#
# One decision for every command: which GPU (if any) is "local".  Measuring (profile,
# calibrate, validate) asks torch, which honours CUDA_VISIBLE_DEVICES itself; the estimate
# path must not import torch, so it names the same GPU through NVML (the nvidia-ml-py
# package) or, failing that, nvidia-smi, selecting the first entry of CUDA_VISIBLE_DEVICES.
# Once a measuring command has asked torch, its answer is pinned for the process.


@dataclass(frozen=True)
class CudaInfo:
    """What is known about the local GPU, and who said so (``torch``, ``nvml``, ``nvidia-smi``)."""

    name: str
    source: str
    selector: Optional[str] = None  # the CUDA_VISIBLE_DEVICES entry (index or UUID) it is
    uuid: Optional[str] = None
    memory_gb: float = 0.0
    capability: Optional[str] = None  # "9.0"
    sm_count: int = 0
    l2_mb: float = 0.0
    driver: Optional[str] = None
    max_sm_mhz: float = 0.0
    max_mem_mhz: float = 0.0
    bus_width_bits: int = 0


def visible_devices(env=None) -> Optional[list]:
    """CUDA_VISIBLE_DEVICES as the CUDA runtime reads it: None when unset (every GPU visible),
    else its entries up to the first invalid one (an index, or a ``GPU-``/``MIG-`` UUID);
    ``""`` or ``-1`` hide every GPU (an empty list)."""
    env = os.environ if env is None else env
    raw = env.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return None
    out = []
    for tok in raw.split(","):
        tok = tok.strip()
        if tok.isdigit() or tok.startswith(("GPU-", "MIG-")):
            out.append(tok)
        else:
            break
    return out


def choose_local_gpu(env=None, *, torch_probe=None, nvml_probe=None, smi_probe=None) -> Optional[CudaInfo]:
    """The local GPU, or None (then the CPU is the local device).

    ``PIS_TUI_NO_CUDA`` (non-empty) or a CUDA_VISIBLE_DEVICES that hides every GPU: None.
    With ``torch_probe`` (measuring) torch decides: its device 0 is the first visible GPU.
    Without it, ``nvml_probe(selector)`` then ``smi_probe(selector)`` name the GPU that the
    first CUDA_VISIBLE_DEVICES entry selects (index 0 when unset).  Probes return a
    :class:`CudaInfo` or None; this function only decides (tested with fakes).
    """
    env = os.environ if env is None else env
    if env.get("PIS_TUI_NO_CUDA"):
        return None
    vis = visible_devices(env)
    if vis == []:
        return None
    if torch_probe is not None:
        return torch_probe()
    sel = vis[0] if vis else "0"
    for probe in (nvml_probe, smi_probe):
        if probe is not None:
            info = probe(sel)
            if info is not None:
                return info
    return None


def _nvml():
    """pynvml (from nvidia-ml-py), initialised, or None where it is missing or finds no driver."""
    global _NVML_STATE
    if _NVML_STATE is not None:
        return _NVML_STATE or None
    try:
        import pynvml

        pynvml.nvmlInit()
        _NVML_STATE = pynvml
    except Exception:  # noqa: BLE001 - not installed, no driver, no permission
        _NVML_STATE = False
    return _NVML_STATE or None


_NVML_STATE = None


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _nvml_handle(nv, selector: Optional[str]):
    sel = selector or "0"
    if sel.isdigit():
        return nv.nvmlDeviceGetHandleByIndex(int(sel))
    return nv.nvmlDeviceGetHandleByUUID(sel if sel.startswith(("GPU-", "MIG-")) else "GPU-" + sel)


def _nvml_probe(selector: Optional[str]) -> Optional[CudaInfo]:
    nv = _nvml()
    if nv is None:
        return None
    try:
        h = _nvml_handle(nv, selector)
        name = _text(nv.nvmlDeviceGetName(h))
    except Exception:  # noqa: BLE001
        return None

    def get(fn, *a, default=None):
        try:
            return getattr(nv, fn)(h, *a)
        except Exception:  # noqa: BLE001 - old driver / field not supported
            return default
    mem = get("nvmlDeviceGetMemoryInfo")
    cap = get("nvmlDeviceGetCudaComputeCapability")
    try:
        driver = _text(nv.nvmlSystemGetDriverVersion())
    except Exception:  # noqa: BLE001
        driver = None
    return CudaInfo(name=name, source="nvml", selector=selector,
                    uuid=_text(get("nvmlDeviceGetUUID", default="")) or None,
                    memory_gb=(mem.total / 2**30) if mem is not None else 0.0,
                    capability=f"{cap[0]}.{cap[1]}" if cap else None, driver=driver,
                    max_sm_mhz=float(get("nvmlDeviceGetMaxClockInfo", getattr(nv, "NVML_CLOCK_SM", 1), default=0) or 0),
                    max_mem_mhz=float(get("nvmlDeviceGetMaxClockInfo", getattr(nv, "NVML_CLOCK_MEM", 2), default=0) or 0),
                    bus_width_bits=int(get("nvmlDeviceGetMemoryBusWidth", default=0) or 0))


def nvidia_smi(query: str, selector: Optional[str] = None, what: str = "gpu") -> list:
    """Rows of ``nvidia-smi --query-<what>=<query>`` (csv, no header, no units) for one GPU,
    each a list of stripped fields; [] without nvidia-smi or when it fails."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    cmd = [exe, f"--query-{what}={query}", "--format=csv,noheader,nounits"]
    if selector:
        cmd += ["-i", selector]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    if out.returncode != 0 or not out.stdout.strip():
        return []
    return [[f.strip() for f in line.split(",")] for line in out.stdout.strip().splitlines()]


def _smi_probe(selector: Optional[str]) -> Optional[CudaInfo]:
    rows = nvidia_smi("name,memory.total,driver_version,uuid,compute_cap,clocks.max.sm,"
                      "clocks.max.mem", selector) or nvidia_smi("name,memory.total,driver_version",
                                                                selector)
    if not rows or not rows[0] or not rows[0][0]:
        return None
    r = rows[0] + [""] * 7

    def num(s) -> float:
        try:
            return float(s)
        except ValueError:
            return 0.0
    return CudaInfo(name=r[0], source="nvidia-smi", selector=selector, uuid=r[3] or None,
                    memory_gb=num(r[1]) / 1024, driver=r[2] or None,
                    capability=r[4] if r[4] and r[4][0].isdigit() else None,
                    max_sm_mhz=num(r[5]), max_mem_mhz=num(r[6]))


def _torch_probe() -> Optional[CudaInfo]:
    """torch's device 0 (the first GPU CUDA_VISIBLE_DEVICES leaves visible), or None."""
    import torch

    try:
        if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
            return None
        p = torch.cuda.get_device_properties(0)
    except Exception:  # noqa: BLE001 - a broken driver: no usable GPU
        return None
    uuid = str(getattr(p, "uuid", "") or "")
    named = _nvml_probe("GPU-" + uuid) if uuid else None  # clocks and bus width from NVML
    return CudaInfo(name=p.name, source="torch", selector="0", uuid=("GPU-" + uuid) if uuid else None,
                    memory_gb=p.total_memory / 2**30, capability=f"{p.major}.{p.minor}",
                    sm_count=p.multi_processor_count,
                    l2_mb=getattr(p, "L2_cache_size", 0) / 2**20,
                    driver=named.driver if named else None,
                    max_sm_mhz=(getattr(p, "clock_rate", 0) or 0) / 1e3 or (named.max_sm_mhz if named else 0.0),
                    max_mem_mhz=(getattr(p, "memory_clock_rate", 0) or 0) / 1e3
                    or (named.max_mem_mhz if named else 0.0),
                    bus_width_bits=getattr(p, "memory_bus_width", 0) or (named.bus_width_bits if named else 0))


def gpu_hint() -> bool:
    """Whether an NVIDIA GPU may be here even though NVML and nvidia-smi named none (their
    device nodes or driver entries exist): then only torch can say."""
    import glob

    if os.environ.get("PIS_TUI_NO_CUDA") or visible_devices() == []:
        return False
    try:
        if os.listdir("/proc/driver/nvidia/gpus"):
            return True
    except OSError:
        pass
    return bool(glob.glob("/dev/nvidia[0-9]*"))


@lru_cache(maxsize=1)
def _named_gpu() -> Optional[CudaInfo]:
    """The local GPU as the estimate path sees it (no torch)."""
    return choose_local_gpu(os.environ, nvml_probe=_nvml_probe, smi_probe=_smi_probe)


def local_cuda_name() -> Optional[str]:
    """The local GPU as "name, driver, memory" (no torch import: NVML or nvidia-smi), or None."""
    info = _PINNED.get("gpu") if "device" in _PINNED else _named_gpu()
    if info is None:
        return None
    return f"{info.name}, {info.driver or '?'}, {info.memory_gb * 1024:.0f} MiB"


# ---------------------------------------------------------------- conditions while measuring

#: NVML clock-event (throttle) reason bits
THROTTLE_REASONS = {0x1: "gpu_idle", 0x2: "applications_clocks_setting", 0x4: "sw_power_cap",
                    0x8: "hw_slowdown", 0x10: "sync_boost", 0x20: "sw_thermal_slowdown",
                    0x40: "hw_thermal_slowdown", 0x80: "hw_power_brake_slowdown",
                    0x100: "display_clock_setting"}


def throttle_names(mask) -> list:
    """The reasons a clock-event (throttle) bit mask names; an int or nvidia-smi's hex text."""
    try:
        m = int(mask, 16) if isinstance(mask, str) else int(mask)
    except (TypeError, ValueError):
        return []
    return [n for bit, n in THROTTLE_REASONS.items() if m & bit]


def gpu_conditions(selector: Optional[str] = None) -> dict:
    """Clocks (MHz), temperature, power, throttle reasons and the other processes on the GPU:
    from NVML, else nvidia-smi, else {} (a CPU, or neither is there).  Read-only: nothing
    about the GPU's settings is changed."""
    pid = os.getpid()
    nv = _nvml()
    if nv is not None:
        try:
            h = _nvml_handle(nv, selector)
        except Exception:  # noqa: BLE001
            h = None
        if h is not None:
            out: dict = {"source": "nvml"}

            def put(key, fn, *a, scale=1.0):
                try:
                    out[key] = round(float(getattr(nv, fn)(h, *a)) * scale, 1)
                except Exception:  # noqa: BLE001
                    pass
            sm, mem = getattr(nv, "NVML_CLOCK_SM", 1), getattr(nv, "NVML_CLOCK_MEM", 2)
            put("clocks.sm", "nvmlDeviceGetClockInfo", sm)
            put("clocks.mem", "nvmlDeviceGetClockInfo", mem)
            put("clocks.max.sm", "nvmlDeviceGetMaxClockInfo", sm)
            put("clocks.max.mem", "nvmlDeviceGetMaxClockInfo", mem)
            put("temperature.gpu", "nvmlDeviceGetTemperature", getattr(nv, "NVML_TEMPERATURE_GPU", 0))
            put("power.draw", "nvmlDeviceGetPowerUsage", scale=1e-3)
            put("power.limit", "nvmlDeviceGetEnforcedPowerLimit", scale=1e-3)
            for fn in ("nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons"):
                try:
                    mask = int(getattr(nv, fn)(h))
                except Exception:  # noqa: BLE001
                    continue
                out["throttle_mask"] = hex(mask)
                out["throttle"] = throttle_names(mask)
                break
            try:
                procs = nv.nvmlDeviceGetComputeRunningProcesses(h)
                out["other_processes"] = [
                    {"pid": int(p.pid), "used_mb": round((p.usedGpuMemory or 0) / 2**20)}
                    for p in procs if int(p.pid) != pid]
            except Exception:  # noqa: BLE001
                pass
            return out
    names = ["clocks.sm", "clocks.mem", "clocks.max.sm", "clocks.max.mem", "temperature.gpu",
             "power.draw", "power.limit", "clocks_throttle_reasons.active"]
    rows = nvidia_smi(",".join(names), selector) or nvidia_smi(",".join(names[:6]), selector)
    if not rows:
        return {}
    out = {"source": "nvidia-smi"}
    for n, v in zip(names, rows[0]):
        if n == "clocks_throttle_reasons.active":
            out["throttle_mask"] = v
            out["throttle"] = throttle_names(v)
            continue
        try:
            out[n] = float(v)
        except ValueError:
            pass
    apps = nvidia_smi("pid,used_memory", selector, what="compute-apps")
    out["other_processes"] = [{"pid": int(a[0]), "used_mb": float(a[1]) if a[1:] and a[1].replace('.', '', 1).isdigit() else None}
                              for a in apps if a and a[0].isdigit() and int(a[0]) != pid]
    return out


# ---------------------------------------------------------------- the GPU's profile


def _match_profile(cuda_line: str) -> Optional[DeviceProfile]:
    name = cuda_line.split(",")[0].lower()
    best = None
    for g in gpu_names():
        d = read_json("gpus", g + ".json")
        for m in d.get("match", []):
            if m.lower() in name and (best is None or len(m) > best[0]):
                best = (len(m), g)
    return shipped_gpu(best[1]) if best else None


#: dense tensor-core FLOP per clock per SM (fp16/bf16) and plain fp32 FLOP per clock per SM,
#: by compute capability (NVIDIA's architecture whitepapers: V100/T4 1024, A100 2048,
#: A10/L40S/RTX 40xx/RTX 50xx 1024, H100 4096, B200 8192; fp32: 2 × FP32 lanes)
_TENSOR_FLOP_PER_CLK = {(7, 0): 1024, (7, 5): 1024, (8, 0): 2048, (8, 6): 1024, (8, 7): 1024,
                        (8, 9): 1024, (9, 0): 4096, (10, 0): 8192, (10, 3): 8192, (12, 0): 1024}
_FP32_FLOP_PER_CLK = {(7, 0): 128, (7, 5): 128, (8, 0): 128, (8, 6): 256, (8, 7): 256,
                      (8, 9): 256, (9, 0): 256, (10, 0): 256, (10, 3): 256, (12, 0): 256}
ASSUMED_SM_MHZ = 1500.0
ASSUMED_BANDWIDTH_GBS = 1000.0


def unknown_gpu_profile(info: CudaInfo, measured: Optional[dict] = None) -> DeviceProfile:
    """A profile for a GPU that no file in profiles/gpus matches, from its own properties
    (name, SMs, memory, L2, compute capability, clocks, bus width) and, where given, its
    measured peaks (``measured``: {dtype: {"peak_tflops", "bandwidth_gbs"}}, from
    ``timing.measure_device_peaks``).  Everything not measured is a nominal figure, and
    every figure's source says which."""
    cap = tuple(int(x) for x in info.capability.split(".")) if info.capability else None
    sms = info.sm_count or 0
    mhz = info.max_sm_mhz or ASSUMED_SM_MHZ
    clock_src = (f"max SM clock {mhz:.0f} MHz ({info.source})" if info.max_sm_mhz
                 else f"an assumed {ASSUMED_SM_MHZ:.0f} MHz SM clock")
    known = cap in _TENSOR_FLOP_PER_CLK if cap else False
    per_clk = _TENSOR_FLOP_PER_CLK.get(cap, 1024) if cap else 1024
    fp32_clk = _FP32_FLOP_PER_CLK.get(cap, 128) if cap else 128
    units = sms or 100
    dense = units * per_clk * mhz * 1e6 / 1e12
    fp32 = units * fp32_clk * mhz * 1e6 / 1e12
    bf16_ok = cap is not None and cap >= (8, 0)
    peaks = {"fp16": dense, "tf32": dense / 2 if bf16_ok else fp32, "fp32": fp32}
    if bf16_ok:
        peaks["bf16"] = dense
    sparse24 = bf16_ok
    sparse = {k: 2 * v for k, v in peaks.items() if k in ("bf16", "fp16", "tf32")} if sparse24 else {}
    nominal = (f"nominal: {units} SMs × {per_clk if known else '~1024 (unknown architecture)'} "
               f"FLOP/clock/SM × {clock_src}")
    sources = {"peak_tflops": nominal, "sparse_peak_tflops": "nominal: 2 × dense (2:4 tensor cores, "
               "compute capability 8.0+)" if sparse24 else "none below compute capability 8.0"}
    if info.max_mem_mhz and info.bus_width_bits:
        bw = 2 * info.max_mem_mhz * 1e6 * info.bus_width_bits / 8 / 1e9
        sources["memory_bandwidth_gbs"] = (f"nominal: 2 × {info.max_mem_mhz:.0f} MHz × "
                                           f"{info.bus_width_bits}-bit bus ({info.source})")
    else:
        bw = ASSUMED_BANDWIDTH_GBS
        sources["memory_bandwidth_gbs"] = f"assumed {ASSUMED_BANDWIDTH_GBS:.0f} GB/s (bus width unknown)"
    measured_note = ""
    for dt, m in (measured or {}).items():
        if m and m.get("peak_tflops"):
            peaks[dt] = float(m["peak_tflops"])
            sources["peak_tflops"] += f"; {dt} measured on this GPU ({m.get('method', 'timing.peaks')})"
            measured_note = " and measured peaks"
        if m and m.get("bandwidth_gbs"):
            bw = float(m["bandwidth_gbs"])
            sources["memory_bandwidth_gbs"] = f"measured on this GPU (copy, {m.get('method', 'timing.peaks')})"
            measured_note = " and measured peaks"
    sources.update(memory_gb=f"{info.source}", sm_count=f"{info.source}" if sms else "unknown",
                   l2_mb=f"{info.source}" if info.l2_mb else "unknown (assumed 32 MB)")
    name = info.name
    return DeviceProfile(
        name=LOCAL, display_name=f"{name} (local, no profile)", kind="gpu",
        peak_tflops={k: round(v, 1) for k, v in peaks.items()},
        sparse_peak_tflops={k: round(v, 1) for k, v in sparse.items()},
        bandwidth_gbs=round(bw, 1), memory_gb=round(info.memory_gb, 1),
        l2_mb=info.l2_mb or 32.0, sm_count=sms, sparse_24=sparse24, launch_overhead_us=3.0,
        fingerprint=gpu_fingerprint(name), sources=sources,
        notes=(f"no profile in profiles/gpus matches {name!r}: built from its own properties "
               f"({info.source}){measured_note}; rates not measured are nominal (see sources). "
               "`pis-tui calibrate` measures it; a profile file makes its figures citable"),
        is_local=True, capability=info.capability, unknown=True)


def gpu_fingerprint(name: str) -> str:
    return "cuda:" + name.strip().replace(" ", "_")


def _gpu_profile(info: CudaInfo) -> DeviceProfile:
    """The local GPU's profile: the matching file of profiles/gpus, else one built from its
    own properties (:func:`unknown_gpu_profile`)."""
    base = _match_profile(info.name)
    if base is None:
        return unknown_gpu_profile(info)
    return DeviceProfile(**{**base.__dict__, "name": LOCAL, "display_name": f"{info.name} (local)",
                            "fingerprint": gpu_fingerprint(info.name), "is_local": True,
                            "capability": info.capability})


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


#: the device a measuring command decided on (torch asked), pinned for the process
_PINNED: dict = {}


def _cpu_profile(threads: Optional[int] = None) -> DeviceProfile:
    threads = threads or cpu_threads()
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


@lru_cache(maxsize=1)
def _detected_device() -> DeviceProfile:
    info = _named_gpu()
    return _gpu_profile(info) if info is not None else _cpu_profile()


def local_device() -> DeviceProfile:
    """The device this process runs on: the local GPU (see :func:`choose_local_gpu`), else the
    CPU.  Named without importing torch, unless a measuring command has already asked torch
    (:func:`measuring_device`), whose answer then holds for the whole process."""
    if "device" in _PINNED:
        return _PINNED["device"]
    return _detected_device()


def _clear_local() -> None:
    _PINNED.clear()
    _detected_device.cache_clear()
    getattr(_named_gpu, "cache_clear", lambda: None)()


local_device.cache_clear = _clear_local  # type: ignore[attr-defined]


def measuring_device(torch_probe=None) -> DeviceProfile:
    """The device profile, calibrate and validate measure on, decided by torch (imported):
    its first visible CUDA GPU (CUDA_VISIBLE_DEVICES honoured), else the CPU.  Pinned, so
    that :func:`local_device` says the same for the rest of the process.  A GPU that NVML or
    nvidia-smi sees but torch cannot use is a MeasureError (a CPU-only torch build on a GPU
    server would otherwise measure the CPU); ``PIS_TUI_NO_CUDA=1`` measures the CPU."""
    from ..errors import MeasureError

    if "device" in _PINNED:
        return _PINNED["device"]
    info = choose_local_gpu(os.environ, torch_probe=torch_probe or _torch_probe)
    if info is None:
        hidden = bool(os.environ.get("PIS_TUI_NO_CUDA")) or visible_devices() == []
        named = None if hidden else _named_gpu()
        if named is not None:
            import torch

            raise MeasureError(
                f"{named.name} is present ({named.source}) but torch {torch.__version__} cannot "
                "use CUDA (a CPU-only build, or a driver it does not support); install a CUDA "
                "build of torch, or set PIS_TUI_NO_CUDA=1 to measure the CPU")
        dev = _cpu_profile()
    else:
        dev = _gpu_profile(info)
    _PINNED["device"] = dev
    _PINNED["gpu"] = info
    return dev


def measuring_gpu() -> Optional[CudaInfo]:
    """What torch reported about the GPU :func:`measuring_device` chose (None on a CPU)."""
    measuring_device()
    return _PINNED.get("gpu")


def rank_device(device: DeviceProfile, tp: int) -> DeviceProfile:
    """The device one rank of a tensor-parallel group of ``tp`` runs on: the device itself on
    a GPU (a rank is a GPU); on the local CPU its cores shared out, ``threads // tp`` threads
    a rank (fingerprint ``…:<threads>t``: what ``profile --tp`` and ``validate --tp`` measure
    each rank's ops on, see :func:`rank_threads`)."""
    if tp == 1 or device.kind != "cpu" or not device.is_local or device.ranks == tp:
        return device
    from dataclasses import replace

    base = device if device.ranks == 1 else _cpu_profile()
    share = _cpu_profile(max(1, base.sm_count // tp))
    return replace(share, ranks=tp, display_name=share.display_name.replace(
        "local CPU)", f"a rank of {tp}, local CPU)"))


@contextmanager
def rank_threads(tp: int):
    """Within the block this process measures as one rank of ``tp`` on the CPU: the local
    device has ``threads // tp`` threads (OMP_NUM_THREADS, read by :func:`cpu_threads`), so
    its measurements are keyed by :func:`rank_device`'s fingerprint.  No-op at tp = 1 or on a
    GPU."""
    if tp == 1 or local_device().kind != "cpu":
        yield 0
        return
    old = os.environ.get("OMP_NUM_THREADS")
    share = max(1, cpu_cores() // tp)
    os.environ["OMP_NUM_THREADS"] = str(share)
    _clear_local()
    try:
        yield share
    finally:
        if old is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = old
        _clear_local()


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


