"""A measured speedup with its interval: interleaved rounds of the dense and the pruned model,
repeated until the interval of the speedup is tight or a round limit is reached.

Each round times the two models alternately (ABAB…, reversed every other round); a dense
sample and the pruned sample taken next to it form a pair, and the pair's ratio is one
observation of the speedup.  A slow spell of a shared machine hits both samples of a pair
alike, so the ratios are far steadier than either model's times.  The speedup is the median
of the ratios; its interval is the distribution-free ~95 % confidence interval of that median
(order statistics of the binomial, as pyperf and nvbench report medians).  Rounds go on until
the interval's half-width is within ``tolerance`` of the median, or ``max_rounds`` rounds were
taken: then the speedup is *unstable*, and validate shows that word, not a figure.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
from dataclasses import dataclass, field
from typing import Callable, Optional

from ..timing.cpu_share import OthersMeter
from .run import Timing, _summary, measure_interleaved

#: half-width of the speedup's ~95 % interval, relative to the median, that ends the rounds
TOLERANCE = 0.05
#: rounds of ``repeats`` pairs each before a speedup is called unstable
MAX_ROUNDS = 4


def median_interval(values: list, z: float = 1.96) -> tuple[float, float]:
    """The distribution-free ~95 % confidence interval of the median of ``values``: the order
    statistics ``k`` and ``n-1-k`` with ``k = floor((n - z·√n) / 2)`` (the normal approximation
    of the binomial; for n ≤ 5 it is the whole range)."""
    xs = sorted(values)
    n = len(xs)
    if n == 0:
        raise ValueError("no values")
    k = max(0, int(math.floor((n - z * math.sqrt(n)) / 2.0)))
    return xs[k], xs[n - 1 - k]


@dataclass
class SpeedupTiming:
    """The dense and pruned timings of one row and the speedup they measure."""
    dense: Timing
    pruned: Timing
    speedup: float  # median of the paired ratios dense / pruned
    low: float  # its ~95 % interval
    high: float
    pairs: int
    rounds: int
    stable: bool
    contended: bool = False
    notes: list = field(default_factory=list)

    @property
    def half_width(self) -> float:
        """Half the interval's width relative to the speedup."""
        return (self.high - self.low) / (2.0 * self.speedup) if self.speedup > 0 else float("inf")


def measure_speedup(dense_run, pruned_run, repeats: int = 5, warmup: int = 1, *,
                    tolerance: float = TOLERANCE, max_rounds: int = MAX_ROUNDS,
                    contention: Optional[Callable[[], bool]] = None,
                    others: Optional[Callable[[float], None]] = None,
                    on_round: Optional[Callable[[int, float, float, float], None]] = None
                    ) -> SpeedupTiming:
    """Time ``dense_run`` and ``pruned_run`` (prepared :class:`~pis_tui.validation.run.PhaseRun` s)
    in interleaved rounds of ``repeats`` pairs until the speedup's interval is within
    ``tolerance`` or ``max_rounds`` rounds were taken.  ``contention()`` (True: another process
    holds this machine's cores) is asked before every round; given ``others``, each round is
    also metered (:class:`~pis_tui.timing.cpu_share.OthersMeter`) and ``others(cores)`` hears
    of a round during which other processes used more than
    :data:`~pis_tui.timing.cpu_share.CONTENDED_CORES` cores (load on every core alike, which
    the probe before it cannot see): the timing is then contended too; ``on_round(round,
    speedup, low, high)`` hears each round's result."""
    if max_rounds < 1:
        raise ValueError("max_rounds must be at least 1")
    ds, ps = [], []
    contended = False
    rounds = 0
    lo = hi = med = float("nan")
    for i in range(max_rounds):
        if contention is not None and contention():
            contended = True
        meter = OthersMeter() if others is not None else None
        with meter or contextlib.nullcontext():
            td, tp = measure_interleaved([dense_run, pruned_run], repeats,
                                         warmup if i == 0 else 0)
        if meter is not None and meter.contended:
            others(meter.cores)
            contended = True
        ds += td.samples
        ps += tp.samples
        rounds = i + 1
        ratios = [d / p for d, p in zip(ds, ps) if p > 0]
        med = statistics.median(ratios)
        lo, hi = median_interval(ratios)
        if on_round is not None:
            on_round(rounds, med, lo, hi)
        # with 5 pairs or fewer the interval is the whole range: tight only if every pair agrees
        if med > 0 and (hi - lo) / (2.0 * med) <= tolerance:
            break
    stable = (hi - lo) / (2.0 * med) <= tolerance if med > 0 else False
    notes = []
    if not stable:
        notes.append(f"speedup unstable: {lo:.2f}–{hi:.2f}× (±{(hi - lo) / (2 * med):.0%}) after "
                     f"{len(ds)} interleaved pairs in {rounds} round(s); tolerance ±{tolerance:.0%}")
    if contended:
        notes.append("other processes were using this machine's cores while it was timed")
    return SpeedupTiming(_summary(ds), _summary(ps), med, lo, hi, len(ds), rounds, stable,
                         contended, notes)


def cpu_contended(threads: Optional[int] = None) -> dict:
    """Is another process using this CPU's cores right now?  The timing engine's probe (a small
    GEMM on every thread against one, :func:`pis_tui.timing.cpu_contention`) and the load
    average; ``contended`` when either says so."""
    from ..timing.measure import cpu_contention

    try:
        import torch

        threads = threads or torch.get_num_threads()
    except ImportError:  # pragma: no cover - validate imports torch first
        threads = threads or 1
    probe = cpu_contention(threads)
    try:
        load = os.getloadavg()[0]
    except OSError:  # pragma: no cover - no load average on this platform
        load = 0.0
    cores = os.cpu_count() or 1
    # the run itself keeps `threads` cores busy: more load than the cores is someone else's
    busy = load > cores + 0.5
    return {**probe, "load": load, "cores": cores,
            "contended": bool(probe.get("contended")) or busy}


def machine_quiet(window_s: float = 0.5) -> bool:
    """Nobody else on this machine's cores right now: the probe and the load average
    (:func:`cpu_contended`) and, over ``window_s`` of sleep, the CPU other processes used
    (:class:`~pis_tui.timing.cpu_share.OthersMeter`; its reading decides where there is one,
    as the load average lags a minute behind)."""
    import time

    with OthersMeter() as m:
        time.sleep(window_s)
    c = cpu_contended()
    if m.cores is not None:
        return not m.contended and not (c.get("ratio", 1.0) > 3.0)
    return not c["contended"]
