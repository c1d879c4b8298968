"""Combined strategies: two pruning families applied one after the other.

A combination is not a family of its own: it is an ordered pair of registered families,
named ``first+second`` (``static_depth+static_width``), each part at a sparsity of its own
(:class:`pis_tui.families.strategy.Strategy` holds them in ``parts``).  Its op list is built through
the parts' own hooks, the second applied to what the first left:

* ``shape``: the first part's, then the second's, on the same :class:`LayerShape` (static
  depth sets the layer counts, static width the widths, low rank / 2:4 how each kept linear
  becomes GEMMs: low rank on width-pruned layers factorises the narrower W[N', K']);
* ``layer_ops`` and ``overhead_counts``: the part that has its own (dynamic depth routes the
  width-pruned sublayers), else the generic ones;
* ``extra_ops``, notes and dims: both parts', in order;
* ``achieved_sparsity``: 1 − Π(1 − aᵢ), aᵢ each part's achieved sparsity alone (its own
  measure: parameters, tokens); for parameter families this is the share of decoder weights
  the two remove together (depth drops whole layers of the width-pruned model);
* the physical ceiling: the generic share-of-work bound of the combined op list;
* ``pis-tui validate``: the parts' ``validate_dims`` in order on the same dims, then their
  ``validate_transform`` and ``validate_finish`` (the real combined model);
* ``pis-tui quality``: the parts' ``prune`` in order (parts that compute every update, the
  dynamic oracles, last), recalibrating before a part that needs calibration once the model
  has changed.

Two parts may not both have their own ``layer_ops`` (two routers of the same sublayers) nor
both replace the linears (``replaces_linear``: low rank of a 2:4 matrix is not a kernel that
exists); :func:`pis_tui.families.register_combo` refuses such a pair.

The built-in set (:data:`BUILTIN_COMBOS`) is what practitioners combine: drop a few layers and
slim the MLPs; 2:4 or low rank on top of depth pruning; low rank or 2:4 on width-pruned layers;
a router over width-pruned layers.  Each part runs on a coarse grid (:data:`COMBO_SPARSITIES`,
a fixed-sparsity family at its one), so a sweep stays fast.
"""

from __future__ import annotations

from typing import Optional

from .base import MAX_SPARSITY, Family, PhaseContext

#: the built-in combinations, in display order (after the families): (first, second, mark)
BUILTIN_COMBOS = (
    ("static_depth", "static_width", "X"),
    ("static_depth", "semi_structured_24", "Z"),
    ("static_depth", "low_rank", "Q"),
    ("static_width", "low_rank", "V"),
    ("static_width", "semi_structured_24", "Y"),
    ("dynamic_depth", "static_width", "J"),
    ("static_depth", "expert_pruning", "P"),
    ("expert_pruning", "expert_slimming", "O"),
)
#: each part's sparsities in a sweep (a coarse grid: 2 × 2 points a pair)
COMBO_SPARSITIES = (0.125, 0.25)
SEP = "+"


def combo_name(first: str, second: str) -> str:
    return f"{first}{SEP}{second}"


def _owns(fam: Family, hook: str) -> bool:
    return getattr(type(fam), hook) is not getattr(Family, hook)


class Combo(Family):
    """Two registered families, the second applied to what the first kept."""

    is_combo = True

    def __init__(self, first: Family, second: Family, mark: str = "+",
                 color: Optional[tuple] = None):
        self.parts = (first, second)
        self.name = combo_name(first.name, second.name)
        self.label = f"{first.label} + {second.label}"
        self.axis = f"{first.axis} + {second.axis}"
        self.description = (f"{first.name}, then {second.name} on what it kept (each part at its "
                            "own sparsity)")
        self.mark = mark
        self.color = color or tuple((a + b) // 2 for a, b in zip(first.color, second.color))
        self.short = f"{first.short}+{second.short}"
        self.max_sparsity = MAX_SPARSITY
        self.default_sparsities = COMBO_SPARSITIES
        self.distinct_kernels = first.distinct_kernels or second.distinct_kernels
        self.needs_calibration = first.needs_calibration or second.needs_calibration
        self.quality_oracle = first.quality_oracle or second.quality_oracle
        self.replaces_linear = first.replaces_linear or second.replaces_linear
        unsupported = [f for f in self.parts if not f.quality_supported]
        self.quality_unsupported = (f"{self.name}: {unsupported[0].quality_unsupported_reason}"
                                    if unsupported else None)
        routed = [f for f in self.parts if _owns(f, "layer_ops")]
        self._layer_owner = routed[0] if routed else None
        counted = [f for f in self.parts if _owns(f, "overhead_counts")]
        self._overhead_owner = counted[0] if counted else None

    @property
    def moe_only(self) -> bool:
        return any(f.moe_only for f in self.parts)

    def applies(self, spec) -> Optional[str]:
        """Both parts must apply to the model."""
        for f in self.parts:
            why = f.applies(spec)
            if why:
                return why
        return None

    @property
    def part_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.parts)

    # ------------------------------------------------------------ sparsities

    def effective_sparsity(self, sparsity: float) -> float:
        return sparsity  # a combination's sparsity is composed from its parts' (taxonomy)

    def part_grid(self, sparsities=None) -> list[tuple[float, ...]]:
        """The (first, second) sparsities a sweep runs: each part on ``sparsities`` (None: the
        coarse :data:`COMBO_SPARSITIES`), a fixed-sparsity part at its one."""
        values = COMBO_SPARSITIES if sparsities is None else tuple(sparsities)
        a, b = (f.sparsity_grid(values) for f in self.parts)
        return [(x, y) for x in a for y in b]

    def sparsity_grid(self, sparsities) -> tuple:
        return ()  # a combination is swept through part_grid (two sparsities a point)

    # ------------------------------------------------------------ the op list

    def _contexts(self, ctx: PhaseContext) -> list[tuple[Family, PhaseContext]]:
        return [(f, PhaseContext(ctx.spec, ps, ctx.scenario, ctx.phase, ps.effective_sparsity))
                for f, ps in zip(self.parts, ctx.strategy.part_strategies)]

    def _context_of(self, ctx: PhaseContext, fam: Family) -> PhaseContext:
        return next(c for f, c in self._contexts(ctx) if f is fam)

    def shape(self, ctx, shape):
        for fam, c in self._contexts(ctx):
            n_dims, n_notes = len(shape.dims), len(shape.notes)
            fam.shape(c, shape)
            shape.dims[n_dims:] = [(f"{fam.short}: {what}", how) for what, how in shape.dims[n_dims:]]
            shape.notes[n_notes:] = [f"{fam.name}: {n}" for n in shape.notes[n_notes:]]

    def layer_ops(self, ctx, shape):
        if self._layer_owner is None:
            return Family.layer_ops(self, ctx, shape)
        return self._layer_owner.layer_ops(self._context_of(ctx, self._layer_owner), shape)

    def extra_ops(self, ctx, shape):
        return [op for fam, c in self._contexts(ctx) for op in fam.extra_ops(c, shape)]

    def overhead_counts(self, ctx, shape):
        if self._overhead_owner is None:
            return Family.overhead_counts(self, ctx, shape)
        return self._overhead_owner.overhead_counts(self._context_of(ctx, self._overhead_owner), shape)

    def final_notes(self, ctx, shape, ops):
        return [f"{fam.name}: {n}" for fam, c in self._contexts(ctx)
                for n in fam.final_notes(c, shape, ops)]

    # ------------------------------------------------------------ real pruning

    def prune(self, model, sparsity, cal, *, parts=None, recalibrate=None, align=None,
              granularity="layer", block=64, svd_cache=None):
        """Each part's ``apply`` in turn, ``parts`` = ((family, sparsity), ...).  Parts that
        still compute every update (the dynamic oracles) go last, so the others are calibrated
        and cut on the model itself; before a part that needs a calibration, once an earlier
        part has changed the model, ``recalibrate(model)`` gives a fresh one (importance of what
        is left: layers renumbered, widths cut).  The achieved sparsity is 1 − Π(1 − aᵢ) of the
        parts'.  ``svd_cache`` is not used: a low-rank part factorises the already-pruned
        linears."""
        from ..errors import UserError
        from ..hf.result import PruneResult

        given = dict(parts or ())
        if set(given) != set(self.part_names):
            raise UserError(f"{self.name}: give each part's sparsity ({', '.join(self.part_names)})")
        results, changed = [], False
        for fam in sorted(self.parts, key=lambda f: f.quality_oracle):  # stable: oracles last
            s = fam.effective_sparsity(float(given[fam.name]))
            part_cal = cal
            if fam.needs_calibration and changed:
                if recalibrate is None:
                    raise ValueError(f"{self.name}: {fam.name} needs a calibration of the model "
                                     "the first part left")
                part_cal = recalibrate(model)
            res = fam.apply(model, s, part_cal, align=align, granularity=granularity, block=block,
                            svd_cache=None)
            results.append((fam.name, s, res))
            changed = True

        class _Combined(PruneResult):
            def final_achieved(self) -> float:  # a dynamic part's share is read after running
                return compose_sparsity(r.final_achieved() for _, _, r in results)

        removed = compose_sparsity(res.final_achieved() for _, _, res in results)
        note = "; ".join(f"{name} {s:g}: {res.note}" for name, s, res in results if res.note)
        return _Combined(self.name, removed, removed, note=note,
                         details={"parts": [{"family": n, "sparsity": s, "achieved": r.achieved_sparsity,
                                             "details": r.details} for n, s, r in results]})

    # ------------------------------------------------------------ validate

    def validate_dims(self, spec, strategy, dims):
        for fam, ps in zip(self.parts, strategy.part_strategies):
            fam.validate_dims(spec, ps, dims)

    def _each_part(self, built, hook: str, *args) -> None:
        whole = built.strategy
        try:
            for fam, ps in zip(self.parts, whole.part_strategies):
                built.strategy = ps  # the part's hooks read their own family and sparsity
                getattr(fam, hook)(*args)
        finally:
            built.strategy = whole

    def validate_transform(self, model, built, seed):
        self._each_part(built, "validate_transform", model, built, seed)

    def validate_finish(self, built, seed):
        self._each_part(built, "validate_finish", built, seed)

    def __repr__(self) -> str:
        return f"<combination {self.name}>"


def compose_sparsity(values) -> float:
    """1 − Π(1 − sᵢ): what two removals leave removed together."""
    kept = 1.0
    for s in values:
        kept *= 1.0 - s
    return 1.0 - kept


def check_pair(first: Family, second: Family) -> None:
    """ValueError when two families cannot be combined (see the module docstring)."""
    if first.is_baseline or second.is_baseline or first.is_combo or second.is_combo:
        raise ValueError("a combination is two pruning families (not dense, not a combination)")
    if first.name == second.name:
        raise ValueError(f"{first.name} cannot be combined with itself")
    if _owns(first, "layer_ops") and _owns(second, "layer_ops"):
        raise ValueError(f"{first.name} and {second.name} both emit the decoder layers' ops")
    if first.replaces_linear and second.replaces_linear:
        raise ValueError(f"{first.name} and {second.name} both replace the decoder linears")
