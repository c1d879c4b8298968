"""Predicted against measured: op times for the estimator, the prediction of a phase, and
:func:`validate`, which builds each pruned model, times it against the dense one and
compares the speedups."""

from __future__ import annotations

import os
import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Optional

from .. import families
from ..families.phase_ops import build_phase_ops
from ..families.strategy import Strategy
from ..pricing import uncertainty
from ..errors import MeasureError
from ..model.layer import overhead_phase
from ..model.spec import ModelSpec
from ..model.scenario import Scenario
from .build import build_from_spec
from ..hf.config import VALIDATE_FAMILIES, check_buildable, raw_config, torch_dtype
from .op_times import OpTimes
from .probe import dispatch_probe
from .run import PhaseRun, local_torch_device
from .stability import MAX_ROUNDS, TOLERANCE, cpu_contended, machine_quiet, measure_speedup

STANDARD_SPARSITIES = (0.25, 0.5)


def standard_families() -> tuple[str, ...]:
    """The standard set of ``validate --all`` and the accuracy benchmark (the registry's
    ``validate_standard`` families), in the registry's order."""
    return tuple(f.name for f in families.all_families() if f.validate_standard)


def extra_families() -> tuple[str, ...]:
    """The other pruned families (``validate --all`` without ``--core-only``)."""
    return tuple(f.name for f in families.all_families()
                 if not f.validate_standard and not f.is_baseline)


# ============================================================== prediction


def predict(spec: ModelSpec, strategy: Strategy, scenario: Scenario, phase: str,
            times: OpTimes):
    """pis-tui's estimate of one phase on the local device from measured op times."""
    from ..pricing.estimator import Estimator
    from ..device.local import local_device

    po = build_phase_ops(spec, strategy, scenario, phase)
    times.ensure(po.ops)
    est = Estimator(local_device(), times.records())
    return est.estimate(po)


# ============================================================== validate


@dataclass
class ValidationRow:
    strategy: str
    sparsity: float
    achieved_sparsity: float
    phase: str
    batch: int
    length: int  # prompt length (prefill) or context length (decode)
    predicted_ms: float
    measured_ms: float
    dense_predicted_ms: float
    dense_measured_ms: float
    predicted_speedup: float
    measured_speedup: float
    error: float  # predicted_speedup / measured_speedup − 1
    flops_speedup: float = 1.0
    flops_error: float = 0.0  # the naive predictor's error (FLOPs ratio vs measured)
    timing_source: str = "measured"
    measured_spread: float = 0.0  # IQR / median of the pruned model's samples
    dense_spread: float = 0.0
    repeats: int = 0
    granularity: str = "layer"
    notes: tuple = ()
    #: how both models were timed: "cuda-graph" (each forward replayed from a CUDA graph, as
    #: the ops behind the prediction were) or "eager" (the CPU, or a capture that failed)
    timing: str = "eager"
    #: a CUDA graph capture failed (of the dense or the pruned model), so both were timed
    #: eager: host overhead the prediction does not price is in the measured times
    capture_failed: bool = False
    capture_error: str = ""
    #: the measured speedup's ~95 % interval (median of the interleaved pairs' ratios;
    #: :mod:`pis_tui.validation.stability`), the pairs and rounds it took, and whether it
    #: met the tolerance: an unstable row shows no speedup figure, only its interval
    measured_low: float = 0.0
    measured_high: float = 0.0
    pairs: int = 0
    rounds: int = 1
    stable: bool = True
    #: other processes were using this machine's cores while the row was timed
    contended: bool = False
    #: the family's physical ceiling for this phase (dense roofline work over the pruned
    #: one's), and whether the measured speedup lies above it by more than its interval
    ceiling: float = float("inf")
    above_ceiling: bool = False
    #: the prediction's own trust flags (the sweep's rules, pis_tui.pricing.uncertainty): its interval
    #: above the family's ceiling, or its dense and pruned op times measured under different
    #: load; a flagged prediction is shown but left out of the error summary
    prediction_flags: tuple = ()

    #: tensor parallelism (``validate --tp``): degree, backend, threads a rank, the predicted
    #: collectives' time, the collectives measured (with their spread) and whether one was
    #: unstable; None on one device
    tp: Optional[dict] = None
    #: an MoE model: the routing each prediction was made from, recorded from the model's own
    #: timed forwards (``{"dense": …, "pruned": …}``, each a
    #: :class:`pis_tui.validation.routing_files.RecordedRouting` dict with its file); None for a
    #: dense model
    routing: Optional[dict] = None
    #: ``validate --precision``: the quantized format every model of the row was served in
    #: (its speedup: the pruned model against the dense one, both quantized; "" unquantized)
    #: and the case's quantized dense model against the unquantized one (a row of its own:
    #: ``predicted_ms`` / ``measured_ms`` the quantized model's, ``dense_…`` the unquantized)
    precision: str = ""
    quantization: Optional["ValidationRow"] = None
    #: the activation dtype (what ``quantization`` compares the quantized model against)
    dtype: str = ""

    @property
    def status(self) -> str:
        return "ok" if self.stable else "unstable"

    @property
    def latency_error(self) -> Optional[float]:
        """The pruned model's predicted latency against its measured one (predicted / measured
        − 1): what plan's TTFT, TPOT and throughput rest on, which a speedup's error hides."""
        return _ratio_error(self.predicted_ms, self.measured_ms)

    @property
    def dense_latency_error(self) -> Optional[float]:
        """The dense model's predicted latency against its measured one."""
        return _ratio_error(self.dense_predicted_ms, self.dense_measured_ms)

    def to_dict(self, full: bool = False) -> dict:
        keys = ("strategy", "sparsity", "achieved_sparsity", "phase", "batch", "length",
                "predicted_ms", "measured_ms", "dense_predicted_ms", "dense_measured_ms",
                "predicted_speedup", "measured_speedup", "error", "timing", "capture_failed")
        d = {k: _round(getattr(self, k)) for k in keys}
        d["status"] = self.status
        d["measured_interval"] = [_round(self.measured_low), _round(self.measured_high)]
        d["speedup_ceiling"] = _round(self.ceiling) if self.ceiling != float("inf") else None
        d["above_ceiling"] = self.above_ceiling
        d["contended"] = self.contended
        d["prediction_flags"] = list(self.prediction_flags)
        d["latency_error"] = _round(self.latency_error)
        d["dense_latency_error"] = _round(self.dense_latency_error)
        if not self.stable:  # no figure for an unstable speedup: its interval says what it is
            d["measured_speedup"] = None
            d["error"] = None
        if self.tp is not None:
            d["tp"] = self.tp
        if self.routing is not None:
            d["routing"] = self.routing
        if self.precision:
            from .quantized import quantization_dict

            d["precision"] = self.precision
            if self.quantization is not None:
                d["quantization"] = quantization_dict(self.quantization, self.precision,
                                                      self.dtype)
        if full:
            for k in ("flops_speedup", "flops_error", "timing_source", "measured_spread",
                      "dense_spread", "repeats", "granularity", "capture_error", "pairs",
                      "rounds"):
                d[k] = _round(getattr(self, k))
            if not self.stable:
                d["flops_error"] = None
            d["notes"] = list(self.notes)
        return d


def _round(x):
    return round(x, 6) if isinstance(x, float) else x


def _ratio_error(predicted: float, measured: float) -> Optional[float]:
    if not measured or measured <= 0 or predicted is None:
        return None
    return predicted / measured - 1.0


def _spread_of(values: list) -> dict:
    """Median (signed: the bias), median |·|, p90 |·| and worst |·| of relative errors."""
    if not values:
        return {}
    mags = sorted(abs(x) for x in values)
    p90 = mags[min(len(mags) - 1, max(0, math.ceil(0.9 * len(mags)) - 1))]
    return {"median": statistics.median(values), "median_abs": statistics.median(mags),
            "p90_abs": p90, "worst_abs": mags[-1]}


def standard_strategies(extra: bool = True, sparsities=STANDARD_SPARSITIES,
                        device: str = "cpu") -> list:
    fams = standard_families() + (extra_families() if extra else ())
    return [Strategy(f, s) for f in fams for s in families.get(f).sparsity_grid(sparsities)]


def validate(model: str | dict, strategies: list, phases=("prefill", "decode"), *,
             prefill_batch: int = 1, prefill_batches=None, prompt_len: int = 128,
             decode_batches=(1, 16),
             context_len: int = 256, dtype: Optional[str] = None, repeats: int = 5,
             warmup: int = 1, cache=None, device: Optional[str] = None, seed: int = 0,
             op_repeats: Optional[int] = None,
             on_progress: Optional[Callable[[str], None]] = None,
             on_row: Optional[Callable[[ValidationRow], None]] = None,
             probe_overhead: bool = True, probes: Optional[dict] = None,
             skip: Optional[Callable[[Strategy, str, int, int], bool]] = None,
             tolerance: float = TOLERANCE, max_rounds: int = MAX_ROUNDS,
             on_warning: Optional[Callable[[str], None]] = None,
             routing_dir: Optional[str] = None, precision: str = "") -> list:
    """Build each pruned model, time it against the dense one (interleaved), and compare the
    measured speedups with pis-tui's predictions.  Returns one :class:`ValidationRow` per
    strategy × phase × batch (``prefill_batches``, if given, replaces ``prefill_batch``).

    On CUDA every forward is a CUDA-graph replay (see :class:`PhaseRun`); a failed capture
    makes both models of that row run eager and sets the row's ``capture_failed``.  Each row
    goes to ``on_row`` and to the cache as soon as it is timed, so an error later (a CUDA
    error that poisons the process is reported as such) loses none of them.  ``skip(strategy,
    phase, batch, length)`` True leaves that row out (a resumed run's rows already timed).

    On the CPU the eager framework overhead is measured first (:func:`dispatch_probe`, once per
    code path, unless the cache already holds it) so the predictions include it; ``probes``
    (a dict) receives each probe's result by code path.

    Each row's speedup is timed in interleaved rounds of ``repeats`` pairs until its ~95 %
    interval is within ``tolerance`` or ``max_rounds`` rounds were taken (then the row is
    unstable: :mod:`pis_tui.validation.stability`); a measured speedup whose interval lies
    above the family's physical ceiling is flagged ``above_ceiling``; on the CPU the machine
    is probed for contention before each round and ``on_warning`` hears when it is busy.

    An MoE model's predictions use each built model's own routing (dense and pruned apart),
    recorded from the forwards it times (:mod:`pis_tui.validation.routing_files`) into
    ``routing_dir`` (a new temporary directory if None): each row names its files.

    ``precision`` (``int4``, ``int4-g64``, ``fp8``…; :mod:`pis_tui.validation.quantized`):
    every model is built, then its linears quantized (:func:`pis_tui.hf.quantize.quantize_model`),
    and predicted from the op list at that precision; each row's speedup is against the dense
    model at the same precision, and carries (``quantization``) the case's quantized dense
    model timed against the unquantized one: the quantization's own speedup, predicted and
    measured.  On the CPU the dispatch probe's clones are quantized too (a quantized linear
    runs other Python than nn.Linear), its costs kept for this run's quantized predictions."""
    import torch

    say = on_progress or (lambda msg: None)
    raw, spec = raw_config(model)
    check_buildable(spec)
    device = device or local_torch_device()
    dtype = dtype or ("fp32" if device == "cpu" else "bf16")
    torch_dtype(dtype)
    from .quantized import check_precision

    precision = check_precision(spec, strategies, precision, device, dtype)
    if device == "cpu":
        from ..device.local import cpu_threads

        torch.set_num_threads(cpu_threads())
    cases = _cases(phases, tuple(prefill_batches or (prefill_batch,)), prompt_len,
                   decode_batches, context_len)
    todo = {strat: [c for c in cases if not (skip and skip(strat, *c))] for strat in strategies}
    strategies = [st for st in strategies if todo[st]]
    if not strategies:
        return []
    _check_memory(spec, strategies, cases, dtype, device, prompt_len, context_len, precision)
    cases = [c for c in cases if any(c in todo[st] for st in strategies)]
    plain_times = OpTimes(dtype, cache, on_progress=say, repeats=op_repeats)
    # a quantized run's predictions: the same op store, the quantized clones' overhead costs
    times = plain_times.with_overheads() if precision else plain_times
    if device == "cpu" and probe_overhead and spec.model_type in VALIDATE_FAMILIES:
        # the probe's clones (low rank, dynamic depth) cannot be built for this architecture:
        # the eager overhead stays unmeasured and every prediction says it omits it
        if on_warning is not None:
            on_warning(f"{spec.model_type}: the dispatch probe's clones cannot be built for this "
                       "architecture, so the eager framework overhead is not measured: absolute "
                       "latencies read low (the estimates' notes say so)")
    elif device == "cpu" and probe_overhead:
        _probe_overheads(raw, spec, cases, plain_times, dtype, cache, probes, say)
        if precision:
            _probe_overheads(raw, spec, cases, times, dtype, None, probes, say, precision)
    if spec.moe is None:
        _measure_prediction_ops(spec, strategies, cases, plain_times, dtype, device, say,
                                precision)
    else:  # the ops hang on each model's recorded routing: measured as each row predicts
        import tempfile

        routing_dir = routing_dir or tempfile.mkdtemp(prefix="pis-tui-validate-routing-")
    timer = _RowTimer(raw, spec, dtype, device, times, cache, say, seed=seed, repeats=repeats,
                      warmup=warmup, tolerance=tolerance, max_rounds=max_rounds,
                      contention=_ContentionWatch(device, on_warning), on_row=on_row,
                      routing_dir=routing_dir, precision=precision, plain_times=plain_times)
    say(f"building dense {spec.name} ({precision or dtype}, {device})")
    dense = build_from_spec(raw, spec, Strategy("dense"), device=device, dtype=dtype, seed=seed,
                            precision=precision)
    try:
        if precision:
            timer.time_quantization(dense, cases)
        for strat in strategies:
            timer.time_strategy(dense, strat, todo[strat])
    finally:
        plain_times.close()
        del dense
        _release(device)
    return timer.rows


def _cases(phases, prefill_batches: tuple, prompt_len: int, decode_batches,
           context_len: int) -> list:
    """The (phase, batch, length) rows of every strategy: the prompt length for prefill, the
    context length for decode."""
    cases = []
    for ph in phases:
        batches = prefill_batches if ph == "prefill" else tuple(decode_batches)
        for b in batches:
            cases.append((ph, b, prompt_len if ph == "prefill" else context_len))
    return cases


def _scenario(ph: str, b: int, length: int, dtype: str, routing: str = "balanced",
              precision: str = "") -> Scenario:
    """The scenario of one row: batch and length on its phase's side, 1 on the other (an MoE
    model's: the routing file recorded from the model the prediction is of), served at
    ``precision`` when the models timed are quantized."""
    return Scenario(prefill_batch=b if ph == "prefill" else 1,
                    prompt_len=length if ph == "prefill" else 1,
                    decode_batch=b if ph == "decode" else 1,
                    context_len=length if ph == "decode" else 1, dtype=dtype, routing=routing,
                    precision=precision)


def _check_memory(spec: ModelSpec, strategies: list, cases: list, dtype: str, device: str,
                  prompt_len: int, context_len: int, precision: str = "") -> None:
    """Refuse, before any model is built, a run whose dense and largest pruned model do not
    fit the device at once (quantized: the quantized dense model and an unquantized one)."""
    from .memory_check import check as check_memory, validate_need

    ph_of = {c[0] for c in cases}
    check_memory(validate_need(
        spec, strategies, dtype, prefill_batch=max([c[1] for c in cases if c[0] == "prefill"] or [1]),
        prompt_len=prompt_len, decode_batch=max([c[1] for c in cases if c[0] == "decode"] or [1]),
        context_len=context_len, phases=tuple(ph for ph in ("prefill", "decode") if ph in ph_of),
        precision=precision),
        device, f"validate {spec.name} ({dtype}: the dense and a pruned model at once)" if not
        precision else f"validate {spec.name} ({precision}: the quantized dense model and an "
                       f"unquantized {dtype} one at once)")


def _probe_overheads(raw: dict, spec: ModelSpec, cases: list, times: OpTimes, dtype: str,
                     cache, probes: Optional[dict], say: Callable[[str], None],
                     precision: str = "") -> None:
    """The CPU's eager framework overhead, probed once per code path the cases take (unless
    the cache or ``probes`` already holds it); each probe's result goes to ``probes`` (a
    quantized probe's by "<path> <precision>").  Quantized (``precision``): the clones are
    quantized, their costs go to ``times`` (an :meth:`OpTimes.with_overheads` view) only,
    never to the cache, so they are probed in every run."""
    from ..model.ops import Overhead

    have = set()
    if cache is not None:
        have = {m.key for m in cache.get_measurements(times._fingerprint(), dtype)
                if m.key.startswith("ovh:")}
    for ph, b, length in cases:
        path = overhead_phase(ph, b)
        label = f"{path} {precision}" if precision else path
        if Overhead("x", "forward", path, 1.0, dtype).key() in have or \
                (probes is not None and label in probes):
            continue
        say(f"measuring the framework overhead ({label}) with tiny clones")
        res = dispatch_probe(raw, spec, ph, b, length, times, cache=cache, precision=precision)
        have.add(Overhead("x", "forward", path, 1.0, dtype).key())
        if probes is not None:
            probes[label] = res


def _measure_prediction_ops(spec: ModelSpec, strategies: list, cases: list, times: OpTimes,
                            dtype: str, device: str, say: Callable[[str], None],
                            precision: str = "") -> None:
    """Every op the comparisons need, measured in one go: on the CPU an op's rounds then lie
    far apart in time (a slow spell of the machine spoils rounds, not ops).  Quantized: every
    model's at ``precision``, and the unquantized dense model's (the quantization's row)."""
    say("measuring the ops of every prediction")
    every = []
    for ph, b, length in cases if precision else ():
        every += build_phase_ops(spec, Strategy("dense"), _scenario(ph, b, length, dtype), ph).ops
    for strat in [Strategy("dense")] + list(strategies):
        for ph, b, length in cases:
            every += build_phase_ops(spec, strat, _scenario(ph, b, length, dtype,
                                                            precision=precision), ph).ops
    times.ensure(every)
    if device == "cpu":
        # ops measured under load are re-measured once if the machine is quiet now, so the
        # predictions rest on quiet op times where they can (else they are flagged loaded_ops)
        shaky = times.unstable(every)
        if shaky and machine_quiet():
            say(f"re-measuring {len(shaky)} op(s) left unstable (taken under load, or rounds "
                "that disagreed), the machine being quiet now")
            fixed = times.remeasure(shaky)
            say(f"{fixed} of {len(shaky)} now stable")


class _ContentionWatch:
    """Whether other processes hold this machine's cores (always False off the CPU), asked
    before each round and told, after one, the CPU others used; ``on_warning`` hears the
    first contention found, once."""

    def __init__(self, device: str, on_warning: Optional[Callable[[str], None]]):
        self.device = device
        self.on_warning = on_warning
        self.warned: list = []

    def __call__(self, others_cores: Optional[float] = None) -> bool:
        """Before a round: the probe and the load average; after one (``others_cores``): the
        CPU other processes used during it."""
        if self.device != "cpu":
            return False
        if others_cores is not None:
            c = {"contended": True, "why": f"other processes used {others_cores:.1f} of its "
                                           f"{os.cpu_count() or 1} cores while a row was timed"}
        else:
            c = cpu_contended()
            c["why"] = (f"load {c['load']:.1f} on {c['cores']} cores; a small GEMM "
                        f"{c.get('ratio', 1.0):.1f}× slower on every thread than on one")
        if c["contended"] and not self.warned and self.on_warning is not None:
            self.warned.append(c)
            self.on_warning(f"other processes are using this machine's cores ({c['why']}): "
                            f"end-to-end times are inflated and noisy; rows whose speedup does "
                            f"not settle are reported unstable")
        return c["contended"]


class _RowTimer:
    """The rows of one :func:`validate` call: each pruned model built in turn, each of its
    rows predicted and timed against the dense model, then kept (``rows``), stored in the
    cache and handed to ``on_row`` as soon as it is timed."""

    def __init__(self, raw: dict, spec: ModelSpec, dtype: str, device: str, times: OpTimes,
                 cache, say: Callable[[str], None], *, seed: int, repeats: int, warmup: int,
                 tolerance: float, max_rounds: int, contention: _ContentionWatch,
                 on_row: Optional[Callable[[ValidationRow], None]],
                 routing_dir: Optional[str] = None, precision: str = "",
                 plain_times: Optional[OpTimes] = None):
        self.raw, self.spec, self.dtype, self.device = raw, spec, dtype, device
        self.precision = precision
        self.plain_times = plain_times or times  # the unquantized dense model's predictions
        self.quantization: dict = {}  # case → the quantized dense against the unquantized
        self.times, self.cache, self.say = times, cache, say
        self.seed, self.repeats, self.warmup = seed, repeats, warmup
        self.tolerance, self.max_rounds = tolerance, max_rounds
        self.contention, self.on_row = contention, on_row
        self.rows: list = []
        self.dense_pred: dict = {}
        self.routing_dir = routing_dir
        self.dense_routing: dict = {}  # case → the dense model's RecordedRouting

    def time_strategy(self, dense, strat: Strategy, cases: list) -> None:
        """Build the pruned model of ``strat`` and time each of its rows; its memory is freed
        after, whatever happened."""
        self.say(f"building {strat.token} s={strat.sparsity:g}")
        pruned = build_from_spec(self.raw, self.spec, strat, device=self.device,
                                 dtype=self.dtype, seed=self.seed, precision=self.precision)
        try:
            for ph, b, length in cases:
                self._keep(self._row(dense, pruned, strat, ph, b, length))
        finally:
            del pruned
            _release(self.device)

    def time_quantization(self, dense, cases: list) -> None:
        """The quantized dense model against the unquantized one (built here, freed after),
        case by case: the quantization's own speedup, predicted (the op list at the precision
        over the unquantized one) and measured; kept by case for the rows to carry."""
        dense_strat = Strategy("dense")
        self.say(f"building dense {self.spec.name} ({self.dtype}: the quantization's baseline)")
        plain = build_from_spec(self.raw, self.spec, dense_strat, device=self.device,
                                dtype=self.dtype, seed=self.seed)
        who = f"{self.precision} dense vs {self.dtype}"
        try:
            for ph, b, length in cases:
                case = (ph, b, length)
                runs = [PhaseRun(plain, ph, b, length, seed=self.seed),
                        PhaseRun(dense, ph, b, length, seed=self.seed)]
                self.say(f"{who} {ph} batch {b}: predicting")
                de = predict(self.spec, dense_strat, _scenario(ph, b, length, self.dtype), ph,
                             self.plain_times)
                self.dense_pred[case] = pe = predict(
                    self.spec, dense_strat,
                    _scenario(ph, b, length, self.dtype, precision=self.precision), ph, self.times)
                self.say(f"{who} {ph} batch {b}: timing end to end")
                st, failed = self._time_pair(runs, dense_strat, ph, b, label=who)
                self.quantization[case] = _compared_row(dense_strat, ph, b, length, de, pe, st,
                                                        runs, failed, dense, self.times)
        finally:
            del plain
            _release(self.device)

    def _row(self, dense, pruned, strat: Strategy, ph: str, b: int, length: int) -> ValidationRow:
        """One row: the two predictions, then the two models timed end to end.  An MoE model's
        runs are prepared first and each model's routing recorded from them: each prediction
        is made from its own model's."""
        runs = [PhaseRun(dense, ph, b, length, seed=self.seed),
                PhaseRun(pruned, ph, b, length, seed=self.seed)]
        case = (ph, b, length)
        routing = None
        scen = dense_scen = _scenario(ph, b, length, self.dtype, precision=self.precision)
        if self.spec.moe is not None:
            routing = self._record(runs, strat, case)
            dense_scen = _scenario(ph, b, length, self.dtype, routing["dense"]["path"])
            scen = _scenario(ph, b, length, self.dtype, routing["pruned"]["path"])
        self.say(f"{strat.family} s={strat.sparsity:g} {ph} batch {b}: predicting")
        if case not in self.dense_pred:
            self.dense_pred[case] = predict(self.spec, Strategy("dense"), dense_scen, ph,
                                            self.times)
        pe = predict(self.spec, strat, scen, ph, self.times)
        de = self.dense_pred[case]
        self.say(f"{strat.family} s={strat.sparsity:g} {ph} batch {b}: timing end to end")
        st, failed = self._time_pair(runs, strat, ph, b, prepared=routing is not None)
        row = _compared_row(strat, ph, b, length, de, pe, st, runs, failed, pruned, self.times)
        row.routing = routing
        if self.precision:
            row.precision, row.dtype = self.precision, self.dtype
            row.quantization = self.quantization.get(case)
        return row

    def _record(self, runs: list, strat: Strategy, case: tuple) -> dict:
        """Prepare both runs and record each model's routing from them (the dense model's once
        per case: the same model, the same inputs); the runs are closed if this fails."""
        from .routing_files import record_row

        ph, b, length = case
        self.say(f"{strat.family} s={strat.sparsity:g} {ph} batch {b}: recording the routing")
        try:
            for r in runs:
                r.prepare()
            if case not in self.dense_routing:
                self.dense_routing[case] = record_row(
                    runs[0].built, runs[0], self.routing_dir, _label("dense", ph, b, length))
            rec = record_row(runs[1].built, runs[1], self.routing_dir,
                             _label(f"{strat.token}_s{strat.sparsity:g}", ph, b, length),
                             dense_moe_layers=self.dense_routing[case].moe_layers)
        except BaseException:
            for r in runs:
                r.close()
            raise
        return {"dense": self.dense_routing[case].to_dict(), "pruned": rec.to_dict(),
                "label": rec.label()}

    def _time_pair(self, runs: list, strat: Strategy, ph: str, b: int,
                   prepared: bool = False, label: str = "") -> tuple:
        """The measured speedup of the pruned run over the dense one (both eager when either
        capture failed), and the failed captures as (who, run); a run that fails raises
        :class:`MeasureError`.  The runs are closed after, whatever happened."""
        try:
            for r in runs if not prepared else ():
                r.prepare()
            failed = [(who, r) for who, r in zip(("dense", "pruned"), runs)
                      if r.capture == "failed"]
            if failed:  # like with like: both eager
                for r in runs:
                    r.drop_graph()
            say = self.say
            label = label or f"{strat.family} s={strat.sparsity:g}"
            st = measure_speedup(
                runs[0], runs[1], self.repeats, self.warmup, tolerance=self.tolerance,
                max_rounds=self.max_rounds, contention=self.contention,
                others=self.contention if self.device == "cpu" else None,
                on_round=lambda k, m, lo, hi: say(
                    f"{label} {ph} batch {b}: round {k}: {m:.2f}× ({lo:.2f}–{hi:.2f})"))
        except (RuntimeError, NotImplementedError) as e:
            msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            where = f"{label} {ph} batch {b}"
            if self.device != "cpu" and _sticky(msg):
                raise MeasureError(
                    f"{where}: the GPU hit an unrecoverable error ({msg}); the "
                    f"{len(self.rows)} row(s) timed so far are kept") from None
            raise MeasureError(f"{where}: the model failed to run ({msg})") from None
        finally:
            for r in runs:
                r.close()
        return st, failed

    def _keep(self, row: ValidationRow) -> None:
        """Keep a timed row: in ``rows``, in the cache, and to ``on_row``."""
        self.rows.append(row)
        if self.cache is not None and hasattr(self.cache, "put_validation"):
            self.cache.put_validation([validation_record(row, self.spec, self.dtype, self.device)])
        if self.on_row:
            self.on_row(row)


def _label(who: str, ph: str, b: int, length: int) -> str:
    """A routing file's name: the model, the phase, the batch and the length."""
    import re

    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{who}_{ph}_b{b}_L{length}")


def _compared_row(strat: Strategy, ph: str, b: int, length: int, de, pe, st, runs: list,
                  failed: list, pruned, times: OpTimes) -> ValidationRow:
    """The row comparing the predictions (dense ``de``, pruned ``pe``) with the measured
    speedup ``st``: the FLOPs ratio, the family's ceiling, the prediction's trust flags and
    the notes of the build, the runs and the measurement."""
    td, tp = st.dense, st.pruned
    ps = de.latency_ms / pe.latency_ms
    ms_ = st.speedup
    fs = de.flops / pe.flops if pe.flops else 1.0
    ceil = _ceiling(strat, de, pe, times)
    # the roofline ceiling assumes every op reaches the same share of its roofline;
    # on a real device the removed ops may run less efficiently than the kept
    # embedding and lm_head, so a row is flagged only above both the ceiling and
    # the FLOPs ratio (the 2.16× for half the layers was above both)
    # and, for a measurement, above the prediction's interval too: the model of
    # what the pruned ops can do from their own measured times
    plo, phi = uncertainty.interval(ps, uncertainty.log_sigma(de, pe))
    above = st.low > max(ceil, fs, phi) * (1.0 + 1e-9)
    pflags = uncertainty.flags(plo, max(ceil, fs),
                               uncertainty.mixed_conditions(de, pe))
    loaded = uncertainty.loaded_ops(de, pe)
    if loaded:
        pflags += ("loaded_ops",)
    notes = tuple(pruned.notes) + tuple(n for r in runs for n in r.notes) + \
        tuple(st.notes) + ((f"prediction not compared: {loaded}",) if loaded else ())
    if above:
        notes += (f"measured speedup {st.low:.2f}–{st.high:.2f}× lies above the "
                  f"{strat.family} ceiling {ceil:.2f}× (the share of roofline "
                  f"work it keeps), its FLOPs ratio {fs:.2f}× and the prediction "
                  f"{plo:.2f}–{phi:.2f}×: the dense run was slowed by something "
                  "else",)
    mode = "cuda-graph" if all(r.capture == "graph" for r in runs) and not failed \
        else "eager"
    cap_err = "; ".join(f"{who}: {r.capture_error}" for who, r in failed)
    return ValidationRow(
        strat.token, strat.sparsity, pe.achieved_sparsity, ph, b, length,
        pe.latency_ms, tp.median_ms, de.latency_ms, td.median_ms, ps, ms_,
        ps / ms_ - 1.0, fs, fs / ms_ - 1.0, pe.timing_source, tp.spread,
        td.spread, st.pairs, strat.granularity, notes, timing=mode,
        capture_failed=bool(failed), capture_error=cap_err,
        measured_low=st.low, measured_high=st.high, pairs=st.pairs,
        rounds=st.rounds, stable=st.stable, contended=st.contended,
        ceiling=ceil, above_ceiling=above, prediction_flags=pflags)


def _ceiling(strategy: Strategy, dense, pruned, times: OpTimes) -> float:
    """The family's physical ceiling for this phase on the local device (the dense phase's
    roofline work over the pruned one's, the rule the explorer's flags use), from the op
    lists the two predictions already priced."""
    from ..pricing.estimator import Estimator
    from ..device.local import local_device

    est = Estimator(local_device(), times.records())
    return families.get(strategy.family).speedup_ceiling(
        [p.op for p in dense.ops], [p.op for p in pruned.ops], est.work_ms)


def _sticky(msg: str) -> bool:
    from ..timing.measure import cuda_alive, is_sticky_cuda_error

    return is_sticky_cuda_error(msg) or not cuda_alive()


def _release(device: str) -> None:
    """Free a model's memory (and, on CUDA, its graphs' pools) before the next is built."""
    import gc

    gc.collect()
    if device != "cpu":
        import torch

        try:
            torch.cuda.empty_cache()
        except RuntimeError:  # a poisoned context: reported where it happened
            pass


def validation_record(row: ValidationRow, spec: ModelSpec, dtype: str, device: str) -> dict:
    from ..device.local import local_device

    d = row.to_dict(full=True)
    fp = local_device().fingerprint
    if row.tp is not None:  # a rank's device at tp N: kept apart from its one-device rows
        fp = f"{fp} tp{row.tp['tp']}"
    if row.precision:  # quantized models: kept apart from the unquantized rows
        fp = f"{fp} {row.precision}"
    d.update(model=spec.name, dtype=dtype, device=fp, fingerprint=fp, torch_device=device,
             measured_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    return d


def accuracy_summary(rows: list) -> dict:
    """Median and worst |error| of the predicted speedups (and of the FLOPs ratio) over the
    stable rows whose prediction is unflagged; ``unstable``: how many rows had no settled
    speedup, ``prediction_flagged``: how many predictions broke the trust rules (left out).
    Quantized rows (``validate --precision``): ``quantization``, the same over the
    quantization's own speedups (:func:`pis_tui.validation.quantized.quantization_summary`)."""
    from .quantized import quantization_summary

    quant = quantization_summary(rows)
    quant = {"quantization": quant} if quant else {}
    unstable = sum(1 for r in rows if not r.stable)
    flagged = sum(1 for r in rows if r.stable and r.prediction_flags)
    rows = [r for r in rows if r.stable and not r.prediction_flags]
    if not rows:
        return {"n": 0, "unstable": unstable, "prediction_flagged": flagged, **quant}
    errs = [abs(r.error) for r in rows]
    ferrs = [abs(r.flops_error) for r in rows]
    worst = max(rows, key=lambda r: abs(r.error))
    # absolute latency: the dense model once per case (phase, batch, length), the pruned ones
    dense, dense_timings = _dense_latency(rows)
    pruned = [r.latency_error for r in rows if r.latency_error is not None]
    return {"n": len(rows), "median_abs_error": statistics.median(errs),
            "p90_abs_error": _spread_of(errs)["p90_abs"],
            "worst_abs_error": max(errs),
            "worst": f"{worst.strategy} {worst.sparsity:g} {worst.phase} b{worst.batch}",
            "flops_median_abs_error": statistics.median(ferrs),
            "flops_worst_abs_error": max(ferrs), "unstable": unstable,
            "prediction_flagged": flagged,
            "above_ceiling": sum(1 for r in rows if r.above_ceiling),
            # predicted / measured − 1 of the latencies themselves (median signed = the bias)
            "dense_latency_error": _spread_of(list(dense.values())),
            "dense_timings": dense_timings,
            "latency_error": _spread_of(pruned), **quant}


def _dense_latency(rows: list) -> tuple:
    """The dense model's latency error once per case (phase, batch, length), against the
    median of its measurements: every row of a case times the same dense model again
    (interleaved with that row's pruned one), and on a shared CPU those timings of one model
    spread wide within a run (a committed quiet run: 72–101 ms for one decode step), so
    whichever row came last is no measure of it.  Returns ({case: error}, {"phase bB @L":
    {"n", "predicted_ms", "median_ms", "min_ms", "max_ms"}})."""
    by_case: dict = {}
    for r in rows:
        if r.dense_latency_error is not None:
            by_case.setdefault((r.phase, r.batch, r.length), []).append(r)
    errors, timings = {}, {}
    for (phase, batch, length), rs in by_case.items():
        meas = [r.dense_measured_ms for r in rs]
        med = statistics.median(meas)
        pred = statistics.median(r.dense_predicted_ms for r in rs)
        errors[(phase, batch, length)] = _ratio_error(pred, med)
        timings[f"{phase} b{batch} @{length}"] = {"n": len(meas), "predicted_ms": pred,
                                                  "median_ms": med, "min_ms": min(meas),
                                                  "max_ms": max(meas)}
    return errors, timings
