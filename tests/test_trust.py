"""Measurements you can trust on a busy machine: the instability rule, consistency between
kernels, mixed conditions, physical ceilings and speedup intervals (issue 14's rules)."""

from __future__ import annotations

import dataclasses
import json
import math
import types
from dataclasses import replace

import jsonschema
import pytest

from pis_tui import profiling
from pis_tui.pricing import uncertainty
from pis_tui.cache import Cache
from pis_tui.decide.sweep import sweep
from pis_tui.pricing.estimator import Estimator
from pis_tui.present.export import load_schema, to_dict
from pis_tui.device.choose import load_gpu
from pis_tui.pricing.measured_table import METHOD_VERSIONS, Measurement, software_versions
from pis_tui.model.spec import load_model_spec
from pis_tui.model.ops import Attention, Elementwise, Gemm
from pis_tui.decide.frontier import recommend
from pis_tui.profiling.rounds import combine_rounds, consistency_violations
from pis_tui.quality.model import build_quality_model
from pis_tui.pricing.estimates import PhaseEstimate, PricedOp
from pis_tui.model.scenario import Scenario

FP = "cpu:fake:2t"
SW = software_versions()  # what the cache looks measurements up under


def fake_ctx():
    return types.SimpleNamespace(is_cuda=False, fingerprint=FP, software=SW,
                                 device_info=lambda: {"fingerprint": FP}, threads=2)


def meas(op, ms, status="ok", **kw):
    return Measurement(key=op.key(), op=dataclasses.asdict(op), ms=ms, eager_ms=ms, spread=0.0,
                       repeats=3, status=status, method="cpu-wall",
                       method_version=METHOD_VERSIONS["cpu-wall"], fingerprint=FP, software=SW, **kw)


def rounds_of(op, times, contended=None):
    out = []
    for i, t in enumerate(times):
        m = meas(op, t)
        m._contended = bool(contended and contended[i])
        m._load = 0.5
        out.append(m)
    return out


K_SMALL = Gemm("k_proj", 16, 56, 896, dtype="fp32")
K_BIG = Gemm("k_proj", 16, 224, 896, dtype="fp32")


# ------------------------------------------------------------------------------ instability


def test_the_issues_k_proj_rounds_are_unstable():
    """Rounds 23.99, 22.54, 0.28, 23.99, 23.99, 23.95 ms: the second-fastest (22.5 ms) was stored
    as measured; its two fastest rounds differ by 99 %: unstable."""
    m = combine_rounds(rounds_of(K_SMALL, [23.99, 22.54, 0.28, 23.99, 23.99, 23.95]))
    assert m.status == "unstable" and m.ms == 22.54
    assert "differ by 99%" in m.conditions["unstable"][0]


def test_contended_rounds_are_not_used_and_too_few_quiet_ones_is_unstable():
    times = [23.99, 22.54, 0.28, 23.99, 0.30, 23.95]
    contended = [True, True, False, True, False, True]
    m = combine_rounds(rounds_of(K_SMALL, times, contended))
    assert m.status == "ok" and m.ms == 0.30 and m.conditions["contended_rounds"] == 4
    assert m.spread == pytest.approx((0.30 - 0.28) / 0.30)
    only_one = combine_rounds(rounds_of(K_SMALL, times, [True, True, False, True, True, True]))
    assert only_one.status == "unstable" and "contention probe" in only_one.conditions["unstable"][0]


def test_settled_rounds_stay_ok():
    m = combine_rounds(rounds_of(K_BIG, [0.13, 0.9, 0.135]))  # one spoiled round: fine
    assert m.status == "ok" and m.ms == 0.135


def test_a_gpu_measurement_whose_replays_spread_is_unstable():
    m = replace(meas(K_BIG, 0.1), spread=0.4)
    assert combine_rounds([m]).status == "unstable"
    assert combine_rounds([replace(m, spread=0.02)]).status == "ok"


def test_the_probe_runs_before_each_round_and_marks_it(monkeypatch):
    from pis_tui import timing

    states = iter([{"contended": True, "ratio": 300.0}] + [{"contended": False, "ratio": 1.1}] * 9)
    times = iter([20.0, 0.5, 0.52] + [0.5] * 9)
    monkeypatch.setattr(timing, "measure_op", lambda op, ctx, repeats=None, **kw: meas(op, next(times)))
    got = profiling.measure_rounds([K_BIG], fake_ctx(), 3, probe=lambda: next(states))[K_BIG.key()]
    assert got.status == "ok" and got.ms == 0.52 and got.conditions["contended_rounds"] == 1
    assert got.conditions["probe_ratios"][0] == 300.0


def test_run_profile_remeasures_unstable_ops_once_then_stores_them_unstable(tmp_path, monkeypatch):
    from pis_tui import timing

    monkeypatch.setattr(timing, "contention_probe", lambda c: {"contended": False, "ratio": 1.0})
    calls = {}

    def noisy(op, ctx, repeats=None, **kw):  # K_BIG never settles; K_SMALL settles in round 4
        calls[op.n] = calls.get(op.n, 0) + 1
        if op.n == 224:
            return meas(op, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0][(calls[op.n] - 1) % 6])
        return meas(op, 1.0 if calls[op.n] <= 6 and calls[op.n] % 2 else 0.1)
    monkeypatch.setattr(timing, "measure_op", noisy)
    cache = Cache.open(str(tmp_path / "c.duckdb"))
    rep = profiling.run_profile([K_BIG, K_SMALL], fake_ctx(), cache, calibrate=False)
    stored = {m.op["n"]: m for m in cache.get_measurements(FP, software=SW)}
    assert stored[224].status == "unstable" and stored[224].conditions["remeasured"] == 1
    assert stored[56].status == "ok"
    assert rep.remeasured == 1 and rep.unstable == 1 and calls[224] == 12
    # a later run keeps it (unstable is a result), --remeasure unstable measures it again
    before, small = calls[224], calls[56]
    profiling.run_profile([K_BIG, K_SMALL], fake_ctx(), cache, calibrate=False)
    assert calls[224] == before
    profiling.run_profile([K_BIG, K_SMALL], fake_ctx(), cache, calibrate=False, remeasure="unstable")
    assert calls[224] > before and calls[56] == small


def test_remeasure_all_never_replaces_a_stable_figure_with_a_worse_one(tmp_path, monkeypatch):
    """`profile --remeasure all` on a busy machine: an op whose new rounds never settle keeps
    its stable cached figure (it replaced 31 stable measurements with unstable ones)."""
    from pis_tui import timing

    monkeypatch.setattr(timing, "contention_probe", lambda c: {"contended": False, "ratio": 1.0})
    cache = Cache.open(str(tmp_path / "c.duckdb"))
    monkeypatch.setattr(timing, "measure_op", lambda op, ctx, repeats=None, **kw: meas(op, 1.0))
    profiling.run_profile([K_BIG, K_SMALL], fake_ctx(), cache, calibrate=False)
    first = {m.op["n"]: m for m in cache.get_measurements(FP, software=SW)}
    assert first[224].status == "ok" and first[56].status == "ok"
    calls = {}

    def busy(op, ctx, repeats=None, **kw):  # K_BIG never settles now; K_SMALL settles at 0.9
        calls[op.n] = calls.get(op.n, 0) + 1
        if op.n == 224:
            return meas(op, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0][(calls[op.n] - 1) % 6])
        return meas(op, 0.9)
    monkeypatch.setattr(timing, "measure_op", busy)
    rep = profiling.run_profile([K_BIG, K_SMALL], fake_ctx(), cache, calibrate=False,
                                remeasure="all")
    after = {m.op["n"]: m for m in cache.get_measurements(FP, software=SW)}
    assert calls[224] >= 6  # it was measured again ...
    assert after[224].status == "ok" and after[224].ms == first[224].ms  # ... and kept
    assert after[56].status == "ok" and after[56].ms == pytest.approx(0.9)  # a good one replaces
    assert rep.kept_stable == 1 and rep.to_dict()["kept_stable"] == 1


# ------------------------------------------------------------------------------ consistency


def test_a_kernel_slower_than_one_doing_more_work_is_inconsistent():
    bad = consistency_violations([meas(K_SMALL, 22.5), meas(K_BIG, 0.13)])
    assert [(a.op["n"], b.op["n"]) for a, b in bad] == [(56, 224)]
    # without the outlier nothing is flagged; a less aligned smaller kernel may be slower
    assert consistency_violations([meas(K_SMALL, 0.12), meas(K_BIG, 0.13)]) == []
    odd = Gemm("x", 16, 55, 896, dtype="fp32")
    assert consistency_violations([meas(odd, 0.5), meas(K_BIG, 0.13)]) == []


def test_a_gemm_whose_m_is_off_the_register_tile_may_be_slower():
    # dynamic depth's 12 gathered rows of 16 at decode: MKL fp32 runs M = 12 through a
    # remainder path, 1.37× slower than M = 16 on the development CPU (2.72 against 1.99 ms,
    # cold weights): a measurement, not an outlier to re-measure and price from its neighbours
    m12, m16, m64 = (Gemm("gate_proj", m, 4864, 896, dtype="fp32") for m in (12, 16, 64))
    assert consistency_violations([meas(m12, 2.72), meas(m16, 1.99)]) == []
    # the same rule still catches an M on the tile slower than a larger one on it
    bad = consistency_violations([meas(m16, 2.72), meas(m64, 1.99)])
    assert [(a.op["m"], b.op["m"]) for a, b in bad] == [(16, 64)]


def test_consistency_covers_attention_and_elementwise_ops():
    a1 = Attention("a", 1, 14, 2, 1, 256, 64, dtype="fp32")
    a2 = Attention("a", 16, 14, 2, 1, 256, 64, dtype="fp32")
    assert [a.op["batch"] for a, _ in consistency_violations([meas(a1, 5.0), meas(a2, 0.4)])] == [1]
    n1 = Elementwise("n", "rmsnorm", 16, 896, dtype="fp32")
    n2 = Elementwise("n", "rmsnorm", 1024, 896, dtype="fp32")
    assert len(consistency_violations([meas(n1, 45.7), meas(n2, 0.5)])) == 1
    # different kinds, or a different head_dim, are never compared
    a3 = Attention("a", 16, 14, 2, 1, 256, 128, dtype="fp32")
    assert consistency_violations([meas(a1, 5.0), meas(a3, 0.4)]) == []


def test_run_profile_flags_a_kernel_that_stays_inconsistent(tmp_path, monkeypatch):
    from pis_tui import timing

    monkeypatch.setattr(timing, "contention_probe", lambda c: {"contended": False, "ratio": 1.0})
    monkeypatch.setattr(timing, "measure_op", lambda op, ctx, repeats=None, **kw:
                        meas(op, 22.5 if op.n == 56 else 0.13))
    cache = Cache.open(str(tmp_path / "c.duckdb"))
    rep = profiling.run_profile([K_SMALL, K_BIG], fake_ctx(), cache, calibrate=False)
    stored = {m.op["n"]: m for m in cache.get_measurements(FP, software=SW)}
    assert stored[56].status == "unstable" and stored[56].conditions["inconsistent_with"] == K_BIG.key()
    assert "which does more work" in stored[56].conditions["unstable"][-1]
    assert stored[224].status == "ok" and rep.inconsistent == 1


# ------------------------------------------------------------------------------ pricing


def rec(op, ms, status="ok", loaded=False, spread=0.01):
    return {"key": op.key(), "op": op, "ms": ms, "status": status, "spread": spread,
            "conditions": {"loaded": loaded, "unstable": ["rounds disagree"]} if status == "unstable"
            else {"loaded": loaded}}


def test_an_unstable_measurement_is_never_priced_as_measured():
    dev = load_gpu("local")
    g = Gemm("g", 16, 224, 896, dtype="fp32")
    alone = Estimator(dev, [rec(g, 5.0, "unstable")]).price(g)
    assert alone.source == "unstable" and alone.ms_per_call == 5.0 and "unstable" in alone.note
    neighbours = [rec(Gemm("g", m, 224, 896, dtype="fp32"), 0.01 * m) for m in (8, 32)]
    p = Estimator(dev, neighbours + [rec(g, 5.0, "unstable")]).price(g)
    assert p.source == "interpolated" and p.ms_per_call < 1.0 and "stable neighbours" in p.note


def _est(ops_ms):
    """A PhaseEstimate from [(op, ms per call, uncertainty, loaded)]."""
    priced = tuple(PricedOp(o, ms, "roofline", "", u, loaded) for o, ms, u, loaded in ops_ms)
    return PhaseEstimate("x", 0.0, 0.0, "decode", priced, sum(p.total_ms for p in priced), 1.0,
                         "roofline")


def test_interval_rule_by_hand():
    shared = Gemm("o_proj", 16, 4096, 4096)
    dense_own = Gemm("gate_proj", 16, 14336, 4096)
    pruned_own = Gemm("gate_proj.A", 16, 1024, 4096)  # far in shape: uncorrelated (d > 3)
    d = _est([(shared, 1.0, 0.1, False), (dense_own, 3.0, 0.2, False)])
    p = _est([(shared, 1.0, 0.1, False), (pruned_own, 1.0, 0.2, False)])
    # shares: shared 0.25 → 0.5, dense_own 0.75 → 0, pruned_own 0 → 0.5
    want = math.sqrt((0.1 * (0.25 - 0.5)) ** 2 + (0.2 * 0.75) ** 2 + (0.2 * 0.5) ** 2)
    corr = uncertainty.correlation(*[{"cls": ("gemm", "dense", "bf16"), "source": "roofline",
                                      "dims": uncertainty._dims(o)} for o in (dense_own, pruned_own)])
    assert corr == pytest.approx(uncertainty.NUGGET * (1 - math.log(14) / 3))  # d = log 14 = 2.64
    want2 = want ** 2 + 2 * (0.2 * 0.75) * (-0.2 * 0.5) * uncertainty.NUGGET * max(0.0, 1 - math.log(14) / 3)
    assert uncertainty.log_sigma(d, p) == pytest.approx(math.sqrt(want2), rel=1e-6)
    lo, hi = uncertainty.interval(2.0, 0.1)
    assert (lo, hi) == pytest.approx((2.0 * math.exp(-0.2), 2.0 * math.exp(0.2)))
    # identical op lists: nothing differs, no uncertainty
    assert uncertainty.log_sigma(d, d) == 0.0


def test_static_depth_intervals_are_narrow_even_from_estimates():
    r = sweep("llama-3.1-8b", "h200-sxm", strategies=["static_depth", "low_rank"], sparsities=[0.5])
    sd = next(p for p in r.points if p.strategy == "static_depth" and p.phase == "prefill")
    lr = next(p for p in r.points if p.strategy == "low_rank" and p.phase == "prefill")
    assert sd.timing_source == lr.timing_source == "roofline"
    assert (sd.speedup_hi - sd.speedup_lo) / sd.speedup < 0.02
    assert (lr.speedup_hi - lr.speedup_lo) / lr.speedup > 0.1
    assert sd.speedup_lo <= sd.speedup <= sd.speedup_hi and sd.ceiling == pytest.approx(
        sd.speedup, rel=0.01)


# ------------------------------------------------------------------------------ the issue's case


@pytest.fixture
def qwen_gate_case(monkeypatch):
    """The issue's sweep: gate_proj 1024×4864×896 measured loaded at 156 ms, the pruned 4224-wide
    one quiet at 42 ms (184 GFLOP/s), both 'measured'."""
    from pis_tui.decide import sweep as engine

    spec = load_model_spec("qwen2.5-0.5b")
    dev = load_gpu("local")
    dense_gate = Gemm("gate_proj", 1024, 4864, 896, dtype="fp32")
    pruned_gate = Gemm("gate_proj", 1024, 4224, 896, dtype="fp32")
    records = [rec(dense_gate, 156.0, loaded=True), rec(pruned_gate, 42.0, loaded=False)]
    real = engine.make_estimator
    monkeypatch.setattr(engine, "make_estimator", lambda d, dt, cache=None, warnings=None, engine="eager":
                        Estimator(d, records, (), {"fp32": {"peak_tflops": 0.137,
                                                            "bandwidth_gbs": 20.0}}, engine=engine))
    yield spec, dev
    monkeypatch.setattr(engine, "make_estimator", real)


def test_the_issues_outlier_point_is_flagged_and_never_recommended(qwen_gate_case):
    spec, dev = qwen_gate_case
    sc = Scenario(prefill_batch=1, prompt_len=1024, decode_batch=16, context_len=256, dtype="fp32")
    r = sweep(spec, dev, sc, ["static_width"], [0.125], quality=build_quality_model(),
              phases=["prefill"])
    p = next(p for p in r.points if p.strategy == "static_width")
    assert p.speedup > 1.3 and p.flops_speedup < 1.15  # what the user saw: far above the FLOPs
    assert "above_ceiling" in p.flags and "mixed_conditions" in p.flags and p.ceiling < 1.2
    rec_ = recommend(r.points, 0.5, "prefill")
    assert rec_.best.strategy == "dense" and p in rec_.skipped
    assert recommend(r.points, 0.5, "prefill", include_flagged=True).best is p
    doc = to_dict(r, {"prefill": rec_})
    jsonschema.validate(doc, load_schema())
    row = next(x for x in doc["results"] if x["strategy"] == "static_width")
    assert set(row["trust_flags"]) == {"above_ceiling", "mixed_conditions"}
    assert row["speedup_interval"][0] <= row["speedup"] <= row["speedup_interval"][1]
    assert doc["recommendations"]["prefill"]["skipped_flagged"][0]["strategy"] == "static_width"


def test_the_cli_shows_interval_and_marks(qwen_gate_case, capsys):
    from pis_tui.commands._tables import points_table
    from pis_tui.commands.common import console

    spec, dev = qwen_gate_case
    r = sweep(spec, dev, Scenario(dtype="fp32"), ["static_width"], [0.125], phases=["prefill"])
    console().print(points_table(r, "prefill"))
    out = capsys.readouterr().out
    assert "↑≠" in out and "interval" in out


# ------------------------------------------------------------------------------ the cache


def test_cache_clear_by_device_op_kind_status_and_model(tmp_path):
    from helpers import run_cli

    path = str(tmp_path / "c.duckdb")
    cache = Cache.open(path)
    spec = load_model_spec("qwen2.5-0.5b")
    planned = profiling.worklist(spec, load_gpu("local"), Scenario(dtype="fp32"))
    mine = [replace(meas(o, 0.1), fingerprint=FP) for o in planned[:3]]
    other = [replace(meas(Gemm("z", 3, 7, 11, dtype="fp32"), 0.1), fingerprint="cpu:other:1t"),
             replace(meas(Elementwise("n", "rmsnorm", 3, 7, dtype="fp32"), 0.1), status="unstable")]
    cache.put_measurements(mine + other)
    cache.put_validation({"model": spec.name, "fingerprint": FP, "strategy": "dense", "sparsity": 0.0,
                          "phase": "decode", "batch": 1, "length": 8})
    # the collectives' table has a status and an op type ("collective") too: cleared alike
    assert cache.clear(status="unstable") == {"op_timings": 1, "collective_timings": 0}
    assert cache.clear(op_type="attention") == {"op_timings": 0, "collective_timings": 0}
    r = run_cli("cache", "clear", "--model", "qwen2.5-0.5b", "--dtype", "fp32", "--cache", path)
    assert r.returncode == 0, r.stderr
    assert "op_timings 3" in r.stdout and "validations 1" in r.stdout
    left = Cache.open(path).get_measurements("cpu:other:1t", any_version=True)
    assert [m.op["n"] for m in left] == [7]  # another device's kernel of another shape stays
    r = run_cli("cache", "clear", "--device", "cpu:other:1t", "--cache", path)
    assert "op_timings 1" in r.stdout


def test_a_version_1_cache_is_migrated_keeping_its_rows(tmp_path):
    import duckdb

    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
    con.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    con.execute("""CREATE TABLE op_timings (
        fingerprint VARCHAR NOT NULL, torch_version VARCHAR NOT NULL, cuda_version VARCHAR NOT NULL,
        cusparselt_version VARCHAR NOT NULL, method VARCHAR NOT NULL, method_version INTEGER NOT NULL,
        op_key VARCHAR NOT NULL, op_type VARCHAR, dtype VARCHAR, ms DOUBLE, eager_ms DOUBLE,
        spread DOUBLE, repeats INTEGER, status VARCHAR, note VARCHAR, op_json VARCHAR,
        device_json VARCHAR, measured_at TIMESTAMP,
        PRIMARY KEY (fingerprint, torch_version, cuda_version, cusparselt_version, method,
                     method_version, op_key))""")
    con.execute("INSERT INTO op_timings VALUES ('fp', 'x', '', '', 'cpu-wall', 3, 'k', 'gemm', 'fp32', "
                "1.0, 1.0, 0.0, 3, 'ok', '', ?, NULL, now())", [json.dumps({"op_type": "gemm"})])
    con.close()
    c = Cache.open(str(path))
    from pis_tui.cache import SCHEMA_VERSION

    # migrated through every version since (v2: conditions, v3: collective_timings)
    assert c.info()["schema_version"] == SCHEMA_VERSION and c.info()["tables"]["op_timings"] == 1
    assert c.info()["tables"]["collective_timings"] == 0
    old = c.get_measurements("fp", software={"torch": "x"}, any_version=True)
    assert old[0].key == "k" and old[0].conditions == {}
    c.put_measurements([replace(meas(K_BIG, 0.2), conditions={"loaded": True})])
    back = {m.key: m for m in c.get_measurements(FP, software=SW)}
    assert back[K_BIG.key()].conditions == {"loaded": True}


def test_an_interval_from_a_wildly_loaded_sigma_is_finite():
    """Ops timed while the machine ran 300× slower than itself gave a sigma whose e^(2σ)
    overflowed (validate: 'OverflowError: math range error' in the CI clone's GPU rehearsal)."""
    import math

    from pis_tui.pricing import uncertainty

    lo, hi = uncertainty.interval(1.3, 1e4)
    assert 0 < lo < 1.3 < hi and math.isfinite(hi)
    assert math.log(hi / 1.3) == pytest.approx(uncertainty.MAX_HALF_WIDTH)
