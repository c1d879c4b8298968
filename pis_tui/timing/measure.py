"""Timing one op: the case for its kind, the loop for the device, a Measurement that never
raises; checking what is timed against a float64 reference; the CPU contention probe."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Optional

from ..errors import MeasureError
from ..pricing.measured_table import Measurement, now_iso
from ..model.ops import Attention, Elementwise, Gemm, GroupedGemm, Op
from . import attention, elementwise, gemm, grouped, quantized
from .case import Case, Unsupported
from .device import DeviceContext, oom_error, torch_module
from .loops import GRAPH_CAPTURE_FAILED, NOT_CAPTURABLE, time_cpu, time_cuda

#: relative Frobenius error allowed against the float64 reference, by the op's dtype.  A
#: quantized GEMM's reference is the float64 product of the dequantized operands its kernel
#: multiplies, so the same tolerances hold its accumulation and output rounding (CPU int4:
#: ~4e-7 in fp32, ~2e-3 in bf16; fp8 with a bf16 output ~2e-3), while a code off by one is
#: 0.1–0.5 off
_TOL = {"fp32": 2e-5, "tf32": 5e-3, "bf16": 2e-2, "fp16": 5e-3}
#: act_quant against its float64 quantize-dequantize: a tie of the fp32 quotient may round one
#: element one fp8 step (6 %) the other way (~1e-4 of a [37, 1024] tensor); a wrong scale or
#: format is a few % off everywhere
ACT_QUANT_TOL = 1e-3


def build_case(op: Op, ctx: DeviceContext, check: bool = False, **kw) -> Case:
    if op.dtype not in ctx.dtypes:
        raise Unsupported(f"dtype {op.dtype} is not measured on {ctx.display_name} "
                          f"(measurable: {', '.join(ctx.dtypes)})")
    if getattr(op, "quant", ""):
        return quantized.quantized_case(op, ctx, check)
    if isinstance(op, Gemm):
        return gemm.gemm_case(op, ctx, check, kw.get("unstructured_kernel", "dense"))
    if isinstance(op, GroupedGemm):
        return grouped.grouped_gemm_case(op, ctx, check)
    if isinstance(op, Attention):
        return attention.attention_case(op, ctx, check)
    if isinstance(op, Elementwise):
        return elementwise.elementwise_case(op, ctx, check)
    raise MeasureError(f"cannot measure {type(op).__name__}")


# ---------------------------------------------------------------- public API


def _measurement(op: Op, ctx: DeviceContext, **kw) -> Measurement:
    return Measurement(key=op.key(), op=asdict(op), method=ctx.method,
                       method_version=ctx.method_version, fingerprint=ctx.fingerprint,
                       software=dict(ctx.software), measured_at=now_iso(), **kw)


#: phrases of CUDA errors that poison the process's context: every later call fails too,
#: and only a new process can use the GPU again
STICKY_CUDA_ERRORS = ("illegal memory access", "illegal address", "unspecified launch failure",
                      "device-side assert", "misaligned address", "illegal instruction",
                      "uncorrectable ecc", "hardware stack error", "launch timed out",
                      "cuda error: unknown error", "context is destroyed",
                      "cudaerrorlaunchfailure", "cudaerrorillegaladdress")

#: rotation copies allowed on the one retry after an out-of-memory
OOM_RETRY_COPIES = 2


def is_sticky_cuda_error(message: str) -> bool:
    """Whether a CUDA error message names an error after which this process cannot use the
    GPU any more (an illegal address, a device-side assert...)."""
    m = message.lower()
    return any(s in m for s in STICKY_CUDA_ERRORS)


def cuda_alive() -> bool:
    """A tiny kernel and a synchronize: False when the CUDA context is poisoned."""
    torch = torch_module()
    try:
        torch.ones(1, device="cuda").add_(1)
        torch.cuda.synchronize()
        return True
    except Exception:  # noqa: BLE001 - any failure: the context is unusable
        return False


def _first_line(e: BaseException, n: int = 200) -> str:
    s = str(e).strip()
    return s.splitlines()[0][:n] if s else ""


def _is_oom(e: BaseException) -> bool:
    if isinstance(e, oom_error()):
        return True
    msg = _first_line(e).lower()
    return isinstance(e, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg)


def measure_op(op: Op, ctx: DeviceContext, *, repeats: Optional[int] = None,
               warmup: Optional[int] = None, target_ms: Optional[float] = None,
               max_op_s: float = 20.0, unstructured_kernel: str = "dense") -> Measurement:
    """Time one call of ``op`` on the opened device (``count`` is ignored).

    Never raises for an op that fails: the returned Measurement's ``status`` says
    ``unsupported`` (no kernel here), ``oom`` (out of memory) or ``error`` (with the reason
    in ``note``).  ``repeats``: timed batches (default 7 on CUDA, 5 on the CPU; at most 3
    for calls longer than 0.25 s on the CPU).  ``target_ms``: wall time of one timed batch.

    An out-of-memory is retried once after freeing the random pools and the allocator's
    cache, with at most ``OOM_RETRY_COPIES`` rotated copies (said in the note); a second one
    is final (``oom``).  A CUDA error that poisons the process (:func:`is_sticky_cuda_error`,
    or a context that no longer runs a tiny kernel) sets ``ctx.sticky_error``: this op is an
    ``error`` and every later call returns one at once (the profile stops, keeping what was
    measured: only a new process can use the GPU again).
    """
    if ctx.sticky_error:
        return _measurement(op, ctx, ms=None, status="error",
                            note=f"not measured: the GPU hit an unrecoverable error earlier "
                                 f"({ctx.sticky_error})")
    kw = dict(repeats=repeats, warmup=warmup, target_ms=target_ms, max_op_s=max_op_s,
              unstructured_kernel=unstructured_kernel)
    try:
        return _measure_once(op, ctx, **kw)
    except BaseException as e:  # noqa: BLE001 - sorted below; KeyboardInterrupt re-raised
        if not _is_oom(e):
            return _failure(op, ctx, e)
        first = _first_line(e, 160)
    saved = ctx.max_copies
    ctx.free()  # the pools, cached blocks (and the graphs of the failed try, now unreferenced)
    ctx.max_copies = OOM_RETRY_COPIES if saved is None else max(1, min(saved, OOM_RETRY_COPIES))
    try:
        m = _measure_once(op, ctx, **kw)
        m.note = "; ".join(x for x in (m.note, f"retried after an out-of-memory ({first}) with "
                                       f"pools freed and at most {ctx.max_copies} rotated copies") if x)
        return m
    except BaseException as e:  # noqa: BLE001
        if _is_oom(e):
            return _measurement(op, ctx, ms=None, status="oom",
                                note=f"out of memory (also after freeing pools and retrying with "
                                     f"{ctx.max_copies} rotated copies): {first}")
        return _failure(op, ctx, e)
    finally:
        ctx.max_copies = saved


def _failure(op: Op, ctx: DeviceContext, e: BaseException) -> Measurement:
    """The Measurement of an op whose measuring raised ``e`` (re-raised if it is no failure
    of the op: KeyboardInterrupt, SystemExit)."""
    if isinstance(e, Unsupported):
        return _measurement(op, ctx, ms=None, status="unsupported", note=str(e))
    if isinstance(e, MeasureError):
        return _measurement(op, ctx, ms=None, status="error", note=str(e))
    if not isinstance(e, Exception):
        raise e
    msg = _first_line(e)
    if ctx.is_cuda and (is_sticky_cuda_error(msg) or not cuda_alive()):
        ctx.sticky_error = f"{type(e).__name__}: {msg}"
        return _measurement(op, ctx, ms=None, status="error",
                            note=f"unrecoverable CUDA error: {ctx.sticky_error}")
    if isinstance(e, (RuntimeError, ValueError, TypeError, NotImplementedError)):
        return _measurement(op, ctx, ms=None, status="error", note=f"{type(e).__name__}: {msg}")
    raise e


def _measure_once(op: Op, ctx: DeviceContext, *, repeats, warmup, target_ms, max_op_s,
                  unstructured_kernel) -> Measurement:
    torch = torch_module()
    repeats = repeats or (7 if ctx.is_cuda else 5)
    warmup = warmup or (3 if ctx.is_cuda else 2)
    case = None
    tf32 = None
    if ctx.is_cuda:  # "tf32" is fp32 storage with TF32 tensor-core math; "fp32" is true fp32
        tf32 = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = op.dtype == "tf32"
    try:
        case = build_case(op, ctx, unstructured_kernel=unstructured_kernel)
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
            except oom_error():
                raise
            except Exception as e:  # noqa: BLE001
                if ctx.is_cuda and is_sticky_cuda_error(_first_line(e)):
                    raise
                case = case.fallback(f"flex-compile failed: estimate ({type(e).__name__}: "
                                     f"{_first_line(e, 100)})")
                note = case.note
        if ctx.is_cuda:
            ms, eager, spread, n, tnote = time_cuda(case.fn, case.copies, repeats, warmup,
                                                     case.capturable, target_ms or 2.0)
        else:
            ms, eager, spread, n, tnote = time_cpu(case.fn, case.copies, repeats, warmup,
                                                    (target_ms or 10.0) / 1e3, max_op_s)
        conditions: dict = dict(case.conditions)  # a quantized GEMM's kernel
        if case.scale != 1.0:
            # a labelled estimate (FlexAttention that did not compile: dense SDPA × block
            # density): priced "estimated", never as a measurement of the block-sparse kernel
            ms, eager = ms * case.scale, eager * case.scale
            conditions["estimated"] = note or "a measured time scaled, not the op's own kernel"
        if tnote.startswith((GRAPH_CAPTURE_FAILED, NOT_CAPTURABLE)):
            conditions["graph_capture"] = tnote  # eager launches included: an upper bound
        notes = [s for s in (note, tnote, f"flex compile {compile_s:.1f} s" if compile_s else "",
                             f"{case.copies} rotated copies"
                             if case.copies > 1 and not isinstance(op, GroupedGemm) else "") if s]
        return _measurement(op, ctx, ms=ms, eager_ms=eager, spread=spread, repeats=n,
                            status="ok", note="; ".join(notes), conditions=conditions)
    finally:
        del case
        if ctx.is_cuda:
            torch.backends.cuda.matmul.allow_tf32 = tf32
            try:
                torch.cuda.empty_cache()
            except Exception:  # noqa: BLE001 - a poisoned context: the caller reports it
                pass


def verify_op(op: Op, ctx: DeviceContext, **kw) -> tuple[float, float]:
    """Run the timed implementation of ``op`` once and compare it with a float64 reference.

    Returns (relative Frobenius error, tolerance for the op's dtype).  Raises ``Unsupported``
    when the op has no kernel here.
    """
    return verify_case(op, build_case(op, ctx, check=True, **kw))


def verify_case(op: Op, case: Case) -> tuple[float, float]:
    """:func:`verify_op` for a case already built (with ``check=True``)."""
    torch = torch_module()
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
    if isinstance(op, Elementwise) and op.kind == "act_quant":
        tol = ACT_QUANT_TOL
    return err, tol


def contention_probe(ctx: DeviceContext, budget_s: float = 0.02) -> dict:
    """Is another process using this CPU's cores right now?  :func:`cpu_contention` on the
    context's threads (never contended on CUDA or with one thread)."""
    if ctx.is_cuda or ctx.threads <= 1:
        return {"contended": False, "ratio": 1.0}
    return cpu_contention(ctx.threads, budget_s)


def cpu_contention(threads: int, budget_s: float = 0.02) -> dict:
    """Is another process using this CPU's cores right now?

    An OpenMP parallel region waits for every thread at its barrier: when another process
    holds one of the cores, each multithreaded kernel waits for a descheduled thread (a whole
    scheduler slice, ~15 ms here), so a 0.07 ms GEMM takes 15 ms.  This times a small GEMM
    with all ``threads`` and with one; ``contended`` when all threads are more than 3× slower.
    """
    if threads <= 1:
        return {"contended": False, "ratio": 1.0}
    torch = torch_module()
    x = torch.ones(16, 896)
    w = torch.ones(128, 896)

    def rate(n: int) -> float:
        torch.set_num_threads(n)
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
        multi = min(rate(threads), rate(threads))
    finally:
        torch.set_num_threads(threads)
    ratio = multi / single if single > 0 else 1.0
    return {"contended": ratio > 3.0, "ratio": ratio, "threads_ms": multi * 1e3,
            "single_thread_ms": single * 1e3, "threads": threads}
