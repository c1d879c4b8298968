"""The deployment planner: one pruned model for a workload, across both phases.

The per-phase views (``sweep``, ``recommend``) pick a strategy per phase; a deployment serves
both phases with the same weights.  :func:`plan` prices every candidate (every family ×
sparsity, dense included) end to end for a :class:`~pis_tui.model.workload.Workload` and
:func:`recommend_plan` ranks them by an objective within a quality budget and the targets.

Serving model (:data:`SERVING_MODEL`): static batching.  The ``B`` requests of a class arrive
together; their prompts are prefilled as one batch, then decoded together, one step per output
token, step ``j`` reading a context of ``P + j`` tokens.  So, for prompts of ``P`` tokens and
answers of ``O``:

* TTFT(B)  = the prefill of ``B`` prompts of ``P`` tokens;
* TPOT(B)  = the mean decode step T(B, c) over c = P … P+O−1 (:func:`mean_step`: exact, the
  mean of the endpoints, when T is affine in c — attention and KV reads grow linearly, GEMMs
  do not change — checked at the second, middle and last-but-one contexts; otherwise the
  trapezoidal mean over
  :data:`SAMPLE_POINTS` evenly spaced contexts, which the result lists);
* end-to-end latency = TTFT + O × TPOT (every request of the batch ends with it);
* throughput = B·O / end-to-end (output tokens a second of the batch, prefill included) at the
  largest batch that fits and meets the targets; B / TPOT (the decode phase alone) beside it.

Memory (:mod:`pis_tui.pricing.memory`): the pruned model's weights and KV cache per token from its
own op list, activations by the one-op rule, against ``memory_gb`` × 0.90 (decimal GB).  A
sequence needs max(KV of P tokens + prefill activations, KV of P+O tokens + decode
activations); the most sequences that fit is the usable memory less the weights, over that.
Largest batch (:data:`BATCH_RULE`): the memory limit if it meets the targets, else the edge
between whole batches that meet them and those that do not, found between 1 and the limit (TTFT
and TPOT do not fall as the batch grows).

A mix of classes: each class is served in batches of its own; its share weights the mean
end-to-end latency, and the mix's throughput is Σ shareᵢ·Oᵢ / Σ shareᵢ·E2Eᵢ/Bᵢ (the output
tokens of a typical request over the batch time it takes).  Targets hold for every class.

Pricing goes through :func:`pis_tui.decide.sweep.make_estimator` (or any object with ``estimate``
and, optionally, ``price``: an engine or an interval-carrying estimator can be
passed as ``estimator`` later); op lists are built once per (strategy, phase, batch, length)
and every op is priced once per kernel key in a plan (an op's price does not depend on the
strategy that emits it).  No torch, no transformers.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

from ..pricing import memory, sources
from .sweep import prepare, provenance, sweep_grid
from ..errors import UserError
from ..pricing import uncertainty
from ..pricing.uncertainty import flag_words as point_flag_words
from .compare import Comparer, Pair, independent_pair, pair_from
from .frontier import _gave_up, beats_dense, frontier, rank_key, select
from .points import Point
from ..pricing.estimates import PricedOp, strategy_key
from ..quality.estimate import QualityEstimate
from ..model.precision import KernelShapeError
from ..model.scenario import Scenario
from ..families.strategy import Strategy
from ..families.phase_ops import build_phase_ops
from ..model.workload import RequestClass, Targets, Workload

OBJECTIVES = ("latency", "throughput")
#: contexts the decode step is priced at when it is not affine in the context
SAMPLE_POINTS = 9
#: relative distance from the chord under which the step counts as affine in the context
AFFINE_TOL = 1e-9

SERVING_MODEL = (
    "static batching: the requests of a class arrive together; their prompts are prefilled as "
    "one batch (TTFT = that prefill) and decoded together, one step per output token, step j "
    "reading a context of P + j tokens; end-to-end latency = TTFT + O × TPOT; the classes of a "
    "mix are served in batches of their own")
TPOT_RULE = (
    f"mean of the decode step over contexts P … P+O−1: the mean of the endpoints (exact) when "
    f"the step is affine in the context (checked at the second, middle and last-but-one "
    f"contexts), else the trapezoidal "
    f"mean over {SAMPLE_POINTS} evenly spaced contexts (listed); every context when O ≤ "
    f"{SAMPLE_POINTS}")
BATCH_RULE = (
    "the largest batch that fits and meets the targets: the memory limit if it meets them, else "
    "the edge between whole batches that meet them and batches that do not, searched between 1 "
    "and the memory limit: each target's own edge (TTFT's, then TPOT's below it), found where "
    "its slack (figure / target - 1) crosses zero on the line through the bracket, bisecting "
    "when a try does not halve it; TTFT and TPOT taken not to fall as the batch grows)")
THROUGHPUT_RULE = (
    "output tokens a second at that batch: B × O / (TTFT + O × TPOT), prefill included "
    "(decode_tok_s: B / TPOT, the decode phase alone); a mix: Σ share·O / Σ share·E2E/B")
MEMORY_RULE = (
    f"weights + B × max(KV of P tokens + prefill activations, KV of P+O tokens + decode "
    f"activations) ≤ memory_gb × 1e9 × {memory.USABLE:.2f} (decimal GB; "
    f"{1 - memory.USABLE:.0%} reserved for the CUDA context, the framework and "
    "fragmentation); weights and the KV cache per token of the pruned model from its op list "
    "(16-bit KV under 8-bit weights); activations: the largest working set of one op of a "
    "sequence's prefill or decode step (inputs and outputs, weights and KV cache aside)")


# --------------------------------------------------------------------------- the decode step

@dataclass(frozen=True)
class StepMean:
    """The decode step averaged over an answer: ``ms``, how (``every`` context, ``affine``:
    the endpoints' mean, exact, or ``sampled``: trapezoid) and the contexts priced."""

    ms: float
    method: str
    contexts: tuple[int, ...]


def mean_step(step: Callable[[int], float], prompt_len: int, output_len: int,
              points: int = SAMPLE_POINTS) -> StepMean:
    """Mean of ``step(c)`` over the contexts c = P … P+O−1 an answer of O tokens decodes at."""
    c0, c1 = prompt_len, prompt_len + output_len - 1
    if output_len <= points:
        cs = tuple(range(c0, c1 + 1))
        return StepMean(sum(step(c) for c in cs) / len(cs), "every", cs)
    t0, t1 = step(c0), step(c1)
    # on the chord at the second, the middle and the last-but-one context: a kink (the max of
    # two affine costs) shows at the middle, a step (a cost that changes every block of
    # tokens) next to an end
    checks = (c0 + 1, c0 + (c1 - c0) // 2, c1 - 1)
    scale = max(abs(t0), abs(t1), 1e-300)
    if all(abs(step(c) - (t0 + (t1 - t0) * (c - c0) / (c1 - c0))) <= AFFINE_TOL * scale for c in checks):
        # the mean of a + b·c over whole c from c0 to c1 is a + b·(c0 + c1)/2: exact
        return StepMean((t0 + t1) / 2.0, "affine", (c0, *checks, c1))
    cs = sorted({c0 + round(i * (c1 - c0) / (points - 1)) for i in range(points)})
    ts = [step(c) for c in cs]
    area = sum((cs[i + 1] - cs[i]) * (ts[i] + ts[i + 1]) / 2.0 for i in range(len(cs) - 1))
    return StepMean(area / (c1 - c0), "sampled", tuple(cs))


# --------------------------------------------------------------------------- pricing

class _Pricer:
    """Phase estimates for one plan, each op list built once and each op priced once."""

    def __init__(self, spec, dtype: str, estimator, engine: str = "eager", tp: int = 1,
                 routing: str = "balanced", precision: str = ""):
        self.spec, self.dtype, self.engine, self.tp = spec, dtype, engine, tp
        self.routing, self.precision = routing, precision
        self.est = estimator
        self._ops: dict = {}
        self._estimates: dict = {}
        price = getattr(estimator, "price", None)
        if callable(price):
            # a copy, so the caller's estimator is left as it was; its estimate() calls
            # self.price, which now finds the memo first
            self.est = copy.copy(estimator)
            memo: dict = {}

            def cached(op, family="dense", phase=None, arch=""):
                # the kernels an op runs depend on its name, family, phase and architecture
                # (the engine), so the memo does too
                k = (op.key(), op.name, family, phase, arch)
                hit = memo.get(k)
                if hit is None:
                    hit = memo[k] = price(op, family, phase, arch)
                if hit.op is op:
                    return hit
                return PricedOp(op, hit.ms_per_call, hit.source, hit.note, hit.uncertainty,
                                hit.loaded, hit.kernels)

            self.est.price = cached
            self.priced_kernels = memo

    def ops(self, strategy: Strategy, phase: str, batch: int, length: int, tokens: int = 1):
        """The op list of ``phase`` at ``batch`` and a prompt (prefill) or context (decode)
        of ``length`` tokens; ``tokens``: a decode forward's tokens a sequence (a speculative
        verification's γ + 1)."""
        key = (strategy, phase, batch, length, tokens)
        po = self._ops.get(key)
        if po is None:
            if phase == "prefill":
                scen = Scenario(batch, length, 1, length, self.dtype, self.engine, tp=self.tp,
                                routing=self.routing, precision=self.precision)
            else:
                scen = Scenario(1, length, batch, length, self.dtype, self.engine, tp=self.tp,
                                routing=self.routing, precision=self.precision,
                                decode_tokens=tokens)
            po = self._ops[key] = build_phase_ops(self.spec, strategy, scen, phase)
        return po

    def estimate(self, strategy: Strategy, phase: str, batch: int, length: int, tokens: int = 1):
        key = (strategy, phase, batch, length, tokens)
        e = self._estimates.get(key)
        if e is None:
            e = self._estimates[key] = self.est.estimate(self.ops(strategy, phase, batch, length,
                                                                  tokens))
        return e


# --------------------------------------------------------------------------- results

@dataclass(frozen=True)
class Served:
    """One request class served at one batch by one candidate."""

    batch: int
    ttft_ms: float
    tpot_ms: float
    tpot_method: str
    tpot_contexts: tuple[int, ...]
    e2e_ms: float
    memory_bytes: float  # weights + batch × the per-sequence memory
    fits: bool
    misses: tuple[str, ...]  # the targets missed, in words
    timing_source: str
    output_len: int
    #: tensor parallelism: the time one rank spends in collectives (its all-reduces and the
    #: logits' all-gather) in the batch's prefill and in the mean decode step (0 at tp 1)
    ttft_collectives_ms: float = 0.0
    tpot_collectives_ms: float = 0.0

    @property
    def ok(self) -> bool:
        return self.fits and not self.misses

    @property
    def throughput_tok_s(self) -> float:
        """Output tokens a second of the batch, its prefill included."""
        return self.batch * self.output_len / self.e2e_ms * 1e3

    @property
    def decode_tok_s(self) -> float:
        """Output tokens a second of the decode phase alone (B / TPOT)."""
        return self.batch / self.tpot_ms * 1e3


@dataclass(frozen=True)
class ClassPlan:
    """A candidate serving one request class: at the class's concurrency, and at the largest
    batch that fits and meets the targets."""

    cls: RequestClass
    share: float
    activation_bytes: dict  # {prefill, decode}: per sequence
    per_sequence_bytes: float
    max_sequences: int  # memory alone
    at_concurrency: Served
    at_max_batch: Optional[Served]
    why_no_batch: str = ""
    at_one: Optional[Served] = None  # batch 1, when not even it meets the targets


@dataclass(frozen=True)
class Speculation:
    """A speculative candidate's draft and what it rests on (:mod:`pis_tui.decide.speculative`)."""

    draft: str  # the draft in words ("static_depth 50%")
    draft_key: tuple  # the draft strategy's key
    gamma: int  # drafted tokens per verification (the best of the grid tried)
    acceptance: object  # pis_tui.quality.acceptance.AcceptanceEstimate
    shares_weights: bool  # a layer-skipping draft: the dense model's own weights
    draft_weights_bytes: float  # its own weights (0 when shared)
    draft_kv_bytes_per_token: int
    tokens_per_iteration: float  # E[X] at α
    #: (γ, end-to-end ms at the workload's concurrency) of every γ tried
    gammas: tuple = ()
    #: the workload's main class at its concurrency: the gain over dense at α's range
    gain_range: tuple = ()
    #: the smallest batch (powers of two up to the memory limit) at which speculation is no
    #: faster than the dense model (None: it pays up to the limit)
    breakeven_batch: Optional[int] = None
    #: per batch tried: (batch, speculative ms, dense ms, the best γ there): the dense decode
    #: against the speculative decode plus a draft's own prefill (the shared prefill left out)
    by_batch: tuple = ()
    #: the draft (a Strategy), for pricing its steps again (the interval's timing σ)
    strategy: object = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Candidate:
    """One pruned model (a family at a sparsity, or dense) planned for the workload."""

    strategy: str
    sparsity: float
    achieved_sparsity: float
    quality: QualityEstimate
    weights_bytes: float
    kv_bytes_per_token: int
    classes: tuple[ClassPlan, ...]
    timing_source: str
    notes: tuple[str, ...] = ()
    #: a combination: ((family, asked sparsity), ...) of its parts and each part's achieved
    parts: tuple = ()
    part_achieved: tuple = ()
    #: the fewest GPUs of this kind that hold it at the workload's concurrency (a tensor-
    #: parallel degree, :func:`pis_tui.pricing.memory.gpus_needed`; None: more than a node's;
    #: 0: not computed, a plan already split over ``--tp`` GPUs)
    gpus_needed: Optional[int] = 0
    #: self-speculative decoding (strategy ``speculative``): the dense model served with a
    #: pruned draft of itself (:class:`Speculation`); None for a pruned model
    speculation: Optional["Speculation"] = None

    @property
    def key(self) -> tuple:
        if self.speculation is not None:
            return ("speculative", self.speculation.draft_key, self.speculation.gamma)
        return strategy_key(self.strategy, self.sparsity, self.parts)

    def _mean(self, attr: str) -> float:
        return sum(c.share * getattr(c.at_concurrency, attr) for c in self.classes)

    @property
    def ttft_ms(self) -> float:
        return self._mean("ttft_ms")

    @property
    def tpot_ms(self) -> float:
        return self._mean("tpot_ms")

    @property
    def e2e_ms(self) -> float:
        """End-to-end latency of a request at the workload's concurrency (mean over the mix)."""
        return self._mean("e2e_ms")

    @property
    def tpot_collectives_ms(self) -> float:
        """Tensor parallelism: one rank's collectives in the mean decode step (mean over the mix)."""
        return self._mean("tpot_collectives_ms")

    @property
    def ttft_collectives_ms(self) -> float:
        return self._mean("ttft_collectives_ms")

    def at_max_batch(self, attr: str) -> Optional[float]:
        """A share-weighted figure at each class's largest good batch (None: a class has none)."""
        if any(c.at_max_batch is None for c in self.classes):
            return None
        return sum(c.share * getattr(c.at_max_batch, attr) for c in self.classes)

    @property
    def throughput_tok_s(self) -> Optional[float]:
        """Output tokens a second at each class's largest good batch (None: a class has none)."""
        if any(c.at_max_batch is None for c in self.classes):
            return None
        tokens = sum(c.share * c.cls.output_len for c in self.classes)
        busy_ms = sum(c.share * c.at_max_batch.e2e_ms / c.at_max_batch.batch for c in self.classes)
        return tokens / busy_ms * 1e3

    @property
    def max_sequences(self) -> int:
        """The main class's memory limit (the fewest over a mix's classes)."""
        return min(c.max_sequences for c in self.classes)

    def problems(self, objective: str) -> list[tuple[str, str]]:
        """Why this candidate cannot serve the workload under ``objective``, quality aside:
        (``memory`` or ``targets``, in words) pairs."""
        out = []
        for c in self.classes:
            name = f" ({c.cls.name})" if len(self.classes) > 1 else ""
            if objective == "latency":
                s = c.at_concurrency
                if not s.fits:
                    out.append(("memory", f"{c.cls.concurrency} sequences do not fit{name}: at "
                                          f"most {c.max_sequences} do"))
                out += [("targets", m + name) for m in s.misses]
            elif c.at_max_batch is None:
                out.append(("memory" if c.max_sequences <= 0 else "targets", c.why_no_batch + name))
        return out


@dataclass
class PlanResult:
    spec: object
    device: object
    workload: Workload
    dtype: str
    candidates: list[Candidate]
    usable_bytes: float
    engine: str = "eager"
    quality_protocol: str = "lora"
    quality_metric: str = "accuracy_drop"
    warnings: list = field(default_factory=list)
    provenance: dict = field(default_factory=dict)
    elapsed_s: float = 0.0
    priced_kernels: int = 0
    #: tensor parallelism: the candidates are served over this many GPUs; their timings, weights,
    #: KV cache and sequences that fit are one rank's (one GPU's)
    tp: int = 1
    #: the served precision (a quantized format's name, "" unquantized): every candidate is
    #: served at it, its weights counted at it, its quality composed with it
    precision: str = ""
    precision_effect: dict = field(default_factory=dict)
    #: the speculative candidates asked (None: none) and the drafts with no α figure (why)
    speculative: Optional[SpecOptions] = None
    spec_skipped: list = field(default_factory=list)

    @property
    def dense(self) -> Candidate:
        return self.candidates[0]

    def candidate(self, strategy: str, sparsity: float, parts: tuple = ()) -> Candidate:
        for c in self.candidates:
            if c.strategy == strategy and abs(c.sparsity - sparsity) < 1e-9 and c.parts == tuple(parts):
                return c
        raise KeyError((strategy, sparsity, parts))


@dataclass(frozen=True)
class PlanRecommendation:
    objective: str
    budget: float
    metric: str
    best: Optional[Candidate]
    runner_up: Optional[Candidate]
    reason: str
    ranked: tuple[Candidate, ...]  # every candidate that may serve, best first
    excluded: dict  # candidate key -> why it may not (in words)
    frontier: tuple[Candidate, ...]  # quality loss against the objective's gain, ranked ones
    status_of: dict = field(default_factory=dict)  # candidate key -> a short status
    #: candidate key -> its Point under the objective: the gain over dense with its interval,
    #: ceiling and flags (the same rule as recommend's)
    points: dict = field(default_factory=dict)
    #: the candidates the recommendation passed over that are faster, each with its pair
    passed_over: tuple = ()

    def why_not(self, c: Candidate) -> str:
        return self.excluded.get(c.key, "")

    def status(self, c: Candidate) -> str:
        """A word or two: recommended, runner-up, ok, over budget, no quality, too big,
        misses targets."""
        if self.best is not None and c.key == self.best.key:
            return "recommended"
        if self.runner_up is not None and c.key == self.runner_up.key:
            return "runner-up"
        return self.status_of.get(c.key, "ok")


# --------------------------------------------------------------------------- planning

def plan(model, gpu, workload: Workload, *, strategies: Optional[Iterable[str]] = None,
         sparsities: Optional[Iterable[float]] = None, granularity: str = "layer", align: int = 128,
         dtype: Optional[str] = None, quality=None, cache=None, estimator=None,
         combo_sparsities: Optional[Iterable[float]] = None, engine: str = "eager",
         tp: int = 1, routing: str = "balanced", precision: str = "",
         speculative: Optional[SpecOptions] = None) -> PlanResult:
    """Every candidate (dense, then every family × sparsity and every combination × its parts'
    grid: ``strategies`` None every registered family and combination, ``sparsities`` None
    each family's default grid, ``combo_sparsities`` None the coarse combination grid) priced
    for ``workload`` (``tp``: one rank's share of a tensor-parallel deployment).

    ``quality``: a quality model (``estimate(model, strategy, sparsity)``) or None;
    ``estimator``: anything with ``estimate(phase_ops)`` (default: the engine's for the device,
    the dtype and ``cache``); ``tp``: tensor parallelism over that many GPUs (one rank's
    timings and memory, checked against one GPU)."""
    t0 = time.perf_counter()
    spec, device, scenario, est, notices = prepare(model, gpu, dtype=dtype, engine=engine, tp=tp,
                                                   cache=cache, estimator=estimator)
    dtype = scenario.dtype
    pricer = _Pricer(spec, dtype, est, engine, tp, routing, precision)
    grid = sweep_grid(strategies, sparsities, granularity, align, combo_sparsities, spec=spec)
    if quality is not None and hasattr(quality, "estimate"):
        from ..quality.priors import remember_params

        remember_params(spec.name, spec.total_params() / 1e9)
    usable = memory.usable_bytes(device)
    metric = getattr(quality, "metric", "accuracy_drop")
    protocol = getattr(quality, "protocol", "lora")
    cands, left_out = [], []
    for s in grid:
        try:
            cands.append(_candidate(pricer, spec, s, workload, usable, quality, metric, protocol))
        except KernelShapeError as e:  # the precision's kernel cannot run this one's widths
            if s.family == "dense":
                raise
            left_out.append(f"{s.family} {s.sparsity:g} left out: {e}")
    spec_skipped: list = []
    if speculative is not None and speculative.drafts:
        more, spec_skipped = _speculative_candidates(pricer, spec, workload, usable, cands[0],
                                                     speculative, metric, protocol)
        cands += more
    result = PlanResult(
        spec, device, workload, dtype, cands, usable, engine, protocol, metric,
        warnings=_memory_warnings(spec, device, workload, cands[0], usable, tp) + notices + left_out,
        provenance=provenance(device))
    result.tp = tp
    result.precision = precision
    result.speculative = speculative
    result.spec_skipped = spec_skipped
    if precision:  # what the precision itself does, at the workload's main class
        from .precision import precision_effect

        m = workload.main
        at = Scenario(m.concurrency, m.prompt_len, m.concurrency, m.prompt_len + m.output_len // 2,
                      dtype, engine, tp=tp, routing=routing, precision=precision)
        result.precision_effect = precision_effect(spec, at, est, quality)
    result.pricer = pricer  # the estimates behind each figure: plan's pairs and intervals
    result.strategies = {strategy_key(s.family, s.sparsity, s.parts): s for s in grid}
    result.priced_kernels = len(getattr(pricer, "priced_kernels", {}))
    result.elapsed_s = time.perf_counter() - t0
    return result


def _candidate(pricer: _Pricer, spec, strat: Strategy, workload: Workload, usable: float,
               quality, metric: str, protocol: str) -> Candidate:
    dtype = pricer.dtype
    main = workload.main
    ref = pricer.ops(strat, "prefill", 1, main.prompt_len)
    weights = memory.weight_bytes(ref.ops, spec, dtype)
    kv_tok = memory.kv_bytes_per_token_of(ref.ops, dtype)
    if strat.family == "dense":
        q = QualityEstimate(0.0, metric, "dense", protocol, note="dense: nothing removed")
    elif quality is not None and strat.parts:
        from ..quality.compose import combo_estimate

        q = combo_estimate(quality, spec.name, strat.family, strat.parts, ref.part_achieved)
    elif quality is not None:
        q = quality.estimate(spec.name, strat.family, ref.achieved_sparsity)
    else:
        q = QualityEstimate(None, metric, "none", protocol, note="no quality model given")
    if quality is not None and pricer.precision:
        from ..quality.precision import served

        q = served(q, spec.name, strat.family, ref.achieved_sparsity, pricer.precision,
                   getattr(quality, "combo_rule", "multiplicative"))
    plans, used, notes = [], [], list(ref.notes)
    for cls, share in zip(workload.classes, workload.shares):
        P, O = cls.prompt_len, cls.output_len
        act = {"prefill": memory.activation_bytes(pricer.ops(strat, "prefill", 1, P).ops, dtype),
               "decode": memory.activation_bytes(pricer.ops(strat, "decode", 1, P + O - 1).ops, dtype)}
        per_seq = max(kv_tok * P + act["prefill"], kv_tok * (P + O) + act["decode"])
        limit = memory.max_sequences(usable, weights, per_seq)

        def serve(b: int, cls=cls, per_seq=per_seq, limit=limit) -> Served:
            return _serve(pricer, strat, cls, b, weights, per_seq, limit, workload.targets)

        at_c = serve(cls.concurrency)
        at_max, why, one = _largest_batch(pricer, strat, cls, limit, serve, workload.targets,
                                          weights, usable)
        used += [at_c.timing_source] + ([at_max.timing_source] if at_max else [])
        notes += pricer.estimate(strat, "decode", cls.concurrency, P).notes
        plans.append(ClassPlan(cls, share, act, per_seq, limit, at_c, at_max, why, one))
    gpus = 0
    if pricer.tp == 1:  # the whole model's memory: how many GPUs of this kind it needs
        kvh = max((getattr(o, "kv_heads", 0) for o in ref.ops if o.op_type == "attention"),
                  default=spec.num_kv_heads)
        # a mix's classes are served in batches of their own: the most any of them needs
        needs = [memory.gpus_needed(usable, weights, p.per_sequence_bytes, p.cls.concurrency, kvh)
                 for p in plans]
        gpus = None if any(n is None for n in needs) else max(needs)
    return Candidate(strat.family, strat.sparsity, ref.achieved_sparsity, q, weights, kv_tok,
                     tuple(plans), sources.weakest(used), tuple(dict.fromkeys(notes)),
                     tuple(strat.parts), tuple(ref.part_achieved), gpus)


# --------------------------------------------------------------------------- speculation

@dataclass(frozen=True)
class SpecOptions:
    """Which speculative candidates a plan prices: the drafts (strategies), the γ grid, the
    decoding, and where α comes from (``alpha``: the user's own, for every draft; else
    ``measured`` rows of the cache, then the published figures)."""

    drafts: tuple = ()
    gammas: tuple = ()
    decoding: str = "greedy"
    temperature: float = 0.0
    alpha: Optional[float] = None
    measured: tuple = ()


def _acceptance(spec, draft: Strategy, opts: SpecOptions, s: float):
    """α of a draft: given, else measured at its asked sparsity (as `quality` stores it), else
    published at its achieved sparsity ``s``."""
    from ..quality import acceptance as acc

    if opts.alpha is not None:
        return acc.given(opts.alpha, opts.decoding, opts.temperature)
    m = acc.from_measured(opts.measured, draft.family, draft.sparsity, opts.decoding,
                          opts.temperature)
    return m if m is not None else acc.published(spec.name, draft.family, s, opts.decoding,
                                                 opts.temperature)


def _speculative_candidates(pricer: _Pricer, spec, workload: Workload, usable: float,
                            dense: Candidate, opts: SpecOptions, metric: str, protocol: str,
                            objective: str = "latency") -> tuple[list, list]:
    """(candidates, [(draft in words, why none)]): the dense model with each draft at the best
    γ of the grid for the workload's main class at its concurrency (:mod:`.speculative`)."""
    from . import speculative as sp

    out, skipped = [], []
    dense_strat = Strategy("dense")
    for draft in opts.drafts:
        ref = pricer.ops(draft, "prefill", 1, workload.main.prompt_len)
        name = candidate_name_of(draft, ref.achieved_sparsity)
        a = _acceptance(spec, draft, opts, ref.achieved_sparsity)
        if a.alpha is None:
            skipped.append((name, a.note))
            continue
        fams = [f for f, _ in (draft.parts or ((draft.family, 0),))]
        shares = all(f in sp.SHARES_WEIGHTS for f in fams)
        early = all(f in sp.EARLY_EXIT for f in fams)
        d_weights = 0.0 if shares else memory.weight_bytes(ref.ops, spec, pricer.dtype)
        d_kv = 0 if early else memory.kv_bytes_per_token_of(ref.ops, pricer.dtype)
        weights = dense.weights_bytes + d_weights
        kv_tok = dense.kv_bytes_per_token + d_kv

        def plans_for(gamma: int, alpha: float):
            plans = []
            for k in dense.classes:
                cls = k.cls
                P, O = cls.prompt_len, cls.output_len
                act_v = memory.activation_bytes(pricer.ops(dense_strat, "decode", 1, P + O - 1,
                                                           gamma + 1).ops, pricer.dtype)
                per_seq = max(kv_tok * P + k.activation_bytes["prefill"], kv_tok * (P + O) + act_v)
                limit = memory.max_sequences(usable, weights, per_seq)

                served: dict = {}  # a batch's figures, once (TTFT's and TPOT's edges share them)

                def serve(b: int, cls=cls, per_seq=per_seq, limit=limit, served=served) -> Served:
                    if b not in served:
                        served[b] = _serve_speculative(pricer, draft, cls, b, gamma, alpha, weights,
                                                       per_seq, limit, workload.targets, early)
                    return served[b]

                at_c = serve(cls.concurrency)
                at_max, why, one = _largest_batch(
                    pricer, dense_strat, cls, limit, serve, workload.targets, weights, usable,
                    ttft=lambda b, cls=cls: serve(b).ttft_ms, tpot=lambda b, cls=cls: serve(b).tpot_ms)
                plans.append(ClassPlan(cls, k.share, {**k.activation_bytes, "decode": act_v},
                                       per_seq, limit, at_c, at_max, why, one))
            return plans

        main = workload.main

        def e2e_at(gamma: int, alpha: float) -> float:
            """The end-to-end latency of the workload's classes at their concurrency (mean by
            share): what γ is chosen by, cheaper than a whole plan per γ."""
            return sum(k.share * _serve_speculative(pricer, draft, k.cls, k.cls.concurrency, gamma,
                                                    alpha, 0.0, 0.0, k.cls.concurrency, Targets(),
                                                    early).e2e_ms for k in dense.classes)
        # the grid from γ 1 up, until a longer draft stops helping (the latency is
        # quasi-convex in γ: E[X] is concave in γ, an iteration's cost about linear)
        tried: list = []
        for gg in sorted(opts.gammas):
            t = e2e_at(gg, a.alpha)
            if tried and t > tried[-1][1]:
                tried.append((gg, t))
                break
            tried.append((gg, t))
        tried = tuple(tried)
        g = min(tried, key=lambda t: (t[1], t[0]))[0]
        plans = plans_for(g, a.alpha)
        at_alpha = dict(tried)[g]
        # the gain over dense at the low and high ends of α's range, relative to α's own
        gain_range = (at_alpha / e2e_at(g, a.lo), at_alpha / e2e_at(g, a.hi))
        by_batch, breakeven = _breakeven(pricer, draft, main, g, a.alpha, opts.gammas,
                                         next(p for p in plans if p.cls is main).max_sequences,
                                         early)
        q = QualityEstimate(0.0, metric, "lossless", protocol,
                            note="speculative decoding keeps the dense model's output (greedy: the "
                                 "same tokens; sampling: the same distribution), up to numerics")
        if pricer.precision:  # served at a precision: its own loss stays (or its lack of one)
            dq = dense.quality
            q = QualityEstimate(dq.value, metric, dq.source, protocol,
                                borrowed_from=dq.borrowed_from, secondary=dq.secondary,
                                citations=dq.citations, method=dq.method,
                                note="the dense model's own at its precision; speculation adds none"
                                     + (f" ({dq.note})" if dq.note else ""))
        info = Speculation(name, strategy_key(draft.family, draft.sparsity, draft.parts), g, a,
                           shares, d_weights, d_kv, sp.expected_tokens(a.alpha, g), tried,
                           gain_range, breakeven, by_batch, draft)
        notes = [f"lossless: the dense model verifies a {name} draft's {g} tokens an iteration "
                 f"(α {a.alpha:.2f}, {a.source}{'; an upper bound' if a.upper_bound else ''})"]
        gpus = 0
        if pricer.tp == 1:
            needs = [memory.gpus_needed(usable, weights, p.per_sequence_bytes, p.cls.concurrency,
                                        spec.num_kv_heads) for p in plans]
            gpus = None if any(n is None for n in needs) else max(needs)
        out.append(Candidate("speculative", ref.achieved_sparsity, ref.achieved_sparsity, q,
                             weights, kv_tok, tuple(plans),
                             sources.weakest([dense.timing_source] + [k.at_concurrency.timing_source
                                                                      for k in plans]),
                             tuple(notes), (), (), gpus, info))
    return out, skipped


def candidate_name_of(strat: Strategy, achieved: float) -> str:
    """A strategy in words: ``static_depth 50%`` (a combination by its parts)."""
    if strat.parts:
        from ..display import strategy_name

        return strategy_name(strat)
    s = f"{achieved * 100:.1f}".rstrip("0").rstrip(".")
    return f"{strat.family} {s}%"


def _breakeven(pricer: _Pricer, draft: Strategy, cls: RequestClass, gamma: int, alpha: float,
               gammas: tuple, limit: int, early: bool = False) -> tuple[tuple, Optional[int]]:
    """(per batch: (batch, speculative ms, dense ms, best γ), the smallest batch where neither γ 1
    nor the candidate's γ beats the dense model) over batches 1, 2, 4, … up to ``limit``.  The
    times leave out the dense prefill both run (the edge is the end-to-end one's): the dense
    decode against the speculative decode plus a draft's own prefill (none for an early exit)."""
    dense = Strategy("dense")
    P, O = cls.prompt_len, cls.output_len
    rows, edge = [], None
    b = 1
    top = max(1, limit)
    while b <= top:
        d_ms = O * mean_step(lambda c: pricer.estimate(dense, "decode", b, c).latency_ms, P, O).ms
        # the cheapest verification (γ 1) and the candidate's own: the best γ falls with the
        # batch, and every γ of the grid at every batch would price hundreds of op lists
        best = min(((_serve_speculative(pricer, draft, cls, b, g, alpha, 0.0, 0.0, b, Targets(),
                                        early, with_prefill=False).e2e_ms, g)
                    for g in sorted({1, gamma})))
        rows.append((b, best[0], d_ms, best[1]))
        if edge is None and best[0] >= d_ms:
            edge = b
        b *= 2
    return tuple(rows), edge


def _serve_speculative(pricer: _Pricer, draft: Strategy, cls: RequestClass, b: int, gamma: int,
                       alpha: float, weights: float, per_seq: float, limit: int,
                       targets: Targets, early: bool = False, with_prefill: bool = True) -> Served:
    """A static batch of ``b`` requests served by the dense model with ``draft``: the prompts
    prefilled (by the draft too, into a cache of its own, unless it is an early exit:
    ``early``), then iterations (γ draft steps, one verification of γ + 1 tokens) until the
    slowest sequence has its O tokens."""
    from . import speculative as sp

    dense = Strategy("dense")
    P, O = cls.prompt_len, cls.output_len
    pre = pricer.estimate(dense, "prefill", b, P) if with_prefill else None
    dpre = None if early else pricer.estimate(draft, "prefill", b, P)
    step = mean_step(lambda c: pricer.estimate(draft, "decode", b, c).latency_ms, P, O)
    ver = mean_step(lambda c: pricer.estimate(dense, "decode", b, c, gamma + 1).latency_ms, P, O)
    t = sp.spec_timing(alpha, gamma, O, b, step.ms, ver.ms)
    ttft = (pre.latency_ms if pre is not None else 0.0) + (dpre.latency_ms if dpre is not None else 0.0)
    e2e = ttft + t.decode_ms
    tpot = t.decode_ms / O
    srcs = ([p.timing_source for p in (pre, dpre) if p is not None]
            + [pricer.estimate(draft, "decode", b, c).timing_source for c in step.contexts]
            + [pricer.estimate(dense, "decode", b, c, gamma + 1).timing_source for c in ver.contexts])
    return Served(b, ttft, tpot, "speculative", ver.contexts, e2e, weights + b * per_seq,
                  b <= limit, tuple(targets.misses(ttft, tpot)), sources.weakest(srcs), O)


def _serve(pricer: _Pricer, strat: Strategy, cls: RequestClass, b: int, weights: float,
           per_seq: float, limit: int, targets: Targets) -> Served:
    from ..pricing.collectives import collective_ms

    P, O = cls.prompt_len, cls.output_len
    pre = pricer.estimate(strat, "prefill", b, P)
    tp = mean_step(lambda c: pricer.estimate(strat, "decode", b, c).latency_ms, P, O)
    srcs = [pre.timing_source] + [pricer.estimate(strat, "decode", b, c).timing_source
                                  for c in tp.contexts]
    e2e = pre.latency_ms + O * tp.ms
    coll_pre = coll_step = 0.0
    if pricer.tp > 1:  # the same contexts, already priced: the collectives' share of each
        coll_pre = collective_ms(pre)
        coll_step = mean_step(lambda c: collective_ms(pricer.estimate(strat, "decode", b, c)),
                              P, O).ms
    return Served(b, pre.latency_ms, tp.ms, tp.method, tp.contexts, e2e, weights + b * per_seq,
                  b <= limit, tuple(targets.misses(pre.latency_ms, tp.ms)), sources.weakest(srcs), O,
                  coll_pre, coll_step)


def _largest_batch(pricer: _Pricer, strat: Strategy, cls: RequestClass, limit: int,
                   serve: Callable[[int], Served], targets: Targets, weights: float,
                   usable: float, ttft: Optional[Callable[[int], float]] = None,
                   tpot: Optional[Callable[[int], float]] = None
                   ) -> tuple[Optional[Served], str, Optional[Served]]:
    """The largest batch that fits and meets the targets (:data:`BATCH_RULE`), why there is
    none, and batch 1 when none does.

    Each target bounds the batch on its own (TTFT and TPOT do not fall as the batch grows), so
    the edge is the smaller of the two edges: TTFT's between 1 and the memory limit (a prefill
    estimate a try), then TPOT's between 1 and that (the decode steps over the answer a try).
    Each edge is found by :func:`_edge`."""
    if limit <= 0:
        if weights >= usable:
            return None, (f"the weights alone ({weights / memory.GB:.1f} GB) exceed the "
                          f"{usable / memory.GB:.1f} GB usable"), None
        return None, "not one sequence fits beside the weights", None
    if not targets.any:
        return serve(limit), "", None
    P, O = cls.prompt_len, cls.output_len
    slacks = []  # (slack of a batch: figure / target − 1) for each target set, TTFT first
    # TTFT and TPOT at a batch: the strategy's own phases, or a speculative candidate's
    ttft = ttft or (lambda b: pricer.estimate(strat, "prefill", b, P).latency_ms)
    tpot = tpot or (lambda b: mean_step(lambda c: pricer.estimate(strat, "decode", b, c).latency_ms,
                                        P, O).ms)
    if targets.ttft_ms is not None:
        slacks.append(lambda b: ttft(b) / targets.ttft_ms - 1.0)
    if targets.tpot_ms is not None:
        slacks.append(lambda b: tpot(b) / targets.tpot_ms - 1.0)
    top = limit
    for slack in slacks:
        g_top = slack(top)
        if g_top <= 0.0:
            continue  # this target holds up to the edge found so far
        g_one = slack(1) if top > 1 else g_top
        if g_one > 0.0:
            one = serve(1)
            return None, "even one request misses the targets: " + "; ".join(one.misses), one
        top = _edge(slack, 1, top, g_one, g_top)
    return serve(top), "", None


def _edge(slack: Callable[[int], float], lo: int, hi: int, g_lo: float, g_hi: float) -> int:
    """The largest whole batch in [lo, hi) whose slack is ≤ 0, given slack(lo) ≤ 0 < slack(hi)
    and a slack that does not fall as the batch grows.

    The next batch tried is the whole batch below where the slack crosses zero on the line
    through the bracket's ends (TTFT and TPOT grow about linearly with the batch: on a line
    the first try lands on the edge and the second confirms it), kept strictly inside the
    bracket; after two tries in a row that did not halve the bracket the next one bisects it,
    so it never takes more than about three times a bisection's tries."""
    slow = 0  # tries in a row that did not halve the bracket
    while hi - lo > 1:
        if slow < 2:
            t = -g_lo / (g_hi - g_lo) if g_hi > g_lo else 0.5
            mid = min(max(lo + int(math.floor(t * (hi - lo))), lo + 1), hi - 1)
        else:
            mid = (lo + hi) // 2
        width = hi - lo
        g = slack(mid)
        if g <= 0.0:
            lo, g_lo = mid, g
        else:
            hi, g_hi = mid, g
        slow = 0 if hi - lo <= width / 2 else slow + 1
    return lo


def _memory_warnings(spec, device, workload: Workload, dense: Candidate, usable: float,
                     tp: int = 1) -> list[str]:
    out = []
    gb = memory.GB
    if usable <= 0:
        return out
    where = f"each of {tp} × {device.display_name}" if tp > 1 else f"the {device.display_name}"
    if dense.weights_bytes >= usable:
        out.append(f"dense {spec.name} does not fit on {where}: its {dense.weights_bytes / gb:.0f} "
                   f"GB of weights{' per rank' if tp > 1 else ''} exceed the {usable / gb:.0f} GB "
                   "usable; only pruned models can serve")
        return out
    for c in dense.classes:
        if not c.at_concurrency.fits:
            out.append(f"dense {spec.name} holds at most {c.max_sequences} {c.cls.name} sequences on "
                       f"{where}, not {c.cls.concurrency}: its latency figures assume "
                       "it would hold them")
    return out


# --------------------------------------------------------------------------- ranking

def gain(c: Candidate, dense: Candidate, objective: str) -> Optional[float]:
    """How much better than dense under ``objective`` (None where dense has no figure: a dense
    model that fits no batch has no throughput)."""
    if objective == "latency":
        return dense.e2e_ms / c.e2e_ms if c.e2e_ms > 0 else None
    t, d = c.throughput_tok_s, dense.throughput_tok_s
    return t / d if t and d else None


def _score(c: Candidate, objective: str) -> Optional[float]:
    if objective == "latency":
        return 1.0 / c.e2e_ms if c.e2e_ms > 0 else None
    return c.throughput_tok_s


def _fmt_loss(v: float, metric: str) -> str:
    return f"+{v * 100:.1f}% perplexity" if metric == "ppl_increase" else f"{v * 100:.1f}% loss"


def sequences_text(c: Candidate) -> str:
    """The most sequences that fit, per class of the workload ("498", or "157/19" for a mix)."""
    return "/".join(f"{k.max_sequences:,}" for k in c.classes)


def candidate_name(c: Candidate) -> str:
    from ..display import strategy_name

    if c.speculation is not None:
        return f"speculative ({c.speculation.draft} draft, γ {c.speculation.gamma})"
    if c.strategy == "dense":
        return "dense (no pruning)"
    if c.parts:
        return strategy_name(c)
    s = f"{c.achieved_sparsity * 100:.1f}".rstrip("0").rstrip(".")
    return f"{c.strategy} {s}%"


def recommend_plan(result: PlanResult, budget: float, objective: str = "latency",
                   allow_extrapolated: bool = False,
                   include_flagged: bool = False) -> PlanRecommendation:
    """The best candidate under ``objective`` among those within ``budget`` (quality loss, the
    result's metric) that fit and meet the targets, by the selection rule of
    :mod:`pis_tui.decide.compare`, as recommend's
    (pairs of candidates under the objective: :class:`_PlanPairs`); a candidate with no quality figure is never recommended, nor
    one whose quality is extrapolated beyond the data unless ``allow_extrapolated``."""
    if objective not in OBJECTIVES:
        raise UserError(f"unknown objective {objective!r}; choose latency or throughput")
    if budget is None or not math.isfinite(budget) or budget < 0:
        raise UserError(f"the budget must be a fraction ≥ 0, got {budget!r}")
    metric = result.quality_metric
    dense = result.dense
    ref = _score(dense, objective) or 1.0
    pairs = _PlanPairs(result, objective)
    excluded: dict = {}
    status: dict = {}
    points: dict = {}
    for c in result.candidates:
        why, short = [], []
        v = c.quality.value
        if v is None:
            why.append("no quality figure" + (f" ({c.quality.note})" if c.quality.note else ""))
            short.append("no quality")
        elif v > budget + 1e-12:
            why.append(f"{_fmt_loss(v, metric)} is over the {_fmt_loss(budget, metric)} budget")
            short.append("over budget")
        elif c.quality.extrapolated and not allow_extrapolated:
            why.append("its quality is extrapolated beyond the data (--allow-extrapolated ranks it)")
            short.append("extrapolated")
        problems = c.problems(objective)
        why += [text for _, text in problems]
        short += [{"memory": "too big", "targets": "misses targets"}[k]
                  for k in dict.fromkeys(k for k, _ in problems)]
        score = _score(c, objective)
        if not why and score is None:
            why.append("no figure for this objective")
            short.append("no figure")
        if why:
            excluded[c.key] = "; ".join(why)
            status[c.key] = ", ".join(short)
            continue
        pt = pairs.point(c, score / ref)
        if pt.flags and not include_flagged:
            excluded[c.key] = ("flagged: " + ", ".join(point_flag_words(pt)) +
                               " (--include-flagged ranks it)")
            status[c.key] = "flagged"
            continue
        points[c.key] = (pt, c)
    by_point = {id(p): c for p, c in points.values()}
    order = sorted((p for p, _ in points.values()), key=rank_key)
    if not order:
        return PlanRecommendation(objective, budget, metric, None, None,
                                  _nothing_reason(result, excluded, budget, objective), (), excluded,
                                  (), status)
    top, passed = select(order, pairs)
    ranked_pts = [top] + [p for p in order if p is not top]
    ranked = tuple(by_point[id(p)] for p in ranked_pts)
    fr = tuple(by_point[id(p)] for p in frontier(ranked_pts))
    best = ranked[0]
    # a runner-up beats dense beyond the tie (as recommend's): the best of another family, else
    # the next of the same, else dense; none when dense is the best
    dense_ok = any(c.strategy == "dense" for c in ranked)
    gainful = [c for p, c in zip(ranked_pts, ranked) if c.strategy != "dense" and c is not best
               and (not dense_ok or beats_dense(p))]
    runner = None
    if best.strategy != "dense":
        runner = next((c for c in gainful if c.strategy != best.strategy),
                      gainful[0] if gainful else (dense if dense_ok else None))
    reason = _reason(result, best, runner, budget, objective, ranked)
    if passed:
        reason += "; " + _gave_up(top, passed, metric)
    return PlanRecommendation(objective, budget, metric, best, runner, reason, ranked, excluded, fr,
                              status, {c.key: p for p, c in points.values()},
                              tuple((by_point[id(p)], pr) for p, pr in passed))


class _PlanPairs:
    """Plan candidates compared under an objective as recommend compares points: each
    candidate's figure rests, per request class, on the prefill of its batch and the decode
    step at the middle of its answer (the contexts around it move together); a pair's σ is
    those phases' paired σ weighted by their shares of the class's end-to-end time and summed
    (their errors taken as moving together, the wider assumption); dominance needs every phase
    of every class to do no more work at the same batch.  Under the throughput objective each
    candidate is taken at its own largest batch, so two candidates at different batches share
    fewer kernels and their pair is wider (no dominance is claimed across batches)."""

    def __init__(self, result: PlanResult, objective: str):
        self.result, self.objective = result, objective
        self.pricer = getattr(result, "pricer", None)
        self.strategies = getattr(result, "strategies", {})
        self._cmp = Comparer(lambda e: e)
        self._bases: dict = {}
        self._cand: dict = {}  # id(Point) -> its Candidate (points made by point())

    def basis(self, c: Candidate) -> Optional[list]:
        if c.key in self._bases:
            return self._bases[c.key]
        strat = self.strategies.get(c.key)
        out: Optional[list] = None
        if self.pricer is not None and strat is not None:
            out = []
            for k in c.classes:
                s = k.at_concurrency if self.objective == "latency" else k.at_max_batch
                if s is None or s.e2e_ms <= 0:
                    out = None
                    break
                P, O = k.cls.prompt_len, k.cls.output_len
                pre = self.pricer.estimate(strat, "prefill", s.batch, P)
                dec = self.pricer.estimate(strat, "decode", s.batch, P + O // 2)
                w = s.ttft_ms / s.e2e_ms
                out.append((k.share, s.batch, w, pre, O, dec))
        self._bases[c.key] = out
        return out

    def __call__(self, a: Point, b: Point) -> Pair:
        ca, cb = self._cand[id(a)], self._cand[id(b)]
        ba, bb = self.basis(ca), self.basis(cb)
        if ba is None or bb is None or len(ba) != len(bb):
            return independent_pair(a, b)
        sigma, dominant = 0.0, True
        for (share, batch, w, pre_a, _, dec_a), (_, batch_b, _, pre_b, _, dec_b) in zip(ba, bb):
            pp, pd = self._cmp(pre_a, pre_b), self._cmp(dec_a, dec_b)
            sigma += share * (w * _sigma_of(pp) + (1 - w) * _sigma_of(pd))
            dominant = dominant and batch == batch_b and pp.dominant in ("a", "both") \
                and pd.dominant in ("a", "both")
        return pair_from(a.speedup / b.speedup, sigma, "a" if dominant else None)

    def _spec_sigma(self, c: Candidate) -> float:
        return _spec_sigma_of(self.pricer, c, self.objective)

    def point(self, c: Candidate, g: float) -> Point:
        """The candidate's Point under the objective: its gain with the paired interval against
        dense, the physical ceiling (latency: each phase at its family's ceiling) and flags."""
        from .. import families

        lo = hi = g
        ceiling, flags = None, ()
        base, dense_b = self.basis(c), self.basis(self.result.dense)
        cut = ""
        if c.speculation is not None:
            # the timing's own σ (the draft step and the verification against the dense step
            # they replace, paired), then the acceptance rate's range (its low and high ends
            # priced as the candidate is)
            lo, hi = uncertainty.interval(g, self._spec_sigma(c))
            r = c.speculation.gain_range or (1.0, 1.0)
            lo, hi = lo * min(r), hi * max(r)
            if c.speculation.acceptance.upper_bound:
                flags = ("alpha_upper_bound",)
        elif base is not None and dense_b is not None and c.strategy != "dense":
            fam = families.get(c.strategy)
            sigma, mixed, work_d, work_c, no_ceiling = 0.0, None, 0.0, 0.0, False
            for (share, _, w, pre, O, dec), (_, _, _, dpre, _, ddec) in zip(base, dense_b):
                sp = uncertainty.log_sigma(dpre, pre)
                sd = uncertainty.log_sigma(ddec, dec)
                sigma += share * (w * sp + (1 - w) * sd)
                mixed = mixed or uncertainty.mixed_conditions(dpre, pre) or \
                    uncertainty.mixed_conditions(ddec, dec)
                work = getattr(self.pricer.est, "work_ms", None)  # None: no roofline to bound it
                cp = fam.speedup_ceiling([p.op for p in dpre.ops], [p.op for p in pre.ops],
                                         work) if work else None
                cd = fam.speedup_ceiling([p.op for p in ddec.ops], [p.op for p in dec.ops],
                                         work) if work else None
                if cp is None or cd is None:
                    no_ceiling = True
                t_d = dpre.latency_ms + O * ddec.latency_ms
                work_d += share * t_d
                if cp is not None and cd is not None:
                    work_c += share * (dpre.latency_ms / cp + O * ddec.latency_ms / cd)
            lo, hi = uncertainty.interval(g, sigma)
            if self.objective == "latency" and work_c > 0 and not no_ceiling:
                ceiling = work_d / work_c
            flags = uncertainty.flags(lo, ceiling, mixed)
            lo, hi, cut = uncertainty.cut_at_ceiling(g, lo, hi, ceiling)
        p = Point(c.strategy, c.sparsity, c.achieved_sparsity, "plan", c.e2e_ms,
                  self.result.dense.e2e_ms, g, 1.0, c.timing_source, c.quality, lo, hi, ceiling,
                  tuple(flags), parts=c.parts, part_achieved=c.part_achieved, interval_cut=cut)
        self._cand[id(p)] = c
        return p


def _spec_sigma_of(pricer, c: Candidate, objective: str) -> float:
    """σ(log gain) of a speculative candidate's timing: per class, the verification's and the
    draft step's paired σ against the dense decode step (at the middle of the answer), weighted
    by their shares of an iteration, summed over the classes by share (their errors taken as
    moving together)."""
    s = c.speculation
    if pricer is None or s is None or s.strategy is None:
        return 0.0
    dense = Strategy("dense")
    sigma = 0.0
    for k in c.classes:
        served = k.at_concurrency if objective == "latency" else k.at_max_batch
        if served is None:
            continue
        b, ctx = served.batch, k.cls.prompt_len + k.cls.output_len // 2
        dec = pricer.estimate(dense, "decode", b, ctx)
        ver = pricer.estimate(dense, "decode", b, ctx, s.gamma + 1)
        drf = pricer.estimate(s.strategy, "decode", b, ctx)
        w = ver.latency_ms / (ver.latency_ms + s.gamma * drf.latency_ms)
        sigma += k.share * (w * uncertainty.log_sigma(dec, ver)
                            + (1 - w) * uncertainty.log_sigma(dec, drf))
    return sigma


def _sigma_of(p: Pair) -> float:
    """The σ(log ratio) behind a pair's interval (before any cut)."""
    if p.ratio <= 0 or p.basis != "paired":
        return 0.0
    return p.sigma


def objective_words(objective: str) -> str:
    return "end-to-end latency" if objective == "latency" else "throughput"


def _figure(c: Candidate, objective: str, unit: bool = True) -> str:
    if objective == "latency":
        return f"{c.e2e_ms / 1e3:.2f}" + (" s a request" if unit else "")
    t = c.throughput_tok_s
    return (f"{t:,.0f}" + (" tok/s" if unit else "")) if t else "no batch"


def _short(c: Candidate, dense: Candidate, objective: str, metric: str) -> str:
    g = gain(c, dense, objective)
    gtxt = f"{g:.2f}×" if g is not None else _figure(c, objective)
    return f"{candidate_name(c)}: {gtxt} at {_fmt_loss(c.quality.value or 0.0, metric).replace(' loss', '')}"


def _reason(result: PlanResult, best: Candidate, runner: Optional[Candidate], budget: float,
            objective: str, ranked: tuple = ()) -> str:
    from ..display import flag_words

    dense, metric = result.dense, result.quality_metric
    words = objective_words(objective)
    budget_w = _fmt_loss(budget, metric)
    targets = result.workload.targets
    within = f"within {budget_w}" + (f" and {targets.label()}" if targets.any else "")
    nxt = f"; runner-up {_short(runner, dense, objective, metric)}" if runner is not None else ""
    if best.strategy == "dense":
        fastest = next((c for c in ranked if c.strategy != "dense"), None)
        offer = (f"; the fastest pruned one is {_short(fastest, dense, objective, metric)}"
                 if fastest is not None else "")
        return (f"keep the dense model: nothing pruned {within} is better in {words} beyond "
                f"the tie rule ({_figure(best, objective)}){offer}")
    g = gain(best, dense, objective)
    gtxt = (f"{g:.2f}× {words} ({_figure(dense, objective, unit=False)} → {_figure(best, objective)})"
            if g is not None else f"{_figure(best, objective)} where dense serves no batch")
    mem = ""
    if best.max_sequences > dense.max_sequences:
        mem = f"; fits {sequences_text(best)} sequences against dense's {sequences_text(dense)}"
    flags = flag_words(best.quality)
    ftxt = f" [{', '.join(flags)}]" if flags else ""
    mtxt = f" (quality: {best.quality.method})" if best.quality.method else ""
    return (f"{candidate_name(best)}: {gtxt} at {_fmt_loss(best.quality.value, metric)}{mtxt}{ftxt}, "
            f"the best {within}{mem}{nxt}")


def _nothing_reason(result: PlanResult, excluded: dict, budget: float, objective: str) -> str:
    metric = result.quality_metric
    within_budget = [c for c in result.candidates
                     if c.quality.value is not None and c.quality.value <= budget + 1e-12]
    if not within_budget:
        return (f"nothing has a known quality cost within {_fmt_loss(budget, metric)}; nothing to "
                "recommend")
    targets = result.workload.targets
    fits = [c for c in within_budget if all(kind != "memory" for kind, _ in c.problems(objective))]
    if not fits:
        if objective == "latency":
            best = max(within_budget, key=lambda c: c.max_sequences)
            need = max(k.cls.concurrency for k in best.classes)
            return (f"nothing within {_fmt_loss(budget, metric)} fits {need} sequences on the "
                    f"{result.device.display_name}: the most any holds is {best.max_sequences} "
                    f"({candidate_name(best)}); lower the concurrency or widen the budget")
        return (f"nothing within {_fmt_loss(budget, metric)} fits on the "
                f"{result.device.display_name}; widen the budget or use a larger GPU")
    # memory is not what stops them: the targets are
    b = 1 if objective == "throughput" else None
    lo_ttft = min(fits, key=lambda c: _at(c, b, "ttft_ms"))
    lo_tpot = min(fits, key=lambda c: _at(c, b, "tpot_ms"))
    at = " at batch 1" if objective == "throughput" else " at the workload's concurrency"
    ttft_missed = targets.ttft_ms is not None and _at(lo_ttft, b, "ttft_ms") > targets.ttft_ms
    tpot_missed = targets.tpot_ms is not None and _at(lo_tpot, b, "tpot_ms") > targets.tpot_ms
    parts = []  # name only the targets nothing meets
    if ttft_missed:
        parts.append(f"the lowest TTFT{at} is {_at(lo_ttft, b, 'ttft_ms'):,.0f} ms "
                     f"({candidate_name(lo_ttft)}) against {targets.ttft_ms:g} ms")
    if tpot_missed:
        parts.append(f"the lowest TPOT{at} is {_at(lo_tpot, b, 'tpot_ms'):,.1f} ms "
                     f"({candidate_name(lo_tpot)}) against {targets.tpot_ms:g} ms")
    relax = "relax " + ("the targets" if len(parts) > 1 else "it") + \
        (" or lower the concurrency" if objective == "latency" else "")
    if parts:
        return (f"nothing within {_fmt_loss(budget, metric)} meets the targets: "
                + "; ".join(parts) + "; " + relax)
    # each target is met by some candidate, but no candidate meets both
    meet_tpot = [c for c in fits if _at(c, b, "tpot_ms") <= targets.tpot_ms]
    best = min(meet_tpot, key=lambda c: _at(c, b, "ttft_ms"))
    return (f"nothing within {_fmt_loss(budget, metric)} meets both targets: each is met by "
            f"some model, but of those with TPOT{at} within {targets.tpot_ms:g} ms the lowest TTFT "
            f"is {_at(best, b, 'ttft_ms'):,.0f} ms ({candidate_name(best)}) against "
            f"{targets.ttft_ms:g} ms; relax one of them"
            + (" or lower the concurrency" if objective == "latency" else ""))


def _at(c: Candidate, batch: Optional[int], attr: str) -> float:
    """The worst class's figure at the concurrency (``batch`` None) or at batch 1 (which the
    batch search keeps when not even batch 1 meets the targets)."""
    vals = []
    for k in c.classes:
        s = k.at_concurrency if batch is None else (k.at_one or k.at_max_batch or k.at_concurrency)
        vals.append(getattr(s, attr))
    return max(vals)
