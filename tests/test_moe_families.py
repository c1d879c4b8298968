"""The expert-level families: shapes by hand, the batch they pay off at, bad input, dense models."""

from __future__ import annotations

import pytest

from helpers import run_cli
from pis_tui import families
from pis_tui.errors import UserError
from pis_tui.families.dynamic_topk import k_distribution
from pis_tui.families.phase_ops import build_phase_ops
from pis_tui.families.strategy import Strategy, strategies_grid
from pis_tui.device.choose import load_gpu
from pis_tui.model import moe
from pis_tui.model.ops import Gemm, GroupedGemm
from pis_tui.model.scenario import Scenario
from pis_tui.model.spec import load_model_spec

QWEN = load_model_spec("qwen3-30b-a3b")  # E 128, k 8, H 2048, I 768, 48 MoE layers
MIXTRAL = load_model_spec("mixtral-8x7b")  # E 8, k 2
DENSE = load_model_spec("llama-3.1-8b")
EXPERT_LEVEL = ("expert_pruning", "topk_reduction", "dynamic_topk", "expert_slimming")


def ops(spec, family, s, phase="decode", batch=1, align=128):
    sc = Scenario(prefill_batch=1, prompt_len=256, decode_batch=batch, context_len=256)
    return build_phase_ops(spec, Strategy(family, s, align=align), sc, phase)


def grouped(po):
    return next(o for o in po.ops if isinstance(o, GroupedGemm) and o.name == "experts_gate_up")


def test_expert_pruning_halves_the_experts_but_not_a_batch_1_step():
    d, p = ops(QWEN, "dense", 0), ops(QWEN, "expert_pruning", 0.5)
    gd, gp = grouped(d), grouped(p)
    assert gp.experts == 64 and gd.experts == 128
    assert gd.groups == pytest.approx(8) and gp.groups == pytest.approx(8)  # still k experts
    assert gp.rows == gd.rows == 8
    router = next(o for o in p.ops if isinstance(o, Gemm) and o.name == "moe_router")
    assert router.n == 64
    assert any("saves memory here, not time" in n for n in p.notes)
    # batch 64: the dense step touches 125.94 of 128, the pruned one 64·(1 − (56/64)^64) = 63.99
    gd64, gp64 = grouped(ops(QWEN, "dense", 0, batch=64)), grouped(ops(QWEN, "expert_pruning", 0.5, batch=64))
    assert gd64.groups == pytest.approx(125.94, abs=0.01)
    assert gp64.groups == pytest.approx(64 * (1 - (56 / 64) ** 64), abs=0.01)
    # the experts' weights are the model's bulk: about half its parameters go
    assert 0.4 < p.achieved_sparsity < 0.5


def test_a_pruned_layer_keeps_its_most_used_experts():
    r = moe.routing("powerlaw:1.0", 8)
    kept = moe.pruned_routing(r, 4)
    # shares ∝ 1, 1/2, 1/3, … : the first four are kept, renormalised over them
    w = [1, 1 / 2, 1 / 3, 1 / 4]
    assert kept.layer(0) == pytest.approx([x / sum(w) for x in w])
    assert kept.id.endswith("|keep4") and kept.id != r.id


def test_topk_reduction_cuts_rows_and_the_experts_of_a_small_step():
    d, p = grouped(ops(QWEN, "dense", 0, batch=4)), grouped(ops(QWEN, "topk_reduction", 0.5, batch=4))
    assert p.top_k == 4 and p.rows == 16 and d.rows == 32
    assert p.groups == pytest.approx(moe.balanced_distinct(128, 4, 4))
    assert p.experts == 128  # no weight removed
    assert ops(QWEN, "topk_reduction", 0.5).achieved_sparsity == pytest.approx(0.5)


def test_dynamic_topk_prices_the_distribution_of_k():
    assert k_distribution(8, 0.125) == ((7, 1.0),)
    assert k_distribution(8, 0.1875) == ((6, 0.5), (7, 0.5))
    assert k_distribution(2, 0.25) == ((1, 0.5), (2, 0.5))  # NAEE's skipping: 1 or 2 experts
    p = ops(QWEN, "dynamic_topk", 0.1875, batch=16)
    g = grouped(p)
    assert g.k_dist == ((6, 0.5), (7, 0.5)) and g.rows == pytest.approx(16 * 6.5)
    assert "k6:0.5/7:0.5" in g.key()
    assert any(o.name == "moe_skip" for o in p.ops)
    # under a skewed router the mixture is not the law at the mean k: capped experts stay at 1
    sh = moe.routing("powerlaw:2.0", 128).layer(0)
    mix = moe.step_routing(4, 8, sh, k_dist=((6, 0.5), (8, 0.5))).distinct
    at_mean = moe.step_routing(4, 7, sh).distinct
    assert mix != pytest.approx(at_mean, abs=1e-3)
    # balanced: equal (q̄ = k̄/E)
    bal = [1 / 128] * 128
    assert moe.step_routing(4, 8, bal, k_dist=((6, 0.5), (8, 0.5))).distinct == pytest.approx(
        moe.balanced_distinct(128, 7, 4))


def test_expert_slimming_narrows_every_expert_at_every_batch():
    g = grouped(ops(QWEN, "expert_slimming", 0.5))
    assert g.n == 2 * 384 and g.k == 2048
    down = next(o for o in ops(QWEN, "expert_slimming", 0.5).ops if getattr(o, "name", "") == "experts_down")
    assert down.k == 384
    assert grouped(ops(QWEN, "expert_slimming", 0.25, align=128)).n == 2 * 640  # 576 → 640


@pytest.mark.parametrize("family,s,match", [
    ("expert_pruning", 0.9, "keeps 1 of 8 experts, fewer than the 2"),
    ("topk_reduction", 0.9, "leaves k′ = 0 of 2"),
])
def test_impossible_shapes_are_one_line(family, s, match):
    with pytest.raises(UserError, match=match):
        ops(MIXTRAL, family, s)


def test_an_alignment_wider_than_the_experts_is_one_line():
    with pytest.raises(UserError, match="wider than qwen3-30b-a3b's experts"):
        ops(QWEN, "expert_slimming", 0.25, align=1024)


def test_bad_input_on_the_command_line_exits_2():
    r = run_cli("ops", "--model", "mixtral-8x7b", "--strategy", "expert_pruning", "--sparsity", "0.9",
                "--gpu", "h200-sxm")
    assert r.returncode == 2 and "fewer than the 2" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = run_cli("ops", "--model", "llama-3.1-8b", "--strategy", "topk_reduction", "--gpu", "h200-sxm")
    assert r.returncode == 2 and "dense model" in r.stderr


def test_a_dense_model_never_sweeps_them():
    names = {s.family for s in strategies_grid(families.pruned() + families.combo_names(), spec=DENSE)}
    assert not names & set(EXPERT_LEVEL)
    assert "static_depth+expert_pruning" not in names
    moe_names = {s.family for s in strategies_grid(families.pruned(), spec=QWEN)}
    assert set(EXPERT_LEVEL) <= moe_names
    with pytest.raises(UserError, match="dense model"):
        strategies_grid(("expert_pruning",), spec=DENSE)


def test_expert_pruning_pays_off_with_the_batch():
    """At batch 1 no gain (the same k experts read), rising as the step touches more experts."""
    from pis_tui.decide.batch_curve import batch_curve
    from pis_tui.decide.sweep import make_estimator

    curve = batch_curve(QWEN, make_estimator(load_gpu("h200-sxm"), "bf16", None), Scenario(context_len=1024),
                        [Strategy("expert_pruning", 0.5)], batches=(1, 16, 64))
    sp = list(curve.speedups.values())[0]
    assert sp[0] == pytest.approx(1.0, abs=0.02)
    assert sp[1] > sp[0] + 0.05 and sp[2] > sp[1]


def test_the_plan_counts_every_resident_expert_and_the_gpus_it_needs():
    """Qwen3-30B-A3B in bf16 is 30.5 B parameters, 61 GB: it needs 2 H100s (72 GB usable each)
    for 64 chat sequences at once; half its experts pruned, one."""
    from pis_tui.decide.deployment import plan
    from pis_tui.model.workload import single

    r = plan("qwen3-30b-a3b", "h100-sxm", single("chat", concurrency=64),
             strategies=["expert_pruning"], sparsities=[0.5])
    d = r.dense
    assert 60e9 < d.weights_bytes < 62e9  # every expert resident (30.5 B × 2 bytes)
    p = next(c for c in r.candidates if c.strategy == "expert_pruning")
    assert p.weights_bytes < 0.55 * d.weights_bytes
    assert d.gpus_needed == 2 and p.gpus_needed == 1
    assert p.max_sequences > 2 * d.max_sequences


def test_gpus_needed_by_hand():
    from pis_tui.pricing.memory import gpus_needed

    # 100 GB of weights, 1 GB a sequence, 10 sequences, 72 GB a GPU: tp 2 holds 50 + 5
    assert gpus_needed(72e9, 100e9, 1e9, 10, kv_heads=8) == 2
    # 8 KV heads: beyond 8 GPUs the KV cache no longer shrinks
    assert gpus_needed(72e9, 10e9, 1e9, 1000, kv_heads=8) is None
    assert gpus_needed(72e9, 10e9, 1e9, 10, kv_heads=8) == 1


def test_a_moe_sweep_carries_its_batch_curve_to_where_every_expert_is_touched():
    from pis_tui.decide.sweep import sweep

    r = sweep("olmoe-1b-7b", "h200-sxm", Scenario(), ["expert_pruning"], [0.5])
    c = r.batch_curve
    assert c is not None and c.batches[0] == 1
    assert c.experts_touched[-1] >= 0.99 * 64 and c.experts_touched[-2] < 0.99 * 64
    assert "expert_pruning 50%" in c.speedups
    dense = sweep("llama-3.1-8b", "h200-sxm", Scenario(), ["static_depth"], [0.5])
    assert dense.batch_curve is None


def test_a_given_distribution_of_k_is_priced_and_checked_against_the_model():
    from pis_tui.families.strategy import from_token

    s = from_token("dynamic_topk@k6:0.5/8:0.5")
    assert s.k_dist == ((6, 0.5), (8, 0.5)) and s.token == "dynamic_topk@k6:0.5/8:0.5"
    po = build_phase_ops(QWEN, s, Scenario(decode_batch=4), "decode")
    g = grouped(po)
    assert g.k_dist == ((6, 0.5), (8, 0.5)) and g.rows == pytest.approx(4 * 7)
    assert po.achieved_sparsity == pytest.approx(1 / 8)
    with pytest.raises(UserError, match="k=9 is outside 1…8"):
        build_phase_ops(QWEN, from_token("dynamic_topk@k6:0.5/9:0.5"), Scenario(), "decode")
    with pytest.raises(UserError, match="sum to 1"):
        from_token("dynamic_topk@k6:0.5/8:0.4")
    with pytest.raises(UserError, match="belongs to dynamic_topk"):
        from_token("topk_reduction@k6:1")
    r = run_cli("ops", "--model", "mixtral-8x7b", "--strategy", "dynamic_topk@k1:0.5/3:0.5",
                "--gpu", "h200-sxm")
    assert r.returncode == 2 and "k=3 is outside 1…2" in r.stderr
