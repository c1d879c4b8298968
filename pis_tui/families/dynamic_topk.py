"""dynamic_topk (dynamic k): each token takes its own number of experts, k̄ = (1 − s)·k on average
(NAEE's dynamic skipping, Ada-K, Ban&Pick: a token's later experts are skipped when the router is
confident).

Priced from the per-token distribution of k, not from its mean: each expert's inclusion is
averaged over the tokens' k (:func:`pis_tui.model.moe.mixed_inclusion`, exact for independent
tokens; the law is not linear in k, so averaging the law at each k would misprice), the rows
follow k̄ and a tiled kernel's padded rows the distribution.  The distribution here is the least
spread one with that mean — each token takes ⌊k̄⌋ or ⌈k̄⌉ experts (NAEE's skipping at k = 2 is
exactly this: 1 or 2) — stated in the drill-down.  The skip decision adds one small op over the
tokens' top-k weights (``moe_skip``).  The routed rows follow each token's k, so a grouped kernel
with per-expert offsets (grouped_mm, fused-MoE) needs no change; no weight is removed.

Real skipping (quality, validate: :mod:`pis_tui.hf.experts`): a router wrapper draws each token's
k from this distribution (seeded) and keeps its highest-weighted experts; the dropped slots are
ids ``grouped_mm`` skips.
"""

from __future__ import annotations

import math
from dataclasses import replace

from ..model.ops import Elementwise
from .base import Family
from .topk_reduction import kept_top_k  # noqa: F401 - the same bounds on k′ (k′ ≥ 1)


def k_distribution(k: int, s: float) -> tuple:
    """((k, p), …) with mean (1 − s)·k over the two whole numbers around it (one if whole)."""
    mean = max(1.0, (1.0 - s) * k)
    lo = math.floor(mean + 1e-9)
    if mean - lo < 1e-9 or lo >= k:
        return ((min(lo, k), 1.0),)
    p_hi = round(mean - lo, 9)
    return ((lo, round(1.0 - p_hi, 9)), (lo + 1, p_hi))


class DynamicTopK(Family):
    name = "dynamic_topk"
    label = "dynamic top-k"
    axis = "dynamic k (rows)"
    description = ("each token skips some of its k experts (k̄ = (1 − s)·k on average, ⌊k̄⌋ or "
                   "⌈k̄⌉ each): rows and experts touched priced from the distribution, not the mean")
    mark, color, short = "N", (250, 200, 120), "dyn-top-k"
    max_sparsity = 0.875
    moe_only = True

    def shape(self, ctx, shape):
        from ..model.moe import check_k_dist

        k = ctx.spec.moe.top_k
        given = getattr(ctx.strategy, "k_dist", ())
        # a distribution the user gave (dynamic_topk@k6:0.5/8:0.5), checked against the model's k
        dist = (check_k_dist(given, k, f"dynamic_topk on {ctx.spec.name}") if given
                else k_distribution(k, ctx.sparsity))
        shape.widths = replace(shape.widths, k_dist=dist)
        mean = sum(a * p for a, p in dist)
        shape.dims += [("experts per token", f"{k} → {mean:g} on average ("
                        + ", ".join(f"{a} with p {p:g}" for a, p in dist)
                        + (", as given" if given else ", the least spread with that mean") + ")")]

    def layer_ops(self, ctx, shape):
        ops = super().layer_ops(ctx, shape)
        e = ctx.spec.moe
        c = shape.mlp_layers * e.moe_layers / max(ctx.spec.num_layers, 1)
        # the skip decision: each token's top-k weights compared and masked (one pass over them)
        ops.append(Elementwise("moe_skip", "scale", ctx.m, e.top_k, c, ctx.dtype))
        return ops

    def achieved_sparsity(self, ctx, shape, ops):
        k = ctx.spec.moe.top_k
        return 1.0 - sum(a * p for a, p in shape.widths.k_dist) / k if shape.widths.k_dist else 0.0

    # ------------------------------------------------------------ real pruning

    def prune(self, model, sparsity, cal, **kw):
        """Every router wrapped: each token keeps ⌊k̄⌋ or ⌈k̄⌉ of its k highest-weighted experts
        (a seeded draw at the distribution's probabilities, seed 0), the kept weights
        renormalised where the model's router normalises its top-k."""
        from ..hf.experts import shape_of, skip_experts
        from ..hf.result import PruneResult

        k = shape_of(model)["top_k"]
        dist = k_distribution(k, sparsity)
        skip_experts(model, dist, seed=0)
        mean = sum(a * p for a, p in dist)
        return PruneResult(self.name, sparsity, 1.0 - mean / k,
                           note=f"each token keeps {' or '.join(str(a) for a, _ in dist)} of its "
                                f"top {k} experts ({mean:g} on average; seeded draws)")

    # ------------------------------------------------------------ validate

    def validate_finish(self, built, seed):
        from ..hf.experts import skip_experts

        k = built.spec.moe.top_k
        dist = k_distribution(k, built.strategy.effective_sparsity)
        skip_experts(built.model, dist, seed)
        built.notes.append("experts per token: " + ", ".join(f"{a} with p {p:g}" for a, p in dist)
                           + f" of {k} (each token's highest-weighted; the dropped slots skipped "
                           "by grouped_mm)")


FAMILY = DynamicTopK()
