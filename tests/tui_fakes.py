"""A fake fast engine and a fake measuring process for the TUI tests (not collected).

The fake backend returns synthetic, deterministic sweeps (real value types, so the real
export and the real ``pareto.recommend`` run on them); its "measurements" are the lines the
fake measuring process appends to a state file.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pis_tui.display import timings_label
from pis_tui.decide.sweep import SweepResult
from pis_tui.errors import UserError
from pis_tui.device.gpus import profile_from_dict
from pis_tui.model.spec import spec_from_config
from pis_tui.model.ops import Gemm
from pis_tui.pricing.estimates import PhaseEstimate, PricedOp
from pis_tui.decide.points import Point
from pis_tui.quality.estimate import QualityEstimate
from pis_tui.model.scenario import Scenario
from pis_tui.tui.backend import Backend, Choices, PlanSnapshot, Snapshot

FAKE_PROFILE = str(Path(__file__).with_name("tui_fake_profile.py"))

#: family -> (prefill speedup slope, decode speedup slope, quality loss slope)
FAMILIES = {
    "static_depth": (1.0, 0.9, 0.40),
    "static_width": (0.8, 0.7, 0.22),
    "low_rank": (0.6, 1.1, 0.30),
    "semi_structured_24": (0.3, 0.5, 0.16),
    "unstructured": (0.0, 0.0, None),  # no published result: no quality figure, not plotted
}
SPARSITIES = (0.125, 0.25, 0.375, 0.5)
#: a combination (the real registry's), its parts on the coarse grid, its loss composed
COMBO = "static_depth+static_width"
COMBO_GRID = ((0.125, 0.125), (0.125, 0.25), (0.25, 0.125), (0.25, 0.25))
MODELS = {"llama-3.1-8b": 1.0, "qwen2.5-0.5b": 1.6}  # quality slope multiplier


def _spec(name: str):
    return spec_from_config({"num_hidden_layers": 4, "hidden_size": 256, "intermediate_size": 512,
                             "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000,
                             "model_type": "llama", "architectures": ["LlamaForCausalLM"]},
                            name, source="fake")


def _device(name: str):
    return profile_from_dict({
        "name": name, "display_name": f"Fake {name.upper()}", "kind": "gpu",
        "peak_tflops": {"bf16": 100.0}, "sparse_peak_tflops": {"bf16": 200.0},
        "memory_bandwidth_gbs": 1000.0, "memory_gb": 80.0, "l2_mb": 50.0, "sm_count": 100,
        "sparse_24": True, "fingerprint": f"fake:{name}"})


class FakeBackend(Backend):
    def __init__(self, state_file, mode: str = "ok", n_ops: int = 6, delay: float = 0.05,
                 settings: dict | None = None):
        super().__init__(use_cache=False)
        self.state_file = Path(state_file)
        self.mode = mode
        self.n_ops = n_ops
        self.delay = delay
        self.settings = settings if settings is not None else {}
        self.computed: list[Choices] = []
        self.planned: list = []
        self.saved: list[Choices] = []

    # settings
    def load_choices(self, base):
        text = self.settings.get("tui.last_choices")
        return Choices.from_json(text, base) if text else None

    def save_choices(self, choices, wait_s=None):
        self.saved.append(choices)
        self.settings["tui.last_choices"] = choices.to_json()

    # options
    def default_gpu(self):
        return "h200-sxm"

    def model_options(self):
        return [(m, m) for m in MODELS]

    def gpu_options(self):
        return [(f"local · {timings_label(self.measured())}", "local"),
                ("h200-sxm · datasheet roofline", "h200-sxm"), ("a100-80gb · datasheet roofline", "a100-80gb")]

    def measured(self) -> int:
        try:
            return len(self.state_file.read_text().splitlines())
        except OSError:
            return 0

    # the fake engine
    def compute(self, choices: Choices) -> Snapshot:
        self.computed.append(choices)
        if choices.model == "broken":
            e = UserError("broken: the fake engine refuses this model")
            e.field = "model"  # as the real backend tags it (tui.backend._blame)
            raise e
        qmul = MODELS.get(choices.model, 1.2)
        gmul = {"h200-sxm": 1.0, "a100-80gb": 1.5, "local": 20.0}.get(choices.gpu, 1.0)
        measured = self.measured() if choices.gpu == "local" else 0
        spec, device = _spec(choices.model), _device(choices.gpu)
        scen = Scenario(choices.prefill_batch, choices.prompt_len, choices.decode_batch,
                        choices.context_len, "bf16" if choices.dtype == "auto" else choices.dtype,
                        tp=choices.tp)
        estimates, points = [], []
        for ph_i, ph in enumerate(("prefill", "decode")):
            dense_ms = (20.0 if ph == "prefill" else 5.0) * gmul * scen.batch(ph) ** 0.1
            rows = [("dense", 0.0, 1.0, 0.0, ())]
            for fam, (ps, ds, qs) in FAMILIES.items():
                for s in SPARSITIES if fam != "semi_structured_24" else (0.5,):
                    rows.append((fam, s, 1.0 + (ps if ph_i == 0 else ds) * s,
                                 None if qs is None else qs * qmul * s, ()))
            if choices.combos != "off":
                for a, b in COMBO_GRID:
                    d, w = FAMILIES["static_depth"], FAMILIES["static_width"]
                    sp = (1.0 + d[ph_i] * a) * (1.0 + w[ph_i] * b)
                    rows.append((COMBO, 1 - (1 - a) * (1 - b), sp,
                                 ((d[2] * qmul * a), (w[2] * qmul * b)),
                                 (("static_depth", a), ("static_width", b))))
            for i, (fam, s, sp, loss, parts) in enumerate(rows):
                src = "measured" if i < measured else "roofline"
                lat = dense_ms / sp
                op = Gemm(f"mlp{i}", 64, 256, 256 + 64 * i, count=4)  # a kernel of its own (no
                # two points share an op: none does no more work than another, op by op)
                e = PhaseEstimate(fam, s, s, ph, (PricedOp(op, lat / 4, src),), lat, 1e9 * (1 - s),
                                  src, {src: {"ops": 1, "ms": lat}})
                estimates.append(e)
                q = (QualityEstimate(0.0, source="dense") if fam == "dense" else
                     QualityEstimate(None, protocol=choices.protocol) if loss is None else
                     _composed(loss, parts, choices) if parts else
                     QualityEstimate(round(loss, 6), source="prior", protocol=choices.protocol,
                                     extrapolated=s > 0.4, citations=("Fake et al. 2024",),
                                     n_points=3, note="fake prior", method="Fake-Pruner"))
                lo, hi = (1.0, 1.0) if fam == "dense" else (sp * 0.99, sp * 1.01)  # ±1 %
                points.append(Point(fam, s, s, ph, lat, dense_ms, sp, 1.0 / (1 - s) if s < 1 else 1.0,
                                    src, q, lo, hi, 1.0 / (1 - s) if s < 1 else 1.0, (),
                                    parts, tuple(x for _, x in parts)))
                if parts:
                    from dataclasses import replace as _replace

                    estimates[-1] = _replace(estimates[-1], parts=parts)
        result = SweepResult(spec, device, scen, estimates, points, {}, quality_protocol=choices.protocol,
                             provenance={"versions": {"pis-tui": "test"}, "device_fingerprint": device.fingerprint,
                                         "created_at": "2025-01-01T00:00:00+00:00"})
        for e in estimates:
            from pis_tui.decide.sweep import ops_key
            from pis_tui.families.phase_ops import PhaseOps
            from pis_tui.families.strategy import Strategy

            result.phase_ops[ops_key(e.strategy, e.sparsity, e.phase, e.parts)] = PhaseOps(
                Strategy(e.strategy, e.sparsity, parts=e.parts), e.phase, tuple(p.op for p in e.ops),
                e.sparsity, ("fake note",), (("M", "64 → 48"),), tuple(x for _, x in e.parts))
        return Snapshot(choices, result, self.recommend(result, choices.active_budget,
                                                         choices.allow_extrapolated), 0.05, measured)

    # the fake plan: the real planner over the fake model and GPU, priced by a fake estimator
    def plan(self, choices, inputs):
        from pis_tui.decide.deployment import plan

        self.planned.append((choices, inputs))
        if choices.model == "broken":
            raise UserError("broken: the fake engine refuses this model")
        spec = _spec(choices.model)
        device = profile_from_dict({  # small, so the memory limit shows
            "name": choices.gpu, "display_name": f"Fake {choices.gpu.upper()}", "kind": "gpu",
            "peak_tflops": {"bf16": 100.0}, "memory_bandwidth_gbs": 1000.0, "memory_gb": 1.0,
            "l2_mb": 50.0, "sm_count": 100, "fingerprint": f"fake:{choices.gpu}"})
        gmul = {"h200-sxm": 1.0, "a100-80gb": 1.5, "local": 20.0}.get(choices.gpu, 1.0)
        result = plan(spec, device, self.workload(inputs), dtype="bf16",
                      strategies=tuple(FAMILIES), sparsities=SPARSITIES,
                      quality=FakePlanQuality(MODELS.get(choices.model, 1.2), choices.protocol),
                      estimator=FakePlanEstimator(gmul))
        rec = self.rank_plan(result, choices.active_budget, inputs.objective,
                             choices.allow_extrapolated)
        return PlanSnapshot(choices, inputs, result, rec, 0.05)

    def profile_command(self, choices):
        return [sys.executable, FAKE_PROFILE, str(self.state_file), self.mode, str(self.n_ops),
                str(self.delay)]


def _composed(losses, parts, choices):
    """The fake combination's quality: its fake parts' composed by the choices' rule."""
    from pis_tui.quality.compose import compose_estimates

    ests = [QualityEstimate(round(v, 6), source="prior", protocol=choices.protocol,
                            citations=("Fake et al. 2024",), n_points=3, method="Fake-Pruner")
            for v in losses]
    rule = choices.combos if choices.combos != "off" else "multiplicative"
    return compose_estimates(ests, [f"{f} {100 * s:g}%" for f, s in parts], rule, "accuracy_drop",
                             choices.protocol)


class FakePlanEstimator:
    """Prices a phase from its family's fake speedup: prefill 20 µs a token, a decode step
    5 ms + 0.2 µs per cached token of the batch (× the GPU's slowness), both divided by it."""

    def __init__(self, gmul: float):
        self.gmul = gmul

    def estimate(self, po):
        s = po.strategy
        ps, ds, _ = FAMILIES.get(s.family, (0.0, 0.0, 0.0))
        head = next(o for o in po.ops if o.name == "lm_head")
        att = next(o for o in po.ops if o.op_type == "attention")
        if po.phase == "prefill":
            ms = 0.02 * head.m * att.q_len / (1.0 + ps * s.sparsity)
        else:
            ms = (5.0 + 0.0002 * head.m * att.kv_len) / (1.0 + ds * s.sparsity)
        return PhaseEstimate(s.family, s.sparsity, po.achieved_sparsity, po.phase, (), ms * self.gmul,
                             1.0, "roofline")


class FakePlanQuality:
    metric = "accuracy_drop"

    def __init__(self, qmul: float, protocol: str):
        self.qmul, self.protocol = qmul, protocol

    def estimate(self, model, strategy, sparsity):
        qs = FAMILIES.get(strategy, (0, 0, None))[2]
        if qs is None:
            return QualityEstimate(None, protocol=self.protocol)
        return QualityEstimate(round(qs * self.qmul * sparsity, 6), source="prior", protocol=self.protocol,
                               extrapolated=sparsity > 0.4, citations=("Fake et al. 2024",), n_points=3,
                               method="Fake-Pruner")
