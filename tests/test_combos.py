"""Combined strategies: the registry's pairs, their op lists (hand-computed for llama-3.1-8b),
their quality (composed or measured), and bad input."""

from __future__ import annotations

import json

import jsonschema
import pytest

from helpers import run_cli

from pis_tui import families
from pis_tui.errors import UserError
from pis_tui.families import Family
from pis_tui.model.layer import decoder_params
from pis_tui.model.layer import gemm_params as decoder_params_of
from pis_tui.model.spec import load_model_spec
from pis_tui.model.ops import Attention, Elementwise, Gemm
from pis_tui.quality.model import build_quality_model
from pis_tui.quality.compose import compose, compose_estimates
from pis_tui.quality.estimate import QualityEstimate
from pis_tui.model.scenario import Scenario
from pis_tui.families.strategy import Strategy, from_token, strategies_grid
from pis_tui.families.phase_ops import build_phase_ops

SPEC = load_model_spec("llama-3.1-8b")  # 32 layers, hidden 4096, 32 heads / 8 KV of 128, MLP 14336
PREFILL = Scenario(prefill_batch=8, prompt_len=1024, decode_batch=16, context_len=1024, dtype="bf16")
M = 8 * 1024

THE_SET = ("static_depth+static_width", "static_depth+semi_structured_24", "static_depth+low_rank",
           "static_width+low_rank", "static_width+semi_structured_24", "dynamic_depth+static_width",
           "static_depth+expert_pruning", "expert_pruning+expert_slimming")


def gemms(po) -> dict:
    return {o.name: o for o in po.ops if isinstance(o, Gemm)}


def ops_of(token, phase="prefill", scen=PREFILL):
    return build_phase_ops(SPEC, from_token(token), scen, phase)


# ------------------------------------------------------------------------------ the registry

def test_the_set_is_the_registry_and_families_stay_families():
    assert families.combo_names() == THE_SET
    assert families.names() == families.BUILTIN  # combinations are no families
    assert families.strategy_names() == families.BUILTIN + THE_SET
    for name in THE_SET:
        c = families.get(name)
        assert c.is_combo and c.name == name and c.part_names == tuple(name.split("+"))
        assert len(c.mark) == 1 and c.mark not in {f.mark for f in families.all_families()}
    assert len({c.mark for c in families.combos()}) == len(THE_SET)


def test_unknown_and_reversed_combinations_are_named():
    with pytest.raises(UserError, match=r"did you mean static_depth\+static_width"):
        families.get("static_width+static_depth")
    with pytest.raises(UserError, match="unknown combination 'low_rank\\+semi_structured_24'"):
        families.get("low_rank+semi_structured_24")


class TwoRouters(Family):
    name, label, axis, description = "toy_router", "toy router", "dynamic M (toy)", "a test family"
    mark, color, short = "T", (1, 2, 3), "toy"

    def layer_ops(self, ctx, plan):
        return []


def test_pairs_that_cannot_compose_are_refused():
    with pytest.raises(ValueError, match="both replace the decoder linears"):
        families.register_combo("low_rank", "semi_structured_24")
    families.register(TwoRouters())
    try:
        with pytest.raises(ValueError, match="both emit the decoder layers' ops"):
            families.register_combo("dynamic_depth", "toy_router")
    finally:
        families.unregister("toy_router")
    with pytest.raises(ValueError, match="itself"):
        families.register_combo("static_depth", "static_depth")
    with pytest.raises(ValueError, match="built-in"):
        families.unregister_combo("static_depth+static_width")


def test_grid_is_coarse_and_parts_compose():
    grid = [s for s in strategies_grid(THE_SET) if s.parts]
    # 6 combinations of two free parts × 2 × 2, two with 2:4 (its one sparsity) × 2
    assert len(grid) == 6 * 4 + 2 * 2
    # a dense model's sweep leaves the two expert-level combinations out
    assert len([s for s in strategies_grid(THE_SET, spec=SPEC) if s.parts]) == 4 * 4 + 2 * 2
    s = from_token("static_depth@0.25+static_width@0.125")
    assert s.parts == (("static_depth", 0.25), ("static_width", 0.125))
    assert s.sparsity == pytest.approx(1 - 0.75 * 0.875)
    assert s.part_strategies == (Strategy("static_depth", 0.25), Strategy("static_width", 0.125))
    # both parts at one sparsity; 2:4 at its own
    assert Strategy("static_depth+static_width", 0.25).parts == (("static_depth", 0.25), ("static_width", 0.25))
    assert from_token("static_depth@0.25+semi_structured_24").parts[1] == ("semi_structured_24", 0.5)
    # swapped part sparsities are different strategies (the key says so)
    a, b = from_token("static_depth@0.25+static_width@0.125"), from_token("static_depth@0.125+static_width@0.25")
    assert a.sparsity == b.sparsity and a != b


@pytest.mark.parametrize("token,msg", [
    ("static_depth@0.95+static_width@0.2", "outside \\(0, 0.9\\]"),
    ("static_depth@0+static_width@0.2", "a part at 0 is no combination"),
    ("static_depth@0.5+static_width@0.9", "more than 90%"),
    ("static_depth@x+static_width@0.2", "is not a number"),
    ("static_depth@0.25", "belongs to a combination"),
])
def test_bad_part_sparsities(token, msg):
    with pytest.raises(UserError, match=msg):
        from_token(token)


# ------------------------------------------------------------------------------ op lists (hand-computed)

def test_depth_with_width_on_llama_8b():
    """25 % depth: 32 → 24 layers; 25 % width: 8 → 6 KV groups (24 query heads), MLP 14336 →
    10752 (0.75 × 14336, a multiple of 128)."""
    po = ops_of("static_depth@0.25+static_width@0.25")
    g = gemms(po)
    assert (g["q_proj"].m, g["q_proj"].n, g["q_proj"].k, g["q_proj"].count) == (M, 24 * 128, 4096, 24)
    assert (g["k_proj"].n, g["v_proj"].n) == (6 * 128, 6 * 128)
    assert (g["o_proj"].n, g["o_proj"].k) == (4096, 24 * 128)
    assert (g["gate_proj"].n, g["up_proj"].n, g["down_proj"].k) == (10752, 10752, 10752)
    assert all(o.count == 24 for o in g.values() if o.name != "lm_head")
    att = next(o for o in po.ops if isinstance(o, Attention))
    assert (att.q_heads, att.kv_heads, att.count) == (24, 6, 24)
    # parameters: depth keeps 24 of 32 layers of the width-pruned layer
    layer = 4096 * 3072 + 2 * 4096 * 768 + 3072 * 4096 + 3 * 4096 * 10752
    width_alone = 1 - layer / SPEC.layer_params()
    assert po.part_achieved == pytest.approx((0.25, width_alone), abs=1e-6)
    assert po.achieved_sparsity == pytest.approx(1 - 0.75 * (1 - width_alone), abs=1e-6)
    kept = sum(o.n * o.k * o.count for o in g.values() if o.name != "lm_head")
    assert kept == 24 * layer and po.achieved_sparsity == pytest.approx(1 - kept / decoder_params(SPEC), abs=1e-6)
    # decode: M is the batch, the same widths and layers
    d = gemms(ops_of("static_depth@0.25+static_width@0.25", "decode"))
    assert (d["q_proj"].m, d["q_proj"].n, d["q_proj"].count) == (16, 3072, 24)


def test_width_with_low_rank_factorises_the_narrower_linears():
    """Low rank on width-pruned layers: r = (1−s)·N'·K'/(N'+K') of the pruned W[N', K'], to 8."""
    g = gemms(ops_of("static_width@0.25+low_rank@0.25"))
    # q: 3072×4096 → 0.75·3072·4096/7168 = 1316.6 → 1320; k/v: 768×4096 → 485.1 → 488
    assert (g["q_proj.A"].n, g["q_proj.A"].k, g["q_proj.B"].n, g["q_proj.B"].k) == (1320, 4096, 3072, 1320)
    assert (g["k_proj.A"].n, g["k_proj.B"].n) == (488, 768)
    assert (g["o_proj.A"].n, g["o_proj.A"].k, g["o_proj.B"].n) == (1320, 3072, 4096)
    # MLP: 10752×4096 → 0.75·10752·4096/14848 = 2224.6 → 2224 (gate, up; down the same transposed)
    assert (g["gate_proj.A"].n, g["gate_proj.B"].n, g["down_proj.A"].k, g["down_proj.B"].k) == (2224, 10752, 10752, 2224)
    assert all(o.count == 32 for o in g.values() if o.name != "lm_head")


def test_depth_with_low_rank_and_depth_with_24():
    g = gemms(ops_of("static_depth@0.25+low_rank@0.25"))
    # dense widths: q 4096×4096 → 1536; gate 14336×4096 → 0.75·14336·4096/18432 = 2389.3 → 2392
    assert (g["q_proj.A"].n, g["gate_proj.A"].n, g["q_proj.A"].count) == (1536, 2392, 24)
    g = gemms(ops_of("static_depth@0.125+semi_structured_24"))
    dec = [o for o in g.values() if o.name != "lm_head"]
    assert {(o.kind, o.density, o.count) for o in dec} == {("sparse_24", 0.5, 28)}
    assert (g["gate_proj"].n, g["gate_proj"].k) == (14336, 4096) and g["lm_head"].kind == "dense"


def test_width_with_24():
    g = gemms(ops_of("static_width@0.125+semi_structured_24"))
    # 12.5 %: 8 → 7 KV groups, MLP 0.875·14336 = 12544
    assert (g["q_proj"].n, g["k_proj"].n, g["gate_proj"].n) == (28 * 128, 7 * 128, 12544)
    assert {o.kind for o in g.values() if o.name != "lm_head"} == {"sparse_24"}


def test_router_over_width_pruned_sublayers():
    po = ops_of("dynamic_depth@0.25+static_width@0.25")
    g = gemms(po)
    kept = 8 * 768  # 0.75 of each sequence's 1024 tokens
    assert (g["q_proj"].m, g["q_proj"].n, g["q_proj"].count) == (kept, 3072, 32)
    assert (g["gate_proj"].m, g["gate_proj"].n) == (kept, 10752)
    assert (g["attn_router"].m, g["attn_router"].n, g["attn_router"].k) == (M, 1, 4096)
    gather = next(o for o in po.ops if isinstance(o, Elementwise) and o.name == "attn_gather")
    assert (gather.rows, gather.width) == (kept, 4096)
    att = next(o for o in po.ops if isinstance(o, Attention))
    assert (att.q_len, att.kv_heads) == (768, 6)
    assert any(o.name == "routing_overhead" for o in po.ops)  # dynamic depth's overhead counts



# ------------------------------------------------------------------------------ kernel-level pricing

def test_combinations_are_priced_by_their_parts_kernels():
    """A combination has no trace of its own: each op's kernels are the later part's, then the
    earlier part's, then dense's (execution.Engine.kernels)."""
    from pis_tui.pricing import engines as execution

    assert execution.COMBO_SEP == families.SEP
    eager = execution.load("eager")
    both = "dynamic_depth+static_width"
    for op in ("attn_topk", "attn_gather", "mlp_scatter"):  # only dynamic depth's trace has them
        assert eager.kernels(both, "prefill", op) == eager.kernels("dynamic_depth", "prefill", op)
        assert eager.kernels(both, "prefill", op) != eager.kernels("dense", "prefill", op)
    # the later part's trace first: static width's narrower rotary, not dynamic depth's
    assert eager.kernels(both, "prefill", "rotary") == eager.kernels("static_width", "prefill", "rotary")
    # low rank's factors of width-pruned linears: low rank's trace
    assert eager.kernels("static_width+low_rank", "decode", "q_proj.A") == \
        eager.kernels("low_rank", "decode", "q_proj.A")
    # an op no part's trace describes: dense's
    assert eager.kernels("static_depth+static_width", "prefill", "input_norm") == \
        eager.kernels("dense", "prefill", "input_norm")


@pytest.mark.parametrize("engine", ["eager", "fused"])
def test_combinations_go_through_the_kernel_level_estimator(engine):
    from pis_tui.pricing import engines as execution
    from pis_tui.decide.sweep import sweep

    scen = Scenario(8, 1024, 16, 1024, "bf16", engine)
    r = sweep("llama-3.1-8b", "h200-sxm", scen, ["dynamic_depth+static_width"],
              combo_sparsities=[0.25], phases=("prefill",))
    e = next(x for x in r.estimates if x.parts)
    assert e.parts == (("dynamic_depth", 0.25), ("static_width", 0.25))
    by_name = {p.op.name: p for p in e.ops}
    # every op is priced under the engine's kernels: launches per call are known
    assert all(p.kernels is not None for p in e.ops if p.op.op_type != "overhead")
    if engine == "eager":  # the router's top-k: the traced dynamic-depth decomposition
        traced = execution.load("eager").kernels("dynamic_depth", "prefill", "attn_topk")
        assert len(traced) > 1 and by_name["attn_topk"].kernels == len(traced)
    else:  # q/k/v merged into one GEMM, as for any family under fused
        assert by_name["k_proj"].ms_per_call == 0.0 and "merged" in by_name["k_proj"].note
    p = next(x for x in r.points if x.parts)
    assert p.key == (e.strategy, round(e.sparsity, 9), e.parts)
    assert r.scenario.engine == engine

@pytest.mark.parametrize("name", THE_SET)
def test_each_part_keeps_its_own_achieved_sparsity(name):
    """A combination's achieved sparsity is 1 − Π(1 − aᵢ), aᵢ each part's achieved alone (the
    figure its quality curve is read at)."""
    s = Strategy(name, 0.25)
    # the expert-level combinations apply to a mixture of experts only
    spec = SPEC if families.get(name).applies(SPEC) is None else load_model_spec("granite-3.1-1b-a400m")
    po = build_phase_ops(spec, s, PREFILL, "prefill")
    alone = tuple(build_phase_ops(spec, p, PREFILL, "prefill").achieved_sparsity for p in s.part_strategies)
    assert po.part_achieved == alone
    if name == "expert_pruning+expert_slimming":
        # both cut the experts' weights: the parameters kept, not the shares composed
        assert po.achieved_sparsity == pytest.approx(1 - decoder_params_of(po.ops) / decoder_params(spec))
        assert po.achieved_sparsity < 1 - (1 - alone[0]) * (1 - alone[1])
    else:
        assert po.achieved_sparsity == pytest.approx(1 - (1 - alone[0]) * (1 - alone[1]), abs=1e-6)
    assert po.strategy.token == "+".join(f"{f}@{x:g}" for f, x in s.parts)


# ------------------------------------------------------------------------------ quality of a combination

def test_composition_rules():
    assert compose([0.1, 0.2], "multiplicative") == pytest.approx(1 - 0.9 * 0.8)
    assert compose([0.1, 0.2], "additive") == pytest.approx(0.3)
    assert compose([0.7, 0.6], "additive") == 1.0  # an accuracy drop is capped
    assert compose([0.5, 0.5], "multiplicative", "ppl_increase") == pytest.approx(1.5 * 1.5 - 1)
    assert compose([0.1, None], "multiplicative") is None
    with pytest.raises(UserError, match="unknown combination rule"):
        compose([0.1], "max")
    q = compose_estimates([QualityEstimate(0.1, source="prior", method="A", citations=("x",)),
                           QualityEstimate(0.2, source="prior", method="B", extrapolated=True,
                                           borrowed_from="M")],
                          ["a 10%", "b 20%"], "additive", "accuracy_drop", "lora")
    assert q.source == "composed" and q.composed == "additive" and q.value == pytest.approx(0.3)
    assert q.method == "A + B" and q.extrapolated and q.borrowed_from == "M" and len(q.parts) == 2
    assert "not a published figure" in q.note


@pytest.mark.parametrize("rule", ["multiplicative", "additive"])
def test_sweep_composes_each_part_at_its_achieved_sparsity(rule):
    from pis_tui.decide.sweep import sweep

    qm = build_quality_model("lora", combo_rule=rule)
    r = sweep(SPEC, "h200-sxm", PREFILL, ["static_depth+static_width"], quality=qm)
    pts = [p for p in r.points if p.parts]
    assert len(pts) == 2 * 4
    for p in pts:
        a = qm.estimate(SPEC.name, "static_depth", p.part_achieved[0]).value
        b = qm.estimate(SPEC.name, "static_width", p.part_achieved[1]).value
        assert p.quality.value == pytest.approx(compose([a, b], rule))
        assert p.quality.source == "composed" and p.quality.composed == rule  # never "prior"
        assert [x.value for x in p.quality.parts] == pytest.approx([a, b])


def test_measured_combined_model_wins_over_composition():
    rows = [{"model": "m", "strategy": "static_depth", "sparsity": 0.25, "ppl_increase": 0.3,
             "achieved_sparsity": 0.25},
            {"model": "m", "strategy": "static_width", "sparsity": 0.25, "ppl_increase": 0.2,
             "achieved_sparsity": 0.25},
            {"model": "m", "strategy": "static_depth@0.25+static_width@0.25", "sparsity": 0.4375,
             "ppl_increase": 0.9, "achieved_sparsity": 0.4375}]
    qm = build_quality_model(measured_rows=rows)
    parts = (("static_depth", 0.25), ("static_width", 0.25))
    q = qm.estimate_combo("m", "static_depth+static_width", parts, (0.25, 0.25))
    assert (q.value, q.source, q.composed) == (0.9, "measured", None)
    # another pair of part sparsities was not measured: composed from the measured parts
    q = qm.estimate_combo("m", "static_depth+static_width", (("static_depth", 0.25), ("static_width", 0.125)),
                          (0.25, 0.25))
    assert q.source == "composed" and q.value == pytest.approx(1.3 * 1.2 - 1)


# ------------------------------------------------------------------------------ commands

def test_sweep_json_lists_combinations_with_parts_and_validates(tmp_path):
    from pis_tui.present.export import load_schema

    out = tmp_path / "s.json"
    r = run_cli("sweep", "--model", "llama-3.1-8b", "--gpu", "h200-sxm", "--strategies",
                "static_depth,static_depth+static_width", "--sparsities", "0.25",
                "--combo-sparsities", "0.25", "--engine", "fused", "--json", str(out))
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    jsonschema.validate(doc, load_schema())  # the engine enum and the combination keys both
    assert doc["scenario"]["engine"] == "fused"
    combo = [x for x in doc["results"] if x["strategy"] == "static_depth+static_width"]
    assert len(combo) == 2
    c = combo[0]
    assert [p["family"] for p in c["parts"]] == ["static_depth", "static_width"]
    assert c["quality_flags"]["composed"] == "multiplicative" and c["quality_source"] == "composed"
    assert c["quality_loss"] == pytest.approx(compose([p["quality_loss"] for p in c["parts"]],
                                                      "multiplicative"), abs=1e-6)
    assert doc["quality"]["combo_rule"] == "multiplicative" and "1 − (1 − a)(1 − b)" in doc["quality"]["combo_rule_text"]
    assert "static_depth+static_width" in r.stdout and "ᶜ" in r.stdout and "composed" in r.stdout


@pytest.mark.parametrize("args,msg", [
    (["--strategies", "static_width+static_depth"], "did you mean static_depth+static_width"),
    (["--strategies", "static_depth+nope"], "unknown combination"),
    (["--strategies", "static_depth@0.2+static_width@0.2"], "a list takes combinations by name"),
    (["--combo-sparsities", "0.95"], "outside [0, 0.9]"),
    (["--combo-sparsities", ""], "gives no sparsity"),
    (["--quality-method", "no-such-pruner"], "unknown quality method 'no-such-pruner'"),
    (["--combo-quality", "max"], "invalid choice"),
])
def test_bad_combination_input_is_one_line_exit_2(args, msg):
    r = run_cli("recommend", "--model", "llama-3.1-8b", "--gpu", "h200-sxm", *args)
    assert r.returncode == 2, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and msg in lines[-1], r.stderr
    assert "Traceback" not in r.stderr


def test_ops_shows_a_combined_op_list():
    r = run_cli("ops", "--model", "llama-3.1-8b", "--gpu", "h200-sxm", "--strategy",
                "static_depth@0.25+static_width@0.25", "--prefill-batch", "8", "--json", "-")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    q = next(o for o in d["ops"] if o["name"] == "q_proj")
    assert (q["n"], q["count"]) == (3072, 24)
    assert q["kernels"] == 1 and d["engine"] == "eager"  # priced under the eager trace
    assert [p["family"] for p in d["parts"]] == ["static_depth", "static_width"]


def test_cli_validate_builds_and_times_real_combined_models(tmp_path, monkeypatch, capsys):
    """``pis-tui validate`` on the CPU with two combinations at their parts' sparsities: each
    real combined model is built, timed against dense and compared with its prediction (the
    op timings from the roofline: the real models are what is checked here)."""
    pytest.importorskip("torch")
    from pis_tui.cli import main
    from pis_tui.validation import compare

    monkeypatch.setattr(compare.OpTimes, "ensure", lambda self, ops: None)
    d = tmp_path / "tiny"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({
        "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_size": 64,
        "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 256, "max_position_embeddings": 512,
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": True}))
    out = tmp_path / "rows.json"
    pairs = "static_depth@0.5+static_width@0.5,static_width@0.5+low_rank@0.5"
    code = main(["validate", "--model", str(d), "--strategy", pairs, "--phase", "decode",
                 "--decode-batch", "2", "--context-len", "16", "--repeats", "1", "--warmup", "0",
                 "--json", str(out), "--cache", "none"])
    assert code == 0, capsys.readouterr().err
    rows = json.loads(out.read_text())
    assert [r["strategy"] for r in rows] == pairs.split(",")
    for r in rows:
        assert r["measured_ms"] > 0 and r["predicted_ms"] > 0 and r["measured_speedup"] > 0
    # depth keeps 2 of 4 layers, width half of what they hold: 1 − 0.5 · (1 − a_width)
    assert 0.5 < rows[0]["achieved_sparsity"] < 1.0


def test_plan_offers_combinations(tmp_path):
    out = tmp_path / "p.json"
    r = run_cli("plan", "--model", "llama-3.1-8b", "--gpu", "h200-sxm", "--strategies",
                "static_depth,static_depth+static_width", "--engine", "fused", "--json", str(out))
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    assert doc["plan"]["engine"] == "fused"
    cands = [c for c in doc["plan"]["candidates"] if c["parts"]]
    assert len(cands) == 4 and all(c["quality_source"] == "composed" for c in cands)
    assert {tuple(p["sparsity"] for p in c["parts"]) for c in cands} == {
        (0.125, 0.125), (0.125, 0.25), (0.25, 0.125), (0.25, 0.25)}


def test_readme_combinations_table_is_the_registry():
    import re

    from helpers import ROOT

    text = (ROOT / "docs" / "taxonomy.md").read_text(encoding="utf-8")
    rows = dict((m.group(1), m.group(2).strip()) for m in re.finditer(
        r"^\| `([a-z0-9_]+\+[a-z0-9_]+)` \| ([^|]+) \| .+ \|$", text, re.M))
    assert tuple(rows) == THE_SET
    for c in families.combos():
        assert rows[c.name] == c.axis, c.name
