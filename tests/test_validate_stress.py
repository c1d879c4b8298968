"""validate under stress: the speedup's interval and "unstable", the ceiling flag, contention,
the dispatch probe's bound and spread, and the memory check before any model is built."""

from __future__ import annotations

import json
import random

import pytest

from helpers import run_cli

from pis_tui.errors import MeasureError, UserError
from pis_tui.validation import stability as st


class FakeRun:
    """A prepared run whose samples come from a function of the sample's index (the
    interleaved timer only calls sample() and calibrate())."""

    cuda = False

    def __init__(self, fn):
        self.fn, self.i = fn, 0

    def sample(self) -> float:
        self.i += 1
        return self.fn(self.i)

    def calibrate(self, target_ms) -> None:
        pass


def test_median_interval_is_the_order_statistics_of_the_binomial():
    assert st.median_interval([3, 1, 2, 5, 4]) == (1, 5)  # n ≤ 5: the whole range
    xs = list(range(1, 21))  # n = 20: k = floor((20 − 1.96·√20)/2) = 5 → the 6th and 15th
    assert st.median_interval(xs) == (6, 15)
    with pytest.raises(ValueError):
        st.median_interval([])


def test_a_steady_speedup_stops_after_one_round():
    dense, pruned = FakeRun(lambda i: 10.0), FakeRun(lambda i: 5.0)
    r = st.measure_speedup(dense, pruned, repeats=5, warmup=0)
    assert r.stable and r.rounds == 1 and r.pairs == 5
    assert r.speedup == pytest.approx(2.0) and (r.low, r.high) == (pytest.approx(2.0),) * 2


def test_pairs_cancel_a_drift_that_hits_both_models():
    # the machine slows down 3× over the run: both models' times drift alike, the ratios don't
    slow = lambda i: 1.0 + 2.0 * min(i, 20) / 20  # noqa: E731
    dense, pruned = FakeRun(lambda i: 10.0 * slow(i)), FakeRun(lambda i: 5.0 * slow(i))
    r = st.measure_speedup(dense, pruned, repeats=5, warmup=0)
    assert r.stable and r.speedup == pytest.approx(2.0, rel=0.12)
    assert r.dense.spread > 0.1  # the times themselves spread widely


def test_noise_that_does_not_settle_is_unstable_after_the_round_limit():
    rng = random.Random(1)
    dense = FakeRun(lambda i: 10.0 * rng.choice((1.0, 3.0)))
    pruned = FakeRun(lambda i: 5.0 * rng.choice((1.0, 3.0)))
    seen = []
    r = st.measure_speedup(dense, pruned, repeats=5, warmup=0, max_rounds=3,
                           on_round=lambda *a: seen.append(a))
    assert not r.stable and r.rounds == 3 and r.pairs == 15 and len(seen) == 3
    assert r.half_width > st.TOLERANCE and any("unstable" in n for n in r.notes)


def test_contention_is_recorded_and_noted():
    dense, pruned = FakeRun(lambda i: 10.0), FakeRun(lambda i: 5.0)
    r = st.measure_speedup(dense, pruned, repeats=3, warmup=0, contention=lambda: True)
    assert r.contended and any("other processes" in n for n in r.notes)


def test_cpu_contended_reads_the_probe_and_the_load(monkeypatch):
    pytest.importorskip("torch")
    import os

    from pis_tui.timing import measure

    monkeypatch.setattr(measure, "cpu_contention", lambda threads: {"contended": False, "ratio": 1.0})
    monkeypatch.setattr(os, "getloadavg", lambda: (os.cpu_count() + 3.0, 0, 0))
    c = st.cpu_contended(2)
    assert c["contended"] and c["load"] > c["cores"]
    monkeypatch.setattr(os, "getloadavg", lambda: (0.1, 0, 0))
    assert not st.cpu_contended(2)["contended"]


def _row(**kw):
    from pis_tui.validation.compare import ValidationRow

    base = dict(strategy="static_depth", sparsity=0.5, achieved_sparsity=0.5, phase="prefill",
                batch=1, length=128, predicted_ms=5.0, measured_ms=5.0, dense_predicted_ms=9.0,
                dense_measured_ms=10.0, predicted_speedup=1.8, measured_speedup=2.0,
                error=-0.1)
    base.update(kw)
    return ValidationRow(**base)


def test_an_unstable_row_shows_no_figure_in_json_and_summary():
    from pis_tui.validation.compare import accuracy_summary

    ok = _row(measured_low=1.95, measured_high=2.05)
    bad = _row(strategy="low_rank", stable=False, measured_low=0.9, measured_high=2.6,
               error=5.0)
    d = bad.to_dict(full=True)
    assert d["status"] == "unstable" and d["measured_speedup"] is None and d["error"] is None
    assert d["measured_interval"] == [0.9, 2.6] and d["flops_error"] is None
    assert ok.to_dict()["status"] == "ok" and ok.to_dict()["measured_speedup"] == 2.0
    s = accuracy_summary([ok, bad])
    assert s["n"] == 1 and s["unstable"] == 1 and s["worst_abs_error"] == pytest.approx(0.1)
    assert accuracy_summary([bad]) == {"n": 0, "unstable": 1, "prediction_flagged": 0}
    # a prediction that breaks the trust rules (the busy run's 8.2× for a 1.3× ceiling) is
    # shown, flagged, and left out of the errors
    wild = _row(strategy="static_width", predicted_speedup=8.2, error=4.9,
                prediction_flags=("above_ceiling", "mixed_conditions"))
    s = accuracy_summary([ok, wild])
    assert s["n"] == 1 and s["prediction_flagged"] == 1 and s["worst_abs_error"] == pytest.approx(0.1)
    assert wild.to_dict()["prediction_flags"] == ["above_ceiling", "mixed_conditions"]


def test_the_table_says_unstable_and_flags_the_ceiling():
    from rich.console import Console

    from pis_tui.commands.validate import _row_line, _table

    rows = [_row(measured_low=2.1, measured_high=2.2, measured_speedup=2.16, ceiling=1.9,
                 above_ceiling=True),
            _row(strategy="low_rank", stable=False, measured_low=0.9, measured_high=2.6,
                 contended=True, pairs=20)]
    con = Console(width=250, record=True)
    con.print(_table(rows))
    text = con.export_text()
    assert "unstable" in text and "eager ↑" in text and "busy" in text and "0.90–2.60" in text
    assert "measured unstable (0.90–2.60)×" in _row_line(rows[1])
    assert "2.16" in _row_line(rows[0]) and "↑ceiling" in _row_line(rows[0])


@pytest.fixture(scope="module")
def tiny_cfg():
    from pis_tui.model.spec import load_preset_config

    cfg = {k: v for k, v in load_preset_config("qwen2.5-0.5b").items() if not k.startswith("_")}
    cfg.update(num_hidden_layers=4, hidden_size=128, intermediate_size=384, num_attention_heads=4,
               num_key_value_heads=2, head_dim=32, vocab_size=512, max_position_embeddings=2048)
    return cfg


def test_validate_rows_carry_interval_ceiling_and_flag_above_it(tiny_cfg, monkeypatch):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from pis_tui.families.strategy import Strategy
    from pis_tui import validation as v
    from pis_tui.validation import compare

    # the dense run is slowed by "something else": the measured speedup is far above what
    # dropping half the layers allows, and the row says so.  The pairs are timed for real; the
    # figures are set (a busy 2-core machine can put a real interval's low end anywhere)
    real = compare.measure_speedup

    def slowed(d, p, *a, **kw):
        r = real(d, p, *a, **kw)
        r.speedup, r.low, r.high = 8.0, 7.5, 8.5
        return r
    monkeypatch.setattr(compare, "measure_speedup", slowed)
    warnings = []
    rows = v.validate(tiny_cfg, [Strategy("static_depth", 0.5)], ("prefill",), prompt_len=16,
                      repeats=3, warmup=0, max_rounds=2, probe_overhead=False,
                      on_warning=warnings.append)
    (r,) = rows
    assert 1.0 < r.ceiling < 2.5 and r.measured_low > r.ceiling and r.above_ceiling
    assert any("above the static_depth ceiling" in n for n in r.notes)
    assert r.pairs in (3, 6) and r.rounds in (1, 2)


def test_memory_need_of_validate_and_quality():
    from pis_tui.validation import memory_check as mc
    from pis_tui.families.strategy import Strategy
    from pis_tui.model.spec import load_model_spec as load_preset

    spec = load_preset("llama-3.1-70b")
    need = mc.validate_need(spec, [Strategy("static_depth", 0.5)], "fp32", decode_batch=1)
    # fp32: 4 bytes a parameter; the dense model and the half-depth one at once
    assert need["weights_dense"] == pytest.approx(4 * spec.total_params(), rel=0.01)
    assert 0.45 < need["weights_pruned"] / need["weights_dense"] < 0.6
    masked = mc.validate_need(spec, [Strategy("semi_structured_24")], "fp32")
    assert masked["weights_pruned"] == pytest.approx(masked["weights_dense"])  # masks keep dense
    with pytest.raises(UserError) as e:
        mc.check(need, "cpu", "validate llama-3.1-70b", available=(24e9, "MemAvailable"))
    msg = str(e.value)
    assert "\n" not in msg and "GB" in msg and "24.0 GB available" in msg
    assert f"{need['total'] / 1e9:.1f} GB" in msg
    small = mc.validate_need(load_preset("qwen2.5-0.5b"), [Strategy("low_rank", 0.5)], "fp32")
    assert mc.check(small, "cpu", "x", available=(24e9, "MemAvailable"))["need"] < 6e9
    q = mc.quality_need(spec, "bf16")
    assert q["total"] > 2 * 2 * spec.total_params()


def test_available_memory_is_what_is_free_not_the_total():
    from pis_tui.validation import memory_check as mc
    from pis_tui.device.local import _mem_gb

    avail, source = mc.available_bytes("cpu")
    assert 0 < avail <= _mem_gb() * 2**30 * 1.001 and source


def test_cli_validate_refuses_a_model_that_does_not_fit_before_building(tmp_path):
    out = tmp_path / "v.json"
    r = run_cli("validate", "--model", "llama-3.1-70b", "--strategy", "static_depth",
                "--sparsity", "0.5", "--phase", "decode", "--decode-batch", "1",
                "--json", str(out), "--cache", "none", timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [x for x in r.stderr.splitlines() if x.strip() and not x.startswith("\r")]
    assert len(lines) == 1 and "needs about" in lines[0] and "available" in lines[0], r.stderr
    assert not out.exists() or json.loads(out.read_text()) == []


def test_probe_bound_caps_each_kind_by_its_clones_forward():
    from pis_tui.validation.probe import overhead_bound

    clones = [{"counts": {"forward": 1, "linear": 100}, "measured_ms": 5.0},
              {"counts": {"forward": 1, "linear": 50}, "measured_ms": 4.0}]
    assert overhead_bound(clones, "linear") == pytest.approx(0.05)  # 5 ms / 100 calls
    assert overhead_bound(clones, "forward") == pytest.approx(4.0)
    assert overhead_bound(clones, "routing") == float("inf")


def _probe_to_cache(tmp_path, tiny_cfg):
    """Run the dispatch probe of a tiny model into a fresh cache: (its result, the stored
    overhead measurements)."""
    from pis_tui import validation as v
    from pis_tui.cache import Cache
    from pis_tui.hf.config import raw_config

    raw, spec = raw_config(tiny_cfg)
    cache = Cache.open(str(tmp_path / "c.duckdb"))
    res = v.dispatch_probe(raw, spec, "decode", 1, 16, v.OpTimes("fp32", cache), cache=cache, repeats=4)
    stored = [m for m in cache.get_measurements(v.OpTimes("fp32")._fingerprint(), "fp32")
              if m.key.startswith("ovh:")]
    return res, stored


def test_dispatch_probe_is_bounded_and_stores_its_spread(tmp_path, tiny_cfg, monkeypatch):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from pis_tui.validation import probe

    # a solve gone wild (the 4 ms a linear call): the bound holds it
    monkeypatch.setattr(probe, "_solve", lambda a, b: [50.0] * len(a[0]))
    res, rows = _probe_to_cache(tmp_path, tiny_cfg)
    for kind, ms in res["ms"].items():
        bound = probe.overhead_bound(res["clones"], kind)
        assert ms <= bound + 1e-12 and kind in res["bounded"]
    stored = {m.key: m for m in rows}
    assert stored and all(m.status == "unstable" for m in stored.values())
    assert all("above the bound" in " ".join(m.conditions["unstable"]) for m in stored.values())
    assert all(m.spread is not None for m in stored.values())
    assert all(m.conditions["probe"]["bound_ms"] >= m.ms for m in stored.values())


def test_the_probe_solve_never_fits_other_kinds_to_a_negative_cost():
    from pis_tui.validation.probe import _solve

    counts = [[1, 48, 169, 0], [1, 24, 85, 0], [1, 48, 337, 0], [1, 48, 217, 48]]
    exact = [1 + 48 * .2 + 169 * .02, 1 + 24 * .2 + 85 * .02, 1 + 48 * .2 + 337 * .02,
             1 + 48 * .2 + 217 * .02 + 48 * .05]
    assert _solve(counts, exact) == pytest.approx([1.0, 0.2, 0.02, 0.05])
    # the noisy decode_batched probe: the low-rank clone (twice the linears) left less
    # than the dense one; every cost stays ≥ 0 and the fit is the best feasible one
    noisy = [11.896, 3.478, 9.058, 6.684]
    x = _solve(counts, noisy)
    assert all(v >= 0 for v in x)
    from pis_tui.validation.probe import _lstsq

    def res(c):
        return sum((sum(a * b for a, b in zip(r, c)) - y) ** 2 for r, y in zip(counts, noisy))
    clamped = [max(0.0, v) for v in _lstsq(counts, noisy)]  # the old rule: solve, then clamp
    assert min(_lstsq(counts, noisy)) < 0 and res(x) < res(clamped)
    # clones that ran no slower than their kernels (the kernels measured under load, the
    # clones timed quiet: a busy run did this): every kind costs 0, not "degenerate counts"
    assert _solve(counts, [-2.0, -1.0, -2.5, -1.5]) == [0.0] * 4
    with pytest.raises(MeasureError, match="degenerate"):
        _solve([[0, 0, 0, 0]] * 4, [1.0, 1.0, 1.0, 1.0])


def test_a_probe_whose_kernels_were_measured_under_load_is_unstable(tmp_path, tiny_cfg, monkeypatch):
    # the clones' kernels (subtracted from their forwards) timed under load: whatever the
    # solve gives is not the overhead of a quiet machine, so it is stored unstable
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from pis_tui.pricing.estimator import Estimator
    from pis_tui.pricing.estimates import PricedOp

    monkeypatch.setattr(Estimator, "price", lambda self, op, *a: PricedOp(op, 1e-4, "measured", loaded=True))
    _, stored = _probe_to_cache(tmp_path, tiny_cfg)
    assert stored and all(m.status == "unstable" for m in stored)
    assert all("measured under load" in " ".join(m.conditions["unstable"]) for m in stored)


def _synthetic_probe(rows, noise, seed=0):
    """The clones and their timed rounds for overhead counts ``rows`` (forward, block, linear,
    routing) at known costs, each sample off by ``noise`` (relative, Gaussian)."""
    import random
    import statistics
    from types import SimpleNamespace

    kinds, true = ("forward", "block", "linear", "routing"), (0.5, 0.2, 0.015, 0.05)
    rnd = random.Random(seed)
    clones, timed = [], []
    for r in rows:
        ovh = sum(a * b for a, b in zip(r, true))
        samples = [5.0 + ovh * (1 + rnd.gauss(0, noise)) for _ in range(9)]
        med = statistics.median(samples)
        clones.append({"counts": dict(zip(kinds, map(float, r))), "kernels_ms": 5.0,
                       "measured_ms": med, "residual_ms": med - 5.0})
        timed.append(SimpleNamespace(samples=samples, median_ms=med))
    return clones, timed


def test_the_probe_solve_is_overdetermined_and_says_how_well_it_pins_each_kind():
    # the four clones solved four kinds exactly (no residual, no slack): a committed run's
    # per-forward cost came out 0.0000 ms "± 107,775,719 %", stored ok and priced "measured".
    # Now: more clones than kinds, every round an equation; each kind carries the fit's
    # standard error (residual × conditioning), and a kind it cannot pin is stored unstable
    from types import SimpleNamespace

    from pis_tui.model.ops import OVERHEAD_KINDS
    from pis_tui.validation import probe

    assert len(probe.PROBE_STRATEGIES) > len(OVERHEAD_KINDS)
    four = [[1, 48, 169, 0], [1, 24, 85, 0], [1, 48, 337, 0], [1, 48, 217, 48]]
    five = four[:2] + [[1, 6, 22, 0]] + four[2:]  # the shallow clone (static_depth 0.875)
    assert probe.condition_number(five) < probe.condition_number(four) < 20
    assert probe.condition_number([[1, 2, 2], [1, 3, 3], [1, 5, 5]]) == float("inf")
    quiet = probe._solve_kinds(*_synthetic_probe(five, 0.01))
    assert quiet.fit.equations == 5 * 9 and quiet.fit.unknowns == 4 and quiet.fit.residual_ms > 0
    assert quiet.ms["block"] == pytest.approx(0.2, rel=0.05)
    assert all(quiet.relative_se(k) < 0.2 for k in quiet.ms)
    noisy = probe._solve_kinds(*_synthetic_probe(five, 0.1))
    # the per-forward cost (one call a forward among hundreds of block and linear calls) is
    # what the solve pins worst
    assert noisy.relative_se("forward") == max(noisy.relative_se(k) for k in noisy.ms) > 0.5
    run = SimpleNamespace(loaded_ms=0.0, kernels_ms=25.0, others=None)
    why = probe._unstable_reasons("forward", run, noisy, contended=False)
    assert any(w.startswith("ill-conditioned") and "condition number" in w for w in why)
    assert not probe._unstable_reasons("block", run, quiet, contended=False)


def test_solved_overheads_are_priced_with_their_own_source_and_uncertainty():
    from pis_tui.device.local import local_device
    from pis_tui.model.ops import Overhead
    from pis_tui.pricing import sources
    from pis_tui.pricing.estimator import Estimator

    names = sources.TIMING_SOURCES
    assert names.index("interpolated") < names.index("solved") < names.index("unstable")
    assert sources.weakest(["measured", "solved"]) == "solved"
    assert "not timed itself" in sources.MEANING["solved"]
    cpu = local_device()
    if cpu.kind != "cpu":
        pytest.skip("needs a CPU-only machine")
    op = Overhead("linear_overhead", "linear", "decode", 1.0, "fp32")
    solve = {"equations": 45, "unknowns": 4, "residual_ms": 0.3, "condition_number": 10.5,
             "standard_error_ms": 0.006, "relative_uncertainty": 0.3}
    rec = {"key": op.key(), "op": op, "ms": 0.02, "status": "ok",
           "conditions": {"probe": {"solve": solve}}}
    p = Estimator(cpu, [rec]).price(op)
    assert p.source == "solved" and p.uncertainty == pytest.approx(0.3)
    old = dict(rec, conditions={})  # a probe stored before the solve carried its error
    p = Estimator(cpu, [old]).price(op)
    assert p.source == "solved" and p.uncertainty == pytest.approx(sources.UNCERTAINTY_FLOOR["solved"])
