"""The facade the CLI and the TUI both call: model + device + scenario + strategies → points.

``sweep()`` builds each strategy's op list per phase (taxonomy), prices it (estimator, with
measurements from the cache and tables shipped for the GPU), and pairs each point with its
quality cost (quality model).  It never imports torch: measuring is ``profiling``'s job, and
its results reach the estimate through the cache.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field, replace
from functools import lru_cache
from importlib import metadata
from typing import Callable, Iterable, NamedTuple, Optional

from .. import __version__
from ..pricing import collectives
from ..errors import PisError, UserError
from ..pricing.estimator import Estimator
from ..device.gpus import DeviceProfile
from ..device.choose import load_gpu
from ..device.local import rank_device
from ..pricing.measured_table import load_shipped
from ..pricing.memory import footprint
from ..model.spec import ModelSpec, load_model_spec
from ..model.precision import KernelShapeError
from ..pricing.estimates import PhaseEstimate
from .compare import Comparer
from .points import Point
from ..quality.estimate import QualityEstimate
from ..model.scenario import PHASES, Scenario
from .. import families
from ..pricing import uncertainty
from ..families.phase_ops import build_phase_ops
from ..families.strategy import strategies_grid
from ..model.tensor_parallel import check_model


@dataclass
class SweepResult:
    spec: ModelSpec
    device: DeviceProfile
    scenario: Scenario
    estimates: list[PhaseEstimate]
    points: list[Point]
    phase_ops: dict = field(repr=False, default_factory=dict)
    quality_protocol: str = "lora"
    quality_metric: str = "accuracy_drop"
    quality_curves: dict = field(default_factory=dict)
    #: the quality method asked (mean | best | names) and the combination rule, in words
    quality_method: str = ""
    combo_rule: str = ""
    provenance: dict = field(default_factory=dict)
    memory: dict = field(default_factory=dict)  # memory_fit.footprint: does the dense model fit?
    notices: list = field(default_factory=list)  # e.g. a shipped table that could not be used
    #: decode speedup against decode batch (:mod:`pis_tui.decide.batch_curve`), where computed
    batch_curve: object = field(default=None, repr=False)
    #: the served precision's own effect (:func:`pis_tui.decide.precision.precision_effect`);
    #: {} unquantized
    precision: dict = field(default_factory=dict)

    @property
    def warnings(self) -> list[str]:
        return list(self.memory.get("warnings", ())) + list(self.notices)

    def dense(self, phase: str) -> PhaseEstimate:
        for e in self.estimates:
            if e.strategy == "dense" and e.phase == phase:
                return e
        raise KeyError(phase)

    def estimate_for(self, strategy: str, sparsity: float, phase: str, parts: tuple = ()) -> PhaseEstimate:
        for e in self.estimates:
            if e.strategy == strategy and e.phase == phase and abs(e.sparsity - sparsity) < 1e-9 \
                    and tuple(e.parts) == tuple(parts):
                return e
        raise KeyError((strategy, sparsity, phase, parts))

    def ops_for(self, p) -> object:
        """The op list (taxonomy.PhaseOps) behind a point (or an estimate)."""
        return self.phase_ops.get(ops_key(p.strategy, p.sparsity, p.phase, getattr(p, "parts", ())))

    def phase_points(self, phase: str) -> list[Point]:
        return [p for p in self.points if p.phase == phase]

    @property
    def pair(self) -> "Comparer":
        """Two points of a phase compared by their own ratio (pis_tui.decide.compare): what
        recommend and the explorer pass to the selection rule."""
        c = self.__dict__.get("_comparer")
        if c is None:
            by_key = {(e.strategy, round(e.sparsity, 9), e.phase, tuple(e.parts)): e
                      for e in self.estimates}
            c = Comparer(lambda p: by_key.get((p.strategy, round(p.sparsity, 9), p.phase,
                                               tuple(p.parts))))
            self.__dict__["_comparer"] = c
        return c

    def source_summary(self) -> dict[str, int]:
        """Distinct ops (by kernel key) per timing source, over the whole sweep."""
        seen: dict[str, str] = {}
        for e in self.estimates:
            for p in e.ops:
                seen.setdefault(p.op.key(), p.source)
        out: dict[str, int] = {}
        for s in seen.values():
            out[s] = out.get(s, 0) + 1
        return out


def ops_key(strategy: str, sparsity: float, phase: str, parts: tuple = ()) -> tuple:
    """The key of a sweep's op lists: (family, sparsity, phase); a combination's parts after."""
    return (strategy, sparsity, phase) + ((tuple(parts),) if parts else ())


def default_strategies() -> tuple[str, ...]:
    """What a sweep runs when no strategies are named: every pruned family, then every
    combination (each part on the coarse grid)."""
    return families.pruned() + families.combo_names()


def package_versions() -> dict:
    """The versions of pis-tui and the packages around it (torch, transformers, duckdb,
    textual) a result's provenance records, without importing them (importlib.metadata; read
    once per process).  Not :func:`pis_tui.pricing.measured_table.software_versions`: the
    versions that key measurements."""
    return dict(_package_versions())


@lru_cache(maxsize=1)
def _package_versions() -> dict:
    out = {"pis-tui": __version__}
    for pkg in ("torch", "transformers", "duckdb", "textual"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def default_dtype(device: DeviceProfile) -> str:
    return "fp32" if device.kind == "cpu" else "bf16"


def make_estimator(device: DeviceProfile, dtype: str, cache=None,
                   warnings: Optional[list] = None, engine: str = "eager") -> Estimator:
    """An estimator for `device` with what is known about it: cached measurements (local
    device), the measured table shipped for that GPU (read and checked by
    ``measured_table.load_shipped``: a table that cannot be used adds a line to ``warnings``),
    the measured peak/bandwidth (the cache's, else the shipped table's), and the collectives
    measured on it (tensor parallelism: ``collective_pricer``, see :mod:`pis_tui.pricing.collectives`)."""
    measured: Iterable = ()
    calibration: dict = {}
    if cache is not None:
        measured = cache.get_measurements(device.fingerprint, dtype)
        cal = cache.get_calibration(device.fingerprint, dtype)
        if cal:
            calibration[dtype] = cal
    shipped: Iterable = ()
    if device.measured_table:
        table, problem = load_shipped(device.measured_table)
        if problem and warnings is not None:
            warnings.append(problem)
        if table is not None:
            shipped = table.entries
            device = with_table_efficiency(device, table)
            if dtype not in calibration and (table.calibration or {}).get(dtype):
                calibration[dtype] = dict(table.calibration[dtype], source=f"shipped table {device.measured_table}")
    est = Estimator(device, measured, shipped, calibration, engine=engine)
    rows = cache.get_collectives(device.fingerprint) if cache is not None and \
        hasattr(cache, "get_collectives") else ()
    est.collective_pricer = collectives.CollectivePricer(device, rows)
    return est


def with_table_efficiency(device: DeviceProfile, table) -> DeviceProfile:
    """The device with the "efficiency" block ``calibrate`` measured into its shipped table over
    its profile's (each figure keeps its source: "measured by pis-tui calibrate ...")."""
    from dataclasses import replace

    from ..device.gpus import parse_efficiency

    block = (table.extra or {}).get("efficiency") or {}
    if not block:
        return device
    try:
        vals, _, srcs = parse_efficiency(block, f"measured table {device.measured_table}")
    except PisError:
        return device  # a malformed block: the profile's figures stand
    floor = vals.get("kernel_floor_us", device.launch_overhead_us)
    # a measured figure beats the profile's under every engine: an engine's own (fitted or
    # assumed) figure for it no longer applies
    by_engine = {eng: {k: v for k, v in figs.items() if k not in vals}
                 for eng, figs in (device.efficiency_by_engine or {}).items()}
    sources = {k: v for k, v in (device.efficiency_sources or {}).items()
               if not (":" in k and k.split(":", 1)[1] in vals)}
    return replace(device, efficiency={**device.efficiency, **vals}, efficiency_by_engine=by_engine,
                   efficiency_sources={**sources, **srcs}, launch_overhead_us=floor)


def tensor_parallel_device(spec: ModelSpec, device: DeviceProfile, tp: int) -> DeviceProfile:
    """The device one rank of ``tp`` runs on (``hardware.rank_device``), once the model's heads
    and channels are known to split over them (else one clear UserError)."""
    check_model(spec, tp)
    return rank_device(device, tp)


def check_collectives(est: Estimator, tp: int) -> None:
    """The collectives of ``tp`` ranks can be priced on the estimator's device (measured, or
    its profile's interconnect figures), else one clear UserError."""
    collectives.check(est.device, tp, collectives.pricer(est))


def resolve(model, gpu) -> tuple[ModelSpec, DeviceProfile]:
    spec = model if isinstance(model, ModelSpec) else load_model_spec(model)
    device = gpu if isinstance(gpu, DeviceProfile) else load_gpu(gpu)
    return spec, device


class Prepared(NamedTuple):
    """What a sweep and a plan price with (:func:`prepare`)."""

    spec: ModelSpec
    device: DeviceProfile  # the device one rank runs on
    scenario: Scenario
    estimator: Estimator
    notices: list  # what the estimator's making said (a shipped table that could not be used)


def prepare(model, gpu, scenario: Optional[Scenario] = None, *, dtype: Optional[str] = None,
            engine: str = "eager", tp: int = 1, cache=None, estimator=None) -> Prepared:
    """The model's spec, the device one rank runs on, the scenario (``scenario``, else one of
    ``dtype`` — the device's default when None —, ``engine`` and ``tp``) and the estimator
    (``estimator``, else :func:`make_estimator`'s for them and ``cache``); one clear UserError
    for a dtype without a peak on the device, a model whose heads do not split over the ranks
    or collectives that cannot be priced."""
    spec, device = resolve(model, gpu)
    if scenario is None:
        dtype = dtype or default_dtype(device)
        check_dtype(device, dtype)
        scenario = Scenario(dtype=dtype, engine=engine, tp=tp)  # an engine and a degree offered
    else:
        check_dtype(device, scenario.dtype)
    device = tensor_parallel_device(spec, device, scenario.tp)  # one rank's device
    notices: list[str] = []
    est = estimator if estimator is not None else make_estimator(device, scenario.dtype, cache,
                                                                  notices, scenario.engine)
    if scenario.tp > 1:
        check_collectives(est, scenario.tp)
    return Prepared(spec, device, scenario, est, notices)


def sweep_grid(strategies: Optional[Iterable[str]] = None,
               sparsities: Optional[Iterable[float]] = None, granularity: str = "layer",
               align: int = 128, combo_sparsities: Optional[Iterable[float]] = None,
               spec=None) -> list:
    """The strategies a sweep or a plan prices: ``strategies`` None every registered family and
    combination (:func:`default_strategies`), ``sparsities`` None each family's default grid,
    ``combo_sparsities`` None each combination's parts on the coarse grid; with ``spec``, only
    those that apply to that model (the expert-level families need a mixture of experts)."""
    return strategies_grid(default_strategies() if strategies is None else tuple(strategies),
                           None if sparsities is None else tuple(sparsities), granularity, align,
                           None if combo_sparsities is None else tuple(combo_sparsities), spec=spec)


def provenance(device: DeviceProfile) -> dict:
    """Where a sweep's or a plan's figures come from: the package versions, the device's
    fingerprint, when, and the estimator's rule."""
    return {"versions": package_versions(), "device_fingerprint": device.fingerprint,
            "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "estimator": "pis-tui estimator v1 (measured > shipped > interpolated > roofline)"}


def sweep(model, gpu, scenario: Optional[Scenario] = None,
          strategies: Optional[Iterable[str]] = None,
          sparsities: Optional[Iterable[float]] = None, *,
          granularity: str = "layer", align: int = 128, quality=None, cache=None,
          phases: Iterable[str] = PHASES, combo_sparsities: Optional[Iterable[float]] = None,
          on_progress: Optional[Callable[[int, int], None]] = None) -> SweepResult:
    """Price every strategy × sparsity × phase and attach quality costs.

    `quality` is a quality model with ``estimate(model_name, strategy, sparsity)`` (see
    pis_tui.quality.model) or None; `cache` a pis_tui.cache.Cache or None.  ``strategies`` None:
    every registered family and combination (:func:`default_strategies`); ``sparsities``
    None: each family's default grid; ``combo_sparsities`` None: each combination's parts on
    ``families.COMBO_SPARSITIES``.  A combination's quality is its parts' composed
    (:func:`pis_tui.quality.compose.combo_estimate`), unless the quality model holds its own.
    """
    spec, device, scenario, est, notices = prepare(model, gpu, scenario, cache=cache)
    from ..quality.compose import combo_estimate
    from ..quality.precision import served
    from ..quality.priors import remember_params

    if quality is not None:
        remember_params(spec.name, spec.total_params() / 1e9)

    grid = sweep_grid(strategies, sparsities, granularity, align, combo_sparsities, spec=spec)
    phases = tuple(phases)
    estimates: list[PhaseEstimate] = []
    ops_by_key: dict = {}
    total = len(grid) * len(phases)
    for i, strat in enumerate(grid):
        try:
            pos = [build_phase_ops(spec, strat, scenario, ph) for ph in phases]
        except KernelShapeError as e:
            if strat.family == "dense":
                raise
            notices.append(f"{strat.family} {strat.sparsity:g} left out: {e}")
            continue
        for j, (ph, po) in enumerate(zip(phases, pos)):
            ops_by_key[ops_key(strat.family, strat.sparsity, ph, strat.parts)] = po
            e = est.estimate(po)
            estimates.append(replace(e, parts=strat.parts) if strat.parts else e)
            if on_progress:
                on_progress(i * len(phases) + j + 1, total)
    dense = {e.phase: e for e in estimates if e.strategy == "dense"}
    points = []
    for e in estimates:
        d = dense[e.phase]
        q = QualityEstimate(0.0, source="dense") if e.strategy == "dense" else QualityEstimate(None)
        if quality is not None and e.parts:
            po = ops_by_key[ops_key(e.strategy, e.sparsity, e.phase, e.parts)]
            q = combo_estimate(quality, spec.name, e.strategy, e.parts, po.part_achieved)
        elif quality is not None and e.strategy != "dense":
            q = quality.estimate(spec.name, e.strategy, e.achieved_sparsity)
        if quality is not None and e.strategy == "dense":
            q = QualityEstimate(0.0, metric=getattr(quality, "metric", "accuracy_drop"),
                                source="dense", protocol=getattr(quality, "protocol", "lora"))
        if quality is not None and scenario.precision:
            # the loss against the unquantized model: quantization's own composed with pruning's
            q = served(q, spec.name, e.strategy, e.achieved_sparsity, scenario.precision,
                       getattr(quality, "combo_rule", "multiplicative"))
        points.append(_point(e, d, q, est, ops_by_key))
    curves = {}
    if quality is not None and hasattr(quality, "curve_info"):
        used = dict.fromkeys(f for s in grid if s.family != "dense"
                             for f in ([p for p, _ in s.parts] if s.parts else [s.family]))
        for fam in used:
            curves[fam] = quality.curve_info(spec.name, fam)
    curve = None
    if spec.moe is not None and "decode" in phases:
        # a mixture of experts: each expert-level family's decode speedup from batch 1 to where
        # a step touches every expert (the sweep's one decode batch cannot show it)
        from .batch_curve import batch_curve, moe_batches

        curve = batch_curve(spec, est, scenario, batches=moe_batches(spec, scenario))
    from .precision import precision_effect

    effect = precision_effect(spec, scenario, est, quality, phases, dense)
    return SweepResult(
        spec, device, scenario, estimates, points, ops_by_key,
        quality_protocol=getattr(quality, "protocol", "lora"),
        quality_metric=getattr(quality, "metric", "accuracy_drop"),
        quality_curves=curves,
        quality_method=getattr(quality, "method_label", "") if quality is not None else "",
        combo_rule=getattr(quality, "combo_rule", "") if quality is not None else "",
        memory=footprint(spec, device, scenario),
        notices=notices,
        provenance=provenance(device),
        batch_curve=curve,
        precision=effect,
    )


def _point(e: PhaseEstimate, d: PhaseEstimate, q: QualityEstimate, est: Estimator,
           ops_by_key: dict) -> Point:
    """A priced strategy against dense: speedup, its interval, its ceiling, its flags
    (pis_tui.pricing.uncertainty)."""
    speedup = d.latency_ms / e.latency_ms
    flops = d.flops / e.flops if e.flops else 1.0
    if e.strategy == "dense":
        return Point(e.strategy, e.sparsity, e.achieved_sparsity, e.phase, e.latency_ms,
                     d.latency_ms, speedup, flops, e.timing_source, q, 1.0, 1.0, 1.0, ())
    lo, hi = uncertainty.interval(speedup, uncertainty.log_sigma(d, e))
    dense_ops = ops_by_key[("dense", 0.0, e.phase)].ops
    po = ops_by_key[ops_key(e.strategy, e.sparsity, e.phase, e.parts)]
    ceiling = families.get(e.strategy).speedup_ceiling(dense_ops, po.ops, est.work_ms)
    flags = uncertainty.flags(lo, ceiling, uncertainty.mixed_conditions(d, e))
    lo, hi, cut = uncertainty.cut_at_ceiling(speedup, lo, hi, ceiling)
    return Point(e.strategy, e.sparsity, e.achieved_sparsity, e.phase, e.latency_ms,
                 d.latency_ms, speedup, flops, e.timing_source, q, lo, hi, ceiling, flags,
                 tuple(e.parts), tuple(po.part_achieved), cut)


def check_dtype(device: DeviceProfile, dtype: str) -> None:
    if device.kind == "gpu" and dtype not in device.peak_tflops:
        have = ", ".join(sorted(device.peak_tflops))
        raise UserError(f"{device.display_name} has no {dtype} peak in its profile (has {have})")
