"""Quality cost of a (model, strategy, sparsity): cited literature priors, the user's own
evaluations, or perplexity measured locally.

Pure Python (``csv`` only): cheap to import, nothing heavy on the estimate path.

How a curve is built (one curve per model × family × protocol × metric):

1. **Rows.**  Priors come from ``profiles/quality/literature.csv`` (see its README): only
   rows with ``on_curve=true``, the protocol asked for (``lora``, ``training-free`` or
   ``trained``; never mixed) and the metric asked for (accuracy rows for
   ``accuracy_drop``, perplexity rows for ``ppl_increase``; never mixed).
2. **Model.**  Rows of the model itself (names compared after normalisation:
   ``meta-llama/Llama-3.1-8B`` = ``Llama-3.1-8B`` = ``llama-3.1-8b``).  When the model
   has none for that family, protocol and metric, the curve is *borrowed* from the
   nearest model that has some: same line first (llama / qwen / mistral / …), then the
   nearest generation within the line (3.1 is nearer 3 than 2), then the nearest
   parameter count (log ratio; a preset's real count, else the ``8b``/``0.5b`` in the
   name), then the model with more points.  The estimate says so in ``borrowed_from``
   and ``note``.
3. **Knots.**  Rows at the same sparsity are averaged (mean of the methods, or of the
   sources, reported at that sparsity; ``aggregate="median"`` or ``"lowest"`` to take
   the median or the lowest figure at that sparsity instead); losses below zero (a pruned model scoring above
   dense) count as zero.  The point (0, 0) is added: nothing removed, nothing lost.
4. **Monotone fit.**  The knots are made non-decreasing by isotonic regression (pool
   adjacent violators, each knot weighted by its number of rows), then interpolated
   piecewise-linearly: the curve never decreases.
5. **Beyond the data.**  Past the largest known sparsity the last segment's slope is
   continued (linear extrapolation, capped at a loss of 1.0) and the estimate is flagged
   ``extrapolated=True``: more pessimistic than a flat line, and shown as unsure (never
   ranked unless asked: :data:`EXTRAPOLATION_RULE`).  An achieved sparsity within
   :data:`EDGE_TOL` (0.5 percentage points) past it reads the last point: rounding (low
   rank's 50 % of llama-3.1-8b removes 50.03 %) is no extrapolation.
6. **Methods.**  ``method`` picks whose rows make the curve (:data:`METHOD_RULE`): the
   family mean (default), the best single method for the model, or a named one.
7. **Borrowing floor.**  A borrowed curve's loss is raised to that of a larger model of the
   donor's line with its own rows there (:data:`BORROWING_RULE`).

User quality file (``--quality FILE``): columns ``strategy, sparsity, quality_loss``
and optionally ``model`` and ``note``.  For a family the file names, the user's points
(plus zero at zero) *replace* the priors for that family: for the named model when a
row names one, for every model when ``model`` is empty or ``*``; model-specific rows win
over any-model rows.  Families the file does not name keep their priors.

Measured perplexity (``measured_rows``): the metric becomes ``ppl_increase`` and only
the measured rows are used (no priors, no user file).
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional

from . import families
from .errors import UserError
from .results import QualityEstimate

PROTOCOLS = ("lora", "training-free", "trained")
METRICS = ("accuracy_drop", "ppl_increase")
_EPS = 1e-9
#: an achieved sparsity at most this far past a curve's largest (0.5 percentage points: what
#: rounding ranks, channels or tokens adds) reads that last point, not an extrapolation
EDGE_TOL = 0.005


@dataclass(frozen=True)
class QualityRow:
    """One shipped literature figure (a row of profiles/quality/literature.csv)."""

    family: str
    method: str
    protocol: str
    model: str
    params_b: Optional[float]
    ratio: str
    sparsity: float
    metric_kind: str
    measure: str
    metric: str
    dense: Optional[float]
    pruned: Optional[float]
    quality_loss: Optional[float]
    reported_gap: Optional[float]
    on_curve: bool
    secondary: bool
    uncertain: bool
    citation: str
    checked: str = ""
    note: str = ""


@dataclass(frozen=True)
class UserQualityRow:
    """One row of the user's quality file."""

    strategy: str
    sparsity: float
    quality_loss: float
    model: Optional[str] = None  # None: applies to every model
    note: str = ""
    line: int = 0


@dataclass(frozen=True)
class _Obs:
    """A point standing behind a curve (internal: prior, user or measured)."""

    model: str
    family: str
    sparsity: float
    loss: float
    citation: str = ""
    secondary: bool = False
    params_b: Optional[float] = None
    note: str = ""
    method: str = ""  # the method's display name (method_name of the row's method)

    @property
    def method_key(self) -> str:
        return method_key(self.method)


# --------------------------------------------------------------------------- methods

#: the study's family-mean rows, named after the methods the study averaged (reference-study:
#: "Representative methods: static depth: Shortened-LLaMA (Taylor), CoopPruner")
_METHOD_ALIASES = {"static M (mean)": "Shortened-taylor/CoopPruner (study mean)"}
_STUDY_AXES = re.compile(r"^(static|dynamic) (M|NK|K)\b[^(]*\((.*)\)\s*$")


def method_name(raw: str) -> str:
    """A literature row's method, as one name for every row of that method.

    The study's rows are labelled by their axis ("static NK (Tyr-the-Pruner, +LoRA)"): the
    method is the first item in the parentheses ("Tyr-the-Pruner"; a "... mean" item is the
    study's mean of those methods).  Otherwise qualifiers are dropped: a trailing "*" (Týr's
    LoRA-recovered runs), a parenthesised remark ("LLM-Pruner (Element2, +LoRA Alpaca)",
    "SVD-LLM (W, training-free)", "MindSkip (Block granularity)") and a " 2:4" suffix
    ("Wanda 2:4" is Wanda in the 2:4 family).  Names are compared case-insensitively
    (:func:`method_key`): "Shortened-PPL" and "Shortened-ppl" are one method."""
    text = (raw or "").strip()
    if text in _METHOD_ALIASES:
        return _METHOD_ALIASES[text]
    m = _STUDY_AXES.match(text)
    if m:
        items = [i.strip() for i in m.group(3).split(",") if i.strip() and "lora" not in i.lower()]
        first = items[0] if items else text
        if first.lower().endswith(" mean"):
            return f"{first[:-5].strip()} (study mean)"
        return first
    text = re.sub(r"\s*\([^)]*\)\s*$", "", text).strip()
    text = text.rstrip("*").strip()
    text = re.sub(r"\s+2:4$", "", text).strip()
    return text or (raw or "").strip()


@lru_cache(maxsize=None)
def method_key(name: str) -> str:
    """How a method name is matched (``--quality-method``): case and spacing ignored."""
    return re.sub(r"\s+", " ", method_name(name).strip().lower())


# --------------------------------------------------------------------------- priors

def _opt_float(s: str) -> Optional[float]:
    s = (s or "").strip()
    return float(s) if s else None


def literature_path() -> Path:
    from .profiles import profile_path

    return profile_path("quality", "literature.csv")


@lru_cache(maxsize=None)
def _load_priors(path: str) -> tuple[QualityRow, ...]:
    out = []
    with open(path, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            out.append(QualityRow(
                family=r["family"], method=r["method"], protocol=r["protocol"], model=r["model"],
                params_b=_opt_float(r["params_b"]), ratio=r["ratio"], sparsity=float(r["sparsity"]),
                metric_kind=r["metric_kind"], measure=r["measure"], metric=r["metric"],
                dense=_opt_float(r["dense"]), pruned=_opt_float(r["pruned"]),
                quality_loss=_opt_float(r["quality_loss"]), reported_gap=_opt_float(r["reported_gap"]),
                on_curve=r["on_curve"] == "true", secondary=r["secondary"] == "true",
                uncertain=r["uncertain"] == "true", citation=r["citation"],
                checked=r.get("checked", ""), note=r.get("note", "")))
    return tuple(out)


def load_priors() -> list[QualityRow]:
    """Every shipped literature row (cached after the first call)."""
    return list(_load_priors(str(literature_path())))


# --------------------------------------------------------------------------- model names

_LINES = ("llama", "qwen", "mistral", "mixtral", "gemma", "phi", "olmo", "falcon", "opt", "gpt")


def normalize_model_name(name: str) -> str:
    """'meta-llama/Meta-Llama-3.1-8B' → 'llama-3.1-8b'; 'Qwen/Qwen2.5-7B' → 'qwen-2.5-7b'."""
    s = str(name).strip().rstrip("/\\").replace("\\", "/")
    s = s.split("/")[-1].lower()
    s = re.sub(r"[\s_]+", "-", s)
    if s.startswith("meta-"):
        s = s[len("meta-"):]
    s = re.sub(r"-hf$", "", s)
    s = re.sub(r"^([a-z]+)(\d)", r"\1-\2", s)  # llama3.1-8b → llama-3.1-8b
    return s


def _model_line(key: str) -> str:
    head = key.split("-")[0]
    for line in _LINES:
        if head.startswith(line):
            return line
    return head


def _model_generation(key: str) -> Optional[float]:
    parts = key.split("-")
    if len(parts) > 1 and re.fullmatch(r"\d+(\.\d+)?", parts[1]):
        return float(parts[1])
    if parts[0] == "llama":
        return 1.0  # LLaMA-7B, the first generation
    return None


def _params_from_name(key: str) -> Optional[float]:
    for tok in key.split("-"):
        m = re.fullmatch(r"(\d+(?:\.\d+)?)b", tok)
        if m:
            return float(m.group(1))
    return None


@lru_cache(maxsize=None)
def model_params_b(name: str) -> Optional[float]:
    """Parameter count in billions: a preset's real count, else read from the name."""
    try:
        from .model_spec import load_preset_config, preset_names, spec_from_config

        if name in preset_names():
            return spec_from_config(load_preset_config(name), name).total_params() / 1e9
    except Exception:  # a preset that cannot be read: fall back to the name
        pass
    return _params_from_name(normalize_model_name(name))


def _model_distance(query: str, query_params: Optional[float], cand: str,
                    cand_params: Optional[float]) -> tuple:
    q, c = normalize_model_name(query), normalize_model_name(cand)
    same_line = _model_line(q) == _model_line(c)
    gq, gc = _model_generation(q), _model_generation(c)
    gen = abs(gq - gc) if (same_line and gq is not None and gc is not None) else (0.0 if same_line else 99.0)
    if query_params and cand_params:
        size = abs(math.log(query_params / cand_params))
    else:
        size = 99.0
    return (0 if same_line else 1, round(gen, 6), round(size, 6))


# --------------------------------------------------------------------------- curves

@dataclass(frozen=True)
class _Knot:
    sparsity: float
    loss: float
    obs: tuple  # the _Obs behind this knot (after pooling)


def _isotonic(knots: list[_Knot]) -> list[_Knot]:
    """Pool adjacent violators, weights = number of observations behind each knot."""
    blocks: list[list] = []  # [sum_w*loss, sum_w, [knots]]
    for k in knots:
        w = max(len(k.obs), 1)
        blocks.append([k.loss * w, w, [k]])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1] + 1e-15:
            b = blocks.pop()
            blocks[-1][0] += b[0]
            blocks[-1][1] += b[1]
            blocks[-1][2].extend(b[2])
    out = []
    for total, w, ks in blocks:
        pooled = tuple(o for k in ks for o in k.obs)
        for k in ks:
            # the anchor (0, 0) keeps zero loss: it can only pool with zeros (losses are ≥ 0)
            out.append(_Knot(k.sparsity, total / w, pooled if len(ks) > 1 else k.obs))
    return out


@dataclass(frozen=True)
class Curve:
    family: str
    model: str  # the model whose points make the curve
    protocol: str
    metric: str
    source: str  # prior | user | measured
    knots: tuple  # of _Knot, the first is (0, 0)
    n_points: int  # observations behind the curve
    citations: tuple

    @property
    def max_sparsity(self) -> float:
        return self.knots[-1].sparsity

    def evaluate(self, s: float) -> tuple[float, bool, tuple]:
        """(loss, extrapolated, observations behind this value)."""
        ks = self.knots
        if s <= ks[0].sparsity + _EPS:
            return 0.0, False, ()
        for a, b in zip(ks, ks[1:]):
            if s <= b.sparsity + _EPS:
                if abs(s - b.sparsity) <= _EPS:
                    return b.loss, False, b.obs
                t = (s - a.sparsity) / (b.sparsity - a.sparsity)
                return a.loss + t * (b.loss - a.loss), False, a.obs + b.obs
        last = ks[-1]
        if s <= last.sparsity + EDGE_TOL:
            # rounding (ranks to 8, channels, tokens) overshoots a round sparsity a little:
            # that reads the last point, it is no extrapolation
            return last.loss, False, last.obs
        if len(ks) >= 2:
            prev = ks[-2]
            slope = (last.loss - prev.loss) / (last.sparsity - prev.sparsity)
        else:
            slope = 0.0
        v = min(1.0, max(last.loss, last.loss + slope * (s - last.sparsity)))
        return v, True, (prev.obs if len(ks) >= 2 else ()) + last.obs


AGGREGATES = ("mean", "median", "lowest")


def _aggregate(group: list[_Obs], how: str) -> tuple[float, tuple]:
    losses = sorted(max(0.0, o.loss) for o in group)
    if how == "lowest":
        best = min(group, key=lambda o: max(0.0, o.loss))
        return losses[0], (best,)
    if how == "median":
        n = len(losses)
        mid = losses[n // 2] if n % 2 else (losses[n // 2 - 1] + losses[n // 2]) / 2
        return mid, tuple(group)
    return sum(losses) / len(losses), tuple(group)


def _build_curve(obs: list[_Obs], family: str, model: str, protocol: str, metric: str,
                 source: str, aggregate: str = "mean") -> Curve:
    by_s: dict[float, list[_Obs]] = {}
    for o in obs:
        by_s.setdefault(round(o.sparsity, 6), []).append(o)
    knots = [_Knot(0.0, 0.0, ())]
    for s in sorted(by_s):
        if s <= _EPS:
            continue
        loss, behind = _aggregate(by_s[s], aggregate)
        knots.append(_Knot(s, loss, behind))
    knots = _isotonic(knots)
    cites = tuple(sorted({o.citation for o in obs if o.citation}))
    return Curve(family, model, protocol, metric, source, tuple(knots), len(obs), cites)


# --------------------------------------------------------------------------- user file

_USER_REQUIRED = ("strategy", "sparsity", "quality_loss")
_USER_OPTIONAL = ("model", "note")


def _user_number(text: str, what: str, where: str, lo: float, hi: float, lo_open: bool = False) -> float:
    s = (text or "").strip()
    if not s:
        raise UserError(f"{where}: {what} is empty")
    try:
        v = float(s[:-1]) / 100.0 if s.endswith("%") else float(s)
    except ValueError:
        raise UserError(f"{where}: {what} {s!r} is not a number (use a fraction like 0.10 or 10%)") from None
    if not math.isfinite(v) or v > hi or v < lo or (lo_open and v <= lo):
        rng = f"({lo:g}, {hi:g}]" if lo_open else f"[{lo:g}, {hi:g}]"
        raise UserError(f"{where}: {what} {s} is outside {rng} (use a fraction like 0.10 or 10%)")
    return v


def load_user_csv(path) -> list[UserQualityRow]:
    """Read the user's quality file; any malformed row → UserError naming its line."""
    p = Path(path).expanduser()
    label = str(path)
    try:
        with open(p, newline="", encoding="utf-8-sig") as f:
            text = f.read()
    except FileNotFoundError:
        raise UserError(f"{label}: no such quality file") from None
    except IsADirectoryError:
        raise UserError(f"{label}: is a directory, give the quality CSV file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{label}: cannot read the quality file ({e})") from None
    if not text.strip():
        raise UserError(f"{label}: empty file (expected a header: strategy,sparsity,quality_loss[,model,note])")
    reader = csv.reader(text.splitlines())
    header = None
    for header in reader:
        if any(h.strip() for h in header):
            break
    header_line = reader.line_num
    cols = [h.strip().lower() for h in header]
    missing = [c for c in _USER_REQUIRED if c not in cols]
    if missing:
        raise UserError(f"{label} line {header_line}: missing column(s) {', '.join(missing)} "
                        f"(the header must name strategy, sparsity, quality_loss; optional model, note)")
    dup = sorted({c for c in cols if c and cols.count(c) > 1})
    if dup:
        raise UserError(f"{label} line {header_line}: column(s) {', '.join(dup)} appear twice")
    idx = {c: cols.index(c) for c in _USER_REQUIRED + _USER_OPTIONAL if c in cols}
    rows: list[UserQualityRow] = []
    for fields in reader:
        line = reader.line_num
        if not any(x.strip() for x in fields) or fields[0].lstrip().startswith("#"):
            continue
        where = f"{label} line {line}"
        if len(fields) > len(cols) and any(x.strip() for x in fields[len(cols):]):
            raise UserError(f"{where}: {len(fields)} fields but the header has {len(cols)}")

        def get(c: str) -> str:
            i = idx.get(c)
            return fields[i].strip() if i is not None and i < len(fields) else ""

        strat = get("strategy").lower().replace("-", "_")
        if not strat:
            raise UserError(f"{where}: strategy is empty")
        if not families.is_family(strat):
            raise UserError(f"{where}: unknown strategy {get('strategy')!r} "
                            f"(choose from {', '.join(families.names())})")
        sp = _user_number(get("sparsity"), "sparsity", where, 0.0, 0.99, lo_open=True)
        q = _user_number(get("quality_loss"), "quality_loss", where, -1.0, 1.0)
        if strat == "dense" and q != 0.0:
            raise UserError(f"{where}: dense has no loss by definition (got {get('quality_loss')})")
        model = get("model")
        rows.append(UserQualityRow(strat, sp, q, None if model in ("", "*", "any") else model,
                                   get("note"), line))
    if not rows:
        raise UserError(f"{label}: no data rows after the header")
    return rows


# --------------------------------------------------------------------------- the rules

METHOD_MEAN, METHOD_BEST = "mean", "best"
#: how a combination's loss is composed from its parts' (``--combo-quality``)
COMBO_RULES = ("multiplicative", "additive")
COMBO_RULE_TEXT = {
    "multiplicative": ("what each part keeps multiplies: accuracy drops compose as "
                       "1 − (1 − a)(1 − b), perplexity increases as (1 + a)(1 + b) − 1"),
    "additive": "the parts' losses add: a + b (an accuracy drop capped at 1)",
}
METHOD_RULE = (
    "mean: at each sparsity the mean of every method's rows (the family mean); best: the one "
    "method whose fitted curve has the lowest mean loss over [0, S], S the largest sparsity "
    "every compared method reaches with its own rows (ties: more rows, then the name), among "
    "the methods of the model whose curve is used; NAME: that method's rows alone (every "
    "source of it, averaged per sparsity)")
BORROWING_RULE = (
    "a model without rows for a family borrows the nearest model's curve (same line, then "
    "generation, then parameter count); a borrowed loss is never below the loss of a larger "
    "model of the donor's line from its own rows at that sparsity (interpolated, never "
    "extrapolated; past its largest sparsity, its loss there: losses do not fall as more is "
    "removed), under the same method choice: it is raised to the largest such loss")
EXTRAPOLATION_RULE = (
    "a loss extrapolated beyond a curve's largest sparsity is shown, flagged, and not ranked "
    "(recommend, frontier and plan skip it) unless --allow-extrapolated")

_KNOWN_PARAMS: dict = {}


def remember_params(name: str, params_b: Optional[float]) -> None:
    """The parameter count of a model the caller has loaded (a config that is no preset and
    whose name says no size): the borrowing rule compares sizes."""
    if name and params_b:
        _KNOWN_PARAMS[normalize_model_name(name)] = float(params_b)


def _params_of(name: str) -> Optional[float]:
    return _KNOWN_PARAMS.get(normalize_model_name(name)) or model_params_b(name)


def _curve_mean_loss(curve: Curve, upto: float) -> float:
    """Mean loss of a fitted curve over [0, upto] (the piecewise-linear area over upto)."""
    if upto <= _EPS:
        return 0.0
    xs = sorted({k.sparsity for k in curve.knots if k.sparsity < upto - _EPS} | {upto})
    area, px, py = 0.0, 0.0, 0.0
    for x in xs:
        y = curve.evaluate(x)[0]
        area += (x - px) * (py + y) / 2.0
        px, py = x, y
    return area / upto


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
    from .display import loss_text

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
        floored_by=", ".join(q.floored_by for q in parts if q.floored_by) or None)


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


# --------------------------------------------------------------------------- the model

def _measured_obs(rows) -> tuple[list[_Obs], list[tuple]]:
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
            from .taxonomy import from_token

            try:
                strat = from_token(st)
            except UserError:
                raise UserError(f"measured quality: unknown strategy {st!r}") from None
            combos.append((str(m), strat.family, strat.parts, float(v), ach))
            continue
        if not families.is_family(st):
            raise UserError(f"measured quality: unknown strategy {st!r}")
        out.append(_Obs(str(m), st, float(sp), float(v), "", False, model_params_b(str(m)),
                        "perplexity measured locally", "measured here"))
    return out, combos


class QualityModel:
    """Quality estimates for any (model, strategy, achieved sparsity).  Build it with
    :func:`build_quality_model`."""

    def __init__(self, protocol: str, metric: str, source: str, prior_obs: list[_Obs],
                 user_rows: list[UserQualityRow], user_label: str = "", aggregate: str = "mean",
                 method: str = METHOD_MEAN, family_methods: Optional[dict] = None,
                 combo_rule: str = "multiplicative", measured_combos=()):
        self.protocol = protocol
        self.aggregate = aggregate
        self.metric = metric
        self.source = source  # prior | measured (user points override per family)
        self.method = method  # mean | best: families not named in family_methods
        self.family_methods = dict(family_methods or {})  # family -> method key
        self.combo_rule = combo_rule
        self._measured_combos = list(measured_combos)
        self._obs_by_family: dict[str, dict[str, list[_Obs]]] = {}
        for o in prior_obs:
            self._obs_by_family.setdefault(o.family, {}).setdefault(o.model, []).append(o)
        self._user = user_rows
        self._user_label = user_label
        self._cache: dict[tuple, tuple] = {}

    # -- what is asked
    @property
    def method_label(self) -> str:
        """The method choice in words: "best", "mean", "best; static_width: FLAP"."""
        named = "; ".join(f"{f}: {self._display(f, k)}" for f, k in self.family_methods.items())
        return self.method + (f"; {named}" if named else "")

    def method_for(self, strategy: str) -> str:
        """mean, best, or the key of the method named for this family."""
        return self.family_methods.get(strategy, self.method)

    def _display(self, strategy: str, key: str) -> str:
        for obs in self._obs_by_family.get(strategy, {}).values():
            for o in obs:
                if o.method_key == key:
                    return o.method
        return key

    def methods(self, strategy: str, model_name: Optional[str] = None) -> list[str]:
        """The methods with rows for a family (of one model when given), by name."""
        by_model = self._obs_by_family.get(strategy, {})
        key = normalize_model_name(model_name) if model_name else None
        names = {o.method_key: o.method for m, obs in by_model.items()
                 if key is None or normalize_model_name(m) == key for o in obs}
        return sorted(names.values(), key=str.lower)

    # -- curve selection
    def _user_curve(self, model_name: str, strategy: str) -> Optional[Curve]:
        if not self._user:
            return None
        key = normalize_model_name(model_name)
        own = [r for r in self._user if r.strategy == strategy and r.model is not None
               and normalize_model_name(r.model) == key]
        anym = [r for r in self._user if r.strategy == strategy and r.model is None]
        chosen = own or anym
        if not chosen:
            return None
        cite = f"user quality file {self._user_label}".strip()
        obs = [_Obs(r.model or "any model", strategy, r.sparsity, r.quality_loss, cite, False, None,
                    r.note, "your quality file") for r in chosen]
        return _build_curve(obs, strategy, chosen[0].model or "any model", self.protocol, self.metric,
                            "user", "mean")

    def _by_model(self, strategy: str) -> dict[str, list[_Obs]]:
        """The family's rows by model, narrowed to the method named for it (if any)."""
        by_model = self._obs_by_family.get(strategy, {})
        sel = self.method_for(strategy)
        if sel in (METHOD_MEAN, METHOD_BEST):
            return by_model
        out = {m: [o for o in obs if o.method_key == sel] for m, obs in by_model.items()}
        return {m: obs for m, obs in out.items() if obs}

    def _pick_method(self, obs: list[_Obs], strategy: str) -> tuple[list[_Obs], str]:
        """The rows a model's curve is built from and the method behind them, in words."""
        sel = self.method_for(strategy)
        groups: dict[str, list[_Obs]] = {}
        for o in obs:
            groups.setdefault(o.method_key, []).append(o)
        if sel == METHOD_BEST and len(groups) > 1:
            curves = {k: _build_curve(g, strategy, g[0].model, self.protocol, self.metric,
                                      self.source, self.aggregate) for k, g in groups.items()}
            upto = min(c.max_sparsity for c in curves.values())
            best = min(groups, key=lambda k: (_curve_mean_loss(curves[k], upto), -len(groups[k]),
                                              groups[k][0].method.lower()))
            others = len(groups) - 1
            return groups[best], (f"{groups[best][0].method} (best of {len(groups)} methods: "
                                  f"lowest mean loss over 0–{upto * 100:g}%)" if others else
                                  groups[best][0].method)
        if sel == METHOD_BEST or len(groups) == 1:
            g = next(iter(groups.values()))
            return obs, g[0].method
        if sel != METHOD_MEAN:
            return obs, obs[0].method
        names = sorted({g[0].method for g in groups.values()}, key=str.lower)
        return obs, f"mean of {len(names)} methods ({', '.join(names)})"

    def _model_curve(self, model: str, strategy: str) -> tuple[Curve, str]:
        """One model's own curve for a family under the method choice (built once)."""
        ck = ("model", model, strategy)
        if ck not in self._cache:
            obs, label = self._pick_method(self._by_model(strategy)[model], strategy)
            self._cache[ck] = (_build_curve(obs, strategy, model, self.protocol, self.metric,
                                            self.source, self.aggregate), label)
        return self._cache[ck]

    def _curve(self, model_name: str, strategy: str) -> tuple[Optional[Curve], Optional[str], str]:
        """(curve, the model it is borrowed from or None, the method behind it)."""
        ck = (model_name, strategy)
        if ck in self._cache:
            return self._cache[ck]
        res: tuple
        uc = self._user_curve(model_name, strategy)
        if uc is not None:
            res = (uc, None, "your quality file")
        else:
            by_model = self._by_model(strategy)
            if not by_model:
                res = (None, None, "")
            else:
                key = normalize_model_name(model_name)
                exact = [m for m in by_model if normalize_model_name(m) == key]
                if exact:
                    chosen, borrowed = exact[0], None
                else:
                    qp = _params_of(model_name)
                    chosen = min(by_model, key=lambda m: (
                        _model_distance(model_name, qp, m, by_model[m][0].params_b),
                        -len(by_model[m]), m))
                    borrowed = chosen
                curve, label = self._model_curve(chosen, strategy)
                res = (curve, borrowed, label)
        self._cache[ck] = res
        return res

    def _floor(self, model_name: str, strategy: str, donor: str, s: float):
        """The borrowing rule (:data:`BORROWING_RULE`): the largest loss of a model larger than
        ``model_name``, of the donor's line, from its own rows at ``s`` (or at the largest
        sparsity they reach, when that is below ``s``: losses do not fall as more is removed):
        (loss, model, observations, method, curve, beyond its data) or None."""
        qp = _params_of(model_name)
        if not qp:
            return None
        line = _model_line(normalize_model_name(donor))
        best = None
        for m, obs in self._by_model(strategy).items():
            mp = obs[0].params_b or _params_of(m)
            if not mp or mp <= qp or _model_line(normalize_model_name(m)) != line:
                continue
            curve, label = self._model_curve(m, strategy)
            at = min(s, curve.max_sparsity)
            v, _, behind = curve.evaluate(at)
            if best is None or v > best[0] + 1e-12:
                best = (v, m, behind, label, curve, s > curve.max_sparsity + _EPS)
        return best

    # -- public API
    def estimate(self, model_name: str, strategy: str, sparsity: float) -> QualityEstimate:
        """Quality loss at the ACHIEVED sparsity (share actually removed)."""
        fam = families.get(strategy)  # UserError naming the families
        if fam.is_combo:
            raise UserError(f"{strategy} is a combination: its quality is composed from its "
                            "parts (estimate_combo)")
        s = float(sparsity)
        if not math.isfinite(s) or s < 0 or s > 1:
            raise ValueError(f"sparsity {sparsity!r} outside [0, 1]")
        if strategy == "dense":
            return QualityEstimate(0.0, self.metric, self.source, self.protocol, note="dense: nothing removed")
        if s <= _EPS:
            return QualityEstimate(0.0, self.metric, self.source, self.protocol,
                                   note="nothing removed at this sparsity")
        curve, borrowed, method = self._curve(model_name, strategy)
        if curve is None:
            what = {"accuracy_drop": "accuracy", "ppl_increase": "perplexity"}[self.metric]
            if self.source == "measured":
                note = f"no measured perplexity for {strategy}"
            else:
                note = f"no {self.protocol} {what} data for {strategy}"
                sel = self.method_for(strategy)
                if sel not in (METHOD_MEAN, METHOD_BEST):
                    note = f"no {self.protocol} {what} data for {strategy} by {self._display(strategy, sel)}"
            return QualityEstimate(None, self.metric, "none", self.protocol, note=note)
        value, extrap, behind = curve.evaluate(s)
        notes = []
        floored_by = None
        floor_curve = curve
        n_points, curve_cites = curve.n_points, curve.citations
        if curve.source == "user":
            notes.append(f"from your quality file ({curve.n_points} point{'s' * (curve.n_points != 1)})")
            notes.extend(sorted({o.note for o in behind if o.note}))
        if borrowed:
            floor = self._floor(model_name, strategy, borrowed, s) if curve.source != "user" else None
            if floor is not None and floor[0] > value + 1e-12:
                was = f"{value * 100:.1f}%" + (" extrapolated" if extrap else "")
                at = min(s, floor[4].max_sparsity)
                notes.append(f"quality borrowed from {floor[1]}: {borrowed}'s curve gives {was}, "
                             f"raised to {floor[1]}'s own {floor[0] * 100:.1f}% at "
                             f"{at * 100:.1f}% (a smaller model loses no less than a larger one "
                             "of its line)")
                value, extrap, behind, method = floor[0], floor[5], floor[2], floor[3]
                borrowed = floored_by = floor[1]
                floor_curve = floor[4]
                n_points, curve_cites = floor[4].n_points, floor[4].citations
            else:
                notes.append(f"quality borrowed from {borrowed}")
        if extrap:
            top = floor_curve.max_sparsity if floored_by else curve.max_sparsity
            notes.append(f"extrapolated beyond the largest known sparsity ({top * 100:g}%)"
                         + (": a lower bound" if floored_by else ""))
        secondary = any(o.secondary for o in behind)
        if secondary:
            notes.append("secondary or uncertain source")
        cites = tuple(sorted({o.citation for o in behind if o.citation})) or curve_cites
        return QualityEstimate(
            value=value, metric=self.metric, source=curve.source, protocol=curve.protocol,
            extrapolated=extrap, borrowed_from=borrowed, secondary=secondary, citations=cites,
            n_points=n_points, note="; ".join(notes), method=method, floored_by=floored_by)

    def estimate_combo(self, model_name: str, combo: str, parts, part_achieved) -> QualityEstimate:
        """A combination's quality: the perplexity measured on the real combined model (``pis-tui
        quality``) when the measured rows hold it, else its parts' estimates (each at its
        achieved sparsity alone) composed by :attr:`combo_rule` and flagged ``composed``."""
        key = normalize_model_name(model_name)
        for m, name, mparts, v, ach in self._measured_combos:
            if name == combo and normalize_model_name(m) == key and len(mparts) == len(parts) and \
                    all(a == b and abs(x - y) < 1e-6 for (a, x), (b, y) in zip(mparts, parts)):
                return QualityEstimate(v, self.metric, "measured", self.protocol, citations=(),
                                       n_points=1, method="measured here",
                                       note="perplexity of the real combined model, measured locally")
        ests = [self.estimate(model_name, f, a) for (f, _), a in zip(parts, part_achieved)]
        labels = [f"{f} {a * 100:.1f}%" for (f, _), a in zip(parts, part_achieved)]
        return compose_estimates(ests, labels, self.combo_rule, self.metric, self.protocol)

    def curve_info(self, model_name: str, strategy: str) -> dict:
        """How many points stand behind a curve, whose they are and where they come from."""
        if strategy == "dense":
            return dict(n_points=0, borrowed_from=None, citations=(), protocol=self.protocol,
                        source=self.source, max_sparsity=None, knots=(), method="", methods=())
        curve, borrowed, method = self._curve(model_name, strategy)
        methods = tuple(self.methods(strategy, borrowed or model_name))
        if curve is None:
            return dict(n_points=0, borrowed_from=None, citations=(), protocol=self.protocol,
                        source="none", max_sparsity=None, knots=(), method="", methods=methods)
        return dict(n_points=curve.n_points, borrowed_from=borrowed, citations=curve.citations,
                    protocol=curve.protocol, source=curve.source, max_sparsity=curve.max_sparsity,
                    knots=tuple((k.sparsity, k.loss) for k in curve.knots), method=method,
                    methods=methods)


def parse_method(text: Optional[str], obs: list[_Obs]) -> tuple[str, dict]:
    """``--quality-method``: ``mean``, ``best`` or method names (comma-separated; a name sets
    its family's method, ``mean`` / ``best`` the others'; default mean).  Returns (the others'
    choice, {family: method key}); an unknown name is a UserError listing the known ones."""
    default, named = METHOD_MEAN, {}
    if text is None:
        return default, named
    tokens = [t.strip() for t in str(text).split(",") if t.strip()]
    if not tokens:
        raise UserError(f"--quality-method {text!r} names nothing: give mean, best or a method")
    by_key: dict[str, dict[str, str]] = {}
    for o in obs:
        by_key.setdefault(o.method_key, {})[o.family] = o.method
    for tok in tokens:
        low = tok.lower()
        if low in (METHOD_MEAN, METHOD_BEST):
            default = low
            continue
        k = method_key(tok)
        fams = by_key.get(k)
        if not fams:
            known = sorted({n for d in by_key.values() for n in d.values()}, key=str.lower)
            raise UserError(f"unknown quality method {tok!r} for these priors; choose mean, best or "
                            f"one of {', '.join(known)}")
        for fam in fams:
            if fam in named and named[fam] != k:
                raise UserError(f"--quality-method names two methods of {fam}: "
                                f"{by_key[named[fam]][fam]} and {fams[fam]}")
            named[fam] = k
    return default, named


def build_quality_model(protocol: str = "lora", user_csv=None, measured_rows=None,
                        metric: Optional[str] = None, aggregate: str = "mean",
                        method: Optional[str] = None,
                        combo_rule: str = "multiplicative") -> QualityModel:
    """The quality source for one run.

    * ``protocol``: ``lora`` (the study's; default), ``training-free`` or ``trained``.
    * ``user_csv``: a path (or already-loaded ``UserQualityRow`` list) whose points
      override the priors per family.
    * ``measured_rows``: perplexity measured locally — rows of (model, strategy,
      sparsity, ppl_increase) as tuples, dicts or objects; then the metric is
      ``ppl_increase`` and only these rows are used (a combination's row, strategy
      ``first@s+second@s``, is the real combined model's).
    * ``metric``: ``accuracy_drop`` (default) or ``ppl_increase`` (literature
      perplexity priors); forced to ``ppl_increase`` by ``measured_rows``.
    * ``aggregate``: how the rows at one sparsity make a knot: ``mean`` (default),
      ``median`` or ``lowest``.
    * ``method``: ``mean`` (default: the family mean), ``best`` (the one method whose curve
      is best for the model: :data:`METHOD_RULE`) or method names (:func:`parse_method`).
    * ``combo_rule``: how a combination's loss is composed from its parts' (:data:`COMBO_RULES`).
    """
    if aggregate not in AGGREGATES:
        raise UserError(f"unknown aggregate {aggregate!r}; choose from {', '.join(AGGREGATES)}")
    if protocol not in PROTOCOLS:
        raise UserError(f"unknown protocol {protocol!r}; choose from lora, training-free")
    if combo_rule not in COMBO_RULES:
        raise UserError(f"unknown combination rule {combo_rule!r}; choose from {', '.join(COMBO_RULES)}")
    if measured_rows is not None:
        if user_csv is not None:
            raise UserError("--quality takes a file or 'measured', not both")
        if metric not in (None, "ppl_increase"):
            raise UserError("measured quality is a perplexity increase (ppl_increase), not an accuracy drop")
        if method is not None and method.strip().lower() not in (METHOD_MEAN, METHOD_BEST):
            raise UserError(f"--quality-method {method}: a method of the literature priors; measured "
                            "quality is one method per family (pis-tui quality's), give mean or best")
        obs, combos = _measured_obs(measured_rows)
        return QualityModel("training-free", "ppl_increase", "measured", obs, [], "", aggregate,
                            combo_rule=combo_rule, measured_combos=combos)
    metric = metric or "accuracy_drop"
    if metric not in METRICS:
        raise UserError(f"unknown quality metric {metric!r}; choose from {', '.join(METRICS)}")
    obs = [_Obs(r.model, r.family, r.sparsity, r.quality_loss, r.citation, r.secondary or r.uncertain,
                r.params_b, r.note, method_name(r.method))
           for r in load_priors()
           if r.on_curve and r.protocol == protocol and r.metric == metric and r.quality_loss is not None]
    default, named = parse_method(method, obs)
    user_rows: list[UserQualityRow] = []
    label = ""
    if user_csv is not None:
        if metric != "accuracy_drop":
            raise UserError("a quality file gives accuracy drops; it cannot be used with the ppl_increase metric")
        if isinstance(user_csv, (str, Path)):
            user_rows = load_user_csv(user_csv)
            label = Path(user_csv).name
        else:
            user_rows = list(user_csv)
    return QualityModel(protocol, metric, "prior", obs, user_rows, label, aggregate, default, named,
                        combo_rule)
