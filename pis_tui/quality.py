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
   sources, reported at that sparsity; ``aggregate="median"`` or ``"best"`` to take
   the median or the best method instead); losses below zero (a pruned model scoring above
   dense) count as zero.  The point (0, 0) is added: nothing removed, nothing lost.
4. **Monotone fit.**  The knots are made non-decreasing by isotonic regression (pool
   adjacent violators, each knot weighted by its number of rows), then interpolated
   piecewise-linearly: the curve never decreases.
5. **Beyond the data.**  Past the largest known sparsity the last segment's slope is
   continued (linear extrapolation, capped at a loss of 1.0) and the estimate is flagged
   ``extrapolated=True``: more pessimistic than a flat line, and shown as unsure.

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
        if len(ks) >= 2:
            prev = ks[-2]
            slope = (last.loss - prev.loss) / (last.sparsity - prev.sparsity)
        else:
            slope = 0.0
        v = min(1.0, max(last.loss, last.loss + slope * (s - last.sparsity)))
        return v, True, (prev.obs if len(ks) >= 2 else ()) + last.obs


AGGREGATES = ("mean", "median", "best")


def _aggregate(group: list[_Obs], how: str) -> tuple[float, tuple]:
    losses = sorted(max(0.0, o.loss) for o in group)
    if how == "best":
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


# --------------------------------------------------------------------------- the model

def _measured_obs(rows) -> list[_Obs]:
    out = []
    for r in rows:
        if isinstance(r, dict):
            m, st, sp, v = r["model"], r["strategy"], r["sparsity"], r["ppl_increase"]
        elif isinstance(r, (tuple, list)):
            m, st, sp, v = r[:4]
        else:
            m, st, sp = r.model, r.strategy, getattr(r, "achieved_sparsity", None) or r.sparsity
            v = r.ppl_increase
        if not families.is_family(st):
            raise UserError(f"measured quality: unknown strategy {st!r}")
        if v is None or not math.isfinite(float(v)):
            continue
        out.append(_Obs(str(m), st, float(sp), float(v), "", False, model_params_b(str(m)),
                        "perplexity measured locally"))
    return out


class QualityModel:
    """Quality estimates for any (model, strategy, achieved sparsity).  Build it with
    :func:`build_quality_model`."""

    def __init__(self, protocol: str, metric: str, source: str, prior_obs: list[_Obs],
                 user_rows: list[UserQualityRow], user_label: str = "", aggregate: str = "mean"):
        self.protocol = protocol
        self.aggregate = aggregate
        self.metric = metric
        self.source = source  # prior | measured (user points override per family)
        self._obs_by_family: dict[str, dict[str, list[_Obs]]] = {}
        for o in prior_obs:
            self._obs_by_family.setdefault(o.family, {}).setdefault(o.model, []).append(o)
        self._user = user_rows
        self._user_label = user_label
        self._cache: dict[tuple, tuple] = {}

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
                    r.note) for r in chosen]
        return _build_curve(obs, strategy, chosen[0].model or "any model", self.protocol, self.metric,
                            "user", "mean")

    def _curve(self, model_name: str, strategy: str) -> tuple[Optional[Curve], Optional[str]]:
        ck = (model_name, strategy)
        if ck in self._cache:
            return self._cache[ck]
        res: tuple[Optional[Curve], Optional[str]]
        uc = self._user_curve(model_name, strategy)
        if uc is not None:
            res = (uc, None)
        else:
            by_model = self._obs_by_family.get(strategy, {})
            if not by_model:
                res = (None, None)
            else:
                key = normalize_model_name(model_name)
                exact = [m for m in by_model if normalize_model_name(m) == key]
                if exact:
                    chosen, borrowed = exact[0], None
                else:
                    qp = model_params_b(model_name)
                    chosen = min(by_model, key=lambda m: (
                        _model_distance(model_name, qp, m, by_model[m][0].params_b),
                        -len(by_model[m]), m))
                    borrowed = chosen
                curve = _build_curve(by_model[chosen], strategy, chosen, self.protocol, self.metric,
                                     self.source, self.aggregate)
                res = (curve, borrowed)
        self._cache[ck] = res
        return res

    # -- public API
    def estimate(self, model_name: str, strategy: str, sparsity: float) -> QualityEstimate:
        """Quality loss at the ACHIEVED sparsity (share actually removed)."""
        families.get(strategy)  # UserError naming the families
        s = float(sparsity)
        if not math.isfinite(s) or s < 0 or s > 1:
            raise ValueError(f"sparsity {sparsity!r} outside [0, 1]")
        if strategy == "dense":
            return QualityEstimate(0.0, self.metric, self.source, self.protocol, note="dense: nothing removed")
        if s <= _EPS:
            return QualityEstimate(0.0, self.metric, self.source, self.protocol,
                                   note="nothing removed at this sparsity")
        curve, borrowed = self._curve(model_name, strategy)
        if curve is None:
            what = {"accuracy_drop": "accuracy", "ppl_increase": "perplexity"}[self.metric]
            if self.source == "measured":
                note = f"no measured perplexity for {strategy}"
            else:
                note = f"no {self.protocol} {what} data for {strategy}"
            return QualityEstimate(None, self.metric, "none", self.protocol, note=note)
        value, extrap, behind = curve.evaluate(s)
        notes = []
        if curve.source == "user":
            notes.append(f"from your quality file ({curve.n_points} point{'s' * (curve.n_points != 1)})")
            notes.extend(sorted({o.note for o in behind if o.note}))
        if borrowed:
            notes.append(f"quality borrowed from {borrowed}")
        if extrap:
            notes.append(f"extrapolated beyond the largest known sparsity "
                         f"({curve.max_sparsity * 100:g}%)")
        secondary = any(o.secondary for o in behind)
        if secondary:
            notes.append("secondary or uncertain source")
        cites = tuple(sorted({o.citation for o in behind if o.citation})) or curve.citations
        return QualityEstimate(
            value=value, metric=self.metric, source=curve.source, protocol=curve.protocol,
            extrapolated=extrap, borrowed_from=borrowed, secondary=secondary, citations=cites,
            n_points=curve.n_points, note="; ".join(notes))

    def curve_info(self, model_name: str, strategy: str) -> dict:
        """How many points stand behind a curve, whose they are and where they come from."""
        if strategy == "dense":
            return dict(n_points=0, borrowed_from=None, citations=(), protocol=self.protocol,
                        source=self.source, max_sparsity=None, knots=())
        curve, borrowed = self._curve(model_name, strategy)
        if curve is None:
            return dict(n_points=0, borrowed_from=None, citations=(), protocol=self.protocol,
                        source="none", max_sparsity=None, knots=())
        return dict(n_points=curve.n_points, borrowed_from=borrowed, citations=curve.citations,
                    protocol=curve.protocol, source=curve.source, max_sparsity=curve.max_sparsity,
                    knots=tuple((k.sparsity, k.loss) for k in curve.knots))


def build_quality_model(protocol: str = "lora", user_csv=None, measured_rows=None,
                        metric: Optional[str] = None, aggregate: str = "mean") -> QualityModel:
    """The quality source for one run.

    * ``protocol``: ``lora`` (the study's; default), ``training-free`` or ``trained``.
    * ``user_csv``: a path (or already-loaded ``UserQualityRow`` list) whose points
      override the priors per family.
    * ``measured_rows``: perplexity measured locally — rows of (model, strategy,
      sparsity, ppl_increase) as tuples, dicts or objects; then the metric is
      ``ppl_increase`` and only these rows are used.
    * ``metric``: ``accuracy_drop`` (default) or ``ppl_increase`` (literature
      perplexity priors); forced to ``ppl_increase`` by ``measured_rows``.
    * ``aggregate``: how the methods reported at one sparsity make a knot: ``mean``
      (default: a typical published method), ``median``, or ``best`` (the best
      published method; optimistic, often the citing paper's own).
    """
    if aggregate not in AGGREGATES:
        raise UserError(f"unknown aggregate {aggregate!r}; choose from {', '.join(AGGREGATES)}")
    if protocol not in PROTOCOLS:
        raise UserError(f"unknown protocol {protocol!r}; choose from lora, training-free")
    if measured_rows is not None:
        if user_csv is not None:
            raise UserError("--quality takes a file or 'measured', not both")
        if metric not in (None, "ppl_increase"):
            raise UserError("measured quality is a perplexity increase (ppl_increase), not an accuracy drop")
        obs = _measured_obs(measured_rows)
        return QualityModel("training-free", "ppl_increase", "measured", obs, [], "", aggregate)
    metric = metric or "accuracy_drop"
    if metric not in METRICS:
        raise UserError(f"unknown quality metric {metric!r}; choose from {', '.join(METRICS)}")
    obs = [_Obs(r.model, r.family, r.sparsity, r.quality_loss, r.citation, r.secondary or r.uncertain,
                r.params_b, r.note)
           for r in load_priors()
           if r.on_curve and r.protocol == protocol and r.metric == metric and r.quality_loss is not None]
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
    return QualityModel(protocol, metric, "prior", obs, user_rows, label, aggregate)
