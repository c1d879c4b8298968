"""The GEMM-centric taxonomy: each pruning family as a transformation of a phase's op list.

Pure functions from (ModelSpec, Strategy, Scenario, phase) to a :class:`PhaseOps`; no torch,
no I/O.  :func:`build_phase_ops` is generic: it asks the strategy's family (the registry,
:mod:`pis_tui.families`) for the layer plan (widths, layer counts, linears), the decoder
layers' ops and any extra ops, and adds what every forward has: the embedding gather, the
final norm and the lm_head (last token of each sequence), and the eager framework overhead
(:class:`~pis_tui.ops.Overhead`: per forward, per attention/MLP block, per nn.Linear call,
per routed sublayer), which the estimator prices at zero on devices timed through CUDA graphs.
With tensor parallelism (``scenario.tp`` > 1) the op list is one rank's, collectives included
(:mod:`pis_tui.tensor_parallel`); tp = 1 is the single-GPU op list, unchanged.
The op list of one decoder layer is :mod:`pis_tui.layer_ops`'s; what each family does to M, N
and K is in its own module (``pis_tui/families/<family>.py``) and in the README's table.
GEMM convention: Y[M,N] = X[M,K]·Wᵀ, M = tokens (prefill B·S, decode B).
"""

from __future__ import annotations

from dataclasses import dataclass

from . import families
from .errors import UserError
from .families import LayerPlan, PhaseContext
from .layer_ops import overhead_ops, overhead_phase
from .model_spec import ModelSpec
from .ops import Collective, Elementwise, Gemm, Op
from .scenario import Scenario, check_phase
from .tensor_parallel import check_model, padded_vocab, vocab_per_rank

__all__ = ["Strategy", "PhaseOps", "build_phase_ops", "parse_strategies", "strategies_grid",
           "family_axis"]


@dataclass(frozen=True)
class Strategy:
    family: str
    sparsity: float = 0.0
    granularity: str = "layer"  # static_depth: layer | sublayer
    align: int = 128  # static_width / static_width_hidden channel rounding

    def __post_init__(self) -> None:
        fam = families.get(self.family)  # UserError naming the families
        if not (0.0 <= self.sparsity <= fam.max_sparsity) or self.sparsity != self.sparsity:
            raise UserError(f"sparsity {self.sparsity} is outside [0, {fam.max_sparsity}]")
        if self.granularity not in ("layer", "sublayer"):
            raise UserError(f"granularity must be layer or sublayer, got {self.granularity!r}")
        if not isinstance(self.align, int) or self.align < 1:
            raise UserError(f"align must be a positive integer, got {self.align!r}")

    @property
    def effective_sparsity(self) -> float:
        return families.get(self.family).effective_sparsity(self.sparsity)


@dataclass(frozen=True)
class PhaseOps:
    strategy: Strategy
    phase: str
    ops: tuple[Op, ...]
    achieved_sparsity: float
    notes: tuple[str, ...] = ()
    dims: tuple[tuple[str, str], ...] = ()  # what the family changed, for the drill-down


def family_axis(name: str) -> str:
    """The GEMM dimension a family acts on (the study's taxonomy)."""
    return families.get(name).axis


def parse_strategies(text: str | None) -> tuple[str, ...]:
    if not text:
        return families.pruned()
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    for n in names:
        families.get(n)
    return names


# ------------------------------------------------------------------ phase builder


def build_phase_ops(spec: ModelSpec, strategy: Strategy, scenario: Scenario, phase: str) -> PhaseOps:
    """The ops of one phase of `spec` pruned by `strategy` under `scenario`."""
    check_phase(phase)
    tp = scenario.tp
    check_model(spec, tp)
    fam = families.get(strategy.family)
    ctx = PhaseContext(spec, strategy, scenario, phase, strategy.effective_sparsity)
    dt, m = scenario.dtype, ctx.m
    plan = LayerPlan.dense(ctx)
    fam.shape(ctx, plan)
    # tensor parallelism: a vocab-parallel embedding (each rank its rows of the table, then an
    # all-reduce) and lm_head (each rank its share of the logits, then an all-gather)
    vocab = vocab_per_rank(spec.vocab_size, tp)
    ops: list[Op] = [Elementwise("embedding", "embedding", m, plan.hidden_io, 1, dt, extra=vocab)]
    if tp > 1:
        ops.append(Collective("embed_all_reduce", "all_reduce", m * plan.hidden_io, tp, 1, dt))
    ops += fam.layer_ops(ctx, plan)
    ops += fam.extra_ops(ctx, plan)
    ops.append(Elementwise("final_norm", "rmsnorm", m, plan.hidden_io, 1, dt))
    ops.append(Gemm("lm_head", ctx.batch, vocab, plan.hidden_io, 1, dt, shards=tp))
    if tp > 1:
        ops.append(Collective("lm_head_gather", "all_gather",
                              ctx.batch * padded_vocab(spec.vocab_size, tp), tp, 1, dt))
    # eager framework overhead (zero on devices timed through CUDA graphs)
    blocks, routed = fam.overhead_counts(ctx, plan)
    ops += overhead_ops(ops, overhead_phase(phase, ctx.batch), blocks, routed, dt)
    achieved = max(0.0, fam.achieved_sparsity(ctx, plan, ops))
    notes = list(plan.notes) + fam.final_notes(ctx, plan, ops)
    return PhaseOps(strategy, phase, tuple(ops), round(achieved, 6), tuple(notes), tuple(plan.dims))


# ------------------------------------------------------------------ helpers for callers


def strategies_grid(family_names, sparsities=None, granularity="layer", align=128) -> list[Strategy]:
    """Dense first, then every family × its sparsities (``sparsities`` None: each family's
    default grid; a fixed-sparsity family such as 2:4 at its one sparsity)."""
    out = [Strategy("dense", 0.0, granularity, align)]
    for f in family_names:
        fam = families.get(f)
        if fam.is_baseline:
            continue
        for s in fam.sparsity_grid(None if sparsities is None else tuple(sparsities)):
            out.append(Strategy(f, s, granularity, align))
    return out
