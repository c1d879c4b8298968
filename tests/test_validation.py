"""pis-tui validate: pruned models built for real have the pruned shapes, run, and route as asked.

Tiny random models from presets scaled down (4 layers, hidden 128); no network, no shared data.
"""

import json

import pytest

from pis_tui.errors import UserError

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from helpers import run_cli  # noqa: E402

from pis_tui.families import phase_ops as tx
from pis_tui.families.strategy import Strategy, from_token  # noqa: E402
from pis_tui.families import static_depth, static_width, static_width_hidden
from pis_tui.model.layer import kept_tokens
from pis_tui.model.layer import factor_rank, round_half_up  # noqa: E402
from pis_tui import validation as v
from pis_tui.hf.layout import decoder_linears  # noqa: E402
from helpers import tiny_config  # noqa: E402


tiny = tiny_config


def build(family, s=0.0, cfg=None, **kw):
    return v.build_model(cfg or tiny(), Strategy(family, s, **kw))


def layers(b):
    return list(b.model.model.layers)


def attn_modules(b):
    return b.attention_modules()


def mlps(b):
    return [m for m in b.model.modules() if hasattr(m, "gate_proj") and hasattr(m, "down_proj")]


def run_both(b, batch=2, prompt=70, ctx=80):
    """One prefill and one decode step run and give logits of the right shape."""
    with torch.inference_mode():
        pre = v.PhaseRun(b, "prefill", batch, prompt)
        pre.prepare()
        out = pre._fn()
        assert out.logits.shape == (batch, 1, b.config.vocab_size)
        dec = v.PhaseRun(b, "decode", batch, ctx)
        dec.prepare()
        out = dec._fn()
        assert out.logits.shape == (batch, 1, b.config.vocab_size)
        assert torch.isfinite(out.logits).all()
        # the step leaves the cache at `ctx` tokens, ready for the next one
        assert all(int(layer.cumulative_length) == ctx for layer in dec._cache_layers)


def test_dense_build_is_fast_path_and_runs():
    b = build("dense")
    assert len(layers(b)) == 4
    # weights were filled (no NaN garbage from to_empty), norms are 1, rotary rebuilt
    w = b.model.model.layers[0].mlp.gate_proj.weight
    assert torch.isfinite(w).all() and w.abs().max() > 0
    assert torch.all(b.model.model.norm.weight == 1)
    assert torch.isfinite(b.model.model.rotary_emb.inv_freq).all()
    assert b.model.lm_head.weight.data_ptr() == b.model.model.embed_tokens.weight.data_ptr()
    run_both(b)


def test_static_depth_layers_and_sublayers():
    b = build("static_depth", 0.5)
    spec = b.spec
    assert len(layers(b)) == spec.num_layers - static_depth.layers_dropped(spec, 0.5) == 2
    run_both(b)
    b = build("static_depth", 0.375, granularity="sublayer")
    da, dm = static_depth.sublayers_dropped(spec, 0.375)  # 3 blocks: 2 attention, 1 MLP
    assert (da, dm) == (2, 1)
    assert len(attn_modules(b)) == 4 - da
    assert len(mlps(b)) == 4 - dm
    # the kept attention blocks use consecutive cache slots
    assert sorted(a.layer_idx for a in attn_modules(b)) == list(range(4 - da))
    run_both(b)


def test_static_width_shapes_follow_taxonomy():
    cfg = tiny(num_attention_heads=8, num_key_value_heads=4, head_dim=16)
    b = build("static_width", 0.5, cfg=cfg, align=32)
    spec = b.spec
    g = static_width.kept_kv_groups(spec, 0.5)
    inter = static_width.kept_intermediate(spec, 0.5, 32)
    assert (g, inter) == (2, 192)
    for a in attn_modules(b):
        assert a.q_proj.out_features == 2 * g * 16
        assert a.k_proj.out_features == a.v_proj.out_features == g * 16
        assert a.o_proj.in_features == 2 * g * 16
        assert a.head_dim == 16
    for m in mlps(b):
        assert m.gate_proj.out_features == m.up_proj.out_features == inter == m.down_proj.in_features
    run_both(b)


def test_static_width_hidden_has_residual_maps():
    b = build("static_width_hidden", 0.5, align=32)
    h2 = static_width_hidden.kept_hidden(b.spec, 0.5, 32)
    assert h2 == 64
    assert b.model.model.embed_tokens.weight.shape == (512, h2)
    for layer in layers(b):
        assert layer.attn_map.weight.shape == (h2, h2) and layer.mlp_map.weight.shape == (h2, h2)
        assert layer.inner.self_attn.q_proj.in_features == h2
        assert layer.inner.self_attn.q_proj.out_features == 4 * 32  # heads kept
    run_both(b)


def test_low_rank_ranks_follow_taxonomy():
    b = build("low_rank", 0.5)
    spec = b.spec
    a = attn_modules(b)[0]
    m = mlps(b)[0]
    # q: 128x128 at 0.5 → r = 0.5·128·128/256 = 32
    assert a.q_proj.A.out_features == factor_rank(128, 128, 0.5) == 32
    assert a.q_proj.B.in_features == 32 and a.q_proj.B.out_features == 128
    assert a.q_proj.B.bias is not None  # qwen2's qkv bias survives the factorisation
    assert m.gate_proj.A.out_features == factor_rank(384, 128, 0.5)
    assert m.down_proj.A.in_features == 384 and m.down_proj.B.out_features == 128
    # k/v (64x128): r=24 still saves parameters, factorised too
    assert a.k_proj.A.out_features == factor_rank(64, 128, 0.5) == 24
    assert b.dims.ranks["k_proj"] == 24 and spec.num_kv_heads == 2
    run_both(b)


def test_semi_structured_24_mask_pattern_and_cpu_fallback():
    b = build("semi_structured_24", 0.5)
    for _, lin in decoder_linears(b.model).items():
        groups = (lin.weight != 0).reshape(lin.weight.shape[0], -1, 4).sum(-1)
        assert torch.all(groups == 2)
    if not torch.cuda.is_available():
        assert b.sparse_kernel is False
        assert any("unsupported on this device: runs dense" in n for n in b.notes)
    run_both(b)


def test_unstructured_zeroes_the_share():
    b = build("unstructured", 0.5)
    zeros = total = 0
    for _, lin in decoder_linears(b.model).items():
        zeros += int((lin.weight == 0).sum())
        total += lin.weight.numel()
    assert abs(zeros / total - 0.5) < 0.03
    run_both(b)


def test_dynamic_depth_routes_the_asked_share():
    b = build("dynamic_depth", 0.25)
    routed = layers(b)
    with torch.inference_mode():
        pre = v.PhaseRun(b, "prefill", 2, 64)
        pre.prepare()
        pre._fn()
        k = kept_tokens(64, 0.25)
        assert k == 48
        for layer in routed:
            assert layer.kept_share == {"attn": k / 64, "mlp": k / 64}
        dec = v.PhaseRun(b, "decode", 4, 70)
        dec.prepare()
        dec._fn()
        for layer in routed:
            assert layer.kept_share == {"attn": 3 / 4, "mlp": 3 / 4}
        one = v.PhaseRun(b, "decode", 1, 70)
        one.prepare()
        one._fn()
    ran = sum(layer.kept_share["attn"] + layer.kept_share["mlp"] for layer in routed)
    assert ran == 2 * round_half_up(0.75 * 4)  # 3 of 4 attention + 3 of 4 MLP blocks


def test_routing_everything_reproduces_the_dense_model():
    """At s = 0 every token is routed: gather/positions/scatter must give the dense logits."""
    dense = build("dense")
    routed = build("dynamic_depth", 0.0)
    ids = torch.randint(0, 512, (2, 40))
    pos = torch.arange(40).unsqueeze(0)
    with torch.inference_mode():
        a = dense.model(input_ids=ids, position_ids=pos).logits
        b = routed.model(input_ids=ids, position_ids=pos).logits
    assert torch.allclose(a, b, atol=1e-4)
    # and the mask-free attention path equals transformers' default masked SDPA
    dense.model.config._attn_implementation = "sdpa"
    with torch.inference_mode():
        c = dense.model(input_ids=ids, position_ids=pos).logits
    assert torch.allclose(a, c, atol=1e-4)


def test_routed_decode_matches_dense_decode_at_zero_sparsity():
    dense = build("dense")
    routed = build("dynamic_depth", 0.0)
    outs = []
    with torch.inference_mode():
        for b in (dense, routed):
            r = v.PhaseRun(b, "decode", 3, 50, seed=3)
            r.prepare()
            outs.append(r._fn().logits)
    assert torch.allclose(outs[0], outs[1], atol=1e-4)


def test_block_sparse_attention_keeps_blocks_and_runs():
    b = build("dynamic_sparse_attention", 0.5)
    assert all(a.pis_keep == 0.5 for a in attn_modules(b))
    run_both(b, prompt=200, ctx=300)
    # at keep = 1 the registered implementation is exact SDPA
    dense = build("dense")
    full = build("dynamic_sparse_attention", 0.0)
    ids = torch.randint(0, 512, (1, 130))
    with torch.inference_mode():
        x = dense.model(input_ids=ids).logits
        y = full.model(input_ids=ids).logits
    assert torch.allclose(x, y, atol=1e-4)


def test_llama_family_builds_too():
    cfg = tiny("llama-3.2-1b")
    b = build("static_width", 0.5, cfg=cfg, align=32)
    assert type(b.model).__name__ == "LlamaForCausalLM"
    run_both(b)


def _tiny_gemma3(**over):
    from pis_tui.hf.architecture_trace import default_config

    cfg = default_config("gemma3_text")
    cfg.update(num_hidden_layers=6, hidden_size=128, intermediate_size=384, num_attention_heads=4,
               num_key_value_heads=2, head_dim=32, vocab_size=512, max_position_embeddings=2048,
               sliding_window=32)
    cfg.update(over)
    return cfg


@pytest.mark.parametrize("family", ["static_width", "low_rank", "dynamic_depth"])
def test_gemma3_builds_with_its_own_class_and_runs_past_its_window(family):
    """A non-Llama architecture validate builds: Gemma 3 (GELU-tanh gated MLP, four norms, QK
    norms, a scaled embedding, sliding-window layers).  The decode context (80) is past the
    32-key window: the sliding layers' static cache is full and rolls (it crashed before)."""
    b = build(family, 0.5, cfg=_tiny_gemma3(), align=32)
    assert type(b.model).__name__ == "Gemma3ForCausalLM"
    run_both(b)


def _tiny_of(model_type, **over):
    from pis_tui.hf.architecture_trace import default_config

    cfg = default_config(model_type)
    small = {"num_hidden_layers": 4, "hidden_size": 128, "intermediate_size": 384,
             "num_attention_heads": 4, "vocab_size": 512, "max_position_embeddings": 512,
             "ffn_dim": 384, "n_layer": 4, "n_embd": 128, "n_head": 4, "n_inner": 384,
             "n_positions": 512, "word_embed_proj_dim": 128}
    cfg.update({k: v for k, v in small.items() if k in cfg})
    if "num_key_value_heads" in cfg:
        cfg.update(num_key_value_heads=2, head_dim=32)
    cfg.update(over)
    return cfg


@pytest.mark.parametrize("model_type,family", [
    ("opt", "static_depth"), ("gpt2", "static_depth"), ("gpt_neox", "static_depth"),
    ("phi3", "static_width"), ("gemma2", "dynamic_depth"), ("gemma2", "static_width")])
def test_other_architectures_build_with_their_own_classes(model_type, family):
    """validate builds each shipped architecture with transformers' own class, for the
    families its config (or a wrapper that runs the block as the layer does) can express."""
    b = build(family, 0.5, cfg=_tiny_of(model_type), align=32)
    assert type(b.model).__name__ == b.spec.architecture.model_class
    run_both(b)
    if model_type == "gemma2":  # soft-capped: transformers' eager attention is kept
        assert b.model.config._attn_implementation == "eager"


def test_a_family_an_architecture_cannot_build_is_one_line():
    with pytest.raises(UserError) as e:
        build("low_rank", 0.5, cfg=_tiny_of("opt"))
    assert "static_depth only" in str(e.value) and "\n" not in str(e.value)


def test_unsupported_model_type_is_a_user_error():
    cfg = tiny()
    cfg["model_type"] = "gpt2"
    cfg["architectures"] = ["GPT2LMHeadModel"]
    with pytest.raises(UserError) as e:  # Qwen2 widths under GPT-2's name: the trace refuses
        v.build_model(cfg, Strategy("dense"))
    assert "not supported" in str(e.value) and "\n" not in str(e.value)


def test_interleaved_timing_returns_medians():
    b = build("dense")
    p = build("static_depth", 0.5)
    runs = [v.PhaseRun(x, "decode", 1, 32) for x in (b, p)]
    for r in runs:
        r.prepare()
    t = v.measure_interleaved(runs, repeats=3, warmup=1, target_ms=5)
    assert all(x.median_ms > 0 and len(x.samples) == 3 for x in t)


def _tiny_config_file(tmp_path):
    cfg = tiny()
    cfg["architectures"] = ["Qwen2ForCausalLM"]
    cfg["model_type"] = "qwen2"
    d = tmp_path / "tiny-qwen"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def test_cli_validate_end_to_end_json_and_cache(tmp_path):
    d = _tiny_config_file(tmp_path)
    out = tmp_path / "val.json"
    cache = tmp_path / "c.duckdb"
    r = run_cli("validate", "--model", str(d), "--strategy", "static_depth",
                "--sparsity", "0.5", "--prompt-len", "32", "--decode-batch", "1,4",
                "--context-len", "40", "--repeats", "2", "--warmup", "0",
                "--json", str(out), "--cache", str(cache),
                timeout=1200)  # measuring every op it prices: minutes on a loaded 2-core machine
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads(out.read_text())
    assert len(rows) == 3  # prefill b1, decode b1, decode b4
    keys = {"strategy", "sparsity", "achieved_sparsity", "phase", "batch", "length",
            "predicted_ms", "measured_ms", "dense_predicted_ms", "dense_measured_ms",
            "predicted_speedup", "measured_speedup", "error", "timing", "capture_failed",
            "status", "measured_interval", "speedup_ceiling", "above_ceiling", "contended",
            "prediction_flags", "latency_error", "dense_latency_error"}
    for row in rows:
        assert set(row) == keys
        assert row["timing"] == "eager" and row["capture_failed"] is False  # the CPU: no graphs
        assert row["measured_ms"] > 0 and row["predicted_ms"] > 0
        lo, hi = row["measured_interval"]
        assert 0 < lo <= hi
        assert row["speedup_ceiling"] > 1.0  # half the layers go: the ceiling is above 1
        if row["status"] == "ok":  # the median of the paired ratios, inside its interval
            assert lo <= row["measured_speedup"] <= hi
            assert abs(row["error"] - (row["predicted_speedup"] / row["measured_speedup"] - 1)) < 1e-3
        else:  # unstable: no figure, only the interval
            assert row["status"] == "unstable"
            assert row["measured_speedup"] is None and row["error"] is None
    assert {(x["phase"], x["batch"]) for x in rows} == {("prefill", 1), ("decode", 1), ("decode", 4)}
    assert all(x["strategy"] == "static_depth" and x["achieved_sparsity"] == 0.5
               for x in rows)  # 2 of 4 layers
    assert "predicted vs measured" in r.stdout
    # the results are kept in the cache for the TUI
    from pis_tui.cache import Cache

    with Cache.open(str(cache)) as c:
        stored = c.get_validations()
    assert len(stored) == 3 and {x["strategy"] for x in stored} == {"static_depth"}
    assert all(x["model"] == "tiny-qwen" and x["dtype"] == "fp32" for x in stored)


@pytest.mark.parametrize("args,msg", [
    (["--gpu", "h100-sxm", "--strategy", "static_depth", "--sparsity", "0.5"], "--gpu local"),
    (["--strategy", "nope", "--sparsity", "0.5"], "unknown strategy"),
    (["--strategy", "static_depth", "--sparsity", "1.5"], "outside"),
    (["--strategy", "static_depth"], "--sparsity is needed"),
    (["--strategy", "static_depth", "--sparsity", "0.5", "--context-len", "0"], "context length"),
    (["--strategy", "static_depth", "--sparsity", "0.5", "--decode-batch", "1,x"], "decode batch"),
    (["--model", "no-such-model", "--strategy", "static_depth", "--sparsity", "0.5"], "unknown model"),
    (["--all", "--strategy", "low_rank"], "not both"),
])
def test_cli_validate_bad_inputs_exit_2_one_line(args, msg, tmp_path):
    r = run_cli("validate", *args, "--json", str(tmp_path / "x.json"))
    assert r.returncode == 2, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and msg in lines[0], r.stderr
    assert not (tmp_path / "x.json").exists()


@pytest.mark.parametrize("family", ["low_rank", "dynamic_depth", "static_width_hidden",
                                    "static_depth", "dynamic_sparse_attention"])
def test_every_wrapper_runs_in_bf16(family):
    """The wrappers' own linears (low-rank factors, routers, residual maps) take the model's
    dtype: in bf16, as validate runs on a GPU, a float32 router would refuse a bf16 input."""
    b = v.build_model(tiny(), Strategy(family, 0.5, granularity="sublayer"
                                          if family == "static_depth" else "layer"), dtype="bf16")
    assert {p.dtype for p in b.model.parameters()} == {torch.bfloat16}
    run_both(b, batch=2, prompt=70, ctx=80)


@pytest.mark.parametrize("token", ["static_depth@0.5+static_width@0.5", "static_width@0.5+low_rank@0.5",
                                   "dynamic_depth@0.5+static_width@0.5"])
def test_the_real_combined_model_has_the_combined_shapes(token):
    """validate builds a combination through both parts' hooks: the widths, layers and ranks
    of its op list (the taxonomy's), and it runs."""
    from pis_tui.model.ops import Gemm
    from pis_tui.model.scenario import Scenario

    strat = from_token(token)
    b = v.build_model(tiny(), strat)
    po = tx.build_phase_ops(b.spec, strat, Scenario(dtype="fp32"), "prefill")
    g = {o.name: o for o in po.ops if isinstance(o, Gemm)}
    q = g.get("q_proj") or g["q_proj.B"]
    a = attn_modules(b)[0]
    assert a.q_proj.out_features == q.n and a.k_proj.out_features == (g.get("k_proj") or g["k_proj.B"]).n
    assert mlps(b)[0].down_proj.in_features == (g.get("down_proj") or g["down_proj.A"]).k
    assert len(layers(b)) == (2 if token.startswith("static_depth") else 4)
    if "low_rank" in token:
        assert a.q_proj.A.out_features == g["q_proj.A"].n  # the rank of the width-pruned q
    if token.startswith("dynamic_depth"):
        assert all(type(x).__name__ == "RoutedLayer" for x in layers(b))
    run_both(b)


def test_rows_report_the_absolute_latency_error_beside_the_speedup():
    """plan's targets are absolute: a row carries predicted / measured − 1 of both latencies,
    and the summary their bias (signed median), median, p90 and worst |error|."""
    from pis_tui.validation.compare import ValidationRow, accuracy_summary

    def row(strategy, phase, batch, pred, meas, dpred, dmeas):
        return ValidationRow(strategy, 0.5, 0.5, phase, batch, 128, pred, meas, dpred, dmeas,
                             dpred / pred, dmeas / meas, (dpred / pred) / (dmeas / meas) - 1)

    rows = [row("static_depth", "prefill", 1, 40.0, 50.0, 80.0, 100.0),
            row("low_rank", "prefill", 1, 70.0, 70.0, 80.0, 100.0),
            row("static_depth", "decode", 1, 9.0, 10.0, 18.0, 20.0)]
    assert rows[0].latency_error == pytest.approx(-0.2)
    assert rows[0].dense_latency_error == pytest.approx(-0.2)
    d = rows[1].to_dict()
    assert d["latency_error"] == pytest.approx(0.0) and d["dense_latency_error"] == pytest.approx(-0.2)
    s = accuracy_summary(rows)
    # the dense model once per case: prefill −20 %, decode −10 %
    assert s["dense_latency_error"]["median"] == pytest.approx(-0.15)
    assert s["dense_latency_error"]["worst_abs"] == pytest.approx(0.2)
    # the pruned rows: −20 %, 0 %, −10 %
    assert s["latency_error"]["median"] == pytest.approx(-0.1)
    assert s["latency_error"]["p90_abs"] == pytest.approx(0.2)
    assert s["p90_abs_error"] >= s["median_abs_error"]


def test_the_dense_latency_error_is_against_the_median_of_its_timings_not_the_last_row():
    """Every row of a case times the same dense model again; on a shared CPU those timings
    spread wide (a committed quiet run: 72–101 ms for one decode step), so the dense model's
    error is taken against their median, not against whichever row came last."""
    from pis_tui.validation.compare import ValidationRow, accuracy_summary

    def row(strategy, dmeas):
        return ValidationRow(strategy, 0.5, 0.5, "decode", 1, 256, 50.0, 60.0, 80.0, dmeas,
                             80.0 / 50.0, dmeas / 60.0, (80.0 / 50.0) / (dmeas / 60.0) - 1)

    rows = [row("static_depth", 80.0), row("static_width", 100.0), row("low_rank", 82.0),
            row("dynamic_depth", 160.0)]  # the last timing slowed by another process
    s = accuracy_summary(rows)
    assert s["dense_latency_error"]["median"] == pytest.approx(80.0 / 91.0 - 1)  # median of 4
    t = s["dense_timings"]["decode b1 @256"]
    assert t == {"n": 4, "predicted_ms": 80.0, "median_ms": 91.0, "min_ms": 80.0, "max_ms": 160.0}
