"""static_depth (static M): whole layers, or attention / MLP blocks, dropped for every token."""

from __future__ import annotations

from ..model.layer import decoder_params, round_half_up
from .base import Family


def layers_dropped(spec, s: float) -> int:
    return min(spec.num_layers - 1, round_half_up(s * spec.num_layers))


def sublayers_dropped(spec, s: float) -> tuple[int, int]:
    """(attention blocks, MLP blocks) dropped at sublayer granularity."""
    n = min(2 * spec.num_layers - 1, round_half_up(s * 2 * spec.num_layers))
    attn = min(spec.num_layers, (n + 1) // 2)
    return attn, n - attn


class StaticDepth(Family):
    name = "static_depth"
    label = "static depth"
    axis = "static M"
    description = ("drops floor(s·L + 0.5) whole layers (`--granularity sublayer`: floor(s·2L + 0.5) "
                   "attention/MLP blocks)")
    mark, color, short = "L", (230, 85, 75), "depth"
    needs_calibration = True
    validate_standard = True

    def shape(self, ctx, shape):
        spec, s, L = ctx.spec, ctx.sparsity, ctx.layers
        if ctx.strategy.granularity == "layer":
            d = layers_dropped(spec, s)
            shape.attn_layers = shape.mlp_layers = float(L - d)
            shape.dims.append(("layers", f"{L} → {L - d} (dropped {d})"))
        else:
            da, dm = sublayers_dropped(spec, s)
            shape.attn_layers, shape.mlp_layers = float(L - da), float(L - dm)
            shape.dims.append(("attention blocks", f"{L} → {L - da}"))
            shape.dims.append(("MLP blocks", f"{L} → {L - dm}"))
        shape.dims.append(("M of the dropped blocks' GEMMs", f"{ctx.m} → 0"))

    def achieved_sparsity(self, ctx, shape, ops):
        spec, L = ctx.spec, ctx.layers
        attn_p, mlp_p = spec.attn_params(), spec.mlp_params()
        return ((L - shape.attn_layers) * attn_p + (L - shape.mlp_layers) * mlp_p) / decoder_params(spec)

    def prune(self, model, sparsity, cal, *, granularity="layer", **kw):
        from ..hf.structured import prune_static_depth

        return prune_static_depth(model, sparsity, cal, granularity)

    def validate_dims(self, spec, strategy, dims):
        s, L = strategy.effective_sparsity, spec.num_layers
        if strategy.granularity == "layer":
            kept = L - layers_dropped(spec, s)
            dims.update(num_layers=kept, attn_layers=kept, mlp_layers=kept)
        else:
            da, dm = sublayers_dropped(spec, s)
            dims.update(num_layers=L - min(da, dm), attn_layers=L - da, mlp_layers=L - dm)

    def validate_transform(self, model, built, seed):
        if built.strategy.granularity != "sublayer":
            return
        from ..hf.modules import half_layer

        layers, dims = model.model.layers, built.dims
        n = len(layers)
        no_attn = dims.num_layers - dims.attn_layers  # the last ones lose their attention
        no_mlp = dims.num_layers - dims.mlp_layers
        attn_idx = 0
        for i in range(n):
            keep_attn, keep_mlp = i < n - no_attn, i < n - no_mlp
            if keep_attn:
                layers[i].self_attn.layer_idx = attn_idx
                attn_idx += 1
            if not (keep_attn and keep_mlp):
                layers[i] = half_layer(layers[i], keep_attn, keep_mlp)


FAMILY = StaticDepth()
