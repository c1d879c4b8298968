"""Pricing: measured > shipped > interpolated > roofline; never below the roofline; no fake 2:4."""

import dataclasses

import pytest

from pis_tui.pricing.estimator import Estimator
from pis_tui.device.choose import load_gpu
from pis_tui.model.spec import load_model_spec
from pis_tui.model.ops import Attention, Elementwise, Gemm
from pis_tui.model.scenario import Scenario
from pis_tui.families.strategy import Strategy
from pis_tui.families.phase_ops import build_phase_ops


@pytest.fixture(scope="module")
def h200():
    return load_gpu("h200-sxm")


def rec(op, ms, status="ok"):
    d = dataclasses.asdict(op)
    return {"key": op.key(), "op": d, "ms": ms, "status": status}


def test_roofline_floor(h200):
    est = Estimator(h200)
    g = Gemm("x", 4096, 4096, 4096, dtype="bf16")
    assert est.roofline_ms(g) == pytest.approx(2 * 4096**3 / 989.4e12 * 1e3)
    small = Gemm("x", 1, 4096, 4096, dtype="bf16")  # memory bound: weights dominate
    assert est.roofline_ms(small) == pytest.approx(small.bytes() / 4800e9 * 1e3)
    p = est.price(g)
    assert p.source == "roofline" and p.ms_per_call > est.roofline_ms(g)


def test_measured_exact_wins(h200):
    g = Gemm("q", 128, 4096, 4096, dtype="bf16")
    est = Estimator(h200, measurements=[rec(g, 0.05)])
    p = est.price(g)
    assert p.source == "measured" and p.ms_per_call == 0.05
    est = Estimator(h200, shipped=[rec(g, 0.07)])
    assert est.price(g).source == "shipped"
    est = Estimator(h200, measurements=[rec(g, 0.05)], shipped=[rec(g, 0.07)])
    assert est.price(g).ms_per_call == 0.05


def test_interpolation_uses_utilization_in_log_m_and_respects_roofline(h200):
    est0 = Estimator(h200)
    pts = []
    for m in (64, 256):
        g = Gemm("q", m, 4096, 4096, dtype="bf16")
        pts.append(rec(g, est0.roofline_ms(g) / 0.5))  # 50 % utilization at both
    est = Estimator(h200, measurements=pts)
    g = Gemm("q", 128, 4096, 4096, dtype="bf16")
    p = est.price(g)
    assert p.source == "interpolated"
    assert p.ms_per_call == pytest.approx(est.roofline_ms(g) / 0.5)
    # a neighbour (N, K) pair is used when this one was never timed
    g2 = Gemm("q", 128, 4096, 5120, dtype="bf16")
    p2 = est.price(g2)
    assert p2.source == "interpolated" and p2.ms_per_call >= est.roofline_ms(g2)


def test_interpolation_never_below_roofline(h200):
    g = Gemm("q", 64, 4096, 4096, dtype="bf16")
    # an impossible (faster than the hardware) measurement must not produce sub-roofline estimates
    est = Estimator(h200, measurements=[rec(g, Estimator(h200).roofline_ms(g) / 3)])
    other = Gemm("q", 1024, 4096, 4096, dtype="bf16")
    assert est.price(other).ms_per_call >= est.roofline_ms(other) * (1 - 1e-12)


def test_unstructured_runs_the_dense_kernel(h200):
    d = Gemm("q", 128, 4096, 4096, dtype="bf16")
    u = dataclasses.replace(d, kind="unstructured", density=0.5)
    est = Estimator(h200, measurements=[rec(d, 0.05)])
    assert est.price(u).ms_per_call == 0.05 and est.price(u).source == "measured"


def test_24_on_a_device_without_sparse_cores_claims_no_speedup():
    cpu_like = dataclasses.replace(load_gpu("h200-sxm"), sparse_24=False)
    est = Estimator(cpu_like)
    d = Gemm("q", 1024, 4096, 4096, dtype="bf16")
    s = dataclasses.replace(d, kind="sparse_24", density=0.5)
    ps, pd = est.price(s), est.price(d)
    assert ps.source == "unsupported" and ps.ms_per_call == pd.ms_per_call


def test_24_measured_unsupported_falls_back_to_dense(h200):
    d = Gemm("q", 1024, 4096, 4096, dtype="bf16")
    s = dataclasses.replace(d, kind="sparse_24", density=0.5)
    est = Estimator(h200, measurements=[rec(d, 0.2), rec(s, 0.0, status="unsupported")])
    p = est.price(s)
    assert p.source == "unsupported" and p.ms_per_call == 0.2


def test_elementwise_and_attention_interpolation(h200):
    e1 = Elementwise("n", "rmsnorm", 16, 4096, dtype="bf16")
    e2 = Elementwise("n", "rmsnorm", 1024, 4096, dtype="bf16")
    est = Estimator(h200, measurements=[rec(e1, 0.004), rec(e2, 0.010)])
    mid = Elementwise("n", "rmsnorm", 256, 4096, dtype="bf16")
    assert 0.004 < est.price(mid).ms_per_call < 0.010
    small = Elementwise("n", "rmsnorm", 4, 4096, dtype="bf16")
    assert est.price(small).ms_per_call == pytest.approx(0.004)  # launch floor, within reach
    tiny = Elementwise("n", "rmsnorm", 1, 4096, dtype="bf16")  # 16x below: out of reach
    assert est.price(tiny).source == "roofline"
    a = Attention("a", 1, 32, 8, 1024, 1024, 128, dtype="bf16")
    est = Estimator(h200, measurements=[rec(a, est.roofline_ms(a) / 0.4)])
    b = Attention("a", 1, 24, 6, 1024, 1024, 128, dtype="bf16")
    assert est.price(b).ms_per_call == pytest.approx(est.roofline_ms(b) / 0.4)


def test_phase_estimate_sums_ops_and_reports_sources(h200):
    spec = load_model_spec("llama-3.1-8b")
    po = build_phase_ops(spec, Strategy("static_depth", 0.25), Scenario(), "decode")
    e = Estimator(h200).estimate(po)
    assert e.latency_ms == pytest.approx(sum(p.ms_per_call * p.op.count for p in e.ops))
    assert e.timing_source == "roofline" and e.source_counts["roofline"]["ops"] == len(po.ops)


def test_static_depth_near_theoretical_in_decode(h200):
    """The study's finding 1 falls out of the model: dropping layers removes their whole cost."""
    from pis_tui.decide.sweep import sweep
    r = sweep("llama-3.1-8b", "h200-sxm", Scenario(), ["static_depth"], [0.25])
    p = [p for p in r.phase_points("decode") if p.strategy == "static_depth"][0]
    assert p.speedup == pytest.approx(p.flops_speedup, rel=0.05)


def test_calibrated_peak_replaces_nominal(h200):
    g = Gemm("q", 4096, 4096, 4096, dtype="bf16")
    est = Estimator(h200, calibration={"bf16": {"peak_tflops": 500.0, "bandwidth_gbs": 4000}})
    assert est.roofline_ms(g) == pytest.approx(2 * 4096**3 / 500e12 * 1e3)


def test_framework_overhead_priced_from_the_probe_on_cpu_zero_under_cuda_graphs(h200):
    from pis_tui.device.local import local_device
    from pis_tui.model.ops import Overhead

    cpu = local_device()
    if cpu.kind != "cpu":
        pytest.skip("needs a CPU-only machine")
    spec = load_model_spec("qwen2.5-0.5b")
    sc = Scenario(decode_batch=1, context_len=256, dtype="fp32")
    po = build_phase_ops(spec, Strategy("low_rank", 0.5), sc, "decode")
    kernels = [o for o in po.ops if not isinstance(o, Overhead)]
    recs = [rec(o, 0.01) for o in kernels]
    # not probed: zero, says so, and the phase keeps its measured source
    e = Estimator(cpu, measurements=recs).estimate(po)
    assert e.timing_source == "measured" and any("overhead not measured" in n for n in e.notes)
    assert e.latency_ms == pytest.approx(sum(0.01 * o.count for o in kernels))
    # probed: each kind's ms × its count
    per = {"forward": 0.5, "block": 0.1, "linear": 0.02}
    recs += [rec(Overhead("x", k, "decode", 1.0, "fp32"), ms) for k, ms in per.items()]
    e2 = Estimator(cpu, measurements=recs).estimate(po)
    ovh = sum(per[o.kind] * o.count for o in po.ops if isinstance(o, Overhead))
    assert ovh > 0 and e2.latency_ms == pytest.approx(e.latency_ms + ovh)
    # solved from the probe's timed clones, never timed itself: its own source, the weakest here
    assert e2.timing_source == "solved" and not any("overhead" in n for n in e2.notes)
    # a GPU (CUDA-graph timing) has no host overhead, even with a CPU probe in the records
    g = Estimator(h200, measurements=recs).price(Overhead("x", "linear", "decode", 10.0, "fp32"))
    assert g.ms_per_call == 0.0 and "CUDA-graph" in g.note


def test_interpolation_only_from_near_shapes(h200):
    """One measured decode kernel (memory-bound) must not set the utilization of prefill GEMMs
    of other shapes: past 2× in M, or (N, K) neighbours past 4×, the op stays roofline."""
    est0 = Estimator(h200)
    lm_head = Gemm("lm_head", 4, 151936, 896, dtype="bf16")
    est = Estimator(h200, measurements=[rec(lm_head, est0.roofline_ms(lm_head) / 0.3)])
    for g in (Gemm("q", 128, 896, 896, dtype="bf16"), Gemm("lm_head", 128, 151936, 896, dtype="bf16")):
        assert est.price(g).source == "roofline"
        assert est.price(g).ms_per_call == pytest.approx(est0.price(g).ms_per_call)
    near = Gemm("lm_head", 8, 151936, 896, dtype="bf16")  # 2× in M: still near
    assert est.price(near).source == "interpolated"
    g = Gemm("q", 64, 4096, 4096, dtype="bf16")
    est = Estimator(h200, measurements=[rec(g, est0.roofline_ms(g) / 0.5)])
    assert est.price(Gemm("q", 64, 8192, 8192, dtype="bf16")).source == "interpolated"  # 2×, 2×
    assert est.price(Gemm("q", 64, 4096, 32768, dtype="bf16")).source == "roofline"  # 8× in K
    a = Attention("a", 1, 32, 8, 1024, 1024, 128, dtype="bf16")
    est = Estimator(h200, measurements=[rec(a, est0.roofline_ms(a) / 0.4)])
    assert est.price(Attention("a", 1, 32, 8, 1, 65536, 128, dtype="bf16")).source == "roofline"


def test_elementwise_interpolation_has_a_reach(h200):
    """One rmsnorm measured at 1 row (its time is the fixed cost) must not price a 4,096-row
    one by bytes (that gave 16-82 ms "interpolated"): past 4x the measured range it is
    priced by the analytical model; within it, along the measured slope."""
    one = Elementwise("n", "rmsnorm", 1, 4096, dtype="bf16")
    big = Elementwise("n", "rmsnorm", 4096, 4096, dtype="bf16")
    est = Estimator(h200, measurements=[rec(one, 0.004)])
    p = est.price(big)
    assert p.source == "roofline" and p.ms_per_call < 0.1
    near = Elementwise("n", "rmsnorm", 3, 4096, dtype="bf16")
    assert est.price(near).source == "interpolated"
    two = Elementwise("n", "rmsnorm", 1024, 4096, dtype="bf16")
    est = Estimator(h200, measurements=[rec(one, 0.004), rec(two, 0.010)])
    p = est.price(Elementwise("n", "rmsnorm", 2048, 4096, dtype="bf16"))
    slope = (0.010 - 0.004) / (two.bytes() - one.bytes())
    assert p.source == "interpolated"
    assert p.ms_per_call == pytest.approx(0.010 + slope * (2048 - 1024) / 1024 * two.bytes(), rel=0.01)
