"""What the explorer asks of the core, behind one small injectable object.

The app never reaches past :class:`Backend`: it hands it the user's :class:`Choices` and
gets back a :class:`Snapshot` (the engine's ``SweepResult`` plus one recommendation per
phase).  Tests inject a subclass with a fake fast engine and a fake measuring process.

Nothing here imports textual, torch or transformers: a Hugging Face cache entry or a
model directory is read as plain JSON (``model_spec.spec_from_config``), so validating a
typed path never stalls the screen with a transformers import.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Optional

from ..display import timings_label
from ..errors import PisError, UserError
from ..model.scenario import ENGINES
from ..model.tensor_parallel import DEGREES as TP_DEGREES  # tensor parallelism: the GPUs of one node

PHASES = ("prefill", "decode")
QUALITY_SOURCES = ("priors", "csv", "measured")
PROTOCOLS = ("lora", "training-free")
DTYPES = ("auto", "bf16", "fp16", "fp32")
#: the served precision (pis_tui.model.precision): "none" serves the dtype unquantized
PRECISION_LABELS = (("unquantized (the dtype)", "none"),
                    ("fp8 W8A8 (per-channel · per-token)", "fp8-row"),
                    ("fp8 W8A8 per-tensor", "fp8-tensor"),
                    ("int4 weight-only g128", "int4-g128"), ("int4 weight-only g64", "int4-g64"),
                    ("int4 weight-only g32", "int4-g32"), ("int4 weight-only g256", "int4-g256"),
                    ("MXFP4 weight-only (estimated)", "mxfp4"))
PRECISIONS = tuple(v for _, v in PRECISION_LABELS)
#: combinations in the sweep, their quality composed by this rule ("off": families only)
COMBOS = ("multiplicative", "additive", "off")
EXTRAPOLATED = ("skip", "rank")  # extrapolated quality: shown but not ranked, or ranked
ENGINE_LABELS = (("eager (transformers' modules)", "eager"), ("fused (vLLM / SGLang kernels)", "fused"))
SETTINGS_KEY = "tui.last_choices"
MAX_BUDGET = 0.50  # accuracy drop on screen: 0-50 %
MAX_PPL_BUDGET = 1.00  # relative perplexity increase: 0-100 %


@dataclass(frozen=True)
class Choices:
    """Everything the setup panel decides (fractions, not percentages)."""

    model: str = "llama-3.1-8b"
    gpu: str = "h200-sxm"
    budget: float = 0.10
    ppl_budget: float = 0.20
    prefill_batch: int = 1
    prompt_len: int = 1024
    decode_batch: int = 16
    context_len: int = 1024
    protocol: str = "lora"
    quality: str = "priors"  # priors | csv | measured
    quality_csv: str = ""
    dtype: str = "auto"  # auto: bf16 on a GPU, fp32 on a CPU
    quality_method: str = "mean"  # mean | best | a method's name (quality.parse_method)
    combos: str = "multiplicative"  # COMBOS
    extrapolated: str = "skip"  # EXTRAPOLATED: only re-ranks
    engine: str = "eager"  # the engine (pis_tui.pricing.engines)
    tp: int = 1  # tensor parallelism over this many GPUs of one node (1: one GPU)
    precision: str = "none"  # PRECISIONS: the precision the model is served in

    @property
    def allow_extrapolated(self) -> bool:
        return self.extrapolated == "rank"

    @property
    def active_budget(self) -> float:
        return self.ppl_budget if self.quality == "measured" else self.budget

    def with_budget(self, value: float) -> "Choices":
        if self.quality == "measured":
            return replace(self, ppl_budget=min(max(value, 0.0), MAX_PPL_BUDGET))
        return replace(self, budget=min(max(value, 0.0), MAX_BUDGET))

    def sweep_key(self) -> tuple:
        """What a sweep depends on (the budgets and the extrapolated rule only re-rank)."""
        d = asdict(self)
        d.pop("budget")
        d.pop("ppl_budget")
        d.pop("extrapolated")
        return tuple(sorted(d.items()))

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, base: Optional["Choices"] = None) -> "Choices":
        """Tolerant: unknown keys are dropped, wrong types keep the base value."""
        base = base or cls()
        try:
            raw = json.loads(text) if isinstance(text, str) else dict(text)
        except (TypeError, ValueError):
            return base
        if not isinstance(raw, dict):
            return base
        kw = {}
        for f in fields(cls):
            if f.name not in raw:
                continue
            v, cur = raw[f.name], getattr(base, f.name)
            if isinstance(cur, bool) or type(v) is bool:
                continue
            if isinstance(cur, int) and isinstance(v, int) and v > 0:
                kw[f.name] = v
            elif isinstance(cur, float) and isinstance(v, (int, float)) and 0 <= v <= 1:
                kw[f.name] = float(v)
            elif isinstance(cur, str) and isinstance(v, str):
                kw[f.name] = v
        out = replace(base, **kw)
        if out.quality not in QUALITY_SOURCES:
            out = replace(out, quality="priors")
        if out.protocol not in PROTOCOLS:
            out = replace(out, protocol="lora")
        if out.dtype in ("fp8", "int8"):  # saved before precision was its own choice
            out = replace(out, dtype="auto", precision="fp8-row")
        if out.dtype not in DTYPES:
            out = replace(out, dtype="auto")
        if out.precision not in PRECISIONS:
            out = replace(out, precision="none")
        if out.combos not in COMBOS:
            out = replace(out, combos="multiplicative")
        if out.extrapolated not in EXTRAPOLATED:
            out = replace(out, extrapolated="skip")
        if not out.quality_method.strip():
            out = replace(out, quality_method="mean")
        if out.engine not in ENGINES:
            out = replace(out, engine="eager")
        if out.tp not in TP_DEGREES:
            out = replace(out, tp=1)
        return out


@dataclass
class Snapshot:
    """One computed state: what every view draws."""

    choices: Choices
    result: object  # engine.SweepResult
    recs: dict  # phase -> results.Recommendation
    elapsed_s: float = 0.0
    measured_ops: int = 0
    warnings: list = field(default_factory=list)

    @property
    def metric(self) -> str:
        return getattr(self.result, "quality_metric", "accuracy_drop")


@dataclass(frozen=True)
class PlanInputs:
    """The Plan view's workload: a preset's numbers (or the user's), targets, the objective."""

    preset: str = "chat"
    prompt_len: int = 1024
    output_len: int = 256
    concurrency: int = 32
    ttft_ms: Optional[float] = None
    tpot_ms: Optional[float] = None
    objective: str = "latency"  # latency | throughput: only re-ranks

    def plan_key(self) -> tuple:
        """What a plan depends on (the objective only re-ranks)."""
        d = asdict(self)
        d.pop("objective")
        return tuple(sorted(d.items()))


@dataclass
class PlanSnapshot:
    """One computed plan: the candidates priced for the workload and their ranking."""

    choices: Choices
    inputs: PlanInputs
    result: object  # plan.PlanResult
    rec: object  # plan.PlanRecommendation
    elapsed_s: float = 0.0

    @property
    def metric(self) -> str:
        return self.result.quality_metric

    # presentation helpers of the core (the widgets never import it)
    def gain(self, candidate, objective: Optional[str] = None):
        from ..decide.deployment import gain

        return gain(candidate, self.result.dense, objective or self.rec.objective)

    @staticmethod
    def name(candidate) -> str:
        from ..decide.deployment import candidate_name

        return candidate_name(candidate)

    @staticmethod
    def sequences(candidate) -> str:
        from ..decide.deployment import sequences_text

        return sequences_text(candidate)

    def headroom_bytes(self, candidate) -> float:
        from ..present.export import headroom_bytes

        return headroom_bytes(candidate, self.result)

    def objective_words(self) -> str:
        from ..decide.deployment import objective_words

        return objective_words(self.rec.objective)


def plan_presets() -> dict:
    """Preset name -> (prompt, output, concurrency), for the Plan view's inputs."""
    from ..model.workload import PRESETS

    return {k: (c.prompt_len, c.output_len, c.concurrency) for k, c in PRESETS.items()}


_METHOD_OPTIONS: dict = {}


def quality_method_options(protocol: str) -> list[tuple[str, str]]:
    """The quality method choices for a protocol: (label, value), the family mean and the
    best first, then every published method by name (with its family's short name)."""
    if protocol not in _METHOD_OPTIONS:
        from .. import families
        from ..quality.model import build_quality_model

        qm = build_quality_model(protocol=protocol)
        out = [("family mean", "mean"), ("best for the model", "best")]
        seen = set()
        for fam in families.pruned():
            for name in qm.methods(fam):
                if name.lower() not in seen:
                    seen.add(name.lower())
                    out.append((f"{name} ({families.get(fam).short})", name))
        _METHOD_OPTIONS[protocol] = out
    return list(_METHOD_OPTIONS[protocol])


def resolve_model(ref: str):
    """A ModelSpec from a preset, a config path/directory or a cached HF id, read as plain
    JSON (never through transformers: that import would stall the screen)."""
    from ..model.spec import load_model_spec

    return load_model_spec(ref, allow_transformers=False)


class Backend:
    """The real engine, the quality model, the recommendation and the DuckDB cache.

    The cache is opened briefly for each use and closed again: the measuring subprocess
    needs the same file.
    """

    #: seconds to wait for a cache file another process holds: sweeps (in a worker) and the
    #: saved choices (read at start, written at quit) — the screen never waits long on them
    CACHE_WAIT_S = 3.0
    SETTINGS_WAIT_S = 1.0

    def __init__(self, cache_path: Optional[str] = None, use_cache: bool = True):
        self.cache_path = cache_path
        self.use_cache = use_cache
        self._quality_models: dict = {}
        self.warnings: list[str] = []  # cache warnings; the app shows them (take_warnings)
        self._warn_lock = threading.Lock()

    def _warn(self, msg: str) -> None:
        with self._warn_lock:
            self.warnings.append(msg)

    def take_warnings(self) -> list[str]:
        """Warnings since the last call (a corrupt cache moved aside, a busy file, ...)."""
        with self._warn_lock:
            out = list(self.warnings)
            self.warnings.clear()
        return out

    # ------------------------------------------------------------------ cache
    @contextlib.contextmanager
    def cache(self, hold: bool = False, wait_s: Optional[float] = None):
        """The cache, opened for the duration of a ``with`` (None when unavailable); with
        `hold`, its reads share one connection (see ``Cache.hold``)."""
        c = None
        if self.use_cache:
            try:
                from ..cache import Cache

                c = Cache.open(self.cache_path, on_warning=self._warn,
                               wait_s=self.CACHE_WAIT_S if wait_s is None else wait_s)
            except ImportError:
                c = None
        try:
            if hold and c is not None and hasattr(c, "hold"):
                with c.hold():
                    yield c
            else:
                yield c
        finally:
            if c is not None and hasattr(c, "close"):
                with contextlib.suppress(Exception):
                    c.close()

    def load_choices(self, base: Choices) -> Optional[Choices]:
        try:
            with self.cache(wait_s=self.SETTINGS_WAIT_S) as c:
                if c is None or not hasattr(c, "get_setting"):
                    return None
                text = c.get_setting(SETTINGS_KEY)
        except PisError as e:
            self._warn(f"your last choices could not be read, starting from the defaults: {e}")
            return None
        if not text:
            return None
        return Choices.from_json(text, base)

    def save_choices(self, choices: Choices, wait_s: Optional[float] = None) -> None:
        try:
            with self.cache(wait_s=self.SETTINGS_WAIT_S if wait_s is None else wait_s) as c:
                if c is not None and hasattr(c, "put_setting"):
                    c.put_setting(SETTINGS_KEY, choices.to_json())
        except PisError as e:
            self._warn(f"your choices could not be saved for next time: {e}")

    # ------------------------------------------------------------------ options
    def default_gpu(self) -> str:
        from ..device.choose import default_gpu

        return default_gpu()

    def model_options(self) -> list[tuple[str, str]]:
        from ..model.spec import hf_cache_models, preset_names

        out = [(n, n) for n in preset_names()]
        try:
            out += [(f"{m}  (HF cache)", m) for m in hf_cache_models()]
        except OSError:
            pass
        return out

    def gpu_options(self) -> list[tuple[str, str]]:
        """Local device first, then the shipped profiles, each saying what timings exist."""
        from ..device.gpus import gpu_names
        from ..device.choose import load_gpu
        from ..device.local import local_device

        out = []
        try:
            dev = local_device()
            out.append((f"local · {timings_label(self.measured_count(dev))}", "local"))
        except PisError:
            pass
        for g in gpu_names():
            try:
                d = load_gpu(g)
            except PisError:
                continue
            what = "shipped measured table" if d.measured_table else "datasheet roofline"
            out.append((f"{g} · {what}", g))
        return out

    def measured_count(self, device) -> int:
        """Usable op timings of `device` in the cache (status ok, current software, any dtype):
        the count of ``display.timings_label`` (``pis-tui gpus`` shows the same)."""
        if not device.is_local:
            return 0
        try:
            with self.cache() as c:
                if c is None:
                    return 0
                return len(list(c.get_measurements(device.fingerprint, statuses=("ok",))))
        except (PisError, AttributeError, TypeError):
            return 0

    def validate_model(self, ref: str):
        return resolve_model(ref)

    # ------------------------------------------------------------------ compute
    def _quality_model(self, choices: Choices, spec, cache):
        from ..quality.model import build_quality_model

        if choices.quality == "measured":
            rows = []
            if cache is not None and hasattr(cache, "get_quality_results"):
                rows = list(cache.get_quality_results(spec.name))
            if not rows:
                raise UserError("no measured perplexity for this model in the cache: run "
                                "'pis-tui quality --model DIR --text FILE' first")
            return build_quality_model(protocol=choices.protocol, measured_rows=rows,
                                       method=choices.quality_method, combo_rule=self._rule(choices))
        if choices.quality == "csv":
            path = choices.quality_csv.strip()
            if not path:
                raise UserError("type the path of your quality CSV "
                                "(strategy,sparsity,quality_loss[,model,note])")
            p = Path(path).expanduser()
            try:
                mtime = p.stat().st_mtime
            except OSError:
                raise UserError(f"{p}: no such file") from None
            key = ("csv", choices.protocol, str(p), mtime, choices.quality_method, self._rule(choices))
            if key not in self._quality_models:
                self._quality_models[key] = build_quality_model(
                    protocol=choices.protocol, user_csv=str(p), method=choices.quality_method,
                    combo_rule=self._rule(choices))
            return self._quality_models[key]
        key = ("priors", choices.protocol, choices.quality_method, self._rule(choices))
        if key not in self._quality_models:
            self._quality_models[key] = build_quality_model(
                protocol=choices.protocol, method=choices.quality_method,
                combo_rule=self._rule(choices))
        return self._quality_models[key]

    @staticmethod
    def _rule(choices: Choices) -> str:
        return choices.combos if choices.combos != "off" else "multiplicative"

    @staticmethod
    def strategies(choices: Choices):
        """What the sweep and the plan price: every family and combination, or the families
        alone when combinations are off."""
        from .. import families

        return families.pruned() if choices.combos == "off" else None

    def _setup(self, choices: Choices):
        """The model, the device and the dtype the choices name; a PisError names the setup
        field at fault in its ``field`` attribute."""
        from ..decide.sweep import check_dtype, default_dtype
        from ..device.choose import load_gpu
        from ..model.precision import served_dtypes

        with _blame("model"):
            spec = resolve_model(choices.model)
        with _blame("gpu"):
            device = load_gpu(choices.gpu)
        with _blame("dtype"):
            dtype, _ = served_dtypes(None if choices.dtype == "auto" else choices.dtype,
                                     self.served(choices) or None, default_dtype(device))
            check_dtype(device, dtype)
        return spec, device, dtype

    @staticmethod
    def served(choices: Choices) -> str:
        """The quantized precision the choices serve at ("" unquantized)."""
        return "" if choices.precision == "none" else choices.precision

    def compute(self, choices: Choices) -> Snapshot:
        """Sweep every family × sparsity × phase and recommend per phase (no torch).  A
        PisError names the setup field at fault in its ``field`` attribute."""
        from ..decide.sweep import sweep
        from ..model.scenario import Scenario

        t0 = time.perf_counter()
        spec, device, dtype = self._setup(choices)
        with _blame("scenario"):
            scenario = Scenario(prefill_batch=choices.prefill_batch, prompt_len=choices.prompt_len,
                                decode_batch=choices.decode_batch, context_len=choices.context_len,
                                dtype=dtype, engine=choices.engine, tp=choices.tp,
                                precision=self.served(choices))
        need_cache = device.is_local or choices.quality == "measured"
        measured = 0
        with (self.cache(hold=True) if need_cache else contextlib.nullcontext()) as cache:
            self._check_tp(spec, device, choices.tp, cache)
            with _blame("quality"):
                quality = self._quality_model(choices, spec, cache)
            result = sweep(spec, device, scenario, self.strategies(choices), quality=quality,
                           cache=cache if device.is_local else None)
            if result.batch_curve is None or result.spec.moe is not None:
                # the Batch tab's full grid (the sweep's MoE curve stops where every expert is
                # touched)
                result.batch_curve = self._batch_curve(result, cache if device.is_local else None)
        if device.is_local:
            measured = result.source_summary().get("measured", 0)
        recs = self.recommend(result, choices.active_budget, choices.allow_extrapolated)
        return Snapshot(choices, result, recs, time.perf_counter() - t0, measured)

    @staticmethod
    def _batch_curve(result, cache):
        """The Batch tab's curve, priced like the sweep (its device, engine, context, cache)."""
        from ..decide.batch_curve import batch_curve
        from ..decide.sweep import make_estimator

        sc = result.scenario
        est = make_estimator(result.device, sc.dtype, cache, engine=sc.engine)
        return batch_curve(result.spec, est, sc)

    @staticmethod
    def _check_tp(spec, device, tp: int, cache) -> None:
        """Tensor parallelism: the heads split over the ranks (else the scenario's error) and
        the collectives can be priced on the device (else the GPU's)."""
        if tp == 1:
            return
        from ..pricing.collectives import CollectivePricer, check
        from ..device.local import rank_device
        from ..model.tensor_parallel import check_model

        with _blame("scenario"):
            check_model(spec, tp)
        dev = rank_device(device, tp)
        rows = cache.get_collectives(dev.fingerprint) if cache is not None and device.is_local \
            and hasattr(cache, "get_collectives") else ()
        with _blame("gpu"):
            check(dev, tp, CollectivePricer(dev, rows))

    def recommend(self, result, budget: float, allow_extrapolated: bool = False) -> dict:
        """Re-rank without re-sweeping (instant)."""
        from ..decide.frontier import recommend

        return {ph: recommend(result.phase_points(ph), budget, ph,
                              allow_extrapolated=allow_extrapolated, pair=result.pair)
                for ph in PHASES}

    # ------------------------------------------------------------------ plan
    @staticmethod
    def workload(inputs: PlanInputs):
        """The workload the Plan view's inputs describe (UserError tagged ``plan``)."""
        from ..model.workload import Targets, single

        with _blame("plan"):
            return single(inputs.preset, inputs.prompt_len, inputs.output_len, inputs.concurrency,
                          Targets(inputs.ttft_ms, inputs.tpot_ms))

    def plan(self, choices: Choices, inputs: PlanInputs) -> PlanSnapshot:
        """One pruned model for the workload (pis_tui.decide.deployment), ranked at the choices' budget."""
        from ..decide.deployment import plan

        t0 = time.perf_counter()
        spec, device, dtype = self._setup(choices)
        workload = self.workload(inputs)
        with (self.cache(hold=True) if device.is_local or choices.quality == "measured"
              else contextlib.nullcontext()) as cache:
            self._check_tp(spec, device, choices.tp, cache)
            with _blame("quality"):
                quality = self._quality_model(choices, spec, cache)
            result = plan(spec, device, workload, strategies=self.strategies(choices), dtype=dtype,
                          quality=quality, cache=cache if device.is_local else None,
                          engine=choices.engine, tp=choices.tp, precision=self.served(choices),
                          speculative=self._speculative(spec, cache))
        rec = self.rank_plan(result, choices.active_budget, inputs.objective,
                             choices.allow_extrapolated)
        return PlanSnapshot(choices, inputs, result, rec, time.perf_counter() - t0)

    @staticmethod
    def _speculative(spec, cache):
        """The plan's speculative candidates: the default drafts (static depth 25/50/75 %), γ
        1–8, greedy acceptance measured on this model where the cache holds it, else
        published (the CLI's ``plan`` defaults)."""
        from ..decide.deployment import SpecOptions
        from ..decide.speculative import DEFAULT_DRAFTS, GAMMAS
        from ..families.strategy import from_token

        measured = tuple(cache.get_acceptance(spec.name)) if cache is not None and hasattr(
            cache, "get_acceptance") else ()
        return SpecOptions(tuple(from_token(f, s) for f, s in DEFAULT_DRAFTS), GAMMAS,
                           measured=measured)

    def rank_plan(self, result, budget: float, objective: str, allow_extrapolated: bool = False):
        """Re-rank a plan (budget, objective or the extrapolated rule changed) without pricing
        it again."""
        from ..decide.deployment import recommend_plan

        return recommend_plan(result, budget, objective, allow_extrapolated)

    # ------------------------------------------------------------------ measuring
    def profile_command(self, choices: Choices) -> list[str]:
        """The measuring subprocess (it streams JSON lines; see profile_worker)."""
        dtype = [] if choices.dtype == "auto" else ["--dtype", choices.dtype]
        cache = ["--cache", self.cache_path] if self.cache_path else []
        return [sys.executable, "-m", "pis_tui", "profile", "--model", choices.model,
                "--gpu", "local", "--prefill-batch", str(choices.prefill_batch),
                "--prompt-len", str(choices.prompt_len), "--decode-batch",
                str(choices.decode_batch), "--context-len", str(choices.context_len),
                *dtype, *(["--tp", str(choices.tp)] if choices.tp > 1 else []),
                *(["--precision", choices.precision] if self.served(choices) else []), *cache,
                "--progress-jsonl"]

    def export(self, snapshot: Snapshot, path: str, fmt: str = "json",
               plan: Optional[PlanSnapshot] = None, csv_of: str = "points") -> Path:
        """Write the pis-tui/1 JSON (with ``plan`` when one is given) or, as CSV, the points
        (``csv_of="points"``) or the plan's candidates (``"plan"``): a name ending in .json or
        .csv decides the format, else `fmt`."""
        from ..present.export import plan_csv, plan_dict, to_csv, to_json
        from ..present.output_paths import check_writable

        p = check_writable(path)
        suffix = p.suffix.lower()
        fmt = {".csv": "csv", ".json": "json"}.get(suffix, fmt)
        if fmt == "csv":
            text = (plan_csv(plan.result, plan.rec) if csv_of == "plan" and plan is not None
                    else to_csv(snapshot.result))
        else:
            text = to_json(snapshot.result, snapshot.recs,
                           plan_dict(plan.result, plan.rec) if plan is not None else None)
        try:
            p.write_text(text, encoding="utf-8")
        except OSError as e:
            raise UserError(f"{p}: cannot write ({e.strerror})") from None
        return p.resolve()


@contextlib.contextmanager
def _blame(field_name: str):
    """Tag a PisError raised in the block with the setup field it belongs to."""
    try:
        yield
    except PisError as e:
        if not getattr(e, "field", ""):
            e.field = field_name
        raise


def export_name(snapshot: Snapshot, ext: str = "json", what: str = "") -> str:
    """``pis-tui-<model>-<gpu>.json`` in the working directory, named after what the snapshot
    holds (the model's name, not the config file a typed path points at); ``what`` ("plan")
    goes after ``pis-tui-``."""
    model = snapshot.result.spec.name or snapshot.choices.model
    safe = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in model).strip("_") or "model"
    kind = f"{what}-" if what else ""
    return str(Path.cwd() / f"pis-tui-{kind}{safe}-{snapshot.choices.gpu}.{ext}")
