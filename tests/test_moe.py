"""The MoE law: distinct experts a step touches, routing inputs, configs — cases by hand."""

from __future__ import annotations

import json
import math

import pytest

from pis_tui.errors import UserError
from pis_tui.model import moe

E, K = 128, 8  # Qwen3-30B-A3B's routed experts and experts per token


@pytest.mark.parametrize("tokens,want", [(1, 8.0), (4, 29.12), (16, 82.42), (64, 125.94)])
def test_distinct_experts_under_balanced_routing_by_hand(tokens, want):
    # 128·(1 − (120/128)^T): T=4 → 128·(1 − 0.77248) = 29.12; T=16 → 128·(1 − 0.35607) = 82.42;
    # T=64 → 128·(1 − 0.016088) = 125.94
    shares = [1 / E] * E
    assert moe.distinct_experts(tokens, K, shares) == pytest.approx(want, abs=0.01)
    assert moe.balanced_distinct(E, K, tokens) == pytest.approx(want, abs=0.01)
    assert moe.distinct_experts(tokens, K, shares) <= min(E, tokens * K) + 1e-9


def test_a_skewed_router_touches_fewer_experts_at_small_batch():
    r = moe.routing("powerlaw:1.2", E)
    skew = r.layer(0)
    assert sum(skew) == pytest.approx(1.0)
    for t in (4, 16, 64):
        assert moe.distinct_experts(t, K, skew) < moe.balanced_distinct(E, K, t)
    # one token still takes exactly k experts, whatever the skew
    assert moe.distinct_experts(1, K, skew) == pytest.approx(K)


def test_inclusion_caps_an_expert_at_one_per_token():
    q = moe.inclusion([0.7, 0.1, 0.1, 0.1], 2)
    assert q[0] == 1.0 and sum(q) == pytest.approx(2.0)
    assert q[1] == pytest.approx(1 / 3)


def test_decode_step_bytes_by_hand():
    """Qwen3-30B-A3B's layer (H 2048, I 768) at decode batch 1, bf16: 8 experts × 3·2048·768
    weights, plus the router 2048 × 128, × 2 bytes."""
    cfg = moe.MoEConfig(experts=E, top_k=K, expert_inter=768, moe_layers=48, num_layers=48)
    got = moe.decode_weight_bytes(cfg, 2048, 1, [1 / E] * E, 2)
    assert got == pytest.approx((8 * 3 * 2048 * 768 + 2048 * 128) * 2)
    # batch 64 reads almost every expert: 125.94 of them
    got64 = moe.decode_weight_bytes(cfg, 2048, 64, [1 / E] * E, 2)
    assert got64 / got == pytest.approx((125.94 * 3 * 2048 * 768 + 2048 * 128) / (8 * 3 * 2048 * 768 + 2048 * 128), rel=1e-3)


def test_padded_rows_of_a_grouped_kernel():
    # 16 tokens × 8 experts over 128 experts: ~1 row per touched expert; a 16-row tile computes
    # 16 rows for each touched expert (82.42 of them)
    st = moe.step_routing(16, K, [1 / E] * E, tile=16)
    assert st.routed_rows == 128 and st.distinct == pytest.approx(82.42, abs=0.01)
    assert st.padded_rows == pytest.approx(16 * 82.42, rel=1e-3)
    assert moe.step_routing(16, K, [1 / E] * E).padded_rows == 128


def test_configs_of_the_mixture_families():
    qwen = moe.moe_config({"num_experts": 128, "num_experts_per_tok": 8, "moe_intermediate_size": 768,
                           "num_hidden_layers": 48, "decoder_sparse_step": 1, "mlp_only_layers": [],
                           "norm_topk_prob": True})
    assert (qwen.experts, qwen.top_k, qwen.expert_inter, qwen.moe_layers, qwen.norm_topk) == (128, 8, 768, 48, True)
    mixtral = moe.moe_config({"num_local_experts": 8, "num_experts_per_tok": 2,
                              "intermediate_size": 14336, "num_hidden_layers": 32})
    assert (mixtral.experts, mixtral.expert_inter, mixtral.moe_layers) == (8, 14336, 32)
    ds = moe.moe_config({"n_routed_experts": 64, "n_shared_experts": 2, "num_experts_per_tok": 6,
                         "moe_intermediate_size": 1408, "num_hidden_layers": 27,
                         "first_k_dense_replace": 1})
    assert (ds.shared_inter, ds.moe_layers, ds.dense_layers) == (2 * 1408, 26, 1)
    assert moe.moe_config({"num_hidden_layers": 2, "intermediate_size": 64}) is None


@pytest.mark.parametrize("cfg,msg", [
    ({"num_experts": 8, "num_experts_per_tok": 9, "moe_intermediate_size": 64}, "more than the 8"),
    ({"num_experts": 0, "num_experts_per_tok": 1, "moe_intermediate_size": 64}, "at least one"),
    ({"shared_expert_intermediate_size": 64}, "no routed experts"),
    ({"num_experts": 8, "num_experts_per_tok": 0, "moe_intermediate_size": 64}, "at least one expert"),
])
def test_bad_moe_configs_are_one_line(cfg, msg):
    with pytest.raises(UserError, match=msg) as e:
        moe.moe_config(cfg, "m")
    assert "\n" not in str(e.value)


def test_routing_inputs_and_their_bad_forms(tmp_path):
    h = tmp_path / "routing.json"
    h.write_text(json.dumps({"layers": [[3, 1, 0, 0], [1, 1, 1, 1]]}))
    r = moe.routing(str(h), 4, moe_layers=2)
    assert r.layer(0) == (0.75, 0.25, 0.0, 0.0) and r.layer(1) == (0.25,) * 4
    # a histogram with two experts hit: a step never touches more than them
    assert moe.distinct_experts(1000, 1, r.layer(0)) == pytest.approx(2.0)
    for bad, msg in (("uniformish", "unknown routing"), ("powerlaw:x", "not a number"),
                     ("powerlaw:99", "within 0"), (str(tmp_path / "none.json"), "cannot read")):
        with pytest.raises(UserError, match=msg):
            moe.routing(bad, 4)
    h.write_text(json.dumps({"layers": [[1, 1, 1]]}))
    with pytest.raises(UserError, match="has 3 counts; this model has 4 experts"):
        moe.routing(str(h), 4)
    h.write_text(json.dumps({"layers": [[1, 1, 1, 1]] * 3}))
    with pytest.raises(UserError, match="3 layers of counts; this model has 2 MoE layers"):
        moe.routing(str(h), 4, moe_layers=2)


# ------------------------------------------------------------------ MoE models priced

MOE_TYPES = ("qwen3_moe", "qwen2_moe", "mixtral", "olmoe", "granitemoe")


def _moe_cfg(model_type):
    from pis_tui.hf.architecture_trace import default_config

    return default_config(model_type)


MOE_PRESETS = ("qwen3-30b-a3b", "qwen3-235b-a22b", "mixtral-8x7b", "olmoe-1b-7b",
               "granite-3.1-1b-a400m")


@pytest.mark.parametrize("name", MOE_TYPES + MOE_PRESETS)
def test_an_moe_layer_s_ops_are_the_real_class_s_weights(name):
    """Router, grouped expert GEMMs and shared experts against the meta-device model's own
    parameters (transformers' 3-D expert weights: gate_up (E, 2I, H), down (E, H, I)), for each
    MoE type's default config and each MoE preset's published one (two layers of it: the meta
    model holds no memory, but 94 layers of 128 experts take a while to build)."""
    from pis_tui.families.phase_ops import build_phase_ops
    from pis_tui.families.strategy import Strategy
    from pis_tui.hf.architecture_trace import build_meta_model
    from pis_tui.model.ops import GroupedGemm
    from pis_tui.model.scenario import Scenario
    from pis_tui.model.spec import load_preset_config, spec_from_config

    if name in MOE_TYPES:
        cfg = _moe_cfg(name)
    else:
        cfg = {k: v for k, v in load_preset_config(name).items() if not k.startswith("_")}
        cfg["num_hidden_layers"] = 2
    model, _ = build_meta_model(cfg)
    spec = spec_from_config(cfg, name)
    params = {n: tuple(p.shape) for n, p in model.named_parameters() if ".0." in n}
    gu = next(v for n, v in params.items() if n.endswith("experts.gate_up_proj"))
    dn = next(v for n, v in params.items() if n.endswith("experts.down_proj"))
    router = next(v for n, v in params.items() if n.endswith(("gate.weight", "router.weight"))
                  and len(v) == 2 and v[0] == gu[0])
    ops = {o.name: o for o in build_phase_ops(spec, Strategy("dense", 0.0), Scenario(decode_batch=4),
                                              "decode").ops}
    g, d = ops["experts_gate_up"], ops["experts_down"]
    assert isinstance(g, GroupedGemm)
    assert (g.experts, g.n, g.k) == gu and (d.experts, d.n, d.k) == dn
    assert (ops["moe_router"].n, ops["moe_router"].k) == router
    assert g.rows == 4 * spec.moe.top_k  # decode batch 4: T·k routed rows
    assert f"k={spec.moe.top_k} " in g.shape()
    shared = [n for n in params if ".shared_expert." in n and n.endswith("weight")]
    assert bool(shared) == ("shared_gate_up" in ops)
    # every parameter of the layer counted: attention, router, all experts resident, shared
    layer = sum(math.prod(v) for n, v in params.items() if n.endswith(("proj", "weight"))
                and "norm" not in n and "layernorm" not in n)
    assert spec.layer_params() == layer


def test_decode_batch_sets_the_experts_read_not_the_tokens():
    """Qwen3-30B-A3B's shape (E 128, k 8): a batch-1 step reads 8 experts a layer, batch 64
    reads ~126, prefill every one; the grouped GEMMs' bytes follow."""
    from pis_tui.families.phase_ops import build_phase_ops
    from pis_tui.families.strategy import Strategy
    from pis_tui.model.scenario import Scenario
    from pis_tui.model.spec import spec_from_config

    cfg = _moe_cfg("qwen3_moe")
    cfg.update(num_experts=128, num_experts_per_tok=8, moe_intermediate_size=768, hidden_size=2048,
               head_dim=128)
    spec = spec_from_config(cfg, "q3")
    touched = {}
    for b in (1, 64):
        ops = {o.name: o for o in build_phase_ops(spec, Strategy("dense", 0.0),
                                                  Scenario(decode_batch=b), "decode").ops}
        touched[b] = ops["experts_gate_up"].groups
        assert ops["experts_gate_up"].bytes() >= touched[b] * 2 * 768 * 2048 * 2
    assert touched[1] == pytest.approx(8) and touched[64] == pytest.approx(125.94, abs=0.01)


def test_skewed_routing_is_a_scenario_input_and_bad_names_are_one_line():
    from pis_tui.model.scenario import Scenario

    assert Scenario(routing="powerlaw:1.0").routing == "powerlaw:1.0"
    with pytest.raises(UserError, match="unknown routing"):
        Scenario(routing="zipf")


@pytest.mark.parametrize("extra,msg", [
    ({"model_type": "gpt_oss"}, "gpt-oss is not priced yet"),
    ({"kv_lora_rank": 512}, "multi-head latent attention"),
])
def test_moe_families_not_priced_yet_are_refused_with_why(extra, msg):
    from pis_tui.model.spec import spec_from_config

    cfg = dict(_moe_cfg("qwen3_moe"), **extra)
    with pytest.raises(UserError, match=msg) as e:
        spec_from_config(cfg, "m")
    assert "\n" not in str(e.value)


def test_tensor_parallel_moe_shards_every_expert_on_its_width():
    """TP 2: each rank's grouped GEMMs hold half of every expert's I, the same experts touched,
    one all-reduce after the block; the model's weights still count every expert once."""
    from pis_tui.families.phase_ops import build_phase_ops
    from pis_tui.families.strategy import Strategy
    from pis_tui.model.layer import gemm_params
    from pis_tui.model.scenario import Scenario
    from pis_tui.model.spec import spec_from_config

    spec = spec_from_config(_moe_cfg("mixtral"), "mx")
    one = {o.name: o for o in build_phase_ops(spec, Strategy("dense", 0.0), Scenario(), "decode").ops}
    two_ops = build_phase_ops(spec, Strategy("dense", 0.0), Scenario(tp=2), "decode").ops
    two = {o.name: o for o in two_ops}
    assert two["experts_gate_up"].n * 2 == one["experts_gate_up"].n
    assert two["experts_down"].k * 2 == one["experts_down"].k
    assert two["experts_gate_up"].groups == one["experts_gate_up"].groups
    assert "moe_all_reduce" in two
    assert gemm_params(two_ops) == pytest.approx(gemm_params(one.values()), rel=1e-9)
    odd = dict(_moe_cfg("mixtral"), intermediate_size=702)  # 702 = 2 × 351: no TP 4
    with pytest.raises(UserError, match="expert channels"):
        build_phase_ops(spec_from_config(odd, "mx"), Strategy("dense", 0.0), Scenario(tp=4), "decode")


def test_the_explorer_prices_an_moe_preset(tmp_path):
    """The explorer's backend (no transformers import) sweeps an MoE preset; the drill-down's
    grouped GEMMs say how many experts a step touches and rows per expert."""
    from pis_tui.tui.backend import Backend, Choices

    snap = Backend(cache_path=str(tmp_path / "c.duckdb")).compute(
        Choices(model="qwen3-30b-a3b", gpu="h200-sxm"))
    grouped = [p.op for e in snap.result.estimates for p in e.ops if p.op.op_type == "grouped_gemm"]
    assert grouped and all("touched=" in g.shape() and "/expert" in g.shape() for g in grouped)
    assert snap.result.spec.moe.experts == 128


def test_a_recording_at_reduced_depth_prices_its_mean_layer_for_every_layer(tmp_path):
    """`pis-tui routing --layers 2` of a 4-layer model: its two layers' mean for all four; a
    plain histogram of 2 layers for a 4-layer model is still refused (it names no recording)."""
    h = tmp_path / "rec.json"
    h.write_text(json.dumps({"format": moe.HISTOGRAM_FORMAT, "layers": [[4, 0, 0, 0], [0, 4, 0, 0]]}))
    r = moe.routing(str(h), 4, moe_layers=4)
    assert len(r.shares) == 2
    assert moe.mean_step(8, 1, r).distinct == pytest.approx(1.0)
    h.write_text(json.dumps({"format": moe.HISTOGRAM_FORMAT, "layers": [[1, 1, 1, 1]] * 5}))
    with pytest.raises(UserError, match="5 layers of counts; this model has 4"):
        moe.routing(str(h), 4, moe_layers=4)
    h.write_text(json.dumps({"layers": [[1, 1, 1, 1]] * 2}))
    with pytest.raises(UserError, match="2 layers of counts; this model has 4"):
        moe.routing(str(h), 4, moe_layers=4)
