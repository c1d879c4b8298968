"""Decisions a user can act on (issue 29): two candidates compared by their own ratio, one rule
for recommend, plan and the explorer.  Small cases computed by hand."""

import math

import pytest

from pis_tui.decide.compare import Comparer, independent_pair, no_more_work, pair_from, _shapes
from pis_tui.decide.frontier import recommend, select
from pis_tui.decide.points import Point
from pis_tui.model.ops import Gemm
from pis_tui.pricing import uncertainty
from pis_tui.pricing.estimates import PhaseEstimate, PricedOp
from pis_tui.quality.estimate import QualityEstimate


def est(name, ops):
    """A PhaseEstimate of (op, ms, source, u) rows."""
    priced = tuple(PricedOp(op, ms, src, uncertainty=u) for op, ms, src, u in ops)
    return PhaseEstimate(name, 0.0, 0.0, "prefill", priced, sum(p.total_ms for p in priced), 1.0,
                         "roofline")


def gemm(name, m, n, k, count=1.0):
    return Gemm(name, m, n, k, count, "bf16")


# a model of two layers of two GEMMs, each priced by the roofline at ±15 % (model errors that
# move together for near shapes)
U = 0.15
DENSE = est("dense", [(gemm("up", 1024, 4096, 4096, 32), 1.0, "roofline", U),
                      (gemm("down", 1024, 4096, 4096, 32), 1.0, "roofline", U),
                      (gemm("lm_head", 1, 128256, 4096), 0.5, "roofline", U)])
# a: the same kernels, "up" slimmed (its width 3072); b: "up" slimmed further (2048)
A = est("a", [(gemm("up", 1024, 3072, 4096, 32), 0.75, "roofline", U),
              (gemm("down", 1024, 4096, 4096, 32), 1.0, "roofline", U),
              (gemm("lm_head", 1, 128256, 4096), 0.5, "roofline", U)])
B = est("b", [(gemm("up", 1024, 2048, 4096, 32), 0.5, "roofline", U),
              (gemm("down", 1024, 4096, 4096, 32), 1.0, "roofline", U),
              (gemm("lm_head", 1, 128256, 4096), 0.5, "roofline", U)])


def point(e, loss, dense=DENSE):
    s = dense.latency_ms / e.latency_ms
    lo, hi = uncertainty.interval(s, uncertainty.log_sigma(dense, e))
    return Point(e.strategy, 0.25, 0.25, "prefill", e.latency_ms, dense.latency_ms, s, s,
                 "roofline", QualityEstimate(loss, source="prior"), lo, hi, None, ())


def test_two_estimates_sharing_most_kernels_are_told_apart_by_their_pair():
    pa, pb = point(A, 0.05), point(B, 0.10)
    # by hand: S_a = 64.5 / 56.5 = 1.1416, S_b = 64.5 / 48.5 = 1.3299; S_b / S_a = 56.5 / 48.5
    assert pb.speedup / pa.speedup == pytest.approx(56.5 / 48.5)
    # their marginal intervals against dense overlap ...
    assert pa.interval[1] >= pb.interval[0]
    pair = Comparer(lambda p: {"a": A, "b": B}[p.strategy])(pb, pa)
    # ... but the pair shares "down" and "lm_head" exactly: only the two "up" kernels differ,
    # correlated at NUGGET·(1 − d/RANGE) with d = log(3072/2048)
    d = math.log(3072 / 2048)
    rho = uncertainty.NUGGET * (1 - d / uncertainty.RANGE)
    wa, wb = 24.0 / 56.5, 16.0 / 48.5  # the up kernels' shares of a's and b's time
    # the shared kernels count only through their change of share: down 32 ms, lm_head 0.5 ms
    dd, dl = 32.0 / 48.5 - 32.0 / 56.5, 0.5 / 48.5 - 0.5 / 56.5
    expected = math.sqrt((U * wa) ** 2 + (U * wb) ** 2 - 2 * rho * (U * wa) * (U * wb)
                         + (U * dd) ** 2 + (U * dl) ** 2)
    assert pair.sigma == pytest.approx(expected, rel=1e-6)
    assert pair.ratio == pytest.approx(56.5 / 48.5)
    assert pair.dominant == "a"  # b does no more work than a, op by op: never slower
    assert pair.verdict == "a" and pair.lo > 1.0


def test_no_more_work_is_op_by_op_and_needs_alignment():
    sa, sb = _shapes(A), _shapes(B)
    assert no_more_work(sb, sa) and not no_more_work(sa, sb)
    odd = est("odd", [(gemm("up", 1024, 2044, 4096, 32), 0.5, "roofline", U),
                      (gemm("down", 1024, 4096, 4096, 32), 1.0, "roofline", U),
                      (gemm("lm_head", 1, 128256, 4096), 0.5, "roofline", U)])
    # fewer columns but less aligned (2044 = 4 · 511): may be slower, so no dominance claimed
    assert not no_more_work(_shapes(odd), sa)
    extra = est("extra", [(gemm("up", 1024, 2048, 4096, 32), 0.5, "roofline", U),
                          (gemm("router", 1024, 1, 4096, 32), 0.01, "roofline", U),
                          (gemm("down", 1024, 4096, 4096, 32), 1.0, "roofline", U),
                          (gemm("lm_head", 1, 128256, 4096), 0.5, "roofline", U)])
    assert not no_more_work(_shapes(extra), sa)  # an op the other does not run


def test_a_dominated_point_never_wins_over_its_dominator_at_no_lower_loss():
    pa, pb = point(A, 0.08), point(B, 0.08)  # b does no more work, same loss
    cmp = Comparer(lambda p: {"a": A, "b": B}[p.strategy])
    r = recommend([point(DENSE, 0.0), pa, pb], 0.10, "prefill", pair=cmp)
    assert r.best.strategy == "b"
    best, passed = select([pb, pa], cmp)
    assert best is pb and passed == ()


def test_a_tie_goes_to_the_lower_loss_and_says_what_it_gave_up():
    # measured kernels (independent noise): "down" shared at ±5 %, the "up" kernels at ±8 %,
    # and b runs a small router a does not (so neither does no more work than the other)
    a = est("a", [(gemm("up", 1024, 3072, 4096, 32), 0.75, "measured", 0.08),
                  (gemm("down", 1024, 4096, 4096, 32), 1.0, "measured", 0.05)])
    b = est("b", [(gemm("up", 1024, 2560, 4096, 32), 0.68, "measured", 0.08),
                  (gemm("router", 1024, 8, 4096, 32), 0.01, "measured", 0.08),
                  (gemm("down", 1024, 4096, 4096, 32), 1.0, "measured", 0.05)])
    dense = est("dense", [(gemm("up", 1024, 4096, 4096, 32), 1.0, "measured", 0.08),
                          (gemm("down", 1024, 4096, 4096, 32), 1.0, "measured", 0.05)])
    cmp = Comparer(lambda p: {"a": a, "b": b, "dense": dense}[p.strategy])
    pa, pb = point(a, 0.02, dense), point(b, 0.09, dense)
    pair = cmp(pb, pa)
    # measurement noise is independent between kernels: the shared "down" cancels but for its
    # small change of share; the two "up" kernels and the router carry their whole noise
    assert pair.dominant is None and pair.lo < 1.0 < pair.hi and pair.verdict == "tie"
    assert pa.interval[0] > 1.01 and pb.interval[0] > 1.01  # each beats dense on its own
    r = recommend([point(dense, 0.0, dense), pa, pb], 0.10, "prefill", pair=cmp)
    assert r.best.strategy == "a"  # the tie goes to the lower loss
    assert [p.strategy for p, _ in r.passed_over] == ["b"]
    assert "passed over b" in r.reason and "a tie" in r.reason and "7.0% more loss" in r.reason


def test_without_kernels_the_marginals_are_combined_as_independent():
    pa = Point("a", 0.25, 0.25, "prefill", 10, 12, 1.2, 1.2, "roofline", QualityEstimate(0.01),
               1.2 * math.exp(-0.1), 1.2 * math.exp(0.1))
    pb = Point("b", 0.25, 0.25, "prefill", 10, 12, 1.5, 1.5, "roofline", QualityEstimate(0.02),
               1.5 * math.exp(-0.1), 1.5 * math.exp(0.1))
    pr = independent_pair(pb, pa)
    assert pr.basis == "independent"
    assert pr.sigma == pytest.approx(math.hypot(0.05, 0.05))
    assert pr.lo == pytest.approx(1.25 * math.exp(-2 * math.hypot(0.05, 0.05)))


def test_an_interval_is_cut_at_its_ceiling():
    lo, hi, cut = uncertainty.cut_at_ceiling(1.30, 1.10, 1.55, 1.40)
    assert (lo, hi, cut) == (1.10, 1.40, "ceiling")
    assert uncertainty.cut_at_ceiling(1.30, 1.10, 1.35, 1.40) == (1.10, 1.35, "")
    # an estimate itself above the ceiling is not cut (its flag says so when it is wholly above)
    assert uncertainty.cut_at_ceiling(1.50, 1.45, 1.55, 1.40)[2] == ""
    assert pair_from(0.9, 0.05, "a").lo == 1.0  # dominance cuts a pair at 1 on its side


def test_recommend_and_plan_pick_the_same_model_for_the_same_question():
    """The default view (llama-3.1-8b on h200-sxm, 10 % budget): static depth 12.5 % + static
    width 12.5 % does no more work than static depth 12.5 % op by op and is probably faster,
    but not beyond doubt; the rule gives the tie to the lower loss, in recommend and in plan."""
    from pis_tui.decide.deployment import plan, recommend_plan
    from pis_tui.decide.sweep import sweep
    from pis_tui.model.scenario import Scenario
    from pis_tui.model.workload import single
    from pis_tui.quality.model import build_quality_model

    q = build_quality_model()
    sw = sweep("llama-3.1-8b", "h200-sxm", Scenario(prefill_batch=1, prompt_len=1024,
                                                     decode_batch=16, context_len=1024), quality=q)
    rec = recommend(sw.phase_points("prefill"), 0.10, "prefill", pair=sw.pair)
    assert rec.best.strategy == "static_depth" and rec.best.sparsity == 0.125
    over = {p.strategy: pr for p, pr in rec.passed_over}
    dw = over["static_depth+static_width"]
    assert dw.dominant == "a" and dw.verdict == "tie" and dw.lo == 1.0 and dw.ratio > 1.05
    pr = plan("llama-3.1-8b", "h200-sxm", single("chat"), quality=q)
    prec = recommend_plan(pr, 0.10)
    assert (prec.best.strategy, prec.best.sparsity) == ("static_depth", 0.125)
    assert any(c.strategy == "static_depth+static_width" for c, _ in prec.passed_over)


@pytest.mark.parametrize("engine,picks", [
    ("eager", (("static_depth", 0.125), ("dynamic_depth", 0.5), ("dynamic_depth", 0.5))),
    ("fused", (("static_depth", 0.125), ("static_width", 0.375), ("dynamic_depth", 0.5))),
])
def test_the_rule_s_picks_against_the_study_per_engine(engine, picks):
    """docs/accuracy.md's table, the recommend columns: llama-3.1-8b, LoRA, best method, prefill
    8 × 1024 on h200-sxm, families only.  At 27 % dynamic depth 50 % under both engines (its pair
    with 37.5 % is told apart: 1.23×, above 1)."""
    from pis_tui import families
    from pis_tui.decide.sweep import sweep
    from pis_tui.model.scenario import Scenario
    from pis_tui.quality.model import build_quality_model

    qm = build_quality_model("lora", method="best")
    r = sweep("llama-3.1-8b", "h200-sxm", Scenario(8, 1024, 16, 1024, "bf16", engine),
              families.pruned(), quality=qm, phases=("prefill",))
    got = tuple((rec.best.strategy, rec.best.sparsity) for rec in
                (recommend(r.points, b, "prefill", pair=r.pair) for b in (0.03, 0.16, 0.27)))
    assert got == picks
    pts = {(p.strategy, p.sparsity): p for p in r.points}
    dd = r.pair(pts[("dynamic_depth", 0.5)], pts[("dynamic_depth", 0.375)])
    assert dd.verdict == "a" and dd.lo > 1.0


def test_flagged_points_are_shown_apart_off_the_axis_scale():
    """A point flagged above its ceiling (3.5× measured on a busy machine) is marked and does
    not stretch the speedup axis the trustworthy points are read on."""
    from dataclasses import replace
    from types import SimpleNamespace as NS

    from pis_tui.decide.sweep import sweep
    from pis_tui.quality.model import build_quality_model
    from pis_tui.tui.pareto_chart import ParetoChart

    r = sweep("llama-3.1-8b", "h200-sxm", quality=build_quality_model(),
              strategies=["static_depth", "static_width"], phases=("prefill",))
    pts = list(r.points)
    i = next(k for k, p in enumerate(pts) if p.strategy == "static_width" and p.sparsity == 0.25)
    pts[i] = replace(pts[i], speedup=3.5, speedup_lo=3.4, speedup_hi=3.6, flags=("above_ceiling",))
    res = NS(phase_points=lambda ph: [p for p in pts if p.phase == ph], scenario=r.scenario)
    rec = recommend(pts, 0.10, "prefill")
    assert rec.best.flags == ()  # skipped by the rule too
    chart = ParetoChart("prefill")
    chart.show(NS(result=res, recs={"prefill": rec}, choices=NS(active_budget=0.10),
                  metric="accuracy_drop"))
    top = max(p.speedup for p in pts if not p.flags)
    assert chart.y_range[1] < top * 1.2 < 3.5
    assert "1 flagged point(s) marked !" in chart.summary
