"""What a pruning family is: the class every family module fills in.

A family declares, in one module under ``pis_tui/families``:

* **who it is**: ``name``, ``label``, ``axis`` (the GEMM dimension it acts on, in the study's
  taxonomy), ``description`` (one line: what it does to a layer's op list), the chart ``mark``,
  ``color`` and ``short`` name;
* **its sparsities**: ``max_sparsity``, a ``fixed_sparsity`` where the family has only one
  (2:4), ``default_sparsities`` (the grid a sweep uses when none is given);
* **what it does to the op list** (the hooks :func:`pis_tui.families.phase_ops.build_phase_ops` calls,
  which keeps no per-family branch): :meth:`shape` (widths, layer counts, the linears,
  attention's block density), :meth:`layer_ops` (the decoder layers' ops; dynamic depth
  replaces them), :meth:`extra_ops` (ops after the layers), :meth:`overhead_counts`,
  :meth:`achieved_sparsity`, :meth:`final_notes`;
* **tensor parallelism** (``ctx.tp``): the generic builder emits one rank's ops (sharded
  GEMMs, the rank's heads, all-reduces); a family that chooses head or channel counts keeps
  them splittable over the ranks (:mod:`pis_tui.model.tensor_parallel`), a family that emits ops of
  its own emits the rank's;
* **its physical ceiling**: :meth:`speedup_ceiling`, the inverse of the share of roofline
  work it keeps (embeddings, lm_head and attention counted);
* **real pruning** (``pis-tui quality``): :meth:`prune`, or ``quality_unsupported`` saying why
  not; ``needs_calibration``, ``quality_oracle``;
* **building the pruned model** (``pis-tui validate``): :meth:`validate_dims`,
  :meth:`validate_transform`, :meth:`validate_finish`; ``validate_standard`` puts it in the
  standard set of ``validate --all``.

The hooks for quality and validate import torch inside their bodies: importing a family
module (and the registry) never imports torch, so the estimate path stays light.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional

from ..model.layer import LayerWidths, Linear, attn_block, dense_linear, mlp_block
from ..model.ops import Op
from ..model.precision import k_alignment, lcm

if TYPE_CHECKING:  # pragma: no cover
    from ..model.spec import ModelSpec
    from ..model.scenario import Scenario

#: the sparsity range every family accepts unless it says otherwise
MAX_SPARSITY = 0.9
#: the sweep grid of a family that declares none
DEFAULT_SPARSITIES = (0.125, 0.25, 0.375, 0.5)


@dataclass(frozen=True)
class PhaseContext:
    """One phase of one strategy on one model: what every op-list hook is given."""

    spec: "ModelSpec"
    strategy: Any  # taxonomy.Strategy
    scenario: "Scenario"
    phase: str
    sparsity: float  # the effective sparsity (a fixed-sparsity family's own)

    @property
    def dtype(self) -> str:
        return self.scenario.dtype

    @property
    def batch(self) -> int:
        return self.scenario.batch(self.phase)

    @property
    def q_len(self) -> int:
        return self.scenario.prompt_len if self.phase == "prefill" else self.scenario.decode_tokens

    @property
    def kv_len(self) -> int:
        if self.phase == "prefill":
            return self.scenario.prompt_len
        return self.scenario.context_len + self.scenario.decode_tokens - 1

    @property
    def m(self) -> int:
        """Tokens through each dense GEMM of a layer."""
        return self.batch * self.q_len

    @property
    def layers(self) -> int:
        return self.spec.num_layers

    @property
    def tp(self) -> int:
        """Tensor-parallel degree: the op lists are one rank's (1: a single GPU)."""
        return self.scenario.tp

    @property
    def k_align(self) -> int:
        """What a quantized GEMM's K must be a multiple of at the served precision (an int4
        group; 1 otherwise): a family rounds the widths it cuts to lcm(its alignment, this)."""
        return k_alignment(self.scenario.precision)

    def width_align(self, align: int) -> int:
        """``align`` widened to the served precision's K alignment (int4: its group)."""
        return lcm(align, self.k_align)


def dims_align(align: int, dims: dict) -> int:
    """:meth:`PhaseContext.width_align` for a ``validate_dims`` hook: ``align`` widened to the
    K alignment of the precision the built model is quantized to (``dims["k_align"]``)."""
    return lcm(align, dims.get("k_align", 1))


@dataclass
class LayerShape:
    """What a family's :meth:`Family.shape` decides before ops are emitted."""

    widths: LayerWidths
    attn_layers: float  # attention blocks that run (per forward)
    mlp_layers: float  # MLP blocks that run
    hidden_io: int  # width of the embedding and of the lm_head's input
    linear: Linear  # how each decoder linear becomes GEMMs
    block_density: float = 1.0  # share of attention blocks computed
    dims: list = field(default_factory=list)  # (what, how it changed) for the drill-down
    notes: list = field(default_factory=list)
    state: dict = field(default_factory=dict)  # family-private values between hooks

    @classmethod
    def dense(cls, ctx: PhaseContext) -> "LayerShape":
        spec = ctx.spec
        return cls(LayerWidths.of(spec), float(spec.num_layers), float(spec.num_layers),
                   spec.hidden_size, dense_linear(ctx.dtype))


class Family:
    """A pruning family.  Subclasses override what is theirs; the defaults are the dense model's."""

    name: str = ""
    label: str = ""
    axis: str = ""
    description: str = ""
    mark: str = "?"
    color: tuple = (200, 200, 200)
    short: str = ""
    is_baseline: bool = False
    #: a combined strategy (pis_tui.families.combinations): two families applied one after the other
    is_combo: bool = False
    #: its ``shape`` replaces ``shape.linear`` (how each decoder linear becomes GEMMs: low rank,
    #: 2:4, masks): two such families cannot be combined
    replaces_linear: bool = False
    max_sparsity: float = MAX_SPARSITY
    fixed_sparsity: Optional[float] = None
    default_sparsities: tuple = DEFAULT_SPARSITIES
    #: its GEMMs run kernels of their own (not the dense GEMM): calibration times them too
    distinct_kernels: bool = False
    # -- quality (pis-tui quality)
    quality_unsupported: Optional[str] = None  # why real pruning is not offered, if not
    needs_calibration: bool = False
    quality_oracle: bool = False  # the quality path computes everything (bounds, not speed)
    # -- validate
    validate_standard: bool = False  # in the standard set of `validate --all`
    #: the model validate builds keeps dense-shaped weights (zeros masked in), whatever the
    #: kernel it prices reads: its memory is the dense model's
    validate_dense_weights: bool = False

    # ------------------------------------------------------------ which models

    #: it acts on a mixture of experts' routed experts (a dense model has none to prune)
    moe_only: bool = False

    def applies(self, spec: "ModelSpec") -> Optional[str]:
        """None when the family can prune ``spec``, else why not (one line): the expert-level
        families (``moe_only``) act on a mixture of experts' routed experts, which a dense model
        lacks.  A sweep leaves out what does not apply; a point asked for by name is refused."""
        if self.moe_only and getattr(spec, "moe", None) is None:
            return (f"{spec.name} is a dense model: this family prunes a mixture of experts' "
                    "routed experts")
        return None

    # ------------------------------------------------------------ sparsities

    def effective_sparsity(self, sparsity: float) -> float:
        return self.fixed_sparsity if self.fixed_sparsity is not None else sparsity

    def sparsity_grid(self, sparsities) -> tuple:
        """The sparsities a sweep runs for this family given the asked ones (None: its own
        default grid); a fixed-sparsity family runs its one sparsity."""
        if self.fixed_sparsity is not None:
            return (self.fixed_sparsity,)
        values = self.default_sparsities if sparsities is None else sparsities
        return tuple(s for s in values if s > 0)

    # ------------------------------------------------------------ the op list

    def shape(self, ctx: PhaseContext, shape: LayerShape) -> None:
        """Change ``shape`` (widths, layer counts, linears, block density, dims, notes)."""

    def layer_ops(self, ctx: PhaseContext, shape: LayerShape) -> list[Op]:
        """The ops of the decoder layers (attention blocks × their count, MLP blocks × theirs)."""
        ops: list[Op] = []
        if shape.attn_layers > 0:
            ops += attn_block(ctx.spec, shape.widths, ctx.phase, ctx.batch, ctx.q_len, ctx.kv_len,
                              shape.attn_layers, ctx.dtype, shape.linear, shape.block_density,
                              tp=ctx.tp)
        if shape.mlp_layers > 0:
            ops += mlp_block(shape.widths, ctx.m, shape.mlp_layers, ctx.dtype, shape.linear, tp=ctx.tp,
                             spec=ctx.spec, routing=ctx.scenario.routing, phase=ctx.phase)
        return ops

    def extra_ops(self, ctx: PhaseContext, shape: LayerShape) -> list[Op]:
        """Ops the family adds after the decoder layers (mappings, block selection)."""
        return []

    def overhead_counts(self, ctx: PhaseContext, shape: LayerShape) -> tuple[float, float]:
        """(attention/MLP blocks run, routed sublayers) for the eager overhead ops."""
        return shape.attn_layers + shape.mlp_layers, 0.0

    def achieved_sparsity(self, ctx: PhaseContext, shape: LayerShape, ops: list) -> float:
        """The share of the family's own measure actually removed (parameters, hidden size,
        tokens or attention blocks; see docs/taxonomy.md)."""
        return 0.0

    def final_notes(self, ctx: PhaseContext, shape: LayerShape, ops: list) -> list[str]:
        """Notes that need the whole op list."""
        return []

    # ------------------------------------------------------------ physical bound

    def speedup_ceiling(self, dense_ops, pruned_ops, roofline: Callable[[Op], float]) -> float:
        """The largest speedup the pruned op list allows: the dense phase's roofline work over
        the pruned one's (each op's max(FLOPs/peak, bytes/bandwidth) × count; embeddings,
        lm_head, attention and any added op counted).  ``roofline`` prices one call in ms."""
        dense = sum(roofline(o) * o.count for o in dense_ops)
        kept = sum(roofline(o) * o.count for o in pruned_ops)
        return dense / kept if kept > 0 else float("inf")

    # ------------------------------------------------------------ real pruning

    @property
    def quality_supported(self) -> bool:
        """Real pruning is implemented (the family overrides :meth:`prune`) and not refused."""
        return type(self).prune is not Family.prune and not self.quality_unsupported

    @property
    def quality_unsupported_reason(self) -> str:
        return self.quality_unsupported or (f"{self.name}: no real pruning is implemented for "
                                            "measured quality")

    def apply(self, model, sparsity: float, cal, *, align: Optional[int] = None,
              granularity: str = "layer", block: int = 64, svd_cache: Optional[dict] = None):
        """:meth:`prune`, checked: a family that cannot be applied says why (UserError), a
        sparsity outside [0, 1) is refused, and a family whose ``needs_calibration`` is set
        (static_depth, static_width, semi_structured_24, unstructured) needs ``cal``."""
        from ..errors import UserError

        if self.is_baseline:
            return self.prune(model, 0.0, cal)
        if not self.quality_supported:
            raise UserError(self.quality_unsupported_reason)
        if not 0.0 <= sparsity < 1.0:
            raise UserError(f"sparsity {sparsity} is outside [0, 1)")
        if self.needs_calibration and cal is None:
            raise ValueError(f"{self.name} needs a calibration")
        return self.prune(model, sparsity, cal, align=align, granularity=granularity, block=block,
                          svd_cache=svd_cache)

    def prune(self, model, sparsity: float, cal, *, align: Optional[int] = None,
              granularity: str = "layer", block: int = 64, svd_cache: Optional[dict] = None):
        """Prune a loaded Hugging Face model in place (torch imported inside, through the torch
        kit :mod:`pis_tui.hf`); returns a :class:`pis_tui.hf.result.PruneResult`."""
        from ..errors import UserError

        raise UserError(self.quality_unsupported_reason)

    # ------------------------------------------------------------ validate

    def validate_dims(self, spec: "ModelSpec", strategy, dims: dict) -> None:
        """Change the pruned model's dims (a dict of ``validation.PrunedDims`` fields)."""

    def validate_transform(self, model, built, seed: int) -> None:
        """Structural changes to the model validate builds, on the meta device."""

    def validate_finish(self, built, seed: int) -> None:
        """Work on the materialised model (masks, attention implementation)."""

    def __repr__(self) -> str:
        return f"<family {self.name}>"
