"""The device's measured peaks: a large matmul and a large copy."""

from __future__ import annotations

import time

from ..pricing.measured_table import now_iso
from .device import DeviceContext, torch_dtype, torch_module

def measure_device_peaks(ctx: DeviceContext, dtype: str) -> dict:
    """Measured compute and memory rates of the device: a large matmul and a large copy.

    Returns {"peak_tflops", "bandwidth_gbs", ...}: what the estimator's roofline uses for the
    local device instead of nominal figures.  Each is the best of several calls (a peak is
    what the device reaches; on a shared machine the median would measure the neighbours).
    """
    torch = torch_module()
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
