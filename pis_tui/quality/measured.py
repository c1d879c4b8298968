"""Quality measured here: perplexity rows stored by pis-tui quality, as curve observations."""

from __future__ import annotations
import math
from .. import families
from ..errors import UserError
from .curves import Obs
from .priors import model_params_b


def measured_obs(rows) -> tuple[list[Obs], list[tuple]]:
    """(family observations, combinations' (model, combo, parts, value, achieved)) from the
    measured rows; a combination's row names it by its token (static_depth@0.25+static_width@0.25)."""
    out, combos = [], []
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
        if families.SEP in str(st):
            from ..families.strategy import from_token

            try:
                strat = from_token(st)
            except UserError:
                raise UserError(f"measured quality: unknown strategy {st!r}") from None
            combos.append((str(m), strat.family, strat.parts, float(v), ach))
            continue
        if not families.is_family(st):
            raise UserError(f"measured quality: unknown strategy {st!r}")
        out.append(Obs(str(m), st, float(sp), float(v), "", False, model_params_b(str(m)),
                        "perplexity measured locally", "measured here"))
    return out, combos


