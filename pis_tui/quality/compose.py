"""A combination's quality cost composed from its parts' (the combination rule, stated)."""

from __future__ import annotations
from typing import Optional
from ..errors import UserError
from .estimate import QualityEstimate


#: how a combination's loss is composed from its parts' (``--combo-quality``)
COMBO_RULES = ("multiplicative", "additive")


COMBO_RULE_TEXT = {
    "multiplicative": ("what each part keeps multiplies: accuracy drops compose as "
                       "1 − (1 − a)(1 − b), perplexity increases as (1 + a)(1 + b) − 1"),
    "additive": "the parts' losses add: a + b (an accuracy drop capped at 1)",
}


def compose(values, rule: str, metric: str = "accuracy_drop") -> Optional[float]:
    """A combination's loss from its parts' (:data:`COMBO_RULES`); None if a part has none."""
    vals = list(values)
    if any(v is None for v in vals):
        return None
    if rule == "additive":
        total = sum(vals)
        return min(1.0, total) if metric == "accuracy_drop" else total
    if rule != "multiplicative":
        raise UserError(f"unknown combination rule {rule!r}; choose from {', '.join(COMBO_RULES)}")
    if metric == "ppl_increase":
        prod = 1.0
        for v in vals:
            prod *= 1.0 + v
        return prod - 1.0
    kept = 1.0
    for v in vals:
        kept *= 1.0 - min(1.0, v)
    return 1.0 - kept


def compose_estimates(parts: list[QualityEstimate], labels: list[str], rule: str, metric: str,
                      protocol: str) -> QualityEstimate:
    """A combination's estimate composed from its parts' (flagged: source ``composed``)."""
    value = compose([q.value for q in parts], rule, metric)
    borrowed = ", ".join(dict.fromkeys(q.borrowed_from for q in parts if q.borrowed_from)) or None
    cites = tuple(dict.fromkeys(c for q in parts for c in q.citations))
    from ..display import loss_text

    each = ", ".join(f"{lab} {loss_text(q)}" for lab, q in zip(labels, parts))
    if value is None:
        missing = [lab for lab, q in zip(labels, parts) if q.value is None]
        note = f"no figure for {', '.join(missing)}, so none for the combination"
    else:
        note = f"composed ({rule}: {COMBO_RULE_TEXT[rule]}) from {each}; not a published figure"
    extra = [q.note for q in parts if q.note and value is not None]
    return QualityEstimate(
        value=value, metric=metric, source="composed" if value is not None else "none",
        protocol=protocol, extrapolated=any(q.extrapolated for q in parts), borrowed_from=borrowed,
        secondary=any(q.secondary for q in parts), citations=cites,
        n_points=sum(q.n_points for q in parts),
        note="; ".join([note] + [f"{lab}: {n}" for lab, n in zip(labels, extra)]),
        method=" + ".join(q.method or "?" for q in parts), composed=rule, parts=tuple(parts),
        floored_by=", ".join(q.floored_by for q in parts if q.floored_by) or None,
        oracle=value is not None and any(getattr(q, "oracle", False) for q in parts))


def combo_estimate(quality, model_name: str, combo: str, parts, part_achieved) -> QualityEstimate:
    """A combination's quality from any quality model: its own ``estimate_combo`` when it has
    one, else the parts' estimates composed multiplicatively."""
    fn = getattr(quality, "estimate_combo", None)
    if callable(fn):
        return fn(model_name, combo, parts, part_achieved)
    ests = [quality.estimate(model_name, f, a) for (f, _), a in zip(parts, part_achieved)]
    labels = [f"{f} {a * 100:.1f}%" for (f, _), a in zip(parts, part_achieved)]
    return compose_estimates(ests, labels, "multiplicative", getattr(quality, "metric", "accuracy_drop"),
                             getattr(quality, "protocol", "lora"))


