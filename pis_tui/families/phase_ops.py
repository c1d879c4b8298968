"""The GEMM-centric taxonomy: each pruning family as a transformation of a phase's op list.

Pure functions from (ModelSpec, Strategy, Scenario, phase) to a :class:`PhaseOps`; no torch,
no I/O.  :func:`build_phase_ops` is generic: it asks the strategy's family (the registry,
:mod:`pis_tui.families`) for the layer shape (widths, layer counts, linears), the decoder
layers' ops and any extra ops, and adds what every forward has: the embedding gather, the
final norm and the lm_head (last token of each sequence), and the eager framework overhead
(:class:`~pis_tui.model.ops.Overhead`: per forward, per attention/MLP block, per nn.Linear call,
per routed sublayer), which the estimator prices at zero on devices timed through CUDA graphs.
With tensor parallelism (``scenario.tp`` > 1) the op list is one rank's, collectives included
(:mod:`pis_tui.model.tensor_parallel`); tp = 1 is the single-GPU op list, unchanged.
The op list of one decoder layer is :mod:`pis_tui.model.layer`'s; what each family does to M, N
and K is in its own module (``pis_tui/families/<family>.py``) and in docs/taxonomy.md's table.
GEMM convention: Y[M,N] = X[M,K]·Wᵀ, M = tokens (prefill B·S, decode B).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from . import registry
from .base import LayerShape, PhaseContext
from .combinations import compose_sparsity
from ..model.architecture import llama_default
from ..model.layer import decoder_params, gemm_params, overhead_ops, overhead_phase
from ..model.spec import ModelSpec
from ..model.ops import Collective, Elementwise, Gemm, Op
from ..model.precision import apply_precision, check_kernel_shapes, parse_precision
from ..model.scenario import Scenario, check_phase
from .strategy import Strategy
from ..model.tensor_parallel import check_model, padded_vocab, vocab_per_rank
from ..errors import UserError

__all__ = ["Strategy", "PhaseOps", "build_phase_ops", "parse_strategies", "strategies_grid", "from_token",
           "family_axis"]


@dataclass(frozen=True)
class PhaseOps:
    strategy: Strategy
    phase: str
    ops: tuple[Op, ...]
    achieved_sparsity: float
    notes: tuple[str, ...] = ()
    dims: tuple[tuple[str, str], ...] = ()  # what the family changed, for the drill-down
    #: a combination: each part's achieved sparsity alone (the parts' order)
    part_achieved: tuple[float, ...] = ()
    #: the architecture whose traced eager kernels price its ops (``Architecture.key``)
    arch: str = ""


# ------------------------------------------------------------------ phase builder


def build_phase_ops(spec: ModelSpec, strategy: Strategy, scenario: Scenario, phase: str) -> PhaseOps:
    """The ops of one phase of `spec` pruned by `strategy` under `scenario`."""
    check_phase(phase)
    tp = scenario.tp
    check_model(spec, tp)
    fam = registry.get(strategy.family)
    why = fam.applies(spec)
    if why:
        raise UserError(f"{strategy.family}: {why}")
    ctx = PhaseContext(spec, strategy, scenario, phase, strategy.effective_sparsity)
    dt, m = scenario.dtype, ctx.m
    shape = LayerShape.dense(ctx)
    fam.shape(ctx, shape)
    # tensor parallelism: a vocab-parallel embedding (each rank its rows of the table, then an
    # all-reduce) and lm_head (each rank its share of the logits, then an all-gather)
    vocab = vocab_per_rank(spec.vocab_size, tp)
    arch = spec.architecture or llama_default()
    before = {e.name: e for e in arch.before_layers}
    ops: list[Op] = [Elementwise("embedding", "embedding", m, shape.hidden_io, 1, dt, extra=vocab)]
    if tp > 1:
        ops.append(Collective("embed_all_reduce", "all_reduce", m * shape.hidden_io, tp, 1, dt))
    if "embed_scale" in before:  # Gemma: the embeddings times √hidden
        ops.append(Elementwise("embed_scale", "scale", m, shape.hidden_io, 1, dt))
    if "pos_embedding" in before:  # learned positions (OPT, GPT-2): a second table, added
        ops.append(Elementwise("pos_embedding", "embedding", m, shape.hidden_io, 1, dt,
                               extra=spec.max_positions or 2048))
        ops.append(Elementwise("pos_add", "residual_add", m, shape.hidden_io, 1, dt))
    ops += fam.layer_ops(ctx, shape)
    ops += fam.extra_ops(ctx, shape)
    after = {e.name: e for e in arch.after_layers}
    final = after.get("final_norm")
    ops.append(Elementwise("final_norm", final.kind if final else "rmsnorm", m, shape.hidden_io, 1, dt))
    # the logits of each sequence's last token (a verification's: of every token it checks)
    rows = ctx.batch * (ctx.q_len if phase == "decode" else 1)
    ops.append(Gemm("lm_head", rows, vocab, shape.hidden_io, 1, dt, shards=tp))
    if tp > 1:
        ops.append(Collective("lm_head_gather", "all_gather",
                              rows * padded_vocab(spec.vocab_size, tp), tp, 1, dt))
    if "logit_softcap" in after:  # Gemma 2: c·tanh(logits / c)
        ops.append(Elementwise("logit_softcap", "softcap", rows, vocab, 1, dt))
    # the served precision: quantized GEMMs and the ops quantization adds
    # (pis_tui.model.precision); the overhead counts nn.Linear calls, which it leaves alone
    if scenario.precision:
        prec = parse_precision(scenario.precision)
        ops = apply_precision(ops, prec, scenario.engine)
        check_kernel_shapes(ops, prec)
    # eager framework overhead (zero on devices timed through CUDA graphs)
    blocks, routed = fam.overhead_counts(ctx, shape)
    ops += overhead_ops(ops, overhead_phase(phase, ctx.batch), blocks, routed, dt)
    part_achieved: tuple = ()
    if fam.is_combo:
        part_achieved = tuple(round(max(0.0, _alone(spec, ps, scenario, phase)), 6)
                              for ps in strategy.part_strategies)
        achieved = compose_sparsity(part_achieved)
        if all(getattr(p, "achieved_measure", "") == "parameters" for p in fam.parts):
            # parts that cut the same weights (expert pruning and slimming: both the experts')
            # do not compose as 1 − Π(1 − aᵢ) of their shares of the whole model: the
            # parameters the op list keeps say what the two together removed
            achieved = 1.0 - gemm_params(ops) / decoder_params(spec)
    else:
        achieved = max(0.0, fam.achieved_sparsity(ctx, shape, ops))
    notes = list(shape.notes) + fam.final_notes(ctx, shape, ops)
    if spec.moe is not None and not _moe_aware(fam):
        notes.append(f"{spec.name} is a mixture of experts: {strategy.family} leaves its routed "
                     "experts whole (expert pruning, top-k reduction and expert slimming act on "
                     "them), so expect little speedup except from depth")
    return PhaseOps(strategy, phase, tuple(ops), round(achieved, 6), tuple(notes), tuple(shape.dims),
                    part_achieved, arch.key)





#: families that act on what dominates an MoE layer (whole layers, or the routed experts)
MOE_AWARE = ("dense", "static_depth", "expert_pruning", "topk_reduction", "dynamic_topk",
             "expert_slimming")


def _moe_aware(fam) -> bool:
    parts = fam.parts if fam.is_combo else (fam,)
    return any(p.name in MOE_AWARE for p in parts)


@lru_cache(maxsize=4096)
def _alone(spec: ModelSpec, strategy: Strategy, scenario: Scenario, phase: str) -> float:
    """A combination's part's achieved sparsity on its own (the figure its own point shows, and
    the one its quality curve is read at; a part recurs in several combinations)."""
    return build_phase_ops(spec, strategy, scenario, phase).achieved_sparsity
