"""static_width_hidden (cross-layer NK, SliceGPT-like): the hidden size shrinks everywhere."""

from __future__ import annotations

from dataclasses import replace

from ..model.layer import decoder_params, gemm_params, round_to
from ..model.ops import Gemm
from .base import Family, dims_align


def kept_hidden(spec, s: float, align: int) -> int:
    return min(spec.hidden_size, round_to((1 - s) * spec.hidden_size, align))


class StaticWidthHidden(Family):
    name = "static_width_hidden"
    label = "static width (hidden)"
    axis = "cross-layer NK"
    description = ("hidden size shrinks in every GEMM that reads/writes it, embeddings and lm_head too, "
                   "plus an H'×H' residual mapping per sublayer (SliceGPT-like)")
    mark, color, short = "H", (70, 200, 200), "width-hid"
    quality_unsupported = ("static_width_hidden (SliceGPT-like) needs a PCA rotation of the residual "
                           "stream fused into every layer; not implemented for measured quality")

    def shape(self, ctx, shape):
        # at a quantized precision the residual maps' K is h2 / tp: a multiple of the kernel's
        h2 = kept_hidden(ctx.spec, ctx.sparsity, ctx.width_align(ctx.strategy.align) * (
            ctx.tp if ctx.k_align > 1 else 1))
        shape.widths = replace(shape.widths, hidden=h2)
        shape.hidden_io = h2
        shape.dims += [("hidden size", f"{ctx.spec.hidden_size} → {h2} (align {ctx.width_align(ctx.strategy.align)})"),
                      ("K of q/k/v/gate/up, N of o/down, embeddings, lm_head", "shrunk"),
                      ("residual mapping", f"+2 GEMMs {h2}×{h2} per layer")]
        if ctx.tp > 1:  # the residual stream every all-reduce carries is the sliced one
            shape.dims += [("all-reduce message (TP)", f"M × {ctx.spec.hidden_size} → M × {h2}"),
                          ("residual mapping (TP)", f"row-parallel: K {h2} → {h2 // ctx.tp} a rank, "
                                                    "summed into the sublayer's all-reduce")]

    def extra_ops(self, ctx, shape):
        h, tp = shape.widths.hidden, ctx.tp
        # under tensor parallelism the mapping is row-parallel: each rank maps its slice of the
        # (replicated) residual stream and adds it to its partial sublayer output before the
        # sublayer's all-reduce, which then carries both: no extra collective
        return [Gemm("residual_map", ctx.m, h, h // tp if tp > 1 else h, 2.0 * ctx.layers,
                     ctx.dtype, shards=tp)]

    def achieved_sparsity(self, ctx, shape, ops):
        return 1.0 - shape.widths.hidden / ctx.spec.hidden_size

    def final_notes(self, ctx, shape, ops):
        kept = gemm_params(ops) / decoder_params(ctx.spec)
        return [f"achieved sparsity is the sliced share of the hidden size; with the residual "
                f"mappings the decoder keeps {kept:.1%} of its parameters"]

    def validate_dims(self, spec, strategy, dims):
        k_tp = dims.get("tp", 1) if dims.get("k_align", 1) > 1 else 1
        dims.update(hidden_size=kept_hidden(spec, strategy.effective_sparsity,
                                            dims_align(strategy.align, dims) * k_tp),
                    residual_map=True)

    def validate_transform(self, model, built, seed):
        from ..hf.modules import mapped_layer

        layers = model.model.layers
        for i in range(len(layers)):
            layers[i] = mapped_layer(layers[i], built.dims.hidden_size)


FAMILY = StaticWidthHidden()
