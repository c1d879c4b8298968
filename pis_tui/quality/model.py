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
the measured rows are used (no priors, no user file).  Rows measured on a quality oracle
(dynamic depth, dynamic sparse attention) rank below measured ones of the same point and are
flagged ``oracle``: an upper bound on quality (:data:`~pis_tui.quality.measured.ORACLE_RULE`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

from .. import families
from ..errors import UserError
from .estimate import QualityEstimate
from .compose import COMBO_RULES, compose_estimates
from .curves import AGGREGATES, EPS, Curve, Obs, build_curve, curve_mean_loss
from .measured import ORACLE_METHOD, measured_obs
from .priors import (METRICS, PROTOCOLS, UserQualityRow, load_priors, load_user_csv, method_key,
                     method_name, model_distance, model_line, normalize_model_name, params_of)


# --------------------------------------------------------------------------- methods


# --------------------------------------------------------------------------- priors


# --------------------------------------------------------------------------- model names


# --------------------------------------------------------------------------- curves


# --------------------------------------------------------------------------- user file


# --------------------------------------------------------------------------- the rules

METHOD_MEAN, METHOD_BEST = "mean", "best"
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


# --------------------------------------------------------------------------- the model


class QualityModel:
    """Quality estimates for any (model, strategy, achieved sparsity).  Build it with
    :func:`build_quality_model`."""

    def __init__(self, protocol: str, metric: str, source: str, prior_obs: list[Obs],
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
        self._obs_by_family: dict[str, dict[str, list[Obs]]] = {}
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
        obs = [Obs(r.model or "any model", strategy, r.sparsity, r.quality_loss, cite, False, None,
                    r.note, "your quality file") for r in chosen]
        return build_curve(obs, strategy, chosen[0].model or "any model", self.protocol, self.metric,
                            "user", "mean")

    def _by_model(self, strategy: str) -> dict[str, list[Obs]]:
        """The family's rows by model, narrowed to the method named for it (if any)."""
        by_model = self._obs_by_family.get(strategy, {})
        sel = self.method_for(strategy)
        if sel in (METHOD_MEAN, METHOD_BEST):
            return by_model
        out = {m: [o for o in obs if o.method_key == sel] for m, obs in by_model.items()}
        return {m: obs for m, obs in out.items() if obs}

    def _pick_method(self, obs: list[Obs], strategy: str) -> tuple[list[Obs], str]:
        """The rows a model's curve is built from and the method behind them, in words."""
        sel = self.method_for(strategy)
        groups: dict[str, list[Obs]] = {}
        for o in obs:
            groups.setdefault(o.method_key, []).append(o)
        if sel == METHOD_BEST and len(groups) > 1:
            curves = {k: build_curve(g, strategy, g[0].model, self.protocol, self.metric,
                                      self.source, self.aggregate) for k, g in groups.items()}
            upto = min(c.max_sparsity for c in curves.values())
            best = min(groups, key=lambda k: (curve_mean_loss(curves[k], upto), -len(groups[k]),
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
            self._cache[ck] = (build_curve(obs, strategy, model, self.protocol, self.metric,
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
                    qp = params_of(model_name)
                    chosen = min(by_model, key=lambda m: (
                        model_distance(model_name, qp, m, by_model[m][0].params_b),
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
        qp = params_of(model_name)
        if not qp:
            return None
        line = model_line(normalize_model_name(donor))
        best = None
        for m, obs in self._by_model(strategy).items():
            mp = obs[0].params_b or params_of(m)
            if not mp or mp <= qp or model_line(normalize_model_name(m)) != line:
                continue
            curve, label = self._model_curve(m, strategy)
            at = min(s, curve.max_sparsity)
            v, _, behind = curve.evaluate(at)
            if best is None or v > best[0] + 1e-12:
                best = (v, m, behind, label, curve, s > curve.max_sparsity + EPS)
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
        if s <= EPS:
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
        oracle = any(o.oracle for o in behind)
        if oracle:
            notes.append("measured on an oracle (every update computed, then skipped): an upper "
                         "bound on quality")
        cites = tuple(sorted({o.citation for o in behind if o.citation})) or curve_cites
        return QualityEstimate(
            value=value, metric=self.metric, source=curve.source, protocol=curve.protocol,
            extrapolated=extrap, borrowed_from=borrowed, secondary=secondary, citations=cites,
            n_points=n_points, note="; ".join(notes), method=method, floored_by=floored_by,
            oracle=oracle)

    def estimate_combo(self, model_name: str, combo: str, parts, part_achieved) -> QualityEstimate:
        """A combination's quality: the perplexity measured on the real combined model (``pis-tui
        quality``) when the measured rows hold it, else its parts' estimates (each at its
        achieved sparsity alone) composed by :attr:`combo_rule` and flagged ``composed``."""
        key = normalize_model_name(model_name)
        for m, name, mparts, v, ach, oracle in self._measured_combos:
            if name == combo and normalize_model_name(m) == key and len(mparts) == len(parts) and \
                    all(a == b and abs(x - y) < 1e-6 for (a, x), (b, y) in zip(mparts, parts)):
                note = "perplexity of the real combined model, measured locally"
                if oracle:
                    note += (" with an oracle part (every update computed, then skipped): an "
                             "upper bound on quality")
                return QualityEstimate(v, self.metric, "measured", self.protocol, citations=(),
                                       n_points=1, method=ORACLE_METHOD if oracle else "measured here",
                                       note=note, oracle=oracle)
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


def parse_method(text: Optional[str], obs: list[Obs]) -> tuple[str, dict]:
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
    seen: set = set()
    for tok in tokens:
        low = tok.lower()
        if low in seen:
            raise UserError(f"--quality-method names {tok!r} twice: give each method once")
        seen.add(low)
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
        obs, combos = measured_obs(measured_rows)
        return QualityModel("training-free", "ppl_increase", "measured", obs, [], "", aggregate,
                            combo_rule=combo_rule, measured_combos=combos)
    metric = metric or "accuracy_drop"
    if metric not in METRICS:
        raise UserError(f"unknown quality metric {metric!r}; choose from {', '.join(METRICS)}")
    obs = [Obs(r.model, r.family, r.sparsity, r.quality_loss, r.citation, r.secondary or r.uncertain,
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
