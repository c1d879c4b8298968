"""The timing loops: batches of calls timed on the CPU, CUDA-graph replays on a GPU."""

from __future__ import annotations

import math
import statistics
import time

from .device import oom_error, torch_module

#: calls in one captured CUDA graph at most (a graph of n calls visits n rotation copies)
MAX_GRAPH_CALLS = 2000

# ---------------------------------------------------------------- timing loops


def median_spread(xs: list[float]) -> tuple[float, float]:
    xs = sorted(xs)
    med = statistics.median(xs)
    if len(xs) >= 4:
        q = statistics.quantiles(xs, n=4, method="inclusive")
        spread = (q[2] - q[0]) / med if med > 0 else 0.0
    else:
        spread = (xs[-1] - xs[0]) / med if med > 0 and len(xs) > 1 else 0.0
    return med, spread


def time_cpu(fn, copies: int, repeats: int, warmup: int, target_s: float, max_s: float):
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
    med, spread = median_spread(times)
    return med * 1e3, med * 1e3, spread, len(times), ""


#: how time_cuda's note begins when the time is not a CUDA-graph replay's (the measurement
#: is flagged: eager launches are in it, so it is an upper bound of the graph time)
GRAPH_CAPTURE_FAILED = "graph capture failed"
NOT_CAPTURABLE = "not graph-capturable"


def time_cuda(fn, copies: int, repeats: int, warmup: int, capturable: bool, target_ms: float = 2.0):
    torch = torch_module()
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
    eager_ms, _ = median_spread(eager)
    n = max(copies, math.ceil(target_ms / max(eager_ms, 1e-3)))
    n = max(1, min(n, MAX_GRAPH_CALLS))
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
        except oom_error():
            raise
        except Exception as ex:  # noqa: BLE001 - not capturable: fall back to eager batches
            torch.cuda.synchronize()
            note = f"{GRAPH_CAPTURE_FAILED} ({type(ex).__name__}): eager batch time"
            times = []
    else:
        note = f"{NOT_CAPTURABLE}: eager batch time"
    if not times:
        for _ in range(repeats):
            s, e = Event(enable_timing=True), Event(enable_timing=True)
            s.record()
            for j in range(n):
                fn(j % copies)
            e.record()
            e.synchronize()
            times.append(s.elapsed_time(e) / n)
    med, spread = median_spread(times)
    return med, eager_ms, spread, len(times), note
