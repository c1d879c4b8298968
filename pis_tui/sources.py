"""Where an op's time comes from: the timing sources, in order of trust, with what each means.

The one definition: the estimator ranks by it (a phase's source is its weakest op's), the CLI
tables and the explorer list sources in this order, the JSON Schema's enum is generated from
it, and the README's table says the same words.
"""

from __future__ import annotations

from typing import Iterable

#: (source, what it means), most trusted first
SOURCES = (
    ("measured", "this exact kernel call was timed on this device (`pis-tui profile`; kept in the "
                 "DuckDB cache)"),
    ("shipped", "timed on that GPU elsewhere with `pis-tui calibrate` and shipped in "
                "`profiles/measured/`"),
    ("interpolated", "the roofline time divided by the *utilization* of the nearest measured shapes "
                     "on that device (log-space in M, N, K; never below the roofline)"),
    ("unstable", "timed on this device, but its rounds disagree or it was taken while the machine "
                 "was contended: kept, shown as such, priced no better than interpolated"),
    ("estimated", "a labelled stand-in for a kernel that could not run as asked (e.g. a "
                  "FlexAttention that failed to compile: dense SDPA × block density)"),
    ("roofline", "max(FLOPs/peak, bytes/bandwidth) corrected by an analytical model (tile and wave "
                 "quantization, attainable shares of peak, a per-kernel launch cost)"),
    ("unsupported", "the device has no kernel for it (2:4 on a CPU or a GPU without sparse tensor "
                    "cores): priced as the dense kernel it falls back to; no speedup is claimed"),
)

TIMING_SOURCES = tuple(name for name, _ in SOURCES)
MEANING = dict(SOURCES)
RANK = {name: i for i, name in enumerate(TIMING_SOURCES)}


def weakest(sources: Iterable[str]) -> str:
    """The least trusted of some sources (a phase is only as good as its weakest op)."""
    return max(sources, key=RANK.__getitem__)


def ordered(counts: dict) -> list:
    """(source, value) pairs of a {source: value} dict in the order of trust."""
    return sorted(counts.items(), key=lambda kv: RANK.get(kv[0], len(RANK)))
