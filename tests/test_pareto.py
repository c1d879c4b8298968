"""Pareto frontier and recommendation (pis_tui.decide.frontier)."""

from __future__ import annotations

import random

import pytest

from pis_tui.decide.frontier import dominates, frontier, recommend
from pis_tui.decide.points import Point
from pis_tui.quality.estimate import QualityEstimate


def P(strategy, sparsity, speedup, loss, phase="prefill", metric="accuracy_drop", achieved=None):
    q = QualityEstimate(loss, metric=metric, source="prior")
    return Point(strategy=strategy, sparsity=sparsity,
                 achieved_sparsity=sparsity if achieved is None else achieved, phase=phase,
                 latency_ms=10.0 / speedup, dense_latency_ms=10.0, speedup=speedup,
                 flops_speedup=1.0 / (1.0 - sparsity) if sparsity < 1 else 1.0, timing_source="roofline",
                 quality=q)


def test_dominated_points_leave_the_frontier():
    a = P("static_depth", 0.125, 1.12, 0.029)
    b = P("static_width", 0.125, 1.05, 0.06)   # slower and worse than a
    c = P("dynamic_depth", 0.25, 1.08, 0.04)   # slower and worse than a
    d = P("static_depth", 0.5, 1.9, 0.31)
    fr = frontier([a, b, c, d])
    assert fr == [a, d]
    assert dominates(a, b) and not dominates(b, a) and not dominates(a, d)


def test_equal_speed_lower_loss_dominates():
    a = P("static_depth", 0.25, 1.3, 0.10)
    b = P("static_width", 0.25, 1.3, 0.12)
    assert frontier([b, a]) == [a]


def test_ties_keep_one_deterministic_representative():
    a = P("static_width", 0.25, 1.3, 0.1)
    b = P("low_rank", 0.25, 1.3, 0.1)
    c = P("static_depth", 0.2, 1.3, 0.1)
    for order in ([a, b, c], [c, b, a], [b, c, a]):
        assert frontier(order) == [c]  # smallest achieved sparsity
    assert frontier([a, b]) == [b]     # then the strategy name


def test_unknown_quality_is_left_out_and_output_sorted_by_loss():
    unknown = P("unstructured", 0.5, 3.0, None)
    pts = [P("static_depth", 0.5, 1.9, 0.31), P("static_depth", 0.125, 1.12, 0.03), unknown]
    fr = frontier(pts)
    assert unknown not in fr
    assert [p.quality_loss for p in fr] == sorted(p.quality_loss for p in fr)


def test_mixed_metrics_and_phases_raise():
    with pytest.raises(ValueError):
        frontier([P("static_depth", 0.25, 1.3, 0.1), P("low_rank", 0.25, 1.1, 0.1, metric="ppl_increase")])
    with pytest.raises(ValueError):
        frontier([P("static_depth", 0.25, 1.3, 0.1), P("static_depth", 0.25, 1.3, 0.1, phase="decode")])
    with pytest.raises(ValueError):
        recommend([P("static_depth", 0.25, 1.3, 0.1), P("low_rank", 0.25, 1.1, 0.1, metric="ppl_increase")],
                  0.1, "prefill")


def test_frontier_property_random():
    rng = random.Random(7)
    strategies = ["static_depth", "static_width", "low_rank", "dynamic_depth"]
    for _ in range(200):
        pts = [P(rng.choice(strategies), rng.choice([0.125, 0.25, 0.5]),
                 round(rng.uniform(0.8, 2.0), 2), round(rng.uniform(0, 0.4), 2))
               for _ in range(rng.randint(1, 12))]
        fr = frontier(pts)
        assert fr
        for f in fr:
            assert not any(dominates(p, f) for p in pts)
        for p in pts:
            if p not in fr:
                assert any(dominates(f, p) or (f.speedup == p.speedup and f.quality_loss == p.quality_loss)
                           for f in fr)
        keys = [(f.speedup, f.quality_loss) for f in fr]
        assert len(keys) == len(set(keys))


def _sweep():
    return [P("static_depth", 0.125, 1.12, 0.0285), P("static_depth", 0.25, 1.29, 0.1088),
            P("dynamic_depth", 0.25, 1.08, 0.0396), P("static_width", 0.25, 1.27, 0.1271),
            P("low_rank", 0.25, 1.15, 0.0673),
            P("static_depth", 0.25, 1.32, 0.1088, phase="decode"),
            P("dynamic_depth", 0.25, 0.91, 0.0396, phase="decode")]


def test_recommend_picks_fastest_within_budget_with_runner_up():
    r = recommend(_sweep(), 0.10, "prefill")
    assert r.best.strategy == "low_rank" and r.best.speedup == 1.15
    assert r.runner_up.strategy == "static_depth" and r.runner_up.speedup == 1.12
    assert r.margin == pytest.approx(0.03)
    assert r.metric == "accuracy_drop" and r.phase == "prefill" and r.budget == 0.10
    assert r.reason.startswith("low_rank 25%: 1.15× at 6.7% loss; next best static_depth 12.5%: 1.12× at 2.9%")
    assert all(p.phase == "prefill" for p in r.frontier)
    assert any(p.strategy == "dense" for p in r.frontier)


def test_runner_up_same_strategy_when_no_other_fits():
    pts = [P("static_depth", 0.125, 1.12, 0.03), P("static_depth", 0.25, 1.29, 0.10),
           P("static_width", 0.25, 1.27, 0.20)]
    r = recommend(pts, 0.12, "prefill")
    assert r.best.sparsity == 0.25 and r.runner_up.sparsity == 0.125
    only = recommend(pts[:1], 0.05, "prefill")
    assert only.best.sparsity == 0.125 and only.runner_up.strategy == "dense"
    assert only.margin == pytest.approx(0.12)


def test_phases_can_get_different_answers():
    pts = _sweep()
    assert recommend(pts, 0.05, "prefill").best.strategy == "static_depth"
    decode = recommend(pts, 0.05, "decode")
    assert decode.best.strategy == "dense"  # dynamic depth slows decode down: no pruning
    # dynamic depth (0.91×) is named in the reason but is no runner-up: it is slower than dense
    assert "no pruning" in decode.reason and "dynamic_depth 25%: 0.91×" in decode.reason
    assert decode.runner_up is None and decode.margin is None


def test_empty_feasible_set_names_the_smallest_loss():
    r = recommend(_sweep(), 0.01, "prefill")
    assert r.best is None and r.runner_up is None and r.margin is None
    assert r.reason.startswith("no strategy stays within 1.0% loss; the smallest loss on offer is "
                               "static_depth 12.5% at 2.9%")


def test_no_quality_at_all():
    r = recommend([P("unstructured", 0.5, 1.0, None)], 0.1, "prefill")
    assert r.best is None and "no strategy has a known quality" in r.reason


def test_perplexity_metric_in_reason_and_budget_check():
    pts = [P("static_depth", 0.25, 1.3, 0.5, metric="ppl_increase"),
           P("low_rank", 0.25, 1.1, 0.2, metric="ppl_increase")]
    r = recommend(pts, 0.3, "prefill")
    assert r.metric == "ppl_increase" and r.best.strategy == "low_rank"
    assert "perplexity" in r.reason
    with pytest.raises(ValueError):
        recommend(pts, -0.1, "prefill")


def test_near_equal_speedups_prefer_the_lower_loss():
    from pis_tui.decide.frontier import recommend
    from pis_tui.decide.points import Point
    from pis_tui.quality.estimate import QualityEstimate

    def pt(strategy, speedup, loss):
        return Point(strategy, 0.25, 0.25, "prefill", 10 / speedup, 10.0, speedup, speedup, "roofline",
                     QualityEstimate(loss, source="prior"))

    pts = [pt("dense", 1.0, 0.0), pt("static_depth", 1.140, 0.029), pt("dynamic_depth", 1.145, 0.098),
           pt("static_width", 1.10, 0.05)]
    r = recommend(pts, 0.10, "prefill")
    assert r.best.strategy == "static_depth" and r.runner_up.strategy == "dynamic_depth"
    pts.append(pt("low_rank", 1.30, 0.09))  # clearly faster: wins despite more loss
    assert recommend(pts, 0.10, "prefill").best.strategy == "low_rank"


def test_no_speedup_over_dense_is_never_a_runner_up_nor_a_recommendation():
    # a CPU: 2:4 has no kernel, priced as the dense one (1.00×); the "2nd" offer
    cpu = [P("dense", 0.0, 1.0, 0.0), P("semi_structured_24", 0.5, 1.0, 0.112),
           P("unstructured", 0.5, 1.004, 0.05), P("dynamic_depth", 0.25, 0.88, 0.04)]
    r = recommend(cpu, 0.15, "prefill")
    assert r.best.strategy == "dense" and r.runner_up is None and r.margin is None
    assert "beats dense" in r.reason and "beyond its interval" in r.reason
    # above dense by less than the 1 % tie: still a tie with dense, which wins it
    assert recommend([P("dense", 0.0, 1.0, 0.0), P("low_rank", 0.25, 1.009, 0.02)], 0.1,
                     "prefill").best.strategy == "dense"
    assert recommend([P("dense", 0.0, 1.0, 0.0), P("low_rank", 0.25, 1.02, 0.02)], 0.1,
                     "prefill").best.strategy == "low_rank"


def test_the_runner_up_skips_points_without_a_speedup():
    pts = [P("static_depth", 0.25, 1.30, 0.08), P("semi_structured_24", 0.5, 1.0, 0.05),
           P("dynamic_depth", 0.25, 0.9, 0.04), P("static_width", 0.25, 1.1, 0.09),
           P("low_rank", 0.25, 1.005, 0.01)]
    r = recommend(pts, 0.10, "prefill")
    assert r.best.strategy == "static_depth" and r.runner_up.strategy == "static_width"
    # when nothing else beats dense, the runner-up is dense itself (keep the model as it is)
    r = recommend(pts[:3], 0.10, "prefill")
    assert r.best.strategy == "static_depth" and r.runner_up.strategy == "dense"
    assert r.margin == pytest.approx(0.30)
