"""Every decoder priced as its own code runs: architecture templates traced from transformers'
classes (on the meta device), shipped for the common architectures, traced on first use for
others, refused with one line where they cannot be traced."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from pis_tui.errors import UserError
from pis_tui.families.phase_ops import build_phase_ops
from pis_tui.families.strategy import Strategy
from pis_tui.model import architecture as A
from pis_tui.model.ops import Attention, Elementwise, Gemm
from pis_tui.model.scenario import Scenario
from pis_tui.model.spec import load_model_spec, preset_names, spec_from_config

SCEN = Scenario(prefill_batch=1, prompt_len=256, decode_batch=4, context_len=512)


def _cfg(model_type: str) -> dict:
    from pis_tui.hf.architecture_trace import default_config

    return default_config(model_type)


def _ops(spec, phase="prefill", strategy=Strategy("dense", 0.0), scen=SCEN):
    return build_phase_ops(spec, strategy, scen, phase).ops


def _by_name(ops):
    return {o.name: o for o in ops}


@pytest.mark.parametrize("model_type", A.shipped_types())
def test_shipped_template_is_what_a_fresh_trace_gives(model_type):
    """Regenerated on purpose only: a transformers change that alters a layer shows here."""
    from pis_tui.hf.architecture_trace import trace_config

    shipped = json.loads(open(A.profile_path("architectures", f"{model_type}.json")).read())
    fresh = trace_config(_cfg(model_type))
    for key in ("class", "parallel_residual", "before_layers", "attention", "mlp", "after_layers",
                "structure", "kernels", "device_kernels"):
        assert fresh.get(key) == shipped.get(key), (model_type, key)


MOE_TYPES = ("qwen3_moe", "qwen2_moe", "mixtral", "olmoe", "granitemoe")  # tests/test_moe.py


@pytest.mark.parametrize("model_type", [t for t in A.shipped_types() if t not in MOE_TYPES])
def test_op_list_gemms_are_the_real_modules_weights(model_type):
    """The op list's GEMMs, by name, have the N × K of the real class's linears (meta device)."""
    from pis_tui.hf.architecture_trace import _is_linear, _weight_nk, build_meta_model

    cfg = _cfg(model_type)
    model, _ = build_meta_model(cfg)
    spec = spec_from_config(cfg, model_type)
    layer0 = [(n, m) for n, m in model.named_modules() if ".0." in n and _is_linear(m)]
    gemms = {o.name: o for o in _ops(spec) if isinstance(o, Gemm) and o.name != "lm_head"}
    assert len(gemms) == len(layer0)
    want = sorted(_weight_nk(m) for _, m in layer0)
    assert sorted((g.n, g.k) for g in gemms.values()) == want
    per_layer = sum(n * k for n, k in want)
    assert spec.layer_params() == per_layer


def test_every_preset_uses_a_shipped_template_without_tracing():
    for name in preset_names():
        spec = load_model_spec(name, allow_transformers=False)
        assert spec.architecture.source == "shipped", name


def test_opt_is_priced_as_opt_not_llama():
    spec = spec_from_config(_cfg("opt"), "opt")
    ops = _by_name(_ops(spec, "decode"))
    for llama_only in ("gate_proj", "up_proj", "silu_mul", "rotary", "input_norm"):
        assert llama_only not in ops
    h, i = spec.hidden_size, spec.intermediate_size
    assert (ops["fc1"].n, ops["fc1"].k) == (i, h) and (ops["fc2"].n, ops["fc2"].k) == (h, i)
    assert ops["act"].kind == "act" and ops["act"].shape().endswith("relu")
    assert ops["self_attn_layer_norm"].kind == "layernorm" and ops["final_norm"].kind == "layernorm"
    assert ops["pos_embedding"].kind == "embedding" and "pos_add" in ops
    # two MLP matrices, not three: 4H² + 2HI per layer
    assert spec.layer_params() == 4 * h * h + 2 * h * i


def test_gemma2_four_norms_gelu_tanh_sliding_window_and_softcaps():
    cfg = _cfg("gemma2")
    cfg.update(sliding_window=128, num_hidden_layers=4)
    spec = spec_from_config(cfg, "g2")
    ops = _ops(spec, "decode")
    names = [o.name for o in ops]
    norms = [o for o in ops if isinstance(o, Elementwise) and o.kind == "rmsnorm" and o.name != "final_norm"]
    assert len(norms) == 4  # input, post-attention, pre- and post-feedforward
    act = _by_name(ops)["act_mul"]
    assert act.kind == "act_mul" and act.shape().endswith("gelu_tanh")
    att = [o for o in ops if isinstance(o, Attention)]
    assert {a.window for a in att} == {0, 128} and all(a.softcap for a in att)
    assert sum(a.count for a in att) == pytest.approx(4)  # two sliding, two global layers
    assert "logit_softcap" in names and "embed_scale" in names
    assert "silu_mul" not in names


def test_phi3_fused_projections_are_one_gemm_each():
    spec = spec_from_config(_cfg("phi3"), "phi3")
    ops = _by_name(_ops(spec))
    assert "q_proj" not in ops and "gate_proj" not in ops
    assert ops["qkv_proj"].n == spec.q_dim + 2 * spec.kv_dim
    assert ops["gate_up_proj"].n == 2 * spec.intermediate_size
    # static width keeps heads and channels of the fused weights: N follows both
    pruned = _by_name(_ops(spec, strategy=Strategy("static_width", 0.5)))
    assert pruned["qkv_proj"].n < ops["qkv_proj"].n
    assert pruned["gate_up_proj"].n == 2 * pruned["down_proj"].k


def test_gpt2_is_accepted_and_neox_runs_attention_and_mlp_in_parallel():
    cfg = _cfg("gpt2")
    cfg["architectures"] = ["GPT2LMHeadModel"]
    spec = spec_from_config(cfg, "gpt2")
    ops = _by_name(_ops(spec))
    assert ops["c_attn"].n == 3 * spec.hidden_size and "pos_embedding" in ops
    neox = spec_from_config(_cfg("gpt_neox"), "neox")
    assert neox.architecture.parallel_residual
    nops = _by_name(_ops(neox))
    rot = A.rotary_dim({"head_dim": neox.head_dim, "rotary_fraction": 0.25})
    assert neox.rotary_dim == rot < neox.head_dim  # GPT-NeoX rotates a quarter of each head
    assert nops["rotary"].width == (neox.num_heads + neox.num_kv_heads) * rot


def test_sliding_window_pairs_by_hand():
    a = Attention("a", 1, 1, 1, q_len=8, kv_len=8, head_dim=8, window=3)
    assert a._pairs() == 1 + 2 + 3 * 6  # queries 0 and 1 see fewer than 3 keys
    d = Attention("a", 1, 1, 1, q_len=1, kv_len=500, head_dim=8, window=128)
    assert d.kv_read() == 128 and d._pairs() == 128


def test_an_unshipped_architecture_is_traced_once_then_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("PIS_TUI_ARCH_CACHE", str(tmp_path))
    cfg = {"model_type": "olmo", "num_hidden_layers": 2, "hidden_size": 128,
           "intermediate_size": 352, "num_attention_heads": 4, "vocab_size": 512,
           "architectures": ["OlmoForCausalLM"]}
    spec = spec_from_config(cfg, "olmo-tiny")
    assert spec.architecture.model_class == "OlmoForCausalLM"
    assert spec.architecture.norm_kind == "layernorm"  # OLMo's non-parametric LayerNorm
    cached = list(tmp_path.glob("olmo-*.json"))
    assert len(cached) == 1 and spec.architecture.source == str(cached[0])
    # the second load reads the cache, never a subprocess
    monkeypatch.setattr(A, "_trace_in_subprocess", lambda *a: pytest.fail("traced again"))
    again = spec_from_config(cfg, "olmo-tiny")
    assert again.architecture.source == str(cached[0])
    # the estimating path never traces: no template, one line
    with pytest.raises(UserError, match="no architecture template"):
        spec_from_config(dict(cfg, model_type="stablelm"), "x", allow_trace=False)


def test_an_architecture_that_cannot_be_built_is_refused_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("PIS_TUI_ARCH_CACHE", str(tmp_path))
    cfg = {"model_type": "no-such-model", "num_hidden_layers": 2, "hidden_size": 64,
           "intermediate_size": 128, "num_attention_heads": 4, "vocab_size": 100}
    with pytest.raises(UserError) as e:
        spec_from_config(cfg, "mystery")
    assert "not supported" in str(e.value) and "\n" not in str(e.value)


def test_the_fused_engine_fuses_residual_adds_only_into_rmsnorm():
    """vLLM's fused_add_rms_norm takes the residual add; a LayerNorm model's adds are kernels."""
    from pis_tui.device.choose import load_gpu
    from pis_tui.pricing.estimator import Estimator

    est = Estimator(load_gpu("h200-sxm"), engine="fused")
    launches = {}
    for mt in ("opt", "gemma2"):
        spec = spec_from_config(_cfg(mt), mt)
        e = est.estimate(build_phase_ops(spec, Strategy("dense", 0.0), SCEN, "decode"))
        launches[mt] = {p.op.name: p.kernels for p in e.ops if p.op.name.endswith("_residual")}
    assert set(launches["opt"].values()) == {1} and set(launches["gemma2"].values()) == {0}


def test_eager_prices_a_window_as_a_mask_and_fused_as_a_window():
    from pis_tui.device.choose import load_gpu
    from pis_tui.pricing.estimator import Estimator

    # a decode step of 64 sequences: the KV read, not the launch floor, sets the time
    a = Attention("attention", 64, 8, 2, q_len=1, kv_len=8192, head_dim=128, window=512)
    full = Attention("attention", 64, 8, 2, q_len=1, kv_len=8192, head_dim=128)
    gpu = load_gpu("h200-sxm")
    eager, fused = Estimator(gpu, engine="eager"), Estimator(gpu, engine="fused")
    # decode: the sliding layer's cache holds the window under either engine
    assert fused.price(a).ms_per_call < fused.price(full).ms_per_call / 4
    assert eager.price(a).ms_per_call < eager.price(full).ms_per_call / 4
    # prefill: eager SDPA masks (every causal pair computed), FlashAttention skips
    pa = Attention("attention", 1, 8, 2, q_len=8192, kv_len=8192, head_dim=128, window=512)
    pf = replace(pa, window=0)
    assert eager.price(pa).ms_per_call == pytest.approx(eager.price(pf).ms_per_call)
    assert "mask" in eager.price(pa).note
    assert fused.price(pa).ms_per_call < fused.price(pf).ms_per_call / 4
    # soft-capping: eager materialises the scores (more time, labelled no better than roofline)
    capped = Attention("attention", 1, 8, 2, q_len=1024, kv_len=1024, head_dim=128, softcap=True)
    plain = Attention("attention", 1, 8, 2, q_len=1024, kv_len=1024, head_dim=128)
    assert eager.price(capped).ms_per_call > eager.price(plain).ms_per_call
    assert eager.price(capped).source == "roofline"
    assert fused.price(capped).ms_per_call == pytest.approx(fused.price(plain).ms_per_call)


def test_the_explorer_prices_a_non_llama_config_by_its_real_op_names(tmp_path):
    """The explorer reads a typed config as plain JSON (no transformers import) and finds the
    shipped template; its drill-down lists the architecture's own ops."""
    from pis_tui.tui.backend import Backend, Choices

    cfg = _cfg("opt")
    cfg["architectures"] = ["OPTForCausalLM"]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    snap = Backend(cache_path=str(tmp_path / "c.duckdb")).compute(
        Choices(model=str(path), gpu="h200-sxm"))
    names = {p.op.name for e in snap.result.estimates for p in e.ops}
    assert {"fc1", "fc2", "self_attn_layer_norm", "pos_embedding"} <= names
    assert not names & {"gate_proj", "silu_mul", "rotary"}
    assert snap.result.spec.arch_name == "OPTForCausalLM"


# ------------------------------------------------------------------ an MoE block's kernels

MOE_OPS = ("moe_router", "moe_topk", "moe_dispatch", "experts_gate_up", "experts_act",
           "experts_down", "moe_combine")


def _moe_kernels(model_type, device, phase):
    return {n: [k["aten"] for k in ks] for n, ks in A.template_kernels(model_type, device)[phase].items()
            if n.startswith(("moe_", "experts_", "shared_"))}


@pytest.mark.parametrize("model_type", MOE_TYPES)
def test_an_moe_block_s_traced_kernels_are_its_ops_own(model_type):
    """Each MoE op of the op list has the kernels transformers launches for it, per device kind:
    the router's GEMM, top-k's softmax and top-k, the dispatch's sort, gathers and histc/cumsum,
    the two grouped GEMMs, SiLU·mul, the combine's weighting, inverse permutation and sum."""
    spec = spec_from_config(_cfg(model_type), model_type)
    names = {o.name for o in _ops(spec, "decode")}
    for phase in ("prefill", "decode"):
        for device in ("gpu", "cpu"):
            ks = _moe_kernels(model_type, device, phase)
            assert set(MOE_OPS) <= set(ks) and set(ks) <= names, (model_type, device, sorted(ks))
            assert all(ks[n] for n in ks)
            assert ks["moe_router"] == ["mm"]
            assert ks["experts_gate_up"] == ks["experts_down"] == ["_grouped_mm"]
            assert "topk" in ks["moe_topk"] and "_softmax" in ks["moe_topk"]
            assert ks["moe_dispatch"][:2] == ["sort", "floor_divide"]
            assert ks["moe_dispatch"][-2:] == ["histc", "cumsum"]
            assert ks["experts_act"] == ["silu", "mul"]
            assert {"index_put_", "index", "sum"} <= set(ks["moe_combine"])
        # the one difference between the devices: histc's input, float ids on the CPU
        raw = {d: A.template_kernels(model_type, d)[phase]["moe_dispatch"] for d in ("gpu", "cpu")}
        histc = {d: next(k for k in raw[d] if k["aten"] == "histc")["in"][0][1] for d in raw}
        assert histc == {"gpu": "int32", "cpu": "fp32"}
        for op in set(MOE_OPS) - {"moe_dispatch"}:
            assert A.template_kernels(model_type, "cpu")[phase][op] == \
                A.template_kernels(model_type, "gpu")[phase][op]


def test_qwen2_moe_s_shared_expert_and_its_gate_have_their_kernels():
    ks = _moe_kernels("qwen2_moe", "gpu", "decode")
    assert ks["shared_gate_up"] == ["mm", "mm"]  # transformers runs gate and up apart
    assert ks["shared_act"] == ["silu", "mul"] and ks["shared_down"] == ["mm"]
    assert ks["shared_expert_gate"] == ["mm"] and ks["shared_gate_mul"] == ["sigmoid", "mul"]
    assert ks["moe_combine"][-1] == "add"  # the shared and routed outputs summed


def test_the_eager_engine_prices_an_moe_op_as_its_traced_kernels_on_each_device():
    """Under eager an MoE op costs its traced kernels (a floor each): the dispatch's seven, not
    one kernel of its bytes; a CPU is priced with the CPU's sequence."""
    from dataclasses import replace as dc_replace

    from pis_tui.device.choose import load_gpu
    from pis_tui.pricing import engines as execution
    from pis_tui.pricing.estimator import Estimator

    spec = load_model_spec("qwen3-30b-a3b")
    arch = spec.architecture.key
    gpu = load_gpu("h200-sxm")
    est = Estimator(gpu, [])
    cpu_est = Estimator(dc_replace(gpu, kind="cpu"), [])
    ops = _by_name(_ops(spec, "decode"))
    floor = gpu.launch_overhead_us * 1e-3
    for name, n in (("moe_topk", 4), ("moe_dispatch", 7), ("moe_combine", 5), ("experts_act", 2)):
        op = ops[name]
        assert est.launches(op, "dense", "decode", arch=arch) == n, name
        assert est.analytical_ms(op, "dense", "decode", arch) >= n * floor, name
    disp = ops["moe_dispatch"]
    on = {e: [(k.aten, k.reads[0][1]) for k in x.kernels_of(disp, "dense", "decode", arch)]
          for e, x in (("gpu", est), ("cpu", cpu_est))}
    assert ("histc", "int32") in on["gpu"] and ("histc", "fp32") in on["cpu"]
    eager = execution.load("eager")
    assert eager.kernels("dense", "decode", "moe_dispatch", arch, "cpu") != \
        eager.kernels("dense", "decode", "moe_dispatch", arch, "gpu")
    # the grouped GEMMs stay leaves: their price is the grouped-GEMM model's, not their bytes
    g = ops["experts_gate_up"]
    assert [k.aten for k in est.kernels_of(g, "dense", "decode", arch)] == ["_grouped_mm"]
    assert execution.unit(g) == g.rows * g.n


def test_an_moe_block_s_host_overhead_is_a_fixed_share_of_each_probe_clone_s_blocks():
    """The dispatch probe cannot solve an MoE block's own overhead kind: in every tiny clone it
    times, MoE blocks are the same share of the blocks (no family drops an MoE block apart from
    its layer), so such a column would be proportional to the block column; the MoE block's
    Python is solved inside the per-block cost, its glue kernels priced as traced."""
    from pis_tui.model.ops import Overhead
    from pis_tui.validation.probe import PROBE_STRATEGIES

    spec = load_model_spec("qwen3-30b-a3b")
    ratios = set()
    for fam, s in PROBE_STRATEGIES:
        ops = build_phase_ops(spec, Strategy(fam, s, align=8), SCEN, "decode").ops
        blocks = sum(o.count for o in ops if isinstance(o, Overhead) and o.kind == "block")
        moe_blocks = sum(o.count for o in ops if o.name == "moe_router")
        assert blocks > 0 and moe_blocks > 0, fam
        ratios.add(round(moe_blocks / blocks, 9))
    assert len(ratios) == 1, ratios
