"""Real pruning of a loaded Hugging Face causal LM, one function per family, by importance.

This is the measured-quality side of pis-tui: it changes a model the way a family says
(layers gone, widths sliced, weights zeroed, linears factorised, sublayers or attention
blocks skipped per token) so that its perplexity can be measured.  Every function works
in place on a model of the Llama layout (``model.model.layers[i].self_attn.{q,k,v,o}_proj``
and ``.mlp.{gate,up,down}_proj``: Llama, Qwen2/2.5/3, Mistral and their kin).

Importance comes from one calibration pass (:func:`calibrate`) over token windows:

* ``static_depth``: ShortGPT's Block Influence, BI = 1 − cos(x_in, x_out) of a layer's (or,
  with ``granularity="sublayer"``, of an attention / MLP block's) input and output hidden
  states, averaged over tokens; the least influential floor(s·n + 0.5) are dropped.
* ``static_width``: activation magnitude: the L2 norm over calibration tokens of the
  input of o_proj (per head, summed over a GQA group) and of down_proj (per MLP channel).
  Whole GQA groups are removed; MLP channels are kept in multiples of ``align``.
* ``semi_structured_24`` and ``unstructured``: Wanda scores |W_ij|·‖X_j‖₂ (one pass over
  the dense model, not Wanda's layer-by-layer sequential variant); 2:4 keeps 2 of every 4
  consecutive input weights, unstructured keeps the top (1−s) of each output row.
* ``low_rank``: plain truncated SVD of each decoder linear (not activation-aware like
  Dobi-SVD or ASVD, so it is a pessimistic stand-in for those methods).
* ``dynamic_depth``: forward hooks that compute each attention / MLP update and zero it for
  the share s of tokens whose update norm ‖f(x)‖ is smallest in their sequence.  This is a
  quality *oracle* (it still computes every update and looks at the whole window to rank
  tokens): it bounds what a learned router skipping the same share could reach and is
  no speed path at all.
* ``dynamic_sparse_attention``: block-sparse causal attention keeping, per query block,
  the top (1−s) of its causal key blocks by pooled q·k score (the diagonal block always
  kept).  Also an oracle: the scores are computed from the full q and k.
* ``static_width_hidden`` (SliceGPT-like) is not implemented: its family's
  ``quality_unsupported`` says why (:func:`unsupported`).

Each family's ``prune`` hook (``pis_tui/families``) calls its function here; :func:`apply` is
the one entry point.  torch is imported inside the functions (this package is imported by
the CLI lazily anyway).  One job a module: :mod:`.layout` (the decoder's layers and linears),
:mod:`.calibration` (importance statistics), :mod:`.structured` (depth, width, low rank),
:mod:`.masks` (2:4 and unstructured by Wanda), :mod:`.oracles` (the dynamic families),
:mod:`.result`.
"""

from __future__ import annotations

from .. import families
from ..errors import UserError
from .calibration import Calibration, calibrate
from .layout import (ATTN_LINEARS, MLP_LINEARS, decoder_layers, decoder_linear_params,
                     decoder_linears)
from .masks import prune_semi_structured_24, prune_unstructured, wanda_scores
from .oracles import (BlockTracker, SkipTracker, enable_block_sparse_attention,
                      enable_dynamic_depth)
from .result import PruneResult
from .structured import (auto_align, prune_low_rank, prune_static_depth, prune_static_width,
                         width_targets)

__all__ = ["ATTN_LINEARS", "MLP_LINEARS", "BlockTracker", "Calibration", "PruneResult",
           "SkipTracker", "apply", "auto_align", "calibrate", "decoder_layers",
           "decoder_linear_params", "decoder_linears", "enable_block_sparse_attention", "apply_combo",
           "enable_dynamic_depth", "measurable", "prune_low_rank", "prune_semi_structured_24",
           "prune_static_depth", "prune_static_width", "prune_unstructured", "unsupported",
           "wanda_scores", "width_targets"]

def measurable() -> tuple[str, ...]:
    """Families that can be applied to a real model (the registry's, in its order)."""
    return tuple(f.name for f in families.all_families() if not f.is_baseline and f.quality_supported)


def unsupported() -> dict[str, str]:
    """Families that cannot, with the reason shown to the user."""
    return {f.name: f.quality_unsupported_reason for f in families.all_families()
            if not f.is_baseline and not f.quality_supported}


# ---------------------------------------------------------------------------------------------
# one entry point
# ---------------------------------------------------------------------------------------------

def apply(model, strategy: str, sparsity: float, cal: Calibration | None, *, align: int | None = None,
          granularity: str = "layer", block: int = 64, svd_cache: dict | None = None) -> PruneResult:
    """Prune ``model`` in place by family ``strategy`` at ``sparsity`` (the family's ``prune``
    hook).  ``cal`` (from :func:`calibrate`) is needed by the families whose
    ``needs_calibration`` is set (static_depth, static_width, semi_structured_24, unstructured)."""
    fam = families.get(strategy)
    if fam.is_baseline:
        return fam.prune(model, 0.0, cal)
    if not fam.quality_supported:
        raise UserError(fam.quality_unsupported_reason)
    if not 0.0 <= sparsity < 1.0:
        raise UserError(f"sparsity {sparsity} is outside [0, 1)")
    if fam.needs_calibration and cal is None:
        raise ValueError(f"{strategy} needs a calibration")
    return fam.prune(model, sparsity, cal, align=align, granularity=granularity, block=block,
                     svd_cache=svd_cache)


def apply_combo(model, combo: str, parts, cal: Calibration | None, *, recalibrate=None,
                align: int | None = None, granularity: str = "layer", block: int = 64,
                svd_cache: dict | None = None) -> PruneResult:
    """Prune ``model`` in place by a combination (``families.combinations``): each part's ``prune``
    hook in turn, ``parts`` = ((family, sparsity), ...).  Parts that still compute every
    update (the dynamic oracles) go last, so the others are calibrated and cut on the model
    itself; before a part that needs a calibration, once an earlier part has changed the
    model, ``recalibrate(model)`` gives a fresh one (importance of what is left: layers
    renumbered, widths cut).  The achieved sparsity is 1 − Π(1 − aᵢ) of the parts'.
    ``svd_cache`` is not used: a low-rank part factorises the already-pruned linears."""
    c = families.get(combo)
    if not c.is_combo:
        raise UserError(f"{combo} is not a combination")
    if not c.quality_supported:
        raise UserError(c.quality_unsupported_reason)
    given = dict(parts or ())
    if set(given) != set(c.part_names):
        raise UserError(f"{combo}: give each part's sparsity ({', '.join(c.part_names)})")
    order = sorted(c.parts, key=lambda f: f.quality_oracle)  # stable: oracles last
    results, changed, kept = [], False, 1.0
    for fam in order:
        s = fam.effective_sparsity(float(given[fam.name]))
        part_cal = cal
        if fam.needs_calibration and changed:
            if recalibrate is None:
                raise ValueError(f"{combo}: {fam.name} needs a calibration of the model "
                                 "the first part left")
            part_cal = recalibrate(model)
        res = apply(model, fam.name, s, part_cal, align=align, granularity=granularity,
                    block=block, svd_cache=None)
        results.append((fam.name, s, res))
        changed = True
    kept = 1.0
    for _, _, res in results:
        kept *= 1.0 - res.final_achieved()

    class _Combined(PruneResult):
        def final_achieved(self) -> float:  # a dynamic part's share is read after running
            k = 1.0
            for _, _, r in results:
                k *= 1.0 - r.final_achieved()
            return 1.0 - k

    note = "; ".join(f"{name} {s:g}: {res.note}" for name, s, res in results if res.note)
    return _Combined(combo, 1.0 - kept, 1.0 - kept, note=note,
                     details={"parts": [{"family": n, "sparsity": s, "achieved": r.achieved_sparsity,
                                         "details": r.details} for n, s, r in results]})
