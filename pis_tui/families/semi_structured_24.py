"""semi_structured_24 (static K, 2:4): every decoder linear a 2:4 sparse GEMM (s = 0.5)."""

from __future__ import annotations

from ..model.ops import Gemm
from .base import Family


class SemiStructured24(Family):
    name = "semi_structured_24"
    label = "2:4 sparsity"
    axis = "static K (2:4)"
    description = "every decoder linear is a 2:4 sparse GEMM (s = 0.5)"
    mark, color, short = "2", (210, 110, 220), "2:4"
    replaces_linear = True
    fixed_sparsity = 0.5
    distinct_kernels = True
    needs_calibration = True

    def shape(self, ctx, shape):
        dt, dens = ctx.dtype, 1.0 - ctx.sparsity

        def lin(name, m, n, k, count):
            return [Gemm(name, m, n, k, count, dt, kind="sparse_24", density=dens)]
        shape.linear = lin
        shape.dims.append(("K of every decoder GEMM", "2 of every 4 weights kept (2:4 sparse kernel)"))

    def achieved_sparsity(self, ctx, shape, ops):
        return ctx.sparsity

    def prune(self, model, sparsity, cal, **kw):
        from ..hf.masks import prune_semi_structured_24

        return prune_semi_structured_24(model, cal)

    validate_dense_weights = True  # the built model masks dense weights

    def validate_finish(self, built, seed):
        from ..hf.masks import apply_masks

        apply_masks(built, seed)


FAMILY = SemiStructured24()
