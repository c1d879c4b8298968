"""Where an op's time comes from: the timing sources, in order of trust, with what each means.

The one definition: the estimator ranks by it (a phase's source is its weakest op's), the CLI
tables and the explorer list sources in this order, the JSON Schema's enum is generated from
it, and docs/engines.md's table says the same words.
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
    ("solved", "solved from timed model clones, not timed itself: the CPU's eager framework "
               "overhead per forward, block, linear call and routed sublayer, fitted by "
               "non-negative least squares to tiny clones of the model timed end to end "
               "(`validate`'s dispatch probe; more equations than kinds), its uncertainty the "
               "fit's standard error (the residual and the conditioning of the clones' counts)"),
    ("unstable", "timed on this device, but its rounds disagree or it was taken while the machine "
                 "was contended: kept, shown as such, priced no better than interpolated"),
    ("estimated", "a labelled stand-in for a kernel that could not run as asked (e.g. a "
                  "FlexAttention that failed to compile: dense SDPA × block density)"),
    ("roofline", "the analytical model: each kernel the engine (`--engine`) launches for "
                 "the op costs max(FLOPs / (peak × share), bytes / (bandwidth × share)) plus the "
                 "GPU's per-kernel floor (GEMMs with tile and wave quantization; the shares are "
                 "the GPU profile's `efficiency` block, each with its source)"),
    ("emulated", "a quantized kernel the device has no hardware for, priced as what would run "
                 "instead: fp8 without fp8 tensor cores (A100, a CPU) as a weight-only kernel "
                 "(`fused`: a W8A16 mixed-input kernel) or a dequantization and the dense GEMM "
                 "(`eager`), by the analytical model"),
    ("unsupported", "the device has no kernel for it (2:4 on a CPU or a GPU without sparse tensor "
                    "cores): priced as the dense kernel it falls back to; no speedup is claimed"),
)

TIMING_SOURCES = tuple(name for name, _ in SOURCES)

#: The relative standard uncertainty (1σ) of one op's time, by source: the rule the speedup
#: intervals are built from (see :mod:`pis_tui.pricing.uncertainty`).  A measurement's own spread
#: counts where it has one (half of it, at least the floor here):
#:
#: * measured: at least 1 % (the rounds of a settled op agree within 10 %, usually far better);
#: * shipped: at least 3 % (another unit of the same GPU: clocks and thermals differ);
#: * interpolated: 8 % (leave-one-out on a third party's H200 GEMM table, every other M hidden /
#:   whole (N, K) pairs hidden: median 2.8 % / 3.5 %, p90 11.9 % / 10.8 %, worst 122 % / 42 %;
#:   `h200_reference_check.result.md`, fitted to that check);
#: * solved: at least 10 %, or the solve's own standard error where larger (the least-squares
#:   residual over the clones' rounds, through the conditioning of their overhead counts:
#:   s·√[(AᵀA)⁻¹]ₖₖ over its value); a kind the solve pins no better than ±50 % is stored
#:   unstable instead (:mod:`pis_tui.validation.probe`);
#: * unstable: at least 25 % (it is unstable because its rounds disagree by more);
#: * estimated: 25 % (a stand-in kernel scaled: no better than an unstable measurement);
#: * roofline: 20 % (the analytical model, fused engine, against the same H200 table: median
#:   12.9 %, p90 40.0 %, worst 159 %; its log errors have σ 0.18 (robust) to 0.22: fitted to
#:   that check, which is therefore not independent evidence of it);
#: * emulated: 30 % (the analytical model of a stand-in no one measured here);
#: * unsupported: as the dense kernel it runs.
UNCERTAINTY_FLOOR = {"measured": 0.01, "shipped": 0.03, "interpolated": 0.08, "solved": 0.10,
                     "unstable": 0.25, "estimated": 0.25, "roofline": 0.20, "emulated": 0.30,
                     "unsupported": 0.0}


def uncertainty(source: str, spread: float | None = None, own: float | None = None) -> float:
    """One op's relative 1σ under the rule above (``spread``: the measurement's own; ``own``:
    a relative 1σ of its own, a solved figure's standard error over its value)."""
    floor = UNCERTAINTY_FLOOR.get(source, 0.2)
    if own is not None and own == own:
        floor = max(floor, float(own))
    if spread is None or spread != spread:
        return floor
    return max(floor, float(spread) / 2.0)
MEANING = dict(SOURCES)
RANK = {name: i for i, name in enumerate(TIMING_SOURCES)}


def weakest(sources: Iterable[str]) -> str:
    """The least trusted of some sources (a phase is only as good as its weakest op)."""
    return max(sources, key=RANK.__getitem__)


def ordered(counts: dict) -> list:
    """(source, value) pairs of a {source: value} dict in the order of trust."""
    return sorted(counts.items(), key=lambda kv: RANK.get(kv[0], len(RANK)))
