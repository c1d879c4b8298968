"""expert_slimming (static I): structured width inside every routed expert, I → I′ channels
(gate/up lose N, down loses K in each expert), rounded to ``--align`` like static width so the
grouped kernel keeps aligned rows.

Cuts the bytes of every expert a step touches and the FLOPs of every routed row, at every
batch.  Shared experts and dense layers are static width's, not this family's.

Real pruning (quality, validate: :mod:`pis_tui.hf.experts`): each expert keeps its own channels,
those of highest activation over the calibration tokens routed to it.
"""

from __future__ import annotations

from dataclasses import replace

from ..errors import UserError
from ..model.layer import decoder_params, gemm_params, round_to
from .base import Family


def kept_expert_inter(spec, s: float, align: int, tp: int = 1) -> int:
    """I′ = (1 − s)·I rounded to a multiple of ``align`` × tp; an alignment wider than the
    experts is an error (one line)."""
    return _kept(spec.moe.expert_inter, s, align, tp, spec.name)


def _kept(inter: int, s: float, align: int, tp: int = 1, name: str = "the model") -> int:
    if align * tp > inter:
        raise UserError(f"expert_slimming: --align {align}{f' × TP {tp}' if tp > 1 else ''} is wider "
                        f"than {name}'s experts ({inter} channels): use a smaller --align")
    return min(inter, round_to((1 - s) * inter, align * tp))


class ExpertSlimming(Family):
    name = "expert_slimming"
    label = "expert slimming"
    axis = "static NK (experts)"
    description = ("channels removed inside every routed expert (I → I′, rounded to `--align`): "
                   "fewer bytes per expert touched and fewer FLOPs per routed row, at every batch")
    mark, color, short = "S", (200, 130, 255), "slim"
    moe_only = True
    #: its achieved sparsity is a share of the decoder's parameters (a combination of two such
    #: parts counts the parameters it keeps: they may cut the same weights)
    achieved_measure = "parameters"
    needs_calibration = True  # the criterion: each channel's activation over its tokens

    def shape(self, ctx, shape):
        spec = ctx.spec
        inter = kept_expert_inter(spec, ctx.sparsity, ctx.width_align(ctx.strategy.align), ctx.tp)
        shape.widths = replace(shape.widths, expert_inter=inter)
        shape.dims += [("channels per routed expert",
                        f"{spec.moe.expert_inter} → {inter} (align {ctx.width_align(ctx.strategy.align)})"),
                       ("N of experts' gate/up, K of down", "shrunk")]

    def achieved_sparsity(self, ctx, shape, ops):
        return 1.0 - gemm_params(ops) / decoder_params(ctx.spec)

    # ------------------------------------------------------------ real pruning

    def prune(self, model, sparsity, cal, *, align=None, **kw):
        """Each expert keeps its own I′ channels: those of highest calibration activation
        (Σ over the tokens routed to it of |act(gate)·up|, times the channel's down column
        norm; an expert no calibration token reached ranks by its weights' norms)."""
        from ..hf.experts import decoder_weights, shape_of, slim_experts
        from ..hf.result import PruneResult
        from ..hf.structured import auto_align

        if getattr(cal, "experts", None) is None:
            raise UserError("expert_slimming needs a calibration that scored the experts' channels")
        inter = shape_of(model)["expert_inter"]
        a = align or auto_align(inter)
        kept = _kept(inter, sparsity, a, 1, type(model).__name__)
        before = decoder_weights(model)
        slim_experts(model, cal.experts.kept_channels(model, kept))
        return PruneResult(self.name, sparsity, 1.0 - decoder_weights(model) / before,
                           note=f"{inter} → {kept} channels in every routed expert (align {a}), "
                                "each expert its own, by activation over its calibration tokens")

    # ------------------------------------------------------------ validate

    def validate_dims(self, spec, strategy, dims):
        kept_expert_inter(spec, strategy.effective_sparsity, strategy.align, dims.get("tp", 1))

    def validate_finish(self, built, seed):
        """The channels scored over the built model's routing of the timed prefill's seeded
        input ids (batch 1 × 128), as quality scores them over its calibration."""
        from ..hf.experts import VALIDATE_CAL_TOKENS, calibration_ids, collect, slim_experts

        st = built.strategy
        kept = kept_expert_inter(built.spec, st.effective_sparsity, st.align)
        m = built.model
        stats = collect(m, calibration_ids(m.config.vocab_size, seed))
        slim_experts(m, stats.kept_channels(m, kept))
        built.notes.append(f"expert channels: {built.spec.moe.expert_inter} → {kept} (align "
                           f"{st.align}), each expert's by activation over the prefill's seeded "
                           f"input ids (1 × {VALIDATE_CAL_TOKENS})")


FAMILY = ExpertSlimming()
