"""Self-speculative decoding run for real on this device, against the cost model of
:mod:`pis_tui.decide.speculative`.

The draft is an early exit of the dense model (what plan prices a static-depth draft as): the
same module's first E = L − round(s·L) decoder layers, then the model's final norm and lm_head,
sharing the dense model's weights (no copy) and its KV cache.  One iteration:

* γ draft steps at batch B, one token a sequence a step (greedy from the draft's logits), each
  appending the first E layers' KV to the shared cache;
* the draft's positions rolled back (the first E layers cropped to the committed length), then
  one verification: the dense model's forward of the last committed token and the γ drafted
  ones (γ + 1 positions a sequence, every position's logits), writing every layer's KV;
* each sequence's accepted count n_b drawn i.i.d. with a *forced* acceptance rate α (each
  drafted token accepted with probability α until the first rejection, the cost model's rule):
  the sequence commits its n_b drafted tokens and the verification's argmax at position n_b;
* the cache cropped to the previous length + max_b n_b + 1.  A batched ``DynamicCache`` holds
  one length for the whole batch, so a sequence that accepted fewer than the batch's maximum
  keeps the rejected tokens' positions in its cache (and attends to them next): a real server
  keeps a length a sequence (a paged cache's pointer move), which differs from this by those
  few positions of attention.

What this checks is the cost model's *cost*: the draft steps, the verification of B·(γ+1)
tokens and the rollback, on this device, given the acceptance realised.  It does not check α
(forced here; ``pis-tui quality --acceptance`` measures it on real weights), and with a forced
α the committed drafted tokens are the draft's argmax, which may differ from the dense model's:
the outputs equal the dense greedy decode's only at α = 0 (every iteration commits the
verification's own argmax) or with greedy acceptance (``alpha=None``: a drafted token is
accepted when it is the dense argmax) at batch 1.

The verification's attention needs a causal mask aligned to the end of the cache (query i of
γ + 1 sees the context and the queries up to i): the SDPA implementation validate registers
skips mask construction (its decode step has one query, its prefill no past), so the models
here run :data:`SPEC_ATTN`, the same SDPA call for one query or none past, and an explicit
bottom-right causal mask otherwise.
"""

from __future__ import annotations

import copy
import os
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from ..decide import speculative as sp
from ..decide.deployment import mean_step
from ..errors import UserError
from ..families.phase_ops import build_phase_ops
from ..families.static_depth import layers_dropped
from ..families.strategy import Strategy
from ..model.scenario import Scenario
from ..model.spec import ModelSpec
from .build import BuiltModel, layer_list
from .op_times import OpTimes
from .run import _forward_cache_kw, _summary, sync

#: the attention implementation the speculative runs use (registered by :func:`use_spec_attention`)
SPEC_ATTN = "pis_sdpa_spec"

_REGISTERED = False


# ============================================================== the models


def _spec_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """SDPA as validate runs it for one query (decode) or no past (prefill); for several
    queries over a longer cache (a verification), an explicit causal mask aligned to the
    cache's end."""
    import torch
    import torch.nn.functional as F
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    q, kv = query.shape[2], key.shape[2]
    if q == 1 or q == kv or attention_mask is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    mask = torch.ones(q, kv, dtype=torch.bool, device=query.device).tril(kv - q)
    groups = getattr(module, "num_key_value_groups", 1)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling,
                                         enable_gqa=groups > 1)
    return out.transpose(1, 2).contiguous(), None


def use_spec_attention(model) -> None:
    """Run ``model`` (a transformers causal LM) with :data:`SPEC_ATTN`."""
    global _REGISTERED
    if not _REGISTERED:
        from transformers import AttentionInterface

        AttentionInterface.register(SPEC_ATTN, _spec_sdpa)
        _REGISTERED = True
    model.config._attn_implementation = SPEC_ATTN


def _hf(model):
    """The transformers model of a :class:`BuiltModel` (or the model itself)."""
    return model.model if isinstance(model, BuiltModel) else model


def draft_layers_of(num_layers: int, sparsity: float, spec: Optional[ModelSpec] = None) -> int:
    """E, the layers a static-depth draft at ``sparsity`` keeps: L − round(s·L) (the count
    the static_depth family prices); one-line errors for a draft of no layer or of all."""
    s = float(sparsity)
    if not 0.0 < s < 1.0 or s != s:
        raise UserError(f"draft sparsity {sparsity!r} outside (0, 1)")
    from ..model.layer import round_half_up

    drop = round_half_up(s * num_layers)
    if drop >= num_layers:
        raise UserError(f"draft sparsity {s:g} drops {drop} of the {num_layers} layers: the draft "
                        "needs at least one (give a lower sparsity)")
    if drop == 0:
        raise UserError(f"draft sparsity {s:g} drops no layer of {num_layers}: the draft would be "
                        "the dense model (give a higher sparsity)")
    if spec is not None and drop != layers_dropped(spec, s):  # pragma: no cover - one rule
        raise UserError(f"draft sparsity {s:g}: {drop} layers dropped here, "
                        f"{layers_dropped(spec, s)} priced")
    return num_layers - drop


class EarlyExitDraft:
    """The dense model's first ``layers`` decoder layers, then its final norm and lm_head: the
    same modules (no copy), run by the model's own forward with its layer list swapped for the
    first ``layers`` for the call; it reads and appends to the cache it is given (the dense
    model's: its first layers' KV)."""

    def __init__(self, model, layers: int):
        self.model = _hf(model)
        full = layer_list(self.model)
        if not 1 <= layers <= len(full):
            raise UserError(f"an early exit of {layers} layers from a model of {len(full)}")
        import torch.nn as nn

        self.layers = layers
        self._full = full
        self._short = nn.ModuleList(list(full)[:layers])  # references, not copies
        self._parent, self._name = self._owner(full)
        self._kw = _forward_cache_kw(self.model)

    def _owner(self, full):
        for name, mod in self.model.named_modules():
            for child_name, child in mod.named_children():
                if child is full:
                    return mod, child_name
        raise UserError("the decoder layer list has no parent module")  # pragma: no cover

    def __call__(self, input_ids, cache, logits_to_keep: int = 1):
        """The draft's logits for ``input_ids`` [B, S] after what ``cache`` holds."""
        mods = self._parent._modules
        mods[self._name] = self._short
        try:
            return self.model(input_ids=input_ids, use_cache=True, logits_to_keep=logits_to_keep,
                              **{self._kw: cache}).logits
        finally:
            mods[self._name] = self._full


def _forward(model, ids, cache, logits_to_keep: int = 1):
    return model(input_ids=ids, use_cache=True, logits_to_keep=logits_to_keep,
                 **{_forward_cache_kw(model): cache}).logits


def _seq_len(cache, layer: int = 0) -> int:
    return cache.layers[layer].get_seq_length()


def crop_to(cache, length: int, layers: Optional[int] = None) -> None:
    """Every layer (the first ``layers``) of a ``DynamicCache`` cut back to ``length`` tokens
    (its layers may hold different lengths: the draft's appended to its first layers only)."""
    for layer in cache.layers[:layers]:
        n = layer.get_seq_length()
        if n > length:
            layer.crop(-(n - length))


# ============================================================== one run


@dataclass
class Prefilled:
    """A prompt prefilled by the dense model: its cache and the first output token (each
    sequence's), copied for every run that starts from it."""
    cache: object
    first: object  # [B] token ids
    prompt_len: int
    batch: int

    def fresh(self):
        return copy.deepcopy(self.cache), self.first.clone()


def prefill(dense, prompt_ids) -> Prefilled:
    """The dense model's prefill of ``prompt_ids`` [B, P] into a ``DynamicCache``."""
    import torch
    from transformers import DynamicCache

    m = _hf(dense)
    with torch.inference_mode():
        cache = DynamicCache(config=m.config)
        kinds = {type(layer).__name__ for layer in cache.layers}
        if kinds - {"DynamicLayer"}:
            raise UserError(f"{type(m).__name__}: its cache holds {', '.join(sorted(kinds))} layers; "
                            "only full-attention layers (DynamicLayer) are cropped as a "
                            "speculative rollback here")
        logits = _forward(m, prompt_ids, cache, 1)
        first = logits[:, -1].argmax(-1)
    return Prefilled(cache, first, int(prompt_ids.shape[1]), int(prompt_ids.shape[0]))


@dataclass
class Iteration:
    """One speculative iteration: its parts' times (ms), each sequence's accepted count and
    the cache length after it."""
    draft_ms: float  # the γ draft steps
    verify_ms: float
    rollback_ms: float  # the draft's positions cut before the verification + the crop after it
    accepted: tuple
    cache_len: int


@dataclass
class SpecRun:
    """A speculative decode of a static batch until every sequence has ``out_tokens``."""
    batch: int
    prompt_len: int
    out_tokens: int
    gamma: int
    alpha: Optional[float]  # None: greedy acceptance (a drafted token that is the dense argmax)
    draft_layers: int
    decode_ms: float  # wall time after the prefill
    tokens: list  # tokens each sequence committed (≥ out_tokens)
    outputs: list  # each sequence's committed token ids (the prefill's first token not included)
    steps: list = field(default_factory=list)  # Iteration each

    @property
    def iterations(self) -> int:
        return len(self.steps)

    @property
    def draft_step_ms(self) -> float:
        return statistics.fmean(s.draft_ms for s in self.steps) / self.gamma

    @property
    def verify_ms(self) -> float:
        return statistics.fmean(s.verify_ms for s in self.steps)

    @property
    def rollback_ms(self) -> float:
        return statistics.fmean(s.rollback_ms for s in self.steps)

    @property
    def tokens_per_iteration(self) -> float:
        return sum(self.tokens) / (self.batch * self.iterations)


@dataclass
class DenseRun:
    batch: int
    out_tokens: int
    decode_ms: float
    outputs: list

    @property
    def step_ms(self) -> float:
        return self.decode_ms / self.out_tokens


def _check_run(out_tokens: int, gamma: int, alpha: Optional[float]) -> None:
    if out_tokens < 1:
        raise UserError(f"output length must be positive, got {out_tokens}")
    if gamma < 1:
        raise UserError(f"γ (drafted tokens an iteration) must be at least 1, got {gamma}")
    if alpha is not None:
        try:
            sp.check_alpha(alpha)
        except ValueError as e:
            raise UserError(str(e)) from None


def _accepted(rng: random.Random, alpha: float, gamma: int) -> int:
    n = 0
    while n < gamma and rng.random() < alpha:
        n += 1
    return n


def run_speculative(dense, prompt_ids, out_tokens: int, gamma: int, alpha: Optional[float],
                    seed: int = 0, *, draft_layers: Optional[int] = None,
                    draft_sparsity: float = 0.75, prefilled: Optional[Prefilled] = None,
                    device: str = "cpu", on_iteration: Optional[Callable] = None) -> SpecRun:
    """Self-speculative greedy decoding of ``prompt_ids`` [B, P] by ``dense`` (a transformers
    causal LM or a :class:`BuiltModel`, run with :data:`SPEC_ATTN`) with an early exit of
    ``draft_layers`` layers (else those ``draft_sparsity`` keeps) as the draft, until every
    sequence has ``out_tokens`` tokens after the prefill's.

    ``alpha``: the forced acceptance rate (each sequence's accepted count drawn i.i.d., each
    drafted token accepted with probability α until the first rejection, from
    ``random.Random(seed)``: the same draws every run); None: greedy acceptance (the drafted
    tokens that match the verification's argmax, up to the first that does not).  Each
    sequence commits its n_b accepted tokens and the verification's argmax at position n_b
    (n_b + 1 tokens); the cache is then cropped to its previous length + max_b n_b + 1 (one
    length for the batch: a sequence that accepted fewer keeps the rejected tokens' positions;
    a real server keeps a length a sequence, a few positions of attention apart).

    ``prefilled``: the prompt's prefill (:func:`prefill`) to start from (copied; else it is
    prefilled now, untimed).  The decode wall time starts after the prefill; each iteration's
    draft steps, verification and rollback are timed apart (``time.perf_counter``, the device
    synchronised first).  ``on_iteration(cache, iteration)`` sees each iteration's end."""
    import torch

    _check_run(out_tokens, gamma, alpha)
    m = _hf(dense)
    if draft_layers is None:
        draft_layers = draft_layers_of(len(layer_list(m)), draft_sparsity)
    draft = EarlyExitDraft(m, draft_layers)
    pre = prefilled or prefill(m, prompt_ids)
    cache, x = pre.fresh()
    B = pre.batch
    rng = random.Random(seed)
    tokens = [0] * B
    outputs: list = [[] for _ in range(B)]
    steps: list = []
    rows = torch.arange(B, device=x.device)
    clock = time.perf_counter
    with torch.inference_mode():
        sync(device)
        t_start = clock()
        n0 = pre.prompt_len  # the committed tokens the cache holds
        while min(tokens) < out_tokens:
            # γ draft steps: the early exit, one token a sequence each
            t0 = clock()
            drafted = []
            inp = x
            for _ in range(gamma):
                inp = draft(inp[:, None], cache, 1)[:, -1].argmax(-1)
                drafted.append(inp)
            sync(device)
            t1 = clock()
            # the draft's positions cut (its first layers only hold them): the verification
            # writes every layer's KV for the γ + 1 positions
            crop_to(cache, n0, draft_layers)
            sync(device)
            t2 = clock()
            d = torch.stack(drafted, dim=1)  # [B, γ]
            ver = _forward(m, torch.cat([x[:, None], d], dim=1), cache, 0).argmax(-1)  # [B, γ+1]
            sync(device)
            t3 = clock()
            d_list, v_list = d.tolist(), ver.tolist()
            if alpha is None:
                acc = []
                for b in range(B):
                    n = 0
                    while n < gamma and d_list[b][n] == v_list[b][n]:
                        n += 1
                    acc.append(n)
            else:
                acc = [_accepted(rng, alpha, gamma) for _ in range(B)]
            for b, n in enumerate(acc):
                outputs[b].extend(d_list[b][:n])
                outputs[b].append(v_list[b][n])
                tokens[b] += n + 1
            x = ver[rows, torch.tensor(acc, device=ver.device)]
            t4 = clock()
            crop_to(cache, n0 + max(acc) + 1)
            sync(device)
            t5 = clock()
            it = Iteration((t1 - t0) * 1e3, (t3 - t2) * 1e3, ((t2 - t1) + (t5 - t4)) * 1e3,
                           tuple(acc), _seq_len(cache))
            steps.append(it)
            n0 += max(acc) + 1
            if on_iteration is not None:
                on_iteration(cache, it)
        sync(device)
        decode_ms = (clock() - t_start) * 1e3
    return SpecRun(B, pre.prompt_len, out_tokens, gamma, alpha, draft_layers, decode_ms, tokens,
                   outputs, steps)


def run_dense(dense, prompt_ids, out_tokens: int, *, prefilled: Optional[Prefilled] = None,
              device: str = "cpu") -> DenseRun:
    """The plain greedy decode loop: ``out_tokens`` steps of one token a sequence over the same
    ``DynamicCache`` (from the prompt's prefill, untimed); the decode wall time."""
    import torch

    if out_tokens < 1:
        raise UserError(f"output length must be positive, got {out_tokens}")
    m = _hf(dense)
    pre = prefilled or prefill(m, prompt_ids)
    cache, x = pre.fresh()
    out = []
    clock = time.perf_counter
    with torch.inference_mode():
        sync(device)
        t0 = clock()
        for _ in range(out_tokens):
            x = _forward(m, x[:, None], cache, 1)[:, -1].argmax(-1)
            out.append(x)
        sync(device)
        decode_ms = (clock() - t0) * 1e3
    outputs = torch.stack(out, dim=1).tolist()
    return DenseRun(pre.batch, out_tokens, decode_ms, outputs)


# ============================================================== timing both


@dataclass
class SpecMeasurement:
    """Dense and speculative decodes of one batch timed in interleaved pairs."""
    batch: int
    dense_ms: list
    spec_ms: list
    speedup: float  # median of the pairs' ratios dense / speculative
    low: float  # its ~95 % interval (median_interval)
    high: float
    dense_spread: float  # IQR / median
    spec_spread: float
    run: SpecRun  # the last speculative run (every run draws the same acceptances)
    load: tuple  # os.getloadavg() before and after (1-minute)
    contended: bool = False
    notes: list = field(default_factory=list)

    @property
    def dense_median_ms(self) -> float:
        return statistics.median(self.dense_ms)

    @property
    def spec_median_ms(self) -> float:
        return statistics.median(self.spec_ms)


def _load() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:  # pragma: no cover - no load average here
        return float("nan")


def random_prompt(model, batch: int, prompt_len: int, seed: int = 0, device: str = "cpu"):
    import torch

    cfg = _hf(model).config
    g = torch.Generator().manual_seed(seed)
    vocab = getattr(cfg, "pis_full_vocab", cfg.vocab_size)
    return torch.randint(0, vocab, (batch, prompt_len), generator=g).to(device)


def measure_speculative(dense, batch: int, prompt_len: int, out_tokens: int, gamma: int,
                        alpha: Optional[float], *, draft_layers: int, seed: int = 0,
                        repeats: int = 3, warmup: int = 1, device: str = "cpu",
                        contention: Optional[Callable] = None,
                        on_progress: Optional[Callable[[str], None]] = None) -> SpecMeasurement:
    """Prefill a random prompt once (untimed), warm both decodes up ``warmup`` times (short
    runs: every shape once), then time ``repeats`` interleaved pairs (dense then speculative,
    reversed every other pair) of full decodes from copies of that prefill.  ``contention()``
    (validate's watch: True while other processes hold the cores) is asked before each pair;
    each pair is also metered (the CPU other processes used), and contention is noted."""
    from ..timing.cpu_share import OthersMeter
    from .stability import median_interval

    say = on_progress or (lambda m: None)
    if repeats < 1:
        raise UserError("repeats must be at least 1")
    _check_run(out_tokens, gamma, alpha)
    prompt = random_prompt(dense, batch, prompt_len, seed, device)
    say(f"batch {batch}: prefilling {batch}×{prompt_len}")
    pre = prefill(dense, prompt)
    short = min(out_tokens, 2 * (gamma + 1))
    for _ in range(max(0, warmup)):
        say(f"batch {batch}: warming up")
        run_dense(dense, prompt, short, prefilled=pre, device=device)
        run_speculative(dense, prompt, short, gamma, alpha, seed, draft_layers=draft_layers,
                        prefilled=pre, device=device)
    load0 = _load()
    ds, ss = [], []
    run = None
    contended = False
    notes: list = []
    for i in range(repeats):
        if contention is not None and contention():
            contended = True
        meter = OthersMeter() if device == "cpu" else None
        order = ("dense", "spec") if i % 2 == 0 else ("spec", "dense")
        if meter is not None:
            meter.__enter__()
        try:
            for who in order:
                if who == "dense":
                    ds.append(run_dense(dense, prompt, out_tokens, prefilled=pre,
                                        device=device).decode_ms)
                else:
                    run = run_speculative(dense, prompt, out_tokens, gamma, alpha, seed,
                                          draft_layers=draft_layers, prefilled=pre, device=device)
                    ss.append(run.decode_ms)
        finally:
            if meter is not None:
                meter.__exit__(None, None, None)
        if meter is not None and meter.contended:
            contended = True
            if contention is not None:
                contention(meter.cores)
        say(f"batch {batch}: pair {i + 1}/{repeats}: dense {ds[-1]:.0f} ms, speculative "
            f"{ss[-1]:.0f} ms")
    ratios = [d / s for d, s in zip(ds, ss) if s > 0]
    med = statistics.median(ratios)
    lo, hi = median_interval(ratios)
    if contended:
        notes.append("other processes were using this machine's cores while it was timed")
    return SpecMeasurement(batch, ds, ss, med, lo, hi, _summary(ds).spread, _summary(ss).spread,
                           run, (load0, _load()), contended, notes)


# ============================================================== prediction


@dataclass
class SpecPrediction:
    """The cost model's decode times on this device, from its measured op times."""
    draft_step_ms: float  # context-averaged
    verify_ms: float
    dense_step_ms: float
    iteration_ms: float  # γ draft steps + one verification
    iterations: Optional[float]  # the run's realised iterations (None: not given)
    expected_iterations: float  # E[max over the batch], batch_iterations
    spec_decode_ms: Optional[float]  # iterations × iteration_ms
    expected_spec_decode_ms: float
    dense_decode_ms: float  # O × the mean dense step
    contexts: tuple

    @property
    def speedup(self) -> Optional[float]:
        return self.dense_decode_ms / self.spec_decode_ms if self.spec_decode_ms else None

    @property
    def expected_speedup(self) -> float:
        return self.dense_decode_ms / self.expected_spec_decode_ms


def _decode_scenario(batch: int, context: int, dtype: str, tokens: int = 1) -> Scenario:
    return Scenario(prefill_batch=1, prompt_len=1, decode_batch=batch, context_len=context,
                    dtype=dtype, decode_tokens=tokens)


def prediction_contexts(prompt_len: int, out_tokens: int) -> tuple:
    """The contexts :func:`mean_step` may ask for over an answer of ``out_tokens``: its ends,
    its affine checks and its sample points (every one when the answer is short)."""
    from ..decide.deployment import SAMPLE_POINTS

    c0, c1 = prompt_len, prompt_len + out_tokens - 1
    if out_tokens <= SAMPLE_POINTS:
        return tuple(range(c0, c1 + 1))
    cs = {c0, c1, c0 + 1, c0 + (c1 - c0) // 2, c1 - 1}
    cs |= {c0 + round(i * (c1 - c0) / (SAMPLE_POINTS - 1)) for i in range(SAMPLE_POINTS)}
    return tuple(sorted(cs))


def prediction_ops(spec: ModelSpec, draft_sparsity: float, batch: int, prompt_len: int,
                   out_tokens: int, gamma: int, dtype: str) -> list:
    """Every op the prediction of one batch prices (to measure them in one go)."""
    ops = []
    for c in prediction_contexts(prompt_len, out_tokens):
        ops += build_phase_ops(spec, Strategy("dense"), _decode_scenario(batch, c, dtype),
                               "decode").ops
        ops += build_phase_ops(spec, Strategy("static_depth", draft_sparsity),
                               _decode_scenario(batch, c, dtype), "decode").ops
        ops += build_phase_ops(spec, Strategy("dense"),
                               _decode_scenario(batch, c, dtype, gamma + 1), "decode").ops
    return ops


def predict_speculative(spec: ModelSpec, draft_sparsity: float, batch: int, prompt_len: int,
                        out_tokens: int, gamma: int, alpha: float, iterations: Optional[float],
                        times: OpTimes, dtype: str = "fp32") -> SpecPrediction:
    """The cost model's decode times from this device's measured op times (``times``: as
    validate prices its rows, the dispatch probe's eager overheads included when it ran): the
    draft step, validate's prediction of the static-depth model at ``draft_sparsity``; the
    verification, the dense model's decode forward of γ + 1 tokens a sequence; the dense step;
    each averaged over the contexts P … P+O−1 as plan averages them (:func:`mean_step`).
    Speculative decode = ``iterations`` (the run's realised count, so acceptance is no source
    of error) × (γ · draft step + verification), and with E[iterations] (:func:`batch_iterations`)
    for reference; dense decode = O × the mean dense step.  A rollback is priced at 0 (a pointer
    move)."""
    from .compare import predict

    draft = Strategy("static_depth", draft_sparsity)
    dense = Strategy("dense")
    P, O, B = prompt_len, out_tokens, batch

    def ms(strat, tokens):
        return lambda c: predict(spec, strat, _decode_scenario(B, c, dtype, tokens), "decode",
                                 times).latency_ms

    step = mean_step(ms(draft, 1), P, O)
    ver = mean_step(ms(dense, gamma + 1), P, O)
    dstep = mean_step(ms(dense, 1), P, O)
    it = gamma * step.ms + ver.ms
    exp_n = sp.batch_iterations(alpha, gamma, O, B)
    return SpecPrediction(step.ms, ver.ms, dstep.ms, it, iterations, exp_n,
                          None if iterations is None else iterations * it, exp_n * it,
                          O * dstep.ms, ver.contexts)


# ============================================================== validate-speculative


@dataclass
class SpecRow:
    """One decode batch: the speculative decode measured against the dense one and predicted."""
    batch: int
    prompt_len: int
    out_tokens: int
    gamma: int
    alpha: float
    draft_sparsity: float
    draft_layers: int
    layers: int
    iterations: int
    expected_iterations: float
    tokens_min: int
    tokens_max: int
    tokens_per_iteration: float
    dense_measured_ms: float
    spec_measured_ms: float
    measured_speedup: float
    measured_low: float
    measured_high: float
    dense_predicted_ms: float
    spec_predicted_ms: float
    predicted_speedup: float
    expected_speedup: float  # with E[iterations] instead of the realised count
    error: float  # predicted / measured speedup − 1
    draft_step_predicted_ms: float
    draft_step_measured_ms: float
    verify_predicted_ms: float
    verify_measured_ms: float
    dense_step_predicted_ms: float
    dense_step_measured_ms: float
    rollback_measured_ms: float
    dense_spread: float
    spec_spread: float
    repeats: int
    load: tuple
    contended: bool
    notes: tuple = ()
    #: op times behind the prediction measured unstable (under load, or rounds that disagreed)
    loaded_ops: int = 0

    @property
    def dense_latency_error(self) -> float:
        return self.dense_predicted_ms / self.dense_measured_ms - 1.0

    @property
    def spec_latency_error(self) -> float:
        return self.spec_predicted_ms / self.spec_measured_ms - 1.0

    def to_dict(self) -> dict:
        from dataclasses import asdict

        d = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}
        d["load"] = [round(x, 2) for x in self.load]
        d["notes"] = list(self.notes)
        d["dense_latency_error"] = round(self.dense_latency_error, 6)
        d["spec_latency_error"] = round(self.spec_latency_error, 6)
        return d


def _row(spec: ModelSpec, pred: SpecPrediction, meas: SpecMeasurement, s: float, E: int,
         alpha: float, repeats: int) -> SpecRow:
    run = meas.run
    ms = meas.speedup
    ps = pred.speedup
    dense_step = meas.dense_median_ms / run.out_tokens
    return SpecRow(
        meas.batch, run.prompt_len, run.out_tokens, run.gamma, alpha, s, E, spec.num_layers,
        run.iterations, pred.expected_iterations, min(run.tokens), max(run.tokens),
        run.tokens_per_iteration, meas.dense_median_ms, meas.spec_median_ms, ms, meas.low,
        meas.high, pred.dense_decode_ms, pred.spec_decode_ms, ps, pred.expected_speedup,
        ps / ms - 1.0, pred.draft_step_ms, run.draft_step_ms, pred.verify_ms, run.verify_ms,
        pred.dense_step_ms, dense_step, run.rollback_ms, meas.dense_spread, meas.spec_spread,
        repeats, meas.load, meas.contended, tuple(meas.notes))


def validate_speculative(model, batches, *, draft_sparsity: float = 0.75, gamma: int = 4,
                         alpha: float = 0.9, prompt_len: int = 64, out_tokens: int = 64,
                         repeats: int = 3, warmup: int = 1, seed: int = 0, dtype: str = "fp32",
                         cache=None, op_repeats: Optional[int] = None,
                         probe_overhead: bool = True,
                         on_progress: Optional[Callable[[str], None]] = None,
                         on_warning: Optional[Callable[[str], None]] = None,
                         on_row: Optional[Callable[[SpecRow], None]] = None) -> list:
    """Build ``model`` (a preset, config or raw config dict) dense with random weights, and for
    each decode batch run self-speculative decoding with its early exit at ``draft_sparsity``
    (γ, forced α) against the plain greedy decode, timed in interleaved pairs; predict both
    from this device's op times (the dispatch probe's eager overheads first, as validate) and
    the realised iterations.  One :class:`SpecRow` a batch."""
    import torch

    from ..hf.config import VALIDATE_FAMILIES, check_buildable, raw_config, torch_dtype
    from .build import build_from_spec
    from .compare import _ContentionWatch, _probe_overheads, _release
    from .run import local_torch_device
    from .stability import machine_quiet

    say = on_progress or (lambda m: None)
    raw, spec = raw_config(model)
    check_spec(spec)
    E = draft_layers_of(spec.num_layers, draft_sparsity, spec)
    _check_run(out_tokens, gamma, alpha)
    device = local_torch_device()
    torch_dtype(dtype)
    if device == "cpu":
        from ..device.local import cpu_threads

        torch.set_num_threads(cpu_threads())
    batches = tuple(batches)
    times = OpTimes(dtype, cache, on_progress=say, repeats=op_repeats)
    rows: list = []
    try:
        cases = [("decode", b, prompt_len) for b in batches]
        if device == "cpu" and probe_overhead and spec.model_type in VALIDATE_FAMILIES:
            if on_warning is not None:
                on_warning(f"{spec.model_type}: the dispatch probe's clones cannot be built for "
                           "this architecture, so the eager framework overhead is not measured")
        elif device == "cpu" and probe_overhead:
            _probe_overheads(raw, spec, cases, times, dtype, cache, None, say)
        say("measuring the ops of every prediction")
        every = []
        for b in batches:
            every += prediction_ops(spec, draft_sparsity, b, prompt_len, out_tokens, gamma, dtype)
        times.ensure(every)
        if device == "cpu":
            shaky = times.unstable(every)
            if shaky and machine_quiet():
                say(f"re-measuring {len(shaky)} op(s) left unstable, the machine being quiet now")
                times.remeasure(shaky)
        say(f"building dense {spec.name} ({dtype}, {device})")
        check_buildable(spec)
        built = build_from_spec(raw, spec, Strategy("dense"), device=device, dtype=dtype,
                                seed=seed)
        use_spec_attention(built.model)
        watch = _ContentionWatch(device, on_warning)
        try:
            for b in batches:
                meas = measure_speculative(built, b, prompt_len, out_tokens, gamma, alpha,
                                           draft_layers=E, seed=seed, repeats=repeats,
                                           warmup=warmup, device=device, contention=watch,
                                           on_progress=say)
                pred = predict_speculative(spec, draft_sparsity, b, prompt_len, out_tokens,
                                           gamma, alpha, meas.run.iterations, times, dtype)
                row = _row(spec, pred, meas, draft_sparsity, E, alpha, repeats)
                shaky = times.unstable(prediction_ops(spec, draft_sparsity, b, prompt_len,
                                                      out_tokens, gamma, dtype))
                if shaky:
                    row.loaded_ops = len(shaky)
                    row.notes += (f"{len(shaky)} op time(s) behind the prediction measured "
                                  "unstable (under load, or rounds that disagreed)",)
                rows.append(row)
                if on_row is not None:
                    on_row(row)
        finally:
            del built
            _release(device)
    finally:
        times.close()
    return rows


def check_spec(spec: ModelSpec) -> None:
    """A model this check can run: dense (no experts), attention through SDPA (no soft cap),
    and every layer's attention full (a sliding window's cache cannot be cropped as here)."""
    if spec.moe is not None:
        raise UserError(f"{spec.name}: validate-speculative runs dense models (a mixture of "
                        "experts' draft is not offered)")
    att = spec.architecture.attention if spec.architecture else ()
    if any(e.softcap for e in att):
        raise UserError(f"{spec.name}: a soft-capped attention runs transformers' eager path, "
                        "which the verification's mask does not go through")
    if spec.model_type not in ("llama", "qwen2", "qwen3", "mistral"):
        raise UserError(f"{spec.name}: validate-speculative runs llama, qwen2, qwen3 and mistral "
                        f"models (not {spec.model_type})")


def summary(rows: list) -> dict:
    """Median, p90 and worst |error| of the predicted speedups, and the signed median."""
    from .compare import _spread_of

    errs = [r.error for r in rows]
    if not errs:
        return {"n": 0}
    s = _spread_of(errs)
    return {"n": len(errs), "median_abs_error": s["median_abs"], "p90_abs_error": s["p90_abs"],
            "worst_abs_error": s["worst_abs"], "median_error": s["median"]}
