"""Each family's op transformation against hand-computed Llama-3.1-8B shapes."""

import pytest

from pis_tui.errors import UserError
from pis_tui.model.spec import load_model_spec
from pis_tui.model.ops import Attention, Gemm
from pis_tui.model.scenario import Scenario
from pis_tui.model.layer import factor_rank as low_rank
from pis_tui.families.static_depth import layers_dropped, sublayers_dropped
from pis_tui.families.static_width import kept_kv_groups
from pis_tui.families.strategy import Strategy, strategies_grid
from pis_tui.families.phase_ops import build_phase_ops

SC = Scenario(prefill_batch=1, prompt_len=1024, decode_batch=16, context_len=1024, dtype="bf16")


@pytest.fixture(scope="module")
def llama():
    return load_model_spec("llama-3.1-8b")


def gemms(po):
    return {o.name: o for o in po.ops if isinstance(o, Gemm)}


def attn(po):
    return [o for o in po.ops if isinstance(o, Attention)][0]


def test_dense_prefill_shapes(llama):
    g = gemms(build_phase_ops(llama, Strategy("dense"), SC, "prefill"))
    assert (g["q_proj"].m, g["q_proj"].n, g["q_proj"].k, g["q_proj"].count) == (1024, 4096, 4096, 32)
    assert (g["k_proj"].n, g["v_proj"].n) == (1024, 1024)
    assert (g["o_proj"].n, g["o_proj"].k) == (4096, 4096)
    assert (g["gate_proj"].n, g["up_proj"].n, g["down_proj"].k) == (14336, 14336, 14336)
    # lm_head only on the last token of each sequence
    assert (g["lm_head"].m, g["lm_head"].n, g["lm_head"].k) == (1, 128256, 4096)


def test_dense_decode_shapes(llama):
    po = build_phase_ops(llama, Strategy("dense"), SC, "decode")
    g = gemms(po)
    assert g["q_proj"].m == 16 and g["lm_head"].m == 16
    a = attn(po)
    assert (a.batch, a.q_heads, a.kv_heads, a.q_len, a.kv_len, a.head_dim) == (16, 32, 8, 1, 1024, 128)
    assert any(o.name == "kv_write" for o in po.ops)


@pytest.mark.parametrize("s,dropped", [(0.125, 4), (0.25, 8), (0.375, 12), (0.5, 16)])
def test_static_depth_drops_whole_layers(llama, s, dropped):
    po = build_phase_ops(llama, Strategy("static_depth", s), SC, "prefill")
    g = gemms(po)
    assert g["q_proj"].count == 32 - dropped and g["down_proj"].count == 32 - dropped
    assert g["q_proj"].m == 1024  # static M: the remaining GEMMs keep their shapes
    assert po.achieved_sparsity == pytest.approx(dropped / 32)


def test_static_depth_sublayer_granularity(llama):
    assert sublayers_dropped(llama, 0.25) == (8, 8)
    assert sublayers_dropped(llama, 0.2) == (7, 6)  # floor(0.2·64 + 0.5) = 13 blocks
    po = build_phase_ops(llama, Strategy("static_depth", 0.2, granularity="sublayer"), SC, "prefill")
    g = gemms(po)
    assert g["q_proj"].count == 25 and g["gate_proj"].count == 26


def test_depth_rounding_is_half_up():
    qwen7 = load_model_spec("qwen2.5-7b")  # 28 layers × 0.125 = 3.5 → 4
    assert layers_dropped(qwen7, 0.125) == 4
    po = build_phase_ops(qwen7, Strategy("static_depth", 0.125), SC, "prefill")
    assert po.achieved_sparsity == pytest.approx(4 / 28)


@pytest.mark.parametrize("s,heads,kv,inter", [(0.25, 24, 6, 10752), (0.5, 16, 4, 7168)])
def test_static_width_matches_issue_figures(llama, s, heads, kv, inter):
    po = build_phase_ops(llama, Strategy("static_width", s), SC, "prefill")
    g = gemms(po)
    assert g["q_proj"].n == heads * 128 and g["k_proj"].n == kv * 128 and g["v_proj"].n == kv * 128
    assert g["o_proj"].k == heads * 128 and g["o_proj"].n == 4096
    assert g["gate_proj"].n == inter and g["up_proj"].n == inter and g["down_proj"].k == inter
    a = attn(po)
    assert (a.q_heads, a.kv_heads) == (heads, kv)
    assert po.achieved_sparsity == pytest.approx(s, abs=1e-6)


def test_static_width_align_one_shows_misalignment(llama):
    po = build_phase_ops(llama, Strategy("static_width", 0.3, align=1), SC, "prefill")
    assert gemms(po)["gate_proj"].n == round(0.7 * 14336)


def test_qwen_half_b_heads_cut_only_by_whole_groups():
    q = load_model_spec("qwen2.5-0.5b")
    assert kept_kv_groups(q, 0.125) == 2 and kept_kv_groups(q, 0.25) == 1
    po = build_phase_ops(q, Strategy("static_width", 0.125), SC, "prefill")
    assert attn(po).kv_heads == 2 and po.notes  # says heads could not be cut


def test_static_width_hidden(llama):
    po = build_phase_ops(llama, Strategy("static_width_hidden", 0.25), SC, "prefill")
    g = gemms(po)
    assert g["q_proj"].k == 3072 and g["gate_proj"].k == 3072
    assert g["o_proj"].n == 3072 and g["down_proj"].n == 3072
    assert g["q_proj"].n == 4096  # heads keep their width
    assert g["lm_head"].k == 3072
    rm = g["residual_map"]
    assert (rm.m, rm.n, rm.k, rm.count) == (1024, 3072, 3072, 64)
    emb = [o for o in po.ops if o.name == "embedding"][0]
    assert emb.width == 3072


def test_low_rank_ranks(llama):
    assert low_rank(4096, 4096, 0.25) == 1536
    assert low_rank(1024, 4096, 0.25) == 616  # 614.4 → multiple of 8
    assert low_rank(14336, 4096, 0.25) == 2392
    g = gemms(build_phase_ops(llama, Strategy("low_rank", 0.25), SC, "prefill"))
    assert (g["q_proj.A"].n, g["q_proj.A"].k) == (1536, 4096)
    assert (g["q_proj.B"].n, g["q_proj.B"].k) == (4096, 1536)
    assert "q_proj" not in g and g["lm_head"].k == 4096


def test_semi_structured_and_unstructured(llama):
    g = gemms(build_phase_ops(llama, Strategy("semi_structured_24", 0.25), SC, "prefill"))
    assert g["q_proj"].kind == "sparse_24" and g["q_proj"].density == 0.5
    assert g["lm_head"].kind == "dense"
    g = gemms(build_phase_ops(llama, Strategy("unstructured", 0.5), SC, "prefill"))
    assert g["down_proj"].kind == "unstructured" and g["down_proj"].n == 4096


def test_dynamic_depth_prefill_routes_tokens(llama):
    po = build_phase_ops(llama, Strategy("dynamic_depth", 0.25), SC, "prefill")
    g = gemms(po)
    assert g["q_proj"].m == 768 and g["down_proj"].m == 768 and g["q_proj"].count == 32
    assert (g["attn_router"].m, g["attn_router"].n, g["attn_router"].k) == (1024, 1, 4096)
    names = {o.name for o in po.ops}
    assert {"attn_topk", "attn_gather", "attn_scatter", "mlp_topk", "mlp_gather", "mlp_scatter"} <= names
    assert attn(po).q_len == 768


def test_dynamic_depth_decode(llama):
    g = gemms(build_phase_ops(llama, Strategy("dynamic_depth", 0.25), SC, "decode"))
    assert g["q_proj"].m == 12  # routed across the batch of 16
    sc1 = Scenario(decode_batch=1, context_len=1024)
    po = build_phase_ops(llama, Strategy("dynamic_depth", 0.25), sc1, "decode")
    g = gemms(po)
    assert g["q_proj"].m == 1 and g["q_proj"].count == pytest.approx(24.0)  # expectation
    assert g["attn_router"].count == 32


def test_dynamic_sparse_attention(llama):
    po = build_phase_ops(llama, Strategy("dynamic_sparse_attention", 0.5), SC, "prefill")
    a = attn(po)
    assert a.block_density == pytest.approx(72 / 136)  # 16 query blocks, causal
    assert gemms(po)["q_proj"].n == 4096  # GEMMs unchanged
    d = attn(build_phase_ops(llama, Strategy("dynamic_sparse_attention", 0.5), SC, "decode"))
    assert d.block_density == pytest.approx(0.5)


def test_flops_shrink_with_every_family(llama):
    dense = sum(o.effective_flops() * o.count for o in build_phase_ops(llama, Strategy("dense"), SC, "prefill").ops)
    for fam in ("static_depth", "static_width", "static_width_hidden", "low_rank", "dynamic_depth",
                "unstructured", "semi_structured_24", "dynamic_sparse_attention"):
        po = build_phase_ops(llama, Strategy(fam, 0.5), SC, "prefill")
        f = sum(o.effective_flops() * o.count for o in po.ops)
        assert f < dense, fam


def test_bad_strategy_and_sparsity():
    with pytest.raises(UserError):
        Strategy("magic", 0.2)
    with pytest.raises(UserError):
        Strategy("static_depth", 0.95)
    with pytest.raises(UserError):
        Strategy("static_depth", -0.1)


def test_grid_has_dense_first_and_24_once():
    g = strategies_grid(("static_depth", "semi_structured_24"), (0.25, 0.5))
    assert g[0].family == "dense"
    assert [s.family for s in g].count("semi_structured_24") == 1


def test_hidden_slicing_achieved_is_the_sliced_share(llama):
    po = build_phase_ops(llama, Strategy("static_width_hidden", 0.125), SC, "prefill")
    assert po.achieved_sparsity == pytest.approx(1 - 3584 / 4096)
    assert any("residual mappings" in n for n in po.notes)


def _ovh(po):
    out = {}
    for o in po.ops:
        if o.op_type == "overhead":
            out[o.kind] = (o.count, o.phase)
    return out


def test_framework_overhead_is_counted_per_block_linear_and_routed_sublayer(llama):
    L = llama.num_layers
    d = _ovh(build_phase_ops(llama, Strategy("dense"), SC, "prefill"))
    assert d == {"forward": (1.0, "prefill"), "block": (2.0 * L, "prefill"),
                 "linear": (7.0 * L + 1, "prefill")}  # 7 projections per layer + lm_head
    sd = _ovh(build_phase_ops(llama, Strategy("static_depth", 0.25), SC, "decode"))
    assert sd["block"] == (2.0 * (L - 8), "decode_batched") and sd["linear"][0] == 7.0 * (L - 8) + 1
    lr = _ovh(build_phase_ops(llama, Strategy("low_rank", 0.25), SC, "prefill"))
    assert lr["linear"][0] == 14.0 * L + 1 and "routing" not in lr  # two linears per projection
    sc1 = Scenario(prefill_batch=1, prompt_len=1024, decode_batch=1, context_len=1024, dtype="bf16")
    dd = _ovh(build_phase_ops(llama, Strategy("dynamic_depth", 0.25), sc1, "decode"))
    # batch 1: 3/4 of the blocks run (expected), every router runs
    assert dd["routing"] == (2.0 * L, "decode") and dd["block"][0] == pytest.approx(1.5 * L)
    assert dd["linear"][0] == pytest.approx(7 * L * 0.75 + 2 * L + 1)
    # overhead moves no data and does no FLOPs
    po = build_phase_ops(llama, Strategy("dense"), SC, "decode")
    assert all(o.flops() == 0 and o.bytes() == 0 for o in po.ops if o.op_type == "overhead")


def test_dynamic_depth_gathers_positions_in_prefill_and_kv_rows_in_batched_decode(llama):
    po = build_phase_ops(llama, Strategy("dynamic_depth", 0.25), SC, "prefill")
    pg = [o for o in po.ops if o.name == "attn_pos_gather"][0]
    assert (pg.kind, pg.rows, pg.width, pg.count) == ("gather", 768, 2 * 128, 32)
    po = build_phase_ops(llama, Strategy("dynamic_depth", 0.25), SC, "decode")
    kg = [o for o in po.ops if o.name == "attn_kv_gather"][0]
    # 12 of 16 sequences keep the layer: their K and V caches (1024 × 8 heads × 128) are gathered
    assert (kg.kind, kg.rows, kg.width, kg.count) == ("gather", 12 * 1024, 2 * 1024, 32)
    assert kg.extra == 16 * 1024  # read from the whole batch's cache (timed from memory)
    sc1 = Scenario(prefill_batch=1, prompt_len=1024, decode_batch=1, context_len=1024, dtype="bf16")
    po = build_phase_ops(llama, Strategy("dynamic_depth", 0.25), sc1, "decode")
    assert not any(o.name.endswith("_gather") for o in po.ops)  # batch 1: run or skip, no gather
