"""Timing engine: runs the kernels of one op on the local device and times them.

This is the only module that runs torch kernels to time ops.  torch is imported inside
the functions (never at import time of the estimate path).

How an op is timed (method ``cuda-graph`` / ``cpu-wall``, see ``measured_table.METHOD_DOCS``):

* The op's persistent state -- GEMM weights, the KV cache a decode attention reads -- is
  rotated among enough copies to exceed the last-level cache (L2 on a GPU, L3 on the CPU),
  because a forward pass streams each weight once per token batch: timing one weight over and
  over would time it from cache.  Activations are not rotated (a real forward pass has just
  written them).  Copies are views into one random pool per dtype, so rotation costs no
  per-op allocation.
* CUDA: warm-up, one eager call timed alone with CUDA events (``eager_ms``, launch overhead
  included), then a batch of calls captured in a CUDA graph and replayed (``ms`` = replay
  time / calls, the way serving engines run); median and spread over repeats.
* CPU: ``torch.get_num_threads()`` real threads (set to the cores this process may use),
  batches of calls timed with ``time.perf_counter``; ``ms = eager_ms`` = wall time per call.

Every op kind is built the way Hugging Face / serving code runs it, and each case carries a
float64 reference implementation (``verify_op``) so tests can check that what is timed
computes the right thing.
"""

from __future__ import annotations

import math
import platform
import shutil
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

from . import hardware
from .errors import MeasureError, UserError
from .measured_table import METHOD_VERSIONS, Measurement, now_iso, software_versions
from .ops import Attention, Elementwise, Gemm, Op, dtype_bytes

__all__ = ["DeviceContext", "Measurement", "open_device", "measure_op", "verify_op",
           "measure_device_peaks"]

_TORCH_DTYPES = {"fp32": "float32", "tf32": "float32", "bf16": "bfloat16", "fp16": "float16"}

#: relative (Frobenius) error allowed against the float64 reference, per dtype
_TOL = {"fp32": 2e-5, "tf32": 5e-3, "bf16": 2e-2, "fp16": 5e-3}


def _torch():
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
    _pools: dict = field(default_factory=dict, repr=False)

    @property
    def is_cuda(self) -> bool:
        return self.kind == "cuda"

    def device_info(self) -> dict:
        """What a measured table / the cache records about the device."""
        return {
            "name": self.name, "display_name": self.display_name,
            "kind": "gpu" if self.is_cuda else "cpu", "fingerprint": self.fingerprint,
            "driver": self.driver, "capability": self.capability, "memory_gb": round(self.memory_gb, 2),
            "cache_mb": self.cache_mb, "sm_count": self.sm_count, "threads": self.threads,
            "clocks": self.clocks, "sparse_24": self.sparse_24, "sparse_24_note": self.sparse_24_note,
            "dtypes": list(self.dtypes), "runtime": self.runtime,
            "platform": platform.platform(), "cpu": hardware._cpu_model(),
        }

    # -- random pools (rotation copies are views into them) --------------------

    def pool(self, dtype: str, min_elems: int = 0, density: float = 1.0):
        """A 1-D random tensor of ``dtype``; with density < 1 a share of its values are zero
        (unstructured sparsity through the dense kernel)."""
        torch = _torch()
        key = (dtype, round(density, 4))
        p = self._pools.get(key)
        want = max(_pool_elems(self, dtype), min_elems)
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
        self._pools.clear()
        if self.is_cuda:
            _torch().cuda.empty_cache()


def torch_dtype(dtype: str):
    torch = _torch()
    try:
        return getattr(torch, _TORCH_DTYPES[dtype])
    except KeyError:
        raise MeasureError(f"dtype {dtype} cannot be measured with torch here") from None


def _nvidia_smi(fields: str) -> list[str]:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        out = subprocess.run([exe, f"--query-gpu={fields}", "--format=csv,noheader,nounits", "-i", "0"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    if out.returncode != 0 or not out.stdout.strip():
        return []
    return [s.strip() for s in out.stdout.strip().splitlines()[0].split(",")]


def read_clocks(ctx: Optional[DeviceContext] = None) -> dict:
    """GPU clocks (MHz), temperature and power where nvidia-smi can read them; {} on CPU."""
    names = ["clocks.sm", "clocks.mem", "clocks.max.sm", "clocks.max.mem", "temperature.gpu",
             "power.draw", "clocks_throttle_reasons.active"]
    vals = _nvidia_smi(",".join(names))
    if not vals:
        vals = _nvidia_smi(",".join(names[:6]))
    return {n: v for n, v in zip(names, vals)}


def open_device(name: str = "local") -> DeviceContext:
    """Open the local device for measuring (imports torch).

    The fingerprint equals ``hardware.local_device().fingerprint`` for the same machine; on the
    CPU torch uses ``hardware.cpu_threads()`` threads (the cores this process may run on, or
    OMP_NUM_THREADS), the count the fingerprint names.
    """
    if name not in ("local", hardware.LOCAL):
        raise UserError(f"can only measure the local device (--gpu local), not {name!r}")
    torch = _torch()
    hw = hardware.local_device()
    sw = software_versions()
    runtime = {"torch": torch.__version__, "cuda": torch.version.cuda,
               "cudnn": None, "cusparselt": None}
    if hw.kind == "gpu":
        if not torch.cuda.is_available():
            raise MeasureError(f"{hw.display_name} was detected but torch {torch.__version__} "
                               "cannot use CUDA (a CPU-only torch build?)")
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
        smi = _nvidia_smi("driver_version")
        ctx = DeviceContext(
            name=hardware.LOCAL, kind="cuda", torch_device="cuda:0", fingerprint=hw.fingerprint,
            display_name=hw.display_name, software=sw, runtime=runtime, dtypes=tuple(dtypes),
            sparse_24=False, threads=torch.get_num_threads(), cache_mb=max(l2, hw.l2_mb),
            memory_gb=props.total_memory / 2**30, driver=smi[0] if smi else None,
            capability=f"{props.major}.{props.minor}", sm_count=props.multi_processor_count,
            clocks=read_clocks(), method="cuda-graph", method_version=METHOD_VERSIONS["cuda-graph"])
        ctx.sparse_24, ctx.sparse_24_note = _probe_sparse_24(ctx)
        return ctx
    torch.set_num_threads(hardware.cpu_threads())
    return DeviceContext(
        name=hardware.LOCAL, kind="cpu", torch_device="cpu", fingerprint=hw.fingerprint,
        display_name=hw.display_name, software=sw, runtime=runtime, dtypes=("fp32", "bf16"),
        sparse_24=False, threads=torch.get_num_threads(), cache_mb=hardware._llc_mb(),
        memory_gb=hw.memory_gb, method="cpu-wall", method_version=METHOD_VERSIONS["cpu-wall"],
        sparse_24_note="torch has no 2:4 semi-structured sparse kernel on the CPU")


def _probe_sparse_24(ctx: DeviceContext) -> tuple[bool, str]:
    """Whether torch's semi-structured sparse tensors work here (a tiny conversion + matmul)."""
    torch = _torch()
    try:
        from torch.sparse import to_sparse_semi_structured
    except ImportError:
        return False, "this torch has no to_sparse_semi_structured"
    cap = torch.cuda.get_device_capability()
    if cap < (8, 0):
        return False, f"2:4 sparse tensor cores need compute capability 8.0+, this GPU is {cap[0]}.{cap[1]}"
    try:
        w = _prune_24(torch.randn(128, 128, dtype=torch.float16, device="cuda"))
        ws = to_sparse_semi_structured(w)
        x = torch.randn(64, 128, dtype=torch.float16, device="cuda")
        torch.nn.functional.linear(x, ws)
        torch.cuda.synchronize()
    except Exception as e:  # noqa: BLE001 - any failure means: not usable
        return False, f"semi-structured sparse matmul failed: {type(e).__name__}: {str(e)[:120]}"
    backend = "cuSPARSELt" if ctx.runtime.get("cusparselt") else "CUTLASS"
    return True, f"torch semi-structured sparse ({backend})"


def _prune_24(w):
    """Keep the 2 largest-magnitude of every 4 consecutive weights along K (MaskLLM-like)."""
    torch = _torch()
    n, k = w.shape
    g = w.reshape(n, k // 4, 4)
    idx = g.abs().topk(2, dim=-1).indices
    mask = torch.zeros_like(g, dtype=torch.bool).scatter_(-1, idx, True)
    return (g * mask).reshape(n, k)


# ---------------------------------------------------------------- op cases


class Unsupported(Exception):
    """The op has no kernel on this device (recorded as status 'unsupported')."""


@dataclass
class _Case:
    fn: Callable[[int], object]  # run one call with rotation copy i
    ref: Callable[[], object]  # float64 reference of fn(0)
    copies: int = 1
    capturable: bool = True
    note: str = ""
    setup: Optional[Callable[[], None]] = None  # one-off work kept out of timing
    fallback: Optional[Callable[[str], "_Case"]] = None  # FlexAttention: if compiling fails
    scale: float = 1.0  # a labelled estimate scales a measured time (FlexAttention fallback)
    post: Optional[Callable[[object], object]] = None  # output -> tensor compared in verify


def _copies_for(ctx: DeviceContext, state_bytes: float, check: bool) -> int:
    """Enough copies of `state_bytes` to exceed twice the cache (1 if one copy already does)."""
    cache = 2 * ctx.cache_mb * 2**20
    if check or state_bytes <= 0 or state_bytes >= cache:
        return 1
    return min(math.ceil(cache / state_bytes) + 1, 1 << 16)


def _pool_elems(ctx: DeviceContext, dtype: str) -> int:
    return max(int(4 * ctx.cache_mb * 2**20 / dtype_bytes(dtype)), 1 << 20)


def _views(ctx: DeviceContext, dtype: str, shape: tuple, copies: int, density: float = 1.0,
           offset_elems: int = 0, check: bool = False) -> list:
    """`copies` distinct tensors of `shape`: views into the random pool where they fit, else
    one fresh tensor (then it is larger than the cache and needs no rotation).  A fresh tensor
    for timing is filled with a constant (a GEMM's or a gather's time does not depend on the
    values, and randomising a 500 MB lm_head costs a second); with ``check`` it is random."""
    torch = _torch()
    n = math.prod(shape)
    if n * copies + offset_elems <= _pool_elems(ctx, dtype):
        p = ctx.pool(dtype, density=density)
        return [p[offset_elems + i * n: offset_elems + (i + 1) * n].view(shape) for i in range(copies)]
    t = torch.empty(shape, dtype=torch_dtype(dtype), device=ctx.torch_device)
    if check or density < 1.0:
        g = torch.Generator(device=ctx.torch_device).manual_seed(7)
        t.uniform_(-1.0, 1.0, generator=g)
        if density < 1.0:
            t.mul_(torch.rand(shape, device=ctx.torch_device, generator=g) < density)
    else:
        t.fill_(0.01)
    return [t]


def _rand(ctx: DeviceContext, shape, dtype: str, seed: int = 0, scale: float = 1.0):
    torch = _torch()
    g = torch.Generator(device=ctx.torch_device).manual_seed(seed)
    t = torch.empty(shape, dtype=torch_dtype(dtype), device=ctx.torch_device)
    t.uniform_(-scale, scale, generator=g)
    return t


def _gemm_case(op: Gemm, ctx: DeviceContext, check: bool, unstructured_kernel: str = "dense") -> _Case:
    torch = _torch()
    F = torch.nn.functional
    b = dtype_bytes(op.dtype)
    x = _rand(ctx, (op.m, op.k), op.dtype, seed=1)
    if op.kind == "sparse_24":
        if not ctx.sparse_24:
            raise Unsupported(ctx.sparse_24_note or "no 2:4 sparse kernel on this device")
        if op.dtype not in ("bf16", "fp16"):
            raise Unsupported(f"2:4 semi-structured sparse GEMMs run in bf16/fp16, not {op.dtype}")
        from torch.sparse import to_sparse_semi_structured

        copies = _copies_for(ctx, op.n * op.k * b * 0.5625, check)
        dense = _views(ctx, op.dtype, (op.n, op.k), min(copies, 512), check=check)
        try:
            pruned = [_prune_24(w) for w in dense[:1]]
            ws = [to_sparse_semi_structured(_prune_24(w)) for w in dense]
        except (RuntimeError, ValueError) as e:
            raise Unsupported(f"shape not supported by the 2:4 kernel: {str(e).splitlines()[0][:160]}")
        w0 = pruned[0]
        return _Case(fn=lambda i: F.linear(x, ws[i % len(ws)]),
                     ref=lambda: x.double() @ w0.double().t(), copies=len(ws),
                     note="2:4 semi-structured sparse")
    density = op.density if op.kind == "unstructured" else 1.0
    copies = _copies_for(ctx, op.n * op.k * b, check)
    ws = _views(ctx, op.dtype, (op.n, op.k), copies, density=density, check=check)
    note = ""
    if op.kind == "unstructured":
        note = f"dense kernel, {1 - density:.0%} zeros"
        if unstructured_kernel == "csr":
            if ctx.is_cuda and op.dtype not in ("fp32", "fp16", "bf16"):
                raise Unsupported(f"no CSR kernel for {op.dtype}")
            wcsr = [w.to_sparse_csr() for w in ws]
            w0 = ws[0]
            return _Case(fn=lambda i: torch.sparse.mm(wcsr[i % len(wcsr)], x.t()).t(),
                         ref=lambda: x.double() @ w0.double().t(), copies=len(wcsr),
                         capturable=False, note=f"CSR sparse kernel, {1 - density:.0%} zeros")
    w0 = ws[0]
    return _Case(fn=lambda i: F.linear(x, ws[i % len(ws)]),
                 ref=lambda: x.double() @ w0.double().t(), copies=len(ws), note=note)


def _has_enable_gqa() -> bool:
    import inspect

    torch = _torch()
    try:
        return "enable_gqa" in inspect.signature(torch.nn.functional.scaled_dot_product_attention).parameters
    except (TypeError, ValueError):  # builtin without a signature: try it
        try:
            q = torch.zeros(1, 2, 1, 4)
            k = torch.zeros(1, 1, 1, 4)
            torch.nn.functional.scaled_dot_product_attention(q, k, k, enable_gqa=True)
            return True
        except (TypeError, RuntimeError):
            return False


def _repeat_kv(x, n_rep: int):
    """HF's repeat_kv: [B, Hkv, L, D] -> [B, Hkv*n_rep, L, D]."""
    if n_rep == 1:
        return x
    b, h, l, d = x.shape
    return x[:, :, None, :, :].expand(b, h, n_rep, l, d).reshape(b, h * n_rep, l, d)


def _attn_reference(q, k, v, allowed):
    """float64 softmax(QKᵀ/√d + mask)·V with GQA; `allowed` is a [q_len, kv_len] bool or None."""
    torch = _torch()
    rep = q.shape[1] // k.shape[1]
    qd, kd, vd = q.double(), _repeat_kv(k.double(), rep), _repeat_kv(v.double(), rep)
    s = qd @ kd.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if allowed is not None:
        s = s.masked_fill(~allowed, float("-inf"))
    p = torch.softmax(s, dim=-1)
    p = torch.nan_to_num(p)  # fully masked rows (none in our masks) would be NaN
    return p @ vd


def _causal_allowed(q_len: int, kv_len: int, device):
    """Bottom-right aligned causal mask (query i sits at position kv_len - q_len + i)."""
    torch = _torch()
    qi = torch.arange(q_len, device=device)[:, None] + (kv_len - q_len)
    ki = torch.arange(kv_len, device=device)[None, :]
    return ki <= qi


def _attention_case(op: Attention, ctx: DeviceContext, check: bool) -> _Case:
    torch = _torch()
    F = torch.nn.functional
    if op.q_heads % op.kv_heads:
        raise MeasureError(f"{op.key()}: q heads {op.q_heads} not a multiple of kv heads {op.kv_heads}")
    b = dtype_bytes(op.dtype)
    scale = 1.0
    q = _rand(ctx, (op.batch, op.q_heads, op.q_len, op.head_dim), op.dtype, seed=3, scale=scale)
    kv_shape = (op.batch, op.kv_heads, op.kv_len, op.head_dim)
    kv_bytes = 2 * math.prod(kv_shape) * b
    # decode streams its KV cache (rotate it); prefill K/V are fresh activations
    copies = _copies_for(ctx, kv_bytes, check) if op.q_len == 1 else 1
    ks = _views(ctx, op.dtype, kv_shape, copies, check=check)
    vs = _views(ctx, op.dtype, kv_shape, len(ks), offset_elems=len(ks) * math.prod(kv_shape)) \
        if copies > 1 else [_rand(ctx, kv_shape, op.dtype, seed=4)]
    n = min(len(ks), len(vs))
    ks, vs = ks[:n], vs[:n]
    rep = op.q_heads // op.kv_heads
    if op.block_density < 1.0:
        return _flex_case(op, ctx, q, ks, vs, check)
    mask = None
    is_causal = False
    if op.causal and op.q_len > 1:
        if op.q_len == op.kv_len:
            is_causal = True
        else:
            mask = _causal_allowed(op.q_len, op.kv_len, ctx.torch_device)
    allowed = _causal_allowed(op.q_len, op.kv_len, ctx.torch_device) if (op.causal and op.q_len > 1) else None
    gqa = rep > 1
    if gqa and _has_enable_gqa():
        def fn(i):
            return F.scaled_dot_product_attention(q, ks[i % n], vs[i % n], attn_mask=mask,
                                                  is_causal=is_causal, enable_gqa=True)
        note = "sdpa, enable_gqa" if gqa else "sdpa"
    else:
        def fn(i):
            return F.scaled_dot_product_attention(q, _repeat_kv(ks[i % n], rep), _repeat_kv(vs[i % n], rep),
                                                  attn_mask=mask, is_causal=is_causal)
        note = "sdpa, repeat_kv" if gqa else "sdpa"
    return _Case(fn=fn, ref=lambda: _attn_reference(q, ks[0], vs[0], allowed), copies=n, note=note)


#: compiled flex_attention (one per process; dynamic=False: the default crashed on a second
#: block mask with torch 2.13 on CPU)
_FLEX = {}


def _block_table(op: Attention, device):
    """Which (q block, kv block) pairs are computed: the causal blocks, of which a share
    ``block_density`` is kept (the diagonal block of each query block always)."""
    torch = _torch()
    bs = op.block_size
    nq, nk = math.ceil(op.q_len / bs), math.ceil(op.kv_len / bs)
    off = op.kv_len - op.q_len
    qb_last = torch.clamp((torch.arange(nq) + 1) * bs - 1, max=op.q_len - 1) + off  # last q pos
    kb_first = torch.arange(nk) * bs
    causal = (kb_first[None, :] <= qb_last[:, None]) if op.causal else torch.ones(nq, nk, dtype=torch.bool)
    g = torch.Generator().manual_seed(11)
    score = torch.rand(nq, nk, generator=g)
    diag = causal.long().cumsum(1).eq(causal.long().sum(1, keepdim=True)) & causal  # last allowed
    score = torch.where(diag, torch.full_like(score, 2.0), score)
    score = torch.where(causal, score, torch.full_like(score, -1.0))
    total = int(causal.sum())
    keep_n = max(int(diag.sum()), round(op.block_density * total))
    flat = score.flatten()
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[flat.topk(keep_n).indices] = True
    table = keep.view(nq, nk) & causal
    return table.to(device), float(table.sum()) / max(total, 1)


def _flex_case(op: Attention, ctx: DeviceContext, q, ks, vs, check: bool) -> _Case:
    torch = _torch()
    n = len(ks)
    table, achieved = _block_table(op, ctx.torch_device)
    bs = op.block_size
    off = op.kv_len - op.q_len
    causal = op.causal
    allowed = table.repeat_interleave(bs, 0)[: op.q_len].repeat_interleave(bs, 1)[:, : op.kv_len]
    if causal:
        allowed = allowed & _causal_allowed(op.q_len, op.kv_len, ctx.torch_device)
    rep = op.q_heads // op.kv_heads
    ref = lambda: _attn_reference(q, ks[0], vs[0], allowed)  # noqa: E731
    note = f"flex_attention block-sparse ({achieved:.0%} of causal blocks, block {bs})"
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError as e:
        return _flex_fallback(op, ctx, q, ks, vs, ref, f"flex-compile failed: estimate (no flex_attention: {e})")

    def mask_mod(b, h, q_idx, kv_idx):
        m = table[q_idx // bs, kv_idx // bs]
        if causal:
            m = m & (kv_idx <= q_idx + off)
        return m

    try:
        block_mask = create_block_mask(mask_mod, None, None, op.q_len, op.kv_len,
                                       device=ctx.torch_device, BLOCK_SIZE=bs)
    except Exception as e:  # noqa: BLE001
        return _flex_fallback(op, ctx, q, ks, vs, ref,
                              f"flex-compile failed: estimate (block mask: {type(e).__name__})")
    key = ctx.torch_device
    if key not in _FLEX:
        _raise_recompile_limit()
        _FLEX[key] = torch.compile(flex_attention, dynamic=False)
    flex = _FLEX[key]
    kw = {"enable_gqa": True} if rep > 1 else {}

    def fn(i):
        return flex(q, ks[i % n], vs[i % n], block_mask=block_mask, **kw)

    return _Case(fn=fn, ref=ref, copies=n, note=note,
                 fallback=lambda reason: _flex_fallback(op, ctx, q, ks, vs, ref, reason))


def _raise_recompile_limit(n: int = 256) -> None:
    """Each attention shape compiles its own kernel (dynamic=False); dynamo's default limit of
    8 recompilations per function would silently fall back to eager flex_attention (which
    builds the full score matrix) once a calibration has seen more shapes."""
    try:
        import torch._dynamo.config as cfg
    except ImportError:  # pragma: no cover
        return
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(cfg, name) and getattr(cfg, name) < n:
            setattr(cfg, name, n)
    for name in ("accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(cfg, name) and getattr(cfg, name) < 4 * n:
            setattr(cfg, name, 4 * n)


def _oom_error():
    torch = _torch()
    return getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError


def _flex_fallback(op, ctx, q, ks, vs, ref, reason: str) -> _Case:
    """Compiling FlexAttention failed: time dense SDPA and scale by the block density
    (a clearly labelled estimate, never presented as a block-sparse measurement)."""
    torch = _torch()
    F = torch.nn.functional
    n = len(ks)
    rep = op.q_heads // op.kv_heads
    is_causal = op.causal and op.q_len > 1 and op.q_len == op.kv_len
    mask = _causal_allowed(op.q_len, op.kv_len, ctx.torch_device) \
        if (op.causal and op.q_len > 1 and not is_causal) else None

    def fn(i):
        return F.scaled_dot_product_attention(q, _repeat_kv(ks[i % n], rep), _repeat_kv(vs[i % n], rep),
                                              attn_mask=mask, is_causal=is_causal)

    return _Case(fn=fn, ref=None, copies=n, note=reason, scale=op.block_density)


def _ew_case(op: Elementwise, ctx: DeviceContext, check: bool) -> _Case:
    torch = _torch()
    F = torch.nn.functional
    dt = torch_dtype(op.dtype)
    rows, width = op.rows, op.width
    x = _rand(ctx, (rows, width), op.dtype, seed=5)
    kind = op.kind
    if kind == "rmsnorm":
        w = _rand(ctx, (width,), op.dtype, seed=6)
        eps = 1e-6

        def fn(i):  # transformers' LlamaRMSNorm
            h = x.to(torch.float32)
            var = h.pow(2).mean(-1, keepdim=True)
            h = h * torch.rsqrt(var + eps)
            return w * h.to(dt)

        def ref():
            xd = x.double()
            return w.double() * (xd / torch.sqrt(xd.pow(2).mean(-1, keepdim=True) + eps))
        return _Case(fn, ref)
    if kind == "rotary":
        hd = op.extra or (128 if width % 128 == 0 else 64)
        if width % hd or hd % 2:
            raise MeasureError(f"{op.key()}: width {width} is not a multiple of head_dim {hd}")
        heads = width // hd
        pos = torch.arange(rows, device=ctx.torch_device, dtype=torch.float32)
        inv = 1.0 / (10000 ** (torch.arange(0, hd, 2, device=ctx.torch_device, dtype=torch.float32) / hd))
        freqs = pos[:, None] * inv[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos().to(dt)[:, None, :], emb.sin().to(dt)[:, None, :]
        xh = x.view(rows, heads, hd)

        def rotate_half(t):
            t1, t2 = t[..., : t.shape[-1] // 2], t[..., t.shape[-1] // 2:]
            return torch.cat((-t2, t1), dim=-1)

        def fn(i):  # transformers' apply_rotary_pos_emb on one of q/k
            return xh * cos + rotate_half(xh) * sin

        def ref():
            xd = xh.double()
            c, s = emb.cos().double()[:, None, :], emb.sin().double()[:, None, :]
            x1, x2 = xd[..., : hd // 2], xd[..., hd // 2:]
            return xd * c + torch.cat((-x2, x1), -1) * s
        return _Case(fn, ref)
    if kind == "silu_mul":
        up = _rand(ctx, (rows, width), op.dtype, seed=7)
        return _Case(lambda i: F.silu(x) * up,
                     lambda: (x.double() * torch.sigmoid(x.double())) * up.double())
    if kind == "residual_add":
        r = _rand(ctx, (rows, width), op.dtype, seed=8)
        return _Case(lambda i: r + x, lambda: r.double() + x.double())
    if kind == "bias_add":
        bias = _rand(ctx, (width,), op.dtype, seed=9)
        return _Case(lambda i: x + bias, lambda: x.double() + bias.double())
    if kind == "embedding":
        vocab = op.extra or 32000
        table = _views(ctx, op.dtype, (vocab, width), 1, check=check)[0]
        g = torch.Generator(device=ctx.torch_device).manual_seed(12)
        ids = torch.randint(0, vocab, (rows,), generator=g, device=ctx.torch_device)
        return _Case(lambda i: F.embedding(ids, table), lambda: table.double()[ids])
    if kind == "kv_write":
        cap = max(op.extra, 2 * rows)
        cache = torch.zeros((cap, width), dtype=dt, device=ctx.torch_device)
        posn = torch.arange(cap - rows, cap, device=ctx.torch_device)

        def fn(i):  # transformers' StaticCache.update: index_copy_ along the position dim
            return cache.index_copy_(0, posn, x)

        def ref():
            c = cache.double().clone()
            c[posn] = x.double()
            return c
        return _Case(fn, ref)
    if kind == "topk":
        k = min(op.extra or max(1, width // 8), width)

        def fn(i):  # router top-k (values and indices, as a MoE/skip router does)
            return torch.topk(x, k, dim=-1)

        return _Case(fn, lambda: torch.topk(x.double(), k, dim=-1).values, post=lambda out: out.values)
    if kind == "gather":
        src_rows = max(op.extra, 2 * rows)
        if op.extra > 0:
            # a source of `extra` rows named by the op is state (a KV cache) that a forward
            # reads from memory, not a just-written activation: rotate it past the cache
            srcs = _views(ctx, op.dtype, (src_rows, width),
                          _copies_for(ctx, src_rows * width * dtype_bytes(op.dtype), check),
                          check=check)
        else:
            srcs = [_rand(ctx, (src_rows, width), op.dtype, seed=13)]
        g = torch.Generator(device=ctx.torch_device).manual_seed(14)
        idx = torch.randperm(src_rows, generator=g, device=ctx.torch_device)[:rows].sort().values
        n_src = len(srcs)
        return _Case(lambda i: srcs[i % n_src].index_select(0, idx), lambda: srcs[0].double()[idx],
                     copies=n_src)
    if kind == "scatter":
        dst_rows = max(op.extra, 2 * rows)
        dst = _rand(ctx, (dst_rows, width), op.dtype, seed=15)
        g = torch.Generator(device=ctx.torch_device).manual_seed(16)
        idx = torch.randperm(dst_rows, generator=g, device=ctx.torch_device)[:rows].sort().values

        def ref():
            d = dst.double().clone()
            d.index_add_(0, idx, x.double())
            return d
        # scatter-add back into the residual, as token-routing code does (index_add_)
        return _Case(lambda i: dst.index_add_(0, idx, x), ref)
    if kind == "block_pool":
        bs = op.extra or 64
        nb = math.ceil(rows / bs)
        pad = nb * bs - rows

        def fn(i):  # mean-pool the sequence into blocks (SeerAttention-style gate input)
            h = F.pad(x, (0, 0, 0, pad)) if pad else x
            return h.view(nb, bs, width).float().mean(1)

        def ref():
            h = torch.cat([x.double(), x.new_zeros((pad, width), dtype=torch.float64)]) if pad else x.double()
            return h.view(nb, bs, width).mean(1)
        return _Case(fn, ref)
    raise MeasureError(f"unknown elementwise kind {kind!r}")


def _build_case(op: Op, ctx: DeviceContext, check: bool = False, **kw) -> _Case:
    if op.dtype not in ctx.dtypes:
        raise Unsupported(f"dtype {op.dtype} is not measured on {ctx.display_name} "
                          f"(measurable: {', '.join(ctx.dtypes)})")
    if isinstance(op, Gemm):
        return _gemm_case(op, ctx, check, kw.get("unstructured_kernel", "dense"))
    if isinstance(op, Attention):
        return _attention_case(op, ctx, check)
    if isinstance(op, Elementwise):
        return _ew_case(op, ctx, check)
    raise MeasureError(f"cannot measure {type(op).__name__}")


# ---------------------------------------------------------------- timing loops


def _median_spread(xs: list[float]) -> tuple[float, float]:
    xs = sorted(xs)
    med = statistics.median(xs)
    if len(xs) >= 4:
        q = statistics.quantiles(xs, n=4, method="inclusive")
        spread = (q[2] - q[0]) / med if med > 0 else 0.0
    else:
        spread = (xs[-1] - xs[0]) / med if med > 0 and len(xs) > 1 else 0.0
    return med, spread


def _time_cpu(fn, copies: int, repeats: int, warmup: int, target_s: float, max_s: float):
    pc = time.perf_counter
    t0 = pc()
    fn(0)
    first = pc() - t0
    idx = 1
    # warm up (kernel selection, caches) within a small time budget: the pool the copies live
    # in is already resident, so touching every copy is not needed
    est = first
    n_warm = max(warmup - 1, min(copies - 1, int(0.05 / max(first, 1e-7))))
    if first > 0.1:
        n_warm = 0  # a call this long: the first call was warm-up enough (its cost dominates)
    w_start = pc()
    for _ in range(n_warm):
        t = pc()
        fn(idx % copies)
        est = pc() - t
        idx += 1
        if pc() - w_start > max(0.1, 2 * first):
            break
    if est > 0.25:
        repeats = min(repeats, 3)
    per = max(1, min(100000, round(target_s / max(est, 1e-7))))
    times = []
    start = pc()
    for r in range(repeats):
        t = pc()
        for _ in range(per):
            fn(idx % copies)
            idx += 1
        times.append((pc() - t) / per)
        if len(times) >= 2 and pc() - start > max_s:
            break
    med, spread = _median_spread(times)
    return med * 1e3, med * 1e3, spread, len(times), ""


def _time_cuda(fn, copies: int, repeats: int, warmup: int, capturable: bool, target_ms: float = 2.0):
    torch = _torch()
    Event = torch.cuda.Event
    torch.cuda.synchronize()
    for i in range(max(warmup, min(copies, 256))):
        fn(i % copies)
    torch.cuda.synchronize()
    eager = []
    for r in range(max(repeats, 5)):
        s, e = Event(enable_timing=True), Event(enable_timing=True)
        s.record()
        fn(r % copies)
        e.record()
        e.synchronize()
        eager.append(s.elapsed_time(e))
    eager_ms, _ = _median_spread(eager)
    n = max(copies, math.ceil(target_ms / max(eager_ms, 1e-3)))
    n = max(1, min(n, 2000))
    note = ""
    times = []
    if capturable:
        try:
            g = torch.cuda.CUDAGraph()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for j in range(3):
                    fn(j % copies)
            torch.cuda.current_stream().wait_stream(side)
            with torch.cuda.graph(g):
                for j in range(n):
                    fn(j % copies)
            g.replay()
            torch.cuda.synchronize()
            for _ in range(repeats):
                s, e = Event(enable_timing=True), Event(enable_timing=True)
                s.record()
                g.replay()
                e.record()
                e.synchronize()
                times.append(s.elapsed_time(e) / n)
            del g
        except _oom_error():
            raise
        except Exception as ex:  # noqa: BLE001 - not capturable: fall back to eager batches
            torch.cuda.synchronize()
            note = f"graph capture failed ({type(ex).__name__}): eager batch time"
            times = []
    else:
        note = "not graph-capturable: eager batch time"
    if not times:
        for _ in range(repeats):
            s, e = Event(enable_timing=True), Event(enable_timing=True)
            s.record()
            for j in range(n):
                fn(j % copies)
            e.record()
            e.synchronize()
            times.append(s.elapsed_time(e) / n)
    med, spread = _median_spread(times)
    return med, eager_ms, spread, len(times), note


# ---------------------------------------------------------------- public API


def _measurement(op: Op, ctx: DeviceContext, **kw) -> Measurement:
    return Measurement(key=op.key(), op=asdict(op), method=ctx.method,
                       method_version=ctx.method_version, fingerprint=ctx.fingerprint,
                       software=dict(ctx.software), measured_at=now_iso(), **kw)


def measure_op(op: Op, ctx: DeviceContext, *, repeats: Optional[int] = None,
               warmup: Optional[int] = None, target_ms: Optional[float] = None,
               max_op_s: float = 20.0, unstructured_kernel: str = "dense") -> Measurement:
    """Time one call of ``op`` on the opened device (``count`` is ignored).

    Never raises for an op that fails: the returned Measurement's ``status`` says
    ``unsupported`` (no kernel here), ``oom`` (out of memory) or ``error`` (with the reason
    in ``note``).  ``repeats``: timed batches (default 7 on CUDA, 5 on the CPU; at most 3
    for calls longer than 0.25 s on the CPU).  ``target_ms``: wall time of one timed batch.
    """
    torch = _torch()
    repeats = repeats or (7 if ctx.is_cuda else 5)
    warmup = warmup or (3 if ctx.is_cuda else 2)
    case = None
    tf32 = None
    if ctx.is_cuda:  # "tf32" is fp32 storage with TF32 tensor-core math; "fp32" is true fp32
        tf32 = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = op.dtype == "tf32"
    try:
        case = _build_case(op, ctx, unstructured_kernel=unstructured_kernel)
        note = case.note
        if case.setup:
            case.setup()
        compile_s = None
        if case.fallback is not None:  # FlexAttention: compile now, outside the timing
            t = time.perf_counter()
            try:
                case.fn(0)
                if ctx.is_cuda:
                    torch.cuda.synchronize()
                compile_s = time.perf_counter() - t
            except _oom_error():
                raise
            except Exception as e:  # noqa: BLE001
                case = case.fallback(f"flex-compile failed: estimate ({type(e).__name__}: "
                                     f"{str(e).splitlines()[0][:100] if str(e) else ''})")
                note = case.note
        if ctx.is_cuda:
            ms, eager, spread, n, tnote = _time_cuda(case.fn, case.copies, repeats, warmup,
                                                     case.capturable, target_ms or 2.0)
        else:
            ms, eager, spread, n, tnote = _time_cpu(case.fn, case.copies, repeats, warmup,
                                                    (target_ms or 10.0) / 1e3, max_op_s)
        if case.scale != 1.0:
            ms, eager = ms * case.scale, eager * case.scale
        notes = [s for s in (note, tnote, f"flex compile {compile_s:.1f} s" if compile_s else "",
                             f"{case.copies} rotated copies" if case.copies > 1 else "") if s]
        return _measurement(op, ctx, ms=ms, eager_ms=eager, spread=spread, repeats=n,
                            status="ok", note="; ".join(notes))
    except Unsupported as e:
        return _measurement(op, ctx, ms=None, status="unsupported", note=str(e))
    except _oom_error() as e:
        return _measurement(op, ctx, ms=None, status="oom",
                            note=f"out of memory: {str(e).splitlines()[0][:160] if str(e) else ''}")
    except MeasureError as e:
        return _measurement(op, ctx, ms=None, status="error", note=str(e))
    except (RuntimeError, ValueError, TypeError, NotImplementedError) as e:
        msg = str(e).splitlines()[0][:200] if str(e) else ""
        if "out of memory" in msg.lower() or "can't allocate memory" in msg.lower():
            return _measurement(op, ctx, ms=None, status="oom", note=f"out of memory: {msg}")
        return _measurement(op, ctx, ms=None, status="error", note=f"{type(e).__name__}: {msg}")
    finally:
        del case
        if ctx.is_cuda:
            torch.backends.cuda.matmul.allow_tf32 = tf32
            torch.cuda.empty_cache()


def verify_op(op: Op, ctx: DeviceContext, **kw) -> tuple[float, float]:
    """Run the timed implementation of ``op`` once and compare it with a float64 reference.

    Returns (relative Frobenius error, tolerance for the op's dtype).  Raises ``Unsupported``
    when the op has no kernel here.
    """
    torch = _torch()
    case = _build_case(op, ctx, check=True, **kw)
    if case.ref is None:
        raise Unsupported(case.note)
    expected = case.ref()  # before fn: some ops (scatter, kv_write) update in place
    if isinstance(expected, torch.Tensor):
        expected = expected.clone()
    out = case.fn(0)
    if case.post:
        out = case.post(out)
    out = out.double()
    expected = expected.double()
    if out.shape != expected.shape:
        raise MeasureError(f"{op.key()}: shape {tuple(out.shape)} != reference {tuple(expected.shape)}")
    den = expected.norm().item() or 1.0
    err = (out - expected).norm().item() / den
    tol = _TOL.get(op.dtype, 1e-2)
    if isinstance(op, Attention) or (isinstance(op, Elementwise) and op.kind in ("rmsnorm", "silu_mul", "rotary")):
        tol *= 5  # softmax / transcendental functions in low precision
    return err, tol


def contention_probe(ctx: DeviceContext, budget_s: float = 0.05) -> dict:
    """Is another process using this CPU's cores right now?

    An OpenMP parallel region waits for every thread at its barrier: when another process
    holds one of the cores, each multithreaded kernel waits for a descheduled thread (a whole
    scheduler slice, ~15 ms here), so a 0.07 ms GEMM takes 15 ms.  This times a small GEMM
    with all threads and with one; ``contended`` when all threads are more than 3× slower.
    """
    if ctx.is_cuda or ctx.threads <= 1:
        return {"contended": False, "ratio": 1.0}
    torch = _torch()
    x = torch.ones(16, 896)
    w = torch.ones(128, 896)

    def rate(threads: int) -> float:
        torch.set_num_threads(threads)
        torch.nn.functional.linear(x, w)
        best = float("inf")
        end = time.perf_counter() + budget_s
        while time.perf_counter() < end:
            t = time.perf_counter()
            torch.nn.functional.linear(x, w)
            best = min(best, time.perf_counter() - t)
        return best

    try:
        single = rate(1)
        multi = min(rate(ctx.threads), rate(ctx.threads))
    finally:
        torch.set_num_threads(ctx.threads)
    ratio = multi / single if single > 0 else 1.0
    return {"contended": ratio > 3.0, "ratio": ratio, "threads_ms": multi * 1e3,
            "single_thread_ms": single * 1e3, "threads": ctx.threads}


def measure_device_peaks(ctx: DeviceContext, dtype: str) -> dict:
    """Measured compute and memory rates of the device: a large matmul and a large copy.

    Returns {"peak_tflops", "bandwidth_gbs", ...}: what the estimator's roofline uses for the
    local device instead of nominal figures.  Each is the best of several calls (a peak is
    what the device reaches; on a shared machine the median would measure the neighbours).
    """
    torch = _torch()
    dt = torch_dtype(dtype)
    dev = ctx.torch_device

    def timed(fn, reps):
        """The best (shortest) of `reps` calls: a peak is what the device can reach."""
        if ctx.is_cuda:
            fn()
            torch.cuda.synchronize()
            out = []
            for _ in range(reps):
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
                fn()
                e.record()
                e.synchronize()
                out.append(s.elapsed_time(e) / 1e3)
            return min(out)
        fn()
        out = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
        return min(out)

    # matmul: grow the size until one call takes long enough to be compute-bound and stable
    n = 1024
    while True:
        mats = [torch.empty((n, n), dtype=dt, device=dev).uniform_(-1, 1) for _ in range(2)]
        t = timed(lambda: torch.mm(mats[0], mats[1]), 5)
        min_t = 0.005 if ctx.is_cuda else 0.08
        if t >= min_t or n >= (16384 if ctx.is_cuda else 4096):
            break
        n *= 2
    peak = 2 * n ** 3 / t / 1e12
    mats.clear()
    # copy bandwidth: a buffer well past the caches, read + written
    size = int(max(8 * ctx.cache_mb * 2**20, (1 << 30) if ctx.is_cuda else 256 * 2**20))
    bufs = [torch.empty(size, dtype=torch.uint8, device=dev).fill_(1) for _ in range(2)]
    t = timed(lambda: bufs[1].copy_(bufs[0]), 5)
    bw = 2 * size / t / 1e9
    bufs.clear()
    if ctx.is_cuda:
        torch.cuda.empty_cache()
    return {"peak_tflops": peak, "bandwidth_gbs": bw, "dtype": dtype, "matmul_n": n,
            "copy_mb": size / 2**20, "threads": ctx.threads,
            "method": f"{ctx.method}-peaks-v1", "measured_at": now_iso()}
