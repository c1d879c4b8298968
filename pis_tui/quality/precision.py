"""Quality at a served precision: what quantization costs, and how it composes with pruning.

``profiles/quality/precision.csv`` holds published figures of quantized models (cited like the
pruning priors): the loss of a quantization alone (family ``dense``), and pruned-and-quantized
models measured as such (a family and its sparsity, e.g. 2:4 + fp8 Sparse-Llama).  A point
served at a precision gets, in order:

1. a direct pruned-and-quantized figure of its family at its sparsity (within
   :data:`DIRECT_REACH`) for the same model line and the same recovery protocol (the
   published 2:4 + fp8 / int4 models were trained with distillation: they stand for the
   ``trained`` protocol only): a published figure beats composition;
2. else its pruning loss composed with the precision's own loss by the combination rule
   (``--combo-quality``), flagged ``composed``;
3. the dense model at a precision: the precision's own loss.

The precision's own loss is the model's row for that format, else borrowed from the nearest
model (same line first, then generation and size: :func:`pis_tui.quality.priors.model_distance`)
and labelled borrowed; an int4 row of another group size stands in for a missing one (labelled).
Losses are relative to the unquantized model (its accuracy or perplexity).  No torch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Optional

from ..errors import UserError
from .compose import compose_estimates
from .estimate import QualityEstimate
from .priors import opt_float, flag, model_distance, normalize_model_name, params_of, read_rows

COLUMNS = ("precision", "method", "family", "sparsity", "model", "params_b", "metric_kind",
           "measure", "metric", "dense", "quantized", "quality_loss", "secondary", "uncertain",
           "citation", "checked", "note", "protocol")

#: a direct pruned-and-quantized figure answers for a point within this much sparsity
DIRECT_REACH = 0.03


@dataclass(frozen=True)
class PrecisionRow:
    precision: str
    method: str
    family: str
    sparsity: float
    model: str
    params_b: Optional[float]
    metric: str
    quality_loss: float
    secondary: bool
    uncertain: bool
    citation: str
    measure: str = ""
    note: str = ""
    #: how a pruned-and-quantized model recovered (``trained``, ``lora``, ``training-free``): a
    #: direct figure stands only for the same protocol; "" for quantization alone (post-training)
    protocol: str = ""


def precision_path() -> Path:
    from ..shipped import profile_path

    return Path(profile_path("quality", "precision.csv"))


@lru_cache(maxsize=4)
def load_rows(path: Optional[str] = None) -> tuple[PrecisionRow, ...]:
    """The shipped rows (``path``: another file of the same columns); none when absent."""
    p = Path(path) if path else precision_path()
    rows = read_rows(p, "precision quality table")
    out = []
    for i, r in enumerate(rows, start=2):
        try:
            loss = opt_float(r.get("quality_loss", ""))
            if loss is None:
                continue
            out.append(PrecisionRow(r["precision"].strip(), r.get("method", "").strip(),
                                    (r.get("family") or "dense").strip(),
                                    opt_float(r.get("sparsity", "")) or 0.0, r["model"].strip(),
                                    opt_float(r.get("params_b", "")), r["metric"].strip(), loss,
                                    flag(r.get("secondary", "")), flag(r.get("uncertain", "")),
                                    r.get("citation", "").strip(), r.get("measure", "").strip(),
                                    r.get("note", "").strip(), (r.get("protocol") or "").strip()))
        except (KeyError, ValueError, AttributeError) as e:
            raise UserError(f"{p}:{i}: malformed row ({e})") from None
    return tuple(out)


def _stand_ins(precision: str) -> tuple[str, ...]:
    """Formats whose figures may stand in for ``precision`` (the same scheme, another group)."""
    if precision.startswith("int4-g"):
        return ("int4-g128", "int4-g64", "int4-g32", "int4-g256")
    if precision.startswith("fp8"):
        return ("fp8-row", "fp8-tensor")
    return ()


def _nearest(rows, model: str) -> tuple[Optional[PrecisionRow], bool]:
    """(the nearest model's row, whether it is another model's)."""
    if not rows:
        return None, False
    key = normalize_model_name(model)
    own = [r for r in rows if normalize_model_name(r.model) == key]
    if own:
        return _best(own), False
    q = params_of(model)
    ranked = sorted(rows, key=lambda r: (model_distance(model, q, r.model, r.params_b),
                                         r.uncertain, r.secondary))
    return ranked[0], True


def _best(rows) -> PrecisionRow:
    """Of one model's rows: primary before secondary, certain before uncertain, the mean loss
    of the best-ranked kind (several benchmarks of one model)."""
    rank = min((r.uncertain, r.secondary) for r in rows)
    pick = [r for r in rows if (r.uncertain, r.secondary) == rank]
    if len(pick) == 1:
        return pick[0]
    mean = sum(r.quality_loss for r in pick) / len(pick)
    first = pick[0]
    return replace(first, quality_loss=mean, method=", ".join(dict.fromkeys(r.method for r in pick)),
                   citation="; ".join(dict.fromkeys(r.citation for r in pick)),
                   measure=f"mean of {len(pick)} figures")


def precision_estimate(model: str, precision: str, metric: str = "accuracy_drop",
                       protocol: str = "lora", rows=None) -> QualityEstimate:
    """The quality cost of serving the unpruned ``model`` at ``precision``."""
    rows = load_rows() if rows is None else rows
    pool = [r for r in rows if r.family == "dense" and r.metric == metric]
    exact = [r for r in pool if r.precision == precision]
    stand_in = ""
    if not exact:
        for alt in _stand_ins(precision):
            exact = [r for r in pool if r.precision == alt]
            if exact:
                stand_in = alt
                break
    row, borrowed = _nearest(exact, model)
    what = {"accuracy_drop": "accuracy", "ppl_increase": "perplexity"}.get(metric, metric)
    if row is None:
        return QualityEstimate(None, metric, "none", protocol,
                               note=f"no published {what} figure of {precision}")
    notes = [f"{precision}: {row.method}, {row.measure or row.metric} on {row.model}"]
    if stand_in:
        notes.append(f"figures of {stand_in} stand in for {precision}")
    return QualityEstimate(row.quality_loss, metric, "prior", protocol,
                           borrowed_from=row.model if borrowed else None, secondary=row.secondary,
                           citations=(row.citation,), n_points=1, note="; ".join(notes),
                           method=row.method)


def direct_estimate(model: str, family: str, sparsity: float, precision: str,
                    metric: str = "accuracy_drop", protocol: str = "lora",
                    rows=None) -> Optional[QualityEstimate]:
    """A published pruned-and-quantized figure for this point (same model line, family,
    precision scheme, sparsity within :data:`DIRECT_REACH`), or None."""
    rows = load_rows() if rows is None else rows
    fmts = (precision,) + _stand_ins(precision)
    cands = [r for r in rows if r.family == family and r.metric == metric and r.precision in fmts
             and abs(r.sparsity - sparsity) <= DIRECT_REACH and r.protocol in ("", protocol)]
    if not cands:
        return None
    q = params_of(model)
    best = min(cands, key=lambda r: (model_distance(model, q, r.model, r.params_b), r.uncertain))
    if model_distance(model, q, best.model, best.params_b)[0] != 0:
        return None  # another model line: composition is no worse a guess
    borrowed = normalize_model_name(best.model) != normalize_model_name(model)
    return QualityEstimate(best.quality_loss, metric, "prior", protocol,
                           borrowed_from=best.model if borrowed else None,
                           secondary=best.secondary, citations=(best.citation,), n_points=1,
                           note=f"published pruned and quantized ({best.precision}): {best.method}",
                           method=best.method)


def served(q: QualityEstimate, model: str, family: str, sparsity: float, precision: str,
           rule: str = "multiplicative", rows=None) -> QualityEstimate:
    """A point's quality at a served precision (the module's rule); ``q`` is its pruning loss
    (the dense model's 0); an unquantized precision returns ``q``."""
    if not precision:
        return q
    metric, protocol = q.metric, q.protocol
    own = precision_estimate(model, precision, metric, protocol, rows)
    if family == "dense" or (q.value == 0.0 and q.source == "dense"):
        return own
    if "+" not in family:
        direct = direct_estimate(model, family, sparsity, precision, metric, protocol, rows)
        if direct is not None:
            return direct
    return compose_estimates([q, own], [f"{family} {sparsity * 100:.1f}%", precision], rule,
                             metric, protocol)
