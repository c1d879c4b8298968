"""unstructured (static K mask): weights zeroed at share s; the same dense kernels run."""

from __future__ import annotations

from ..model.ops import Gemm
from .base import Family


class Unstructured(Family):
    name = "unstructured"
    label = "unstructured sparsity"
    axis = "static K (mask)"
    description = "weights zeroed, the same dense kernels run: no speedup unless a sparse kernel is faster"
    mark, color, short = "U", (230, 220, 80), "unstruct"
    replaces_linear = True
    needs_calibration = True

    def shape(self, ctx, shape):
        dt, s = ctx.dtype, ctx.sparsity

        def lin(name, m, n, k, count):
            return [Gemm(name, m, n, k, count, dt, kind="unstructured", density=1.0 - s)]
        shape.linear = lin
        shape.dims.append(("K of every decoder GEMM", f"{s:.1%} of weights zeroed, dense kernel"))

    def achieved_sparsity(self, ctx, shape, ops):
        return ctx.sparsity

    def prune(self, model, sparsity, cal, **kw):
        from ..hf.masks import prune_unstructured

        return prune_unstructured(model, sparsity, cal)

    validate_dense_weights = True  # the built model masks dense weights

    def validate_finish(self, built, seed):
        from ..hf.masks import apply_masks

        apply_masks(built, seed)


FAMILY = Unstructured()
