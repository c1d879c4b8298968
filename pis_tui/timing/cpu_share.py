"""How much of this machine's CPU other processes took while something was being timed.

The contention probe (:func:`pis_tui.timing.measure.cpu_contention`: a small GEMM on every
thread against one) catches a process that holds *one* core: each multithreaded kernel then
waits for its descheduled thread.  It is blind to processes that load *every* core alike (two
busy loops on two cores): the probe's best time over 20 ms still finds a moment when all its
threads run, and the load average lags by a minute.  This meter counts instead: the CPU time
the kernel accounted to the cores this process may run on (``/proc/stat``, per core in its
affinity set, the hypervisor's steal included) minus the CPU time of this process's own
threads (``os.times``), over the wall time of the region, in cores.  Another process running
flat out on one core reads 1.0 whatever our threads do; a quiet machine reads a few hundredths
(daemons, the kernel's own threads).

Linux only (``/proc/stat``); elsewhere every reading is None and the callers fall back to the
probe and the load average.  Readings over less than :data:`MIN_WINDOW_S` are None: the
counters tick at ``SC_CLK_TCK`` (100 Hz), too coarse for a shorter window.  Pure standard
library: no torch.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Optional

#: another process's CPU use, in cores, above which a timed region counts as contended: half a
#: core means one of our threads waited for a scheduler slice about every other slice
CONTENDED_CORES = 0.5
#: the shortest region a reading is trusted for (the counters tick at 100 Hz per core)
MIN_WINDOW_S = 0.2
PROC_STAT = "/proc/stat"


@dataclass(frozen=True)
class CpuSnapshot:
    """The counters at one moment: ticks busy and in all on our cores, our own CPU time."""

    wall: float
    busy_ticks: int
    total_ticks: int
    own_s: float
    cores: int


def _cores() -> Optional[set]:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return None


def snapshot(path: str = PROC_STAT) -> Optional[CpuSnapshot]:
    """The counters now, or None where they cannot be read."""
    mine = _cores()
    busy = total = seen = 0
    agg: Optional[tuple] = None
    try:
        with open(path, encoding="ascii") as f:
            for line in f:
                if not line.startswith("cpu"):
                    break  # the cpu lines come first
                parts = line.split()
                vals = [int(x) for x in parts[1:9]]  # user nice system idle iowait irq softirq steal
                t = sum(vals)
                b = t - vals[3] - (vals[4] if len(vals) > 4 else 0)
                if parts[0] == "cpu":
                    agg = (b, t)
                    continue
                if mine is not None and int(parts[0][3:]) not in mine:
                    continue  # a core this process may not run on (a cpuset container)
                busy, total, seen = busy + b, total + t, seen + 1
    except (OSError, ValueError, IndexError):
        return None
    if not seen:
        if agg is None:
            return None
        busy, total, seen = agg[0], agg[1], os.cpu_count() or 1
    ot = os.times()
    return CpuSnapshot(time.perf_counter(), busy, total, ot.user + ot.system, seen)


def others_cores(before: Optional[CpuSnapshot], after: Optional[CpuSnapshot]) -> Optional[float]:
    """Cores' worth of CPU that other processes (and steal) used between two snapshots; None
    when either is missing or the window is shorter than :data:`MIN_WINDOW_S`."""
    if before is None or after is None or after.wall - before.wall < MIN_WINDOW_S:
        return None
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    per_core = (after.total_ticks - before.total_ticks) / max(before.cores, 1)
    if per_core <= 0:
        return None
    others = (after.busy_ticks - before.busy_ticks) - (after.own_s - before.own_s) * hz
    return max(0.0, others / per_core)


class OthersMeter:
    """``with OthersMeter() as m: ...`` then ``m.cores`` (None: unknown) and ``m.contended``."""

    def __init__(self, threshold: float = CONTENDED_CORES):
        self.threshold = threshold
        self.cores: Optional[float] = None
        self._start: Optional[CpuSnapshot] = None

    def __enter__(self) -> "OthersMeter":
        self._start = snapshot()
        return self

    def __exit__(self, *exc) -> None:
        self.cores = others_cores(self._start, snapshot())

    @property
    def contended(self) -> bool:
        return self.cores is not None and self.cores > self.threshold

    def words(self) -> str:
        return "" if self.cores is None else f"other processes used {self.cores:.1f} core(s)"
