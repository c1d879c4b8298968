"""expert_pruning (static E): routed experts removed from every MoE layer, E → E′, uniform per layer.

The router's rows and the experts' weights are sliced together (REAP, NAEE, frequency or
EAN-style criteria choose which; merging methods — MC-SMoE, HC-SMoE, Sub-MoE — produce the
same shapes at equal E′ and differ only in quality, so they are this family's quality methods).
Every token still takes k experts: its FLOPs do not change.  What changes is which experts a
step can touch: at decode batch 1 still k, so no gain; once a step touches every expert (a few
dozen tokens) up to E/E′ fewer expert bytes; in compute-bound prefill little again.  The
routing over the kept experts is the router's over them alone (:func:`pis_tui.model.moe.
pruned_routing`: each layer keeps the experts its routing uses most, the others' tokens spread
over them in proportion).  Memory: E′/E of the experts' weights.

Real pruning (quality, validate: :mod:`pis_tui.hf.experts`) uses that same frequency criterion:
each layer keeps the experts a calibration routed most tokens to.
"""

from __future__ import annotations

from dataclasses import replace

from ..errors import UserError
from ..model.layer import decoder_params, gemm_params, round_half_up
from .base import Family


def kept_experts(spec, s: float) -> int:
    """E′ = E − round(s·E); fewer than the experts each token takes is an error (one line)."""
    return _kept(spec.moe.experts, spec.moe.top_k, s, spec.name)


class ExpertPruning(Family):
    name = "expert_pruning"
    label = "expert pruning"
    axis = "static E"
    description = ("routed experts removed from every MoE layer (E → E′; router rows and expert "
                   "weights together): the same FLOPs per token, fewer experts for a step to touch")
    mark, color, short = "E", (255, 120, 180), "experts"
    moe_only = True
    #: its achieved sparsity is a share of the decoder's parameters (a combination of two such
    #: parts counts the parameters it keeps: they may cut the same weights)
    achieved_measure = "parameters"
    needs_calibration = True  # the criterion: the calibration's routing (most used experts)

    def shape(self, ctx, shape):
        spec = ctx.spec
        kept = kept_experts(spec, ctx.sparsity)
        shape.widths = replace(shape.widths, experts=kept)
        e = spec.moe
        shape.dims += [("routed experts per MoE layer", f"{e.experts} → {kept}"),
                       ("experts per token", f"{e.top_k} (unchanged)"),
                       ("router N", f"{e.experts} → {kept}")]
        if ctx.phase == "decode" and ctx.batch * e.top_k <= kept:
            shape.notes.append(f"decode batch {ctx.batch}: a step touches at most "
                               f"{ctx.batch * e.top_k} experts, dense or pruned — expert pruning "
                               "saves memory here, not time")

    def achieved_sparsity(self, ctx, shape, ops):
        return 1.0 - gemm_params(ops) / decoder_params(ctx.spec)

    # ------------------------------------------------------------ real pruning

    def prune(self, model, sparsity, cal, **kw):
        """Each MoE layer keeps the E′ experts the calibration routed most tokens to (the
        frequency criterion, :func:`pis_tui.model.moe.kept_experts`: the prediction's rule)."""
        from ..hf.experts import blocks, decoder_weights, shape_of, slice_experts
        from ..hf.result import PruneResult

        if getattr(cal, "experts", None) is None:
            raise UserError("expert_pruning needs a calibration that counted the experts' tokens")
        sh = shape_of(model)
        keep = _kept(sh["experts"], sh["top_k"], sparsity, type(model).__name__)
        before = decoder_weights(model)
        kept = cal.experts.kept_experts(keep)
        slice_experts(model, kept)
        after = decoder_weights(model)
        return PruneResult(self.name, sparsity, 1.0 - after / before,
                           note=f"{sh['experts']} → {keep} experts per MoE layer: each keeps the "
                                f"ones {cal.experts.tokens} calibration tokens were routed to most",
                           details={"kept_experts": {i: k for (i, *_), k in
                                                     zip(blocks(model), kept)}})

    # ------------------------------------------------------------ validate

    def validate_dims(self, spec, strategy, dims):
        kept_experts(spec, strategy.effective_sparsity)  # E′ < k: one line, before building

    def validate_finish(self, built, seed):
        """The built (random-weight) model's layers each keep the E′ experts its own routing
        of the timed prefill's input ids (batch 1 × 128, seeded as validate draws them) uses
        most; the router rows and the experts sliced together."""
        from ..hf.experts import VALIDATE_CAL_TOKENS, calibration_ids, collect, slice_experts

        keep = kept_experts(built.spec, built.strategy.effective_sparsity)
        m = built.model
        st = collect(m, calibration_ids(m.config.vocab_size, seed), channels=False)
        slice_experts(m, st.kept_experts(keep))
        built.notes.append(f"experts: {built.spec.moe.experts} → {keep} per MoE layer, each "
                           "keeping the ones its routing of the prefill's seeded input ids (1 × "
                           f"{VALIDATE_CAL_TOKENS}) used most")


def _kept(experts: int, top_k: int, s: float, name: str) -> int:
    kept = experts - round_half_up(s * experts)
    if kept < top_k:
        raise UserError(f"expert_pruning at {s:.1%} keeps {kept} of {experts} experts, fewer than "
                        f"the {top_k} each token is routed to: at most "
                        f"{(experts - top_k) / experts:.1%} for {name}")
    return kept


FAMILY = ExpertPruning()
