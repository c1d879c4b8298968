"""Quality measured here: perplexity rows stored by pis-tui quality, as curve observations."""

from __future__ import annotations
import math
from .. import families
from ..errors import UserError
from .curves import Obs
from .priors import model_params_b, normalize_model_name

#: how an oracle's figure ranks against a measured one (recommend, frontier, plan and the
#: explorer read quality through it; the JSON's ``quality.oracle_rule``)
ORACLE_RULE = (
    "pis-tui quality measures dynamic depth and dynamic sparse attention on an oracle: every "
    "sublayer update (every attention block's score) is computed, then the smallest are "
    "skipped, so its perplexity is an upper bound on the quality a learned router or a "
    "block-sparse kernel keeps (its loss a lower bound), not a measurement of one; an oracle "
    "figure ranks below a measured one: where a "
    "point (model, strategy, sparsity) has both, the measured figure is used and the oracle's "
    "dropped; an oracle figure is used only where nothing else is measured, and it is "
    "flagged (ᵒ, quality_flags.oracle) as an upper bound on quality")
#: the method label of an oracle's figure (``quality_method``)
ORACLE_METHOD = "measured here on an oracle (an upper bound)"
ORACLE_NOTE = ("perplexity measured locally on an oracle (every update computed, then "
               "skipped): an upper bound on quality")


def _field(r, key: str, default=None):
    if isinstance(r, dict):
        return r.get(key, default)
    if isinstance(r, (tuple, list)):
        return default
    return getattr(r, key, default)


def is_oracle_row(r) -> bool:
    """Whether a measured row comes from a quality oracle: its own ``oracle`` flag where it has
    one (``pis-tui quality`` stores it), else its note ("oracle: ..."), else whether its
    family's (or a combination part's) quality path is an oracle."""
    flag = _field(r, "oracle")
    if flag is not None:
        return bool(flag)
    note = _field(r, "note")
    if note:
        return "oracle" in str(note).lower()
    strategy = str(r[1] if isinstance(r, (tuple, list)) else _field(r, "strategy", ""))
    base = "+".join(p.split("@", 1)[0] for p in strategy.split(families.SEP))
    try:
        return bool(families.get(base).quality_oracle)
    except (UserError, KeyError):
        return False


def _keep_measured_over_oracle(rows: list) -> list:
    """:data:`ORACLE_RULE`: an oracle's row of a point that also has a measured one is dropped."""
    def key(r):
        m, st, sp = r[0], r[1], r[2]
        return normalize_model_name(str(m)), str(st), round(float(sp), 6)
    measured = {key(r) for r in rows if not r[-1]}
    return [r for r in rows if not (r[-1] and key(r) in measured)]


def measured_obs(rows) -> tuple[list[Obs], list[tuple]]:
    """(family observations, combinations' (model, combo, parts, value, achieved, oracle)) from
    the measured rows; a combination's row names it by its token
    (static_depth@0.25+static_width@0.25).  An oracle's row (:func:`is_oracle_row`) is kept
    only where no measured row has the same point (:data:`ORACLE_RULE`)."""
    flat = []
    for r in rows:
        if isinstance(r, dict):
            m, st, sp, v = r["model"], r["strategy"], r["sparsity"], r["ppl_increase"]
            ach = r.get("achieved_sparsity")
        elif isinstance(r, (tuple, list)):
            m, st, sp, v = r[:4]
            ach = None
        else:
            m, st, sp = r.model, r.strategy, getattr(r, "achieved_sparsity", None) or r.sparsity
            v, ach = r.ppl_increase, getattr(r, "achieved_sparsity", None)
        if v is None or not math.isfinite(float(v)):
            continue
        flat.append((m, st, sp, v, ach, is_oracle_row(r)))
    out, combos = [], []
    for m, st, sp, v, ach, oracle in _keep_measured_over_oracle(flat):
        if families.SEP in str(st):
            from ..families.strategy import from_token

            try:
                strat = from_token(st)
            except UserError:
                raise UserError(f"measured quality: unknown strategy {st!r}") from None
            combos.append((str(m), strat.family, strat.parts, float(v), ach, oracle))
            continue
        if not families.is_family(st):
            raise UserError(f"measured quality: unknown strategy {st!r}")
        out.append(Obs(str(m), st, float(sp), float(v), "", False, model_params_b(str(m)),
                       ORACLE_NOTE if oracle else "perplexity measured locally",
                       ORACLE_METHOD if oracle else "measured here", oracle))
    return out, combos
