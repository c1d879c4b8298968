"""Acceptance rates of pruned drafts: how often the dense model accepts a token its pruned self
drafted (self-speculative decoding, :mod:`pis_tui.decide.speculative`).

Greedy and sampling acceptance are different quantities and never stand for each other: greedy
is the rate at which the draft's argmax equals the dense model's; with sampling it is
E[Σ_v min(p(v), q(v))] (rejection sampling keeps the dense model's distribution).  One can be
high where the other is 0.

Sources, in order: the user's ``--alpha`` (given), a rate measured on the user's own model by
``pis-tui quality --acceptance`` (measured, from the cache), else the published figures of
``profiles/quality/acceptance.csv`` under :data:`BORROWING_RULE`.  No torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Optional

from ..errors import UserError
from .priors import opt_float, flag, model_distance, normalize_model_name, params_of, read_rows

DECODINGS = ("greedy", "sampling")

#: how far a published figure's draft sparsity may be from the draft priced
SPARSITY_REACH = 0.1
#: how far a sampling figure's temperature may be from the one priced
TEMPERATURE_REACH = 0.05
#: the width added on each side of a borrowed α's range (another model or another sparsity)
BORROWED_WIDTH = 0.05
#: the largest α priced (the formula needs α < 1)
MAX_ALPHA = 0.999

BORROWING_RULE = (
    "a published acceptance figure stands for a draft of the same family whose sparsity is "
    f"within {SPARSITY_REACH:g}, under the same decoding (greedy and sampling never mixed; a "
    f"sampling figure only within {TEMPERATURE_REACH:g} of its temperature), from the nearest "
    "model (same line, then generation, then size); that model's figures over its tasks and γ "
    "give α (their mean) and its range (their min to max), widened by "
    f"{BORROWED_WIDTH:g} on each side when borrowed from another model or sparsity; a figure "
    "from a draft trained for drafting (LayerSkip's early-exit training, an adapter) is an "
    "upper bound for an untrained pruned draft, and says so")


@dataclass(frozen=True)
class AcceptanceRow:
    method: str
    model: str
    params_b: Optional[float]
    family: str
    sparsity: Optional[float]
    decoding: str
    temperature: float
    gamma: Optional[int]
    alpha: Optional[float]
    trained: bool
    secondary: bool
    uncertain: bool
    citation: str
    task: str = ""


@dataclass(frozen=True)
class AcceptanceEstimate:
    """α for one draft under one decoding, with its range and where it comes from."""

    alpha: Optional[float]
    lo: Optional[float]
    hi: Optional[float]
    source: str  # given | measured | prior | none
    decoding: str = "greedy"
    temperature: float = 0.0
    borrowed_from: Optional[str] = None
    upper_bound: bool = False  # from a draft trained for drafting
    citations: tuple = ()
    n_points: int = 0
    note: str = ""
    secondary: bool = False
    extra: dict = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict:
        return {"alpha": self.alpha, "alpha_range": [self.lo, self.hi], "source": self.source,
                "decoding": self.decoding, "temperature": self.temperature,
                "borrowed_from": self.borrowed_from, "upper_bound": self.upper_bound,
                "secondary": self.secondary, "citations": list(self.citations),
                "n_points": self.n_points, "note": self.note}


def acceptance_path() -> Path:
    from ..shipped import profile_path

    return Path(profile_path("quality", "acceptance.csv"))


@lru_cache(maxsize=2)
def load_rows(path: Optional[str] = None) -> tuple[AcceptanceRow, ...]:
    p = Path(path) if path else acceptance_path()
    raw = read_rows(p, "acceptance table")
    out = []
    for i, r in enumerate(raw, start=2):
        try:
            g = opt_float(r.get("gamma"))
            # "Llama-2-7B (LayerSkip continual pretraining; …)": the model is the name before
            # the remark (the remark stays in the row's citation and note)
            model = r["model"].split(" (")[0].strip()
            out.append(AcceptanceRow(r["method"].strip(), model, opt_float(r.get("params_b")),
                                     r["draft_family"].strip(), opt_float(r.get("draft_sparsity")),
                                     r["decoding"].strip(), opt_float(r.get("temperature")) or 0.0,
                                     int(g) if g is not None else None, opt_float(r.get("alpha")),
                                     flag(r.get("draft_trained")), flag(r.get("secondary")),
                                     flag(r.get("uncertain")), r.get("citation", "").strip(),
                                     r.get("task", "").strip()))
        except (KeyError, ValueError) as e:
            raise UserError(f"{p}:{i}: malformed row ({e})") from None
    return tuple(out)


def check_decoding(decoding: str, temperature: float) -> tuple[str, float]:
    if decoding not in DECODINGS:
        raise UserError(f"unknown decoding {decoding!r}; choose greedy or sampling")
    t = float(temperature)
    if decoding == "greedy":
        return decoding, 0.0
    if not 0.0 < t <= 2.0:
        raise UserError(f"a sampling temperature must be in (0, 2], got {temperature!r}")
    return decoding, t


def given(alpha: float, decoding: str = "greedy", temperature: float = 0.0) -> AcceptanceEstimate:
    """The user's own α (``--alpha``), taken as it is."""
    if not 0.0 <= alpha < 1.0:
        raise UserError(f"--alpha must be in [0, 1), got {alpha!r}")
    return AcceptanceEstimate(alpha, alpha, alpha, "given", decoding, temperature,
                              note="given with --alpha: your own measurement or assumption")


def published(model: str, family: str, sparsity: float, decoding: str = "greedy",
              temperature: float = 0.0, rows=None) -> AcceptanceEstimate:
    """α for a ``family`` draft at ``sparsity`` of ``model`` from the published figures
    (:data:`BORROWING_RULE`); source ``none`` where nothing matches."""
    decoding, temperature = check_decoding(decoding, temperature)
    rows = load_rows() if rows is None else rows
    pool = [r for r in rows if r.family == family and r.alpha is not None and r.sparsity is not None
            and abs(r.sparsity - sparsity) <= SPARSITY_REACH + 1e-9 and r.decoding == decoding
            and (decoding == "greedy" or abs(r.temperature - temperature) <= TEMPERATURE_REACH + 1e-9)]
    what = decoding if decoding == "greedy" else f"sampling at temperature {temperature:g}"
    if not pool:
        return AcceptanceEstimate(None, None, None, "none", decoding, temperature,
                                  note=f"no published {what} acceptance figure for a {family} draft "
                                       f"near {sparsity:.0%}")
    q = params_of(model)
    near = min(model_distance(model, q, r.model, r.params_b) for r in pool)
    mine = [r for r in pool if model_distance(model, q, r.model, r.params_b) == near]
    alphas = [r.alpha for r in mine]
    a = sum(alphas) / len(alphas)
    other_model = all(normalize_model_name(r.model) != normalize_model_name(model) for r in mine)
    other_sparsity = any(abs(r.sparsity - sparsity) > 1e-9 for r in mine)
    widen = BORROWED_WIDTH if (other_model or other_sparsity) else 0.0
    lo, hi = max(0.0, min(alphas) - widen), min(MAX_ALPHA, max(alphas) + widen)
    trained = any(r.trained for r in mine)
    notes = [f"{len(mine)} published {what} figure{'s' if len(mine) > 1 else ''} "
             f"({', '.join(dict.fromkeys(r.method for r in mine))}; tasks: "
             f"{'; '.join(dict.fromkeys(r.task for r in mine if r.task))})"]
    if other_sparsity:
        notes.append(f"drafts at {', '.join(sorted({f'{r.sparsity:.0%}' for r in mine}))} stand in for {sparsity:.0%}")
    if trained:
        notes.append("the draft was trained for drafting: an upper bound for an untrained pruned draft")
    return AcceptanceEstimate(a, lo, hi, "prior", decoding, temperature,
                              borrowed_from=mine[0].model if other_model else None,
                              upper_bound=trained,
                              citations=tuple(dict.fromkeys(r.citation for r in mine)),
                              n_points=len(mine), note="; ".join(notes),
                              secondary=any(r.secondary for r in mine))


def from_measured(rows, family: str, sparsity: float, decoding: str = "greedy",
                  temperature: float = 0.0) -> Optional[AcceptanceEstimate]:
    """α measured on the user's model by ``pis-tui quality --acceptance`` (cache rows with
    ``strategy``, ``sparsity``, ``greedy_acceptance``, ``sampling_acceptance``,
    ``temperature``, ``windows``…); None where none matches."""
    key = "greedy_acceptance" if decoding == "greedy" else "sampling_acceptance"

    def when(r):
        return str((r.get("measured_at") if isinstance(r, dict) else getattr(r, "measured_at", "")) or "")
    for r in sorted(rows or (), key=when, reverse=True):  # the newest measurement first
        get = r.get if isinstance(r, dict) else (lambda k, d=None, r=r: getattr(r, k, d))
        if get("strategy") != family or abs(float(get("sparsity") or 0) - sparsity) > 1e-6:
            continue
        if decoding == "sampling" and abs(float(get("temperature") or 1.0) - temperature) > TEMPERATURE_REACH:
            continue
        v = get(key)
        if v is None:
            continue
        se = float(get(key + "_se") or 0.0)
        v = min(float(v), MAX_ALPHA)  # every position accepted on a short text: not quite 1
        return AcceptanceEstimate(v, max(0.0, v - 2 * se), min(MAX_ALPHA, v + 2 * se), "measured",
                                  decoding, temperature, n_points=int(get("positions") or 0),
                                  note=f"measured on your model over {int(get('positions') or 0)} "
                                       "positions of its text (pis-tui quality --acceptance)")
    return None
