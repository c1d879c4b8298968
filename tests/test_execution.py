"""Execution profiles, per-GPU efficiency blocks and the kernel-level analytical model."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from helpers import run_cli
from pis_tui.pricing import engines as execution
from pis_tui.device.gpus import efficiency, efficiency_sources
from pis_tui.pricing.efficiency_fit import fit_efficiency
from pis_tui.errors import UserError
from pis_tui.pricing.estimator import Estimator
from pis_tui.device.choose import load_gpu
from pis_tui.device.gpus import parse_efficiency, profile_from_dict
from pis_tui.pricing.measured_table import Measurement
from pis_tui.model.spec import load_model_spec
from pis_tui.model.ops import Attention, Elementwise, Gemm
from pis_tui.model.scenario import ENGINES, Scenario
from pis_tui.families.strategy import Strategy
from pis_tui.families.phase_ops import build_phase_ops

H200 = load_gpu("h200-sxm")
LLAMA = load_model_spec("llama-3.1-8b")


def _latency(est, family, sparsity, phase, b, length, engine="eager"):
    sc = Scenario(prefill_batch=b, prompt_len=length, decode_batch=b, context_len=length, engine=engine)
    return est.estimate(build_phase_ops(LLAMA, Strategy(family, sparsity), sc, phase)).latency_ms


# ------------------------------------------------------------------ engines

def test_every_engine_loads_and_the_eager_one_says_what_it_was_traced_with():
    for name in ENGINES:
        prof = execution.load(name)
        assert prof.name == name and prof.ops
    eager = execution.load("eager")
    assert eager.traced_with["transformers"] and eager.traced_with["torch"]
    # an RMSNorm is the fp32 up-cast, pow, mean, add, rsqrt, mul, down-cast, weight mul
    norm = [k.aten for k in eager.kernels("dense", "decode", "input_norm")]
    assert norm[0] == "_to_copy" and "rsqrt" in norm and len(norm) >= 6
    # each family has its own: low rank's two GEMMs, dynamic depth's routing glue
    assert eager.kernels("low_rank", "decode", "q_proj.A") is not None
    assert eager.kernels("dynamic_depth", "prefill", "attn_topk")
    fused = execution.load("fused")
    assert [k.aten for k in fused.kernels("dense", "decode", "input_norm")] == ["fused_add_rms_norm"]
    assert fused.kernels("dense", "decode", "attn_residual") == ()  # inside the fused norm
    assert set(fused.sources) >= {"norm", "rotary", "silu_mul", "merged_gemms"}


def test_a_fresh_trace_gives_the_committed_kernel_sequences():
    """profiles/kernels/eager.json is what the modules validate builds really dispatch: a
    fresh trace must give the same sequences (regenerate it deliberately, with
    ``python -m pis_tui.validation.kernel_trace``, when transformers or the wrappers change)."""
    pytest.importorskip("transformers")
    import torch
    import transformers

    from pis_tui.validation import kernel_trace

    committed = json.loads(kernel_trace.OUT.read_text())
    tw = committed["traced_with"]
    # runs on whatever transformers and torch this project installed: a version that dispatches
    # other kernels fails here, so the committed trace is regenerated on purpose, never typed
    fresh = json.loads(json.dumps(kernel_trace.trace(("dense", "low_rank", "dynamic_depth"))))
    for fam in ("dense", "low_rank", "dynamic_depth"):
        assert fresh["families"][fam] == committed["families"][fam], (
            f"{fam}: transformers {transformers.__version__} / torch {torch.__version__} dispatch "
            f"other kernels than profiles/kernels/eager.json records (traced with transformers "
            f"{tw['transformers']} / torch {tw['torch']}): re-trace on purpose with "
            "`python -m pis_tui.validation.kernel_trace`")


def test_unknown_engine_is_one_clear_error():
    with pytest.raises(UserError, match="unknown engine 'vllm'"):
        Scenario(engine="vllm")
    r = run_cli("sweep", "--model", "llama-3.1-8b", "--gpu", "h200-sxm", "--engine", "vllm")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "vllm" in r.stderr


def test_engine_flag_reaches_the_json_and_changes_the_estimate(tmp_path):
    out = {}
    for eng in ENGINES:
        r = run_cli("sweep", "--model", "llama-3.1-8b", "--gpu", "h200-sxm", "--strategies",
                    "static_depth", "--sparsities", "0.25", "--engine", eng, "--json", "-")
        assert r.returncode == 0, r.stderr
        out[eng] = json.loads(r.stdout)
        assert out[eng]["scenario"]["engine"] == eng
    dense = {e: [p for p in out[e]["results"] if p["strategy"] == "dense" and p["phase"] == "decode"][0]
             for e in ENGINES}
    # fused kernels: fewer launches and bytes than transformers' eager modules
    assert dense["fused"]["latency_ms"] < 0.8 * dense["eager"]["latency_ms"]
    r = run_cli("plan", "--model", "llama-3.1-8b", "--gpu", "h200-sxm", "--workload", "chat",
                "--strategies", "static_depth", "--sparsities", "0.25", "--engine", "fused", "--json", "-")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["plan"]["engine"] == "fused"


def test_the_fused_engine_merges_qkv_and_gate_up_and_prices_its_own_kernels():
    est = Estimator(H200, engine="fused")
    sc = Scenario(engine="fused")
    e = est.estimate(build_phase_ops(LLAMA, Strategy("dense"), sc, "decode"))
    by = {p.op.name: p for p in e.ops}
    q, k, v = by["q_proj"], by["k_proj"], by["v_proj"]
    assert k.ms_per_call == v.ms_per_call == 0.0 and "merged q_proj" in k.note
    merged = Gemm("q_proj", q.op.m, q.op.n + k.op.n + v.op.n, q.op.k, dtype="bf16")
    assert q.ms_per_call == pytest.approx(est.price(merged).ms_per_call)
    assert by["attn_residual"].ms_per_call == 0.0  # runs inside the fused add-norm
    # a measured eager rmsnorm does not price the fused one
    norm = by["input_norm"].op
    m = Measurement(key=norm.key(), op=asdict(norm), ms=0.5, fingerprint="x", method="cuda-graph")
    est = Estimator(H200, measurements=[m], engine="fused")
    p = est.price(norm, "dense", "decode")
    assert p.source == "roofline" and p.ms_per_call < 0.05 and "fused engine" in p.note
    assert Estimator(H200, measurements=[m]).price(norm).ms_per_call == 0.5  # eager: measured


def test_an_op_costs_each_of_its_kernels_bytes_plus_the_floor():
    est = Estimator(H200)
    norm = Elementwise("input_norm", "rmsnorm", 16, 4096, dtype="bf16")
    kernels = est.kernels_of(norm, "dense", "decode")
    eff = efficiency(H200)
    bw = H200.bandwidth * eff["bandwidth"]
    want = sum(k.bytes(16 * 4096, "bf16") / bw * 1e3 + H200.launch_overhead_us * 1e-3 for k in kernels)
    assert est.analytical_ms(norm, "dense", "decode") == pytest.approx(want)
    assert len(kernels) >= 6  # the eager decomposition, not one kernel with one floor
    # the physical ceiling's work: the same kernels at their roofline plus the floor
    assert est.work_ms(norm) < est.analytical_ms(norm, "dense", "decode")


# ------------------------------------------------------------------ efficiency blocks

def test_each_gpu_profile_carries_its_efficiency_with_sources():
    src = efficiency_sources(H200)
    assert "fitted to" in src["gemm"] and "30.4 ms" in src["gemm"]  # the anchors it was fitted to
    assert "fitted to" in src["bandwidth"] and "low rank 25% 0.94x" in src["bandwidth"]
    assert efficiency(H200)["gemm"] == 0.65
    assert efficiency(H200, "fused")["gemm"] == 0.80  # the engine's own figure
    assert "fitted to" in efficiency_sources(H200, "fused")["gemm"]
    # the fused engine's memory-bound figures are the isolated GEMMs' (the vLLM GEMM path)
    assert efficiency(H200, "fused")["bandwidth"] == 0.83
    assert "aiconfigurator" in efficiency_sources(H200, "fused")["bandwidth"]
    l40s = load_gpu("l40s")
    assert efficiency_sources(l40s)["gemm"].startswith("assumed")
    assert efficiency(l40s)["kernel_floor_us"] == l40s.launch_overhead_us


def test_a_malformed_efficiency_block_is_one_clear_error():
    with pytest.raises(UserError, match="efficiency gemm needs a value and a source"):
        parse_efficiency({"gemm": 0.7}, "profile x")
    with pytest.raises(UserError, match="not a share between 0 and 1"):
        parse_efficiency({"gemm": {"value": 1.7, "source": "datasheet"}}, "profile x")
    with pytest.raises(UserError, match="unknown efficiency figure 'gemmm'"):
        parse_efficiency({"gemmm": {"value": 0.7, "source": "datasheet"}}, "profile x")
    raw = json.loads(json.dumps(H200.__dict__, default=str))
    assert raw  # a profile without the block still loads, on the defaults
    d = {"name": "x", "display_name": "X", "peak_tflops": {"bf16": 100}, "memory_bandwidth_gbs": 1000,
         "memory_gb": 16, "l2_mb": 8, "launch_overhead_us": 4.0}
    dev = profile_from_dict(d)
    assert dev.launch_overhead_us == 4.0 and efficiency(dev)["gemm"] == 0.80


def _synthetic(device, floor_us=3.0, bw_share=0.7, gemm_share=0.6, lat_us=1.5):
    """Kernel times made by a known model: the fit must give its figures back."""
    bw, peak = device.bandwidth, device.peak("bf16")
    out = []

    def add(op, ms):
        out.append(Measurement(key=op.key(), op=asdict(op), ms=ms, fingerprint="x", method="cuda-graph"))
    for rows in (1, 64, 1024, 4096, 16384):
        op = Elementwise("n", "rmsnorm", rows, 4096, dtype="bf16")
        add(op, floor_us * 1e-3 + op.bytes() / (bw * bw_share) * 1e3)
    for m in (1, 16, 64):
        for n, k in ((4096, 4096), (14336, 4096), (1024, 4096)):
            op = Gemm("g", m, n, k, dtype="bf16")
            add(op, (floor_us + lat_us) * 1e-3 + op.bytes() / (bw * bw_share) * 1e3)
    for m in (2048, 4096, 8192):
        op = Gemm("g", m, 4096, 4096, dtype="bf16")
        add(op, op.flops() / (peak * gemm_share) * 1e3)
    return out


def test_a_measured_block_beats_every_engines_profile_figure():
    """calibrate's figures replace the profile's under each engine: the fused engine's fitted
    bandwidth and GEMM share no longer apply once the device's own were measured."""
    from types import SimpleNamespace

    from pis_tui.decide.sweep import with_table_efficiency
    block = fit_efficiency(_synthetic(H200), H200, where="a test GPU")
    dev = with_table_efficiency(H200, SimpleNamespace(extra={"efficiency": block}))
    for engine in ("eager", "fused"):
        eff, src = efficiency(dev, engine), efficiency_sources(dev, engine)
        assert eff["bandwidth"] == pytest.approx(0.7, rel=0.01) and eff["gemm"] == pytest.approx(0.6, rel=0.01)
        assert src["bandwidth"].startswith("measured by pis-tui calibrate"), (engine, src["bandwidth"])
    # what was not measured keeps the engine's own figure
    assert efficiency(dev, "fused")["attention"] == 0.55


def test_calibrate_fit_recovers_the_figures_of_the_kernels_it_timed():
    block = fit_efficiency(_synthetic(H200), H200, where="a test GPU")
    vals, _, srcs = parse_efficiency(block, "fit")
    assert vals["kernel_floor_us"] == pytest.approx(3.0, rel=0.02)
    assert vals["bandwidth"] == pytest.approx(0.7, rel=0.01)
    assert vals["gemm"] == pytest.approx(0.6, rel=0.01)
    assert vals["gemm_latency_us"] == pytest.approx(1.5, abs=0.05)
    assert "attention" not in vals  # nothing timed supports it: the profile's figure stands
    assert all(s.startswith("measured by pis-tui calibrate on a test GPU") for s in srcs.values())
    # a scaled stand-in (FlexAttention fallback) and unstable timings are not used
    ms = _synthetic(H200)
    for m in ms:
        m.conditions = {"estimated": "flex-compile failed"}
    assert fit_efficiency(ms, H200) == {}


# ------------------------------------------------------------------ honest sources

def test_a_scaled_flex_fallback_is_priced_estimated_and_anchors_nothing():
    a = Attention("attention", 1, 32, 8, 1024, 1024, 128, dtype="bf16", block_density=0.5)
    m = Measurement(key=a.key(), op=asdict(a), ms=0.2, fingerprint="x", method="cuda-graph",
                    conditions={"estimated": "flex-compile failed: estimate (dense SDPA x density)"})
    est = Estimator(H200, measurements=[m])
    p = est.price(a)
    assert p.source == "estimated" and "flex-compile failed" in p.note
    near = Attention("attention", 1, 32, 8, 2048, 2048, 128, dtype="bf16", block_density=0.5)
    assert est.price(near).source == "roofline"  # not "interpolated" from an estimate


def test_a_failed_graph_capture_is_flagged_on_the_measurement(monkeypatch):
    torch = pytest.importorskip("torch")
    from pis_tui import timing
    from pis_tui.timing.loops import GRAPH_CAPTURE_FAILED

    ctx = timing.open_device("local")
    op = Elementwise("n", "rmsnorm", 16, 256, dtype="fp32")
    monkeypatch.setattr(ctx, "kind", "cuda")
    monkeypatch.setattr(timing.measure, "time_cuda", lambda fn, copies, r, w, cap, t: (
        0.02, 0.03, 0.01, r, f"{GRAPH_CAPTURE_FAILED} (RuntimeError): eager batch time"))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False, raising=False)
    m = timing.measure_op(op, ctx)
    assert m.status == "ok" and m.conditions["graph_capture"].startswith(GRAPH_CAPTURE_FAILED)
    p = Estimator(H200, measurements=[m]).price(op)
    assert "without a CUDA graph" in p.note


# ------------------------------------------------------------------ the h200-sxm fit

DENSE_ANCHORS = [("prefill", 1, 1024, 30.4), ("prefill", 1, 4096, 124.6), ("prefill", 8, 1024, 237.7),
                 ("decode", 1, 1024, 7.30), ("decode", 16, 1024, 8.45), ("decode", 64, 1024, 10.33),
                 ("decode", 64, 4096, 15.97)]


def test_h200_dense_latency_is_within_10_percent_of_the_quoted_measurements():
    """Issue 16's dense end-to-end figures (Llama-3.1-8B, H200, eager modules under CUDA
    graphs).  All seven are among the points the eager figures were fitted to
    (tests/benchmarks/h200_eager_fit.py), so this guards the fit: it is not independent
    evidence."""
    est = Estimator(H200)
    for phase, b, length, real in DENSE_ANCHORS:
        got = _latency(est, "dense", 0.0, phase, b, length)
        assert abs(got / real - 1) < 0.10, (phase, b, length, got, real)


def test_pruned_directions_on_h200():
    est = Estimator(H200)
    dense = {(ph, b, ln): _latency(est, "dense", 0.0, ph, b, ln) for ph, b, ln, _ in DENSE_ANCHORS}
    for (ph, b, ln), d in dense.items():
        sd = d / _latency(est, "static_depth", 0.25, ph, b, ln)
        sw = d / _latency(est, "static_width", 0.25, ph, b, ln)
        assert 1.25 < sd < 1.34  # nearly its theoretical 4/3
        assert 1.0 < sw < sd  # width prunes less of the time than depth at the same sparsity
    # low rank 25 % in decode is slower than dense at every batch quoted (measured 0.94x; batch 1
    # is a fitted point, the other three are not)
    for (ph, b, ln), d in dense.items():
        if ph == "decode":
            lr = d / _latency(est, "low_rank", 0.25, ph, b, ln)
            assert 0.9 < lr < 1.0, (b, ln, lr)


def test_the_h200_profile_carries_the_fit_of_its_end_to_end_points():
    """The h200-sxm eager figures are what tests/benchmarks/h200_eager_fit.py fits (a change to
    the model that moves the fit must re-run it and copy the figures into the profile)."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parent / "benchmarks" / "h200_eager_fit.py"
    spec = importlib.util.spec_from_file_location("h200_eager_fit", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    fitted = mod.fit()
    eff = efficiency(H200, "eager")
    assert {k: eff[k] for k in fitted} == pytest.approx(fitted), fitted
    # each fitted figure says so, and names the benchmark that fits it
    for k in fitted:
        assert "h200_eager_fit.py" in efficiency_sources(H200, "eager")[k]
