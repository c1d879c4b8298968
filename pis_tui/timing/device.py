"""The local device opened for measuring: what it is (name, fingerprint, versions, caches,
clocks, 2:4 support) and the random pools that rotation copies are views into."""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from functools import partial
from typing import Optional

from ..device import local
from ..device.gpus import LOCAL
from ..errors import MeasureError, UserError
from ..hf.config import torch_dtype as hf_torch_dtype
from ..hf.quant_kernels import FP8_KERNEL, fp8_kernel_on, int4_kernel_name
from ..pricing.measured_table import METHOD_VERSIONS, software_versions
from ..model.ops import dtype_bytes
from ..model.quant_formats import PLAIN, QUANTIZED
from ..model.quant_formats import get as quant_format

#: activation dtypes of the int4 kernels: the CPU kernel's, tinygemm's (CUDA)
INT4_CPU_DTYPES = ("fp32", "bf16", "fp16")
INT4_CUDA_DTYPES = ("bf16",)


def torch_module():
    import torch

    return torch


# ---------------------------------------------------------------- the device


@dataclass
class DeviceContext:
    """The local device, opened for measuring."""

    name: str
    kind: str  # "cuda" | "cpu"
    torch_device: str  # "cuda:0" | "cpu"
    fingerprint: str
    display_name: str
    software: dict  # the versions that key measurements (measured_table.software_versions)
    runtime: dict  # what torch itself reports (torch.__version__, cuda, cusparselt, cudnn)
    dtypes: tuple
    sparse_24: bool
    threads: int
    cache_mb: float  # the cache rotation must exceed: L2 (GPU) or last-level cache (CPU)
    memory_gb: float
    driver: Optional[str] = None
    capability: Optional[str] = None
    sm_count: int = 0
    clocks: dict = field(default_factory=dict)
    method: str = "cpu-wall"
    method_version: int = 1
    sparse_24_note: str = ""
    gpu_uuid: Optional[str] = None  # the GPU's NVML UUID (its conditions are read by it)
    unknown_profile: bool = False  # no profile in profiles/gpus matches this GPU
    #: rotation copies allowed per op (None: as many as the cache needs); lowered for the one
    #: retry after an out-of-memory
    max_copies: Optional[int] = None
    #: set once a CUDA error that poisons the process (illegal address, device assert...)
    #: was met: nothing more can be measured in this process
    sticky_error: Optional[str] = None
    _pools: dict = field(default_factory=dict, repr=False)

    @property
    def is_cuda(self) -> bool:
        return self.kind == "cuda"

    def precision_unmeasurable(self, name: str, dtype: str = "") -> Optional[str]:
        """None where this device times GEMMs served at the precision ``name`` (canonical:
        ``bf16``, ``fp8-row``, ``int4-g128``… :func:`pis_tui.model.precision.parse_precision`)
        with activations in ``dtype`` ("": any it takes); else one line saying why not.  int4
        runs on a CPU (``aten._weight_int4pack_mm_for_cpu``: fp32, bf16, fp16) and on CUDA
        8.0+ (tinygemm: bf16); fp8 only where :func:`fp8_kernel_on` finds fp8 tensor cores."""
        p = quant_format(name)
        if p is None:
            if name in PLAIN:
                return None if name in self.dtypes else (
                    f"dtype {name} is not measured on {self.display_name} "
                    f"(measurable: {', '.join(self.dtypes)})")
            return f"unknown precision {name!r}"
        if not p.kernel:
            return f"{name} has no torch kernel: estimated only"
        if p.weight_only:  # int4
            kernel = int4_kernel_name(self.kind)
            if not self.is_cuda:
                if dtype and dtype not in INT4_CPU_DTYPES:
                    return (f"{kernel} takes {', '.join(INT4_CPU_DTYPES)} activations, not {dtype}")
                return None
            cap = self.capability or "0.0"
            if tuple(int(x) for x in cap.split(".")[:2]) < (8, 0):
                return (f"{self.display_name} (compute capability {cap}) has no int4 kernel: "
                        f"tinygemm ({kernel}) needs 8.0+ (bf16 tensor cores): {name} is estimated")
            if dtype and dtype not in INT4_CUDA_DTYPES:
                return (f"tinygemm ({kernel}) takes bf16 activations, not {dtype}: "
                        f"measure {name} at --dtype bf16")
            return None
        why = fp8_kernel_on(self.torch_device)
        if why:
            return why
        return fp8_dtype_unmeasurable(name, p.act_quant == "per-token", dtype)

    @property
    def precisions(self) -> tuple:
        """The quantized precisions this device times (the others are estimated)."""
        return tuple(n for n in QUANTIZED if self.precision_unmeasurable(n) is None)

    def device_info(self) -> dict:
        """What a measured table / the cache records about the device."""
        return {
            "name": self.name, "display_name": self.display_name,
            "kind": "gpu" if self.is_cuda else "cpu", "fingerprint": self.fingerprint,
            "driver": self.driver, "capability": self.capability, "memory_gb": round(self.memory_gb, 2),
            "cache_mb": self.cache_mb, "sm_count": self.sm_count, "threads": self.threads,
            "clocks": self.clocks, "sparse_24": self.sparse_24, "sparse_24_note": self.sparse_24_note,
            "dtypes": list(self.dtypes), "precisions": list(self.precisions),
            "runtime": self.runtime,
            "platform": platform.platform(), "cpu": local._cpu_model(),
            "profile": "built from the device's properties (no profile matches)"
            if self.unknown_profile else "profiles/gpus" if self.is_cuda else "cpu",
        }

    # -- random pools (rotation copies are views into them) --------------------

    def pool(self, dtype: str, min_elems: int = 0, density: float = 1.0):
        """A 1-D random tensor of ``dtype``; with density < 1 a share of its values are zero
        (unstructured sparsity through the dense kernel)."""
        torch = torch_module()
        key = (dtype, round(density, 4))
        p = self._pools.get(key)
        want = max(pool_elems(self, dtype), min_elems)
        if p is None or p.numel() < want:
            if len(self._pools) >= 3:  # keep memory bounded: drop the oldest pool
                self._pools.pop(next(iter(self._pools)))
            g = torch.Generator(device=self.torch_device).manual_seed(1234)
            p = torch.empty(want, dtype=torch_dtype(dtype), device=self.torch_device)
            p.uniform_(-1.0, 1.0, generator=g)
            if density < 1.0:
                keep = torch.rand(want, device=self.torch_device, generator=g) < density
                p.mul_(keep)
                del keep
            self._pools[key] = p
        return p

    def free(self) -> None:
        """Drop the random pools (and, on CUDA, the allocator's cached blocks)."""
        import gc

        self._pools.clear()
        gc.collect()
        if self.is_cuda and self.sticky_error is None:
            torch_module().cuda.empty_cache()


def fp8_dtype_unmeasurable(name: str, per_row: bool, dtype: str) -> Optional[str]:
    """One line where ``_scaled_mm`` cannot write ``dtype`` (row-wise scales: bf16 only;
    per-tensor: bf16 or fp16); None where it can ("" : the activation dtype is not known)."""
    outs = ("bf16",) if per_row else ("bf16", "fp16")
    if not dtype or dtype in outs:
        return None
    how = "with row-wise scales " if per_row else ""
    return (f"{FP8_KERNEL} {how}writes {' or '.join(outs)}, not {dtype}: "
            f"measure {name} at --dtype bf16")


def _unmeasurable(dtype: str) -> MeasureError:
    return MeasureError(f"dtype {dtype} cannot be measured with torch here")


#: torch's dtype for an op's dtype name (:func:`pis_tui.hf.config.torch_dtype`: tf32 included),
#: a MeasureError for a name torch has none for
torch_dtype = partial(hf_torch_dtype, unknown=_unmeasurable)


def read_clocks(ctx: Optional[DeviceContext] = None) -> dict:
    """The GPU's conditions now: clocks (MHz), temperature, power, throttle reasons and the
    other processes on it (NVML, else nvidia-smi: :func:`pis_tui.device.local.gpu_conditions`);
    {} on a CPU or where neither can be read.  Only reads: never changes a GPU setting."""
    if ctx is not None and not ctx.is_cuda:
        return {}
    selector = ctx.gpu_uuid if ctx is not None and ctx.gpu_uuid else None
    if selector is None:
        info = local._PINNED.get("gpu") if "device" in local._PINNED else None
        selector = info.uuid if info is not None and info.uuid else None
    return local.gpu_conditions(selector)


def open_device(name: str = "local") -> DeviceContext:
    """Open the local device for measuring (imports torch).

    The device is :func:`pis_tui.device.local.measuring_device`'s decision (torch's first visible
    GPU, else the CPU), the one ``profile``, ``calibrate`` and ``validate`` all use; its
    fingerprint then equals ``hardware.local_device().fingerprint``.  On the CPU torch uses
    ``hardware.cpu_threads()`` threads (the cores this process may run on, or
    OMP_NUM_THREADS), the count the fingerprint names.
    """
    if name not in ("local", LOCAL):
        raise UserError(f"can only measure the local device (--gpu local), not {name!r}")
    torch = torch_module()
    hw = local.measuring_device()
    sw = software_versions()
    runtime = {"torch": torch.__version__, "cuda": torch.version.cuda,
               "cudnn": None, "cusparselt": None}
    if hw.kind == "gpu":
        info = local.measuring_gpu()
        dev = torch.device("cuda:0")
        props = torch.cuda.get_device_properties(dev)
        l2 = getattr(props, "L2_cache_size", 0) / 2**20 or hw.l2_mb
        try:
            runtime["cudnn"] = torch.backends.cudnn.version()
        except Exception:  # pragma: no cover
            pass
        try:
            runtime["cusparselt"] = torch.backends.cusparselt.version()
        except Exception:  # pragma: no cover - older torch
            pass
        dtypes = ["fp16", "fp32", "tf32"]
        if torch.cuda.is_bf16_supported():
            dtypes.insert(0, "bf16")
        ctx = DeviceContext(
            name=LOCAL, kind="cuda", torch_device="cuda:0", fingerprint=hw.fingerprint,
            display_name=hw.display_name, software=sw, runtime=runtime, dtypes=tuple(dtypes),
            sparse_24=False, threads=torch.get_num_threads(), cache_mb=max(l2, hw.l2_mb),
            memory_gb=props.total_memory / 2**30, driver=info.driver if info else None,
            capability=f"{props.major}.{props.minor}", sm_count=props.multi_processor_count,
            method="cuda-graph", method_version=METHOD_VERSIONS["cuda-graph"],
            gpu_uuid=info.uuid if info else None, unknown_profile=hw.unknown)
        ctx.clocks = read_clocks(ctx)
        ctx.sparse_24, ctx.sparse_24_note = _probe_sparse_24(ctx)
        return ctx
    torch.set_num_threads(local.cpu_threads())
    return DeviceContext(
        name=LOCAL, kind="cpu", torch_device="cpu", fingerprint=hw.fingerprint,
        display_name=hw.display_name, software=sw, runtime=runtime, dtypes=("fp32", "bf16"),
        sparse_24=False, threads=torch.get_num_threads(), cache_mb=local._llc_mb(),
        memory_gb=hw.memory_gb, method="cpu-wall", method_version=METHOD_VERSIONS["cpu-wall"],
        sparse_24_note="torch has no 2:4 semi-structured sparse kernel on the CPU")


def _probe_sparse_24(ctx: DeviceContext) -> tuple[bool, str]:
    """Whether torch's semi-structured sparse tensors work here (a tiny conversion + matmul)."""
    torch = torch_module()
    try:
        from torch.sparse import to_sparse_semi_structured
    except ImportError:
        return False, "this torch has no to_sparse_semi_structured"
    cap = torch.cuda.get_device_capability()
    if cap < (8, 0):
        return False, f"2:4 sparse tensor cores need compute capability 8.0+, this GPU is {cap[0]}.{cap[1]}"
    try:
        w = prune_24(torch.randn(128, 128, dtype=torch.float16, device="cuda"))
        ws = to_sparse_semi_structured(w)
        x = torch.randn(64, 128, dtype=torch.float16, device="cuda")
        torch.nn.functional.linear(x, ws)
        torch.cuda.synchronize()
    except Exception as e:  # noqa: BLE001 - any failure means: not usable
        return False, f"semi-structured sparse matmul failed: {type(e).__name__}: {str(e)[:120]}"
    backend = "cuSPARSELt" if ctx.runtime.get("cusparselt") else "CUTLASS"
    return True, f"torch semi-structured sparse ({backend})"


def prune_24(w):
    """Keep the 2 largest-magnitude of every 4 consecutive weights along K (MaskLLM-like)."""
    torch = torch_module()
    n, k = w.shape
    g = w.reshape(n, k // 4, 4)
    idx = g.abs().topk(2, dim=-1).indices
    mask = torch.zeros_like(g, dtype=torch.bool).scatter_(-1, idx, True)
    return (g * mask).reshape(n, k)


def pool_elems(ctx: DeviceContext, dtype: str) -> int:
    return max(int(4 * ctx.cache_mb * 2**20 / dtype_bytes(dtype)), 1 << 20)


def oom_error():
    torch = torch_module()
    return getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
