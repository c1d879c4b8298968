"""Real pruning of the routed experts (pis_tui/hf/experts.py) by the four expert-level families,
in transformers' own MoE classes with grouped_mm experts: for quality (a model with
transformers' random init, a calibration) and for validate (the built model, checked against
the prediction's op list).

Tiny configs (2 layers, hidden 128, 8 experts of 64 channels, top-2 or top-4); no network."""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from helpers import run_cli  # noqa: E402
from test_validate_moe import (  # noqa: E402
    _decoder_weights, assert_validate_refuses, tiny_moe)

from pis_tui import families, validation as v  # noqa: E402
from pis_tui.errors import MeasureError, UserError  # noqa: E402
from pis_tui.families.dynamic_topk import k_distribution  # noqa: E402
from pis_tui.families.phase_ops import build_phase_ops  # noqa: E402
from pis_tui.families.strategy import Strategy  # noqa: E402
from pis_tui.hf import experts as X  # noqa: E402
from pis_tui.hf.calibration import calibrate  # noqa: E402
from pis_tui.hf.config import VALIDATE_FAMILIES, hf_config, raw_config  # noqa: E402
from pis_tui.hf.routing_record import RoutingRecorder  # noqa: E402
from pis_tui.model.scenario import Scenario  # noqa: E402

TYPES = ("qwen3_moe", "qwen2_moe", "mixtral", "olmoe", "granitemoe")
EXPERT_FAMILIES = ("expert_pruning", "topk_reduction", "dynamic_topk", "expert_slimming")


def hf_model(model_type, seed=0, **over):
    """transformers' own class, its own random init (every expert different), grouped_mm."""
    from transformers import AutoModelForCausalLM

    from pis_tui.validation.build import pruned_dims

    raw, spec = raw_config(tiny_moe(model_type, **over))
    cfg = hf_config(raw, spec, pruned_dims(spec, Strategy("dense")))
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg).eval(), spec


def ids(n=2, t=32, seed=1, vocab=512):
    return torch.randint(0, vocab, (n, t), generator=torch.Generator().manual_seed(seed))


def logits(m, x):
    with torch.inference_mode():
        return m(input_ids=x, use_cache=False).logits


def expected_shape(spec, family, s, align=8):
    e = spec.moe
    return {"expert_pruning": dict(experts=e.experts - round(s * e.experts), top_k=e.top_k,
                                   expert_inter=e.expert_inter),
            "topk_reduction": dict(experts=e.experts, top_k=e.top_k - round(s * e.top_k),
                                   expert_inter=e.expert_inter),
            "dynamic_topk": dict(experts=e.experts, top_k=e.top_k, expert_inter=e.expert_inter),
            "expert_slimming": dict(experts=e.experts, top_k=e.top_k,
                                    expert_inter=max(align, round((1 - s) * e.expert_inter
                                                                  / align) * align))}[family]


# ---------------------------------------------------------------- quality: the prune hooks


@pytest.mark.parametrize("model_type", TYPES)
@pytest.mark.parametrize("family", EXPERT_FAMILIES)
def test_each_family_prunes_each_moe_type_for_real(model_type, family):
    """Pruned in place from a calibration: the shapes the taxonomy says, every tensor that
    holds E or I sliced with it, a forward that runs, finite and not the dense one's."""
    m, spec = hf_model(model_type, num_experts_per_tok=4)
    x = ids()
    dense = logits(m, x)
    cal = calibrate(m, ids(4, 32, seed=2)) if families.get(family).needs_calibration else None
    s = 0.5
    res = families.get(family).apply(m, s, cal, align=8)
    want = expected_shape(spec, family, s)
    assert X.shape_of(m) == want
    H = spec.hidden_size
    for _i, block, ex, router in X.blocks(m):
        E, inter = want["experts"], want["expert_inter"]
        assert tuple(ex.gate_up_proj.shape) == (E, 2 * inter, H)
        assert tuple(ex.down_proj.shape) == (E, H, inter)
        assert tuple(router.weight.shape) == (E, H) and ex.num_experts == E
    assert (m.config.num_experts_per_tok, getattr(m.config, X._config_key(m.config, X.E_KEYS)),
            getattr(m.config, X._inter_key(m.config))) == \
        (want["top_k"], want["experts"], want["expert_inter"])
    out = logits(m, x)
    assert out.shape == dense.shape and torch.isfinite(out).all()
    assert (out - dense).abs().max() > 1e-4  # pruning did something
    if family == "topk_reduction":
        assert res.achieved_sparsity == pytest.approx(0.5)
    if family == "dynamic_topk":
        assert res.achieved_sparsity == pytest.approx(0.5)  # k̄ = 2 of 4
    if family in ("expert_pruning", "expert_slimming"):
        assert 0.2 < res.achieved_sparsity < 0.6


def test_expert_pruning_keeps_the_most_used_experts_per_layer():
    """Frequency: each layer keeps the experts the calibration routed most tokens to (the
    prediction's kept_experts rule), and the kept rows are the dense model's rows."""
    m, _spec = hf_model("qwen3_moe")
    cal_ids = ids(4, 32, seed=5)
    with RoutingRecorder(m) as rec:
        rec.phase = "prefill"
        logits(m, cal_ids)
    counts = rec.counts("prefill")
    before = [(b.experts.gate_up_proj.detach().clone(), b.gate.weight.detach().clone())
              for _i, b, _e, _r in X.blocks(m)]
    families.get("expert_pruning").apply(m, 0.5, calibrate(m, cal_ids))
    for (_i, _b, ex, router), c, (gu, w) in zip(X.blocks(m), counts, before):
        top = sorted(sorted(range(8), key=lambda e: (-c[e], e))[:4])
        assert ex.pis_kept_experts == top
        assert torch.equal(ex.gate_up_proj, gu[top]) and torch.equal(router.weight, w[top])


def test_expert_slimming_keeps_each_experts_own_active_channels():
    """Each expert its own channels: gate and up the same ones, down its K; a channel whose
    activation was made zero is the one dropped."""
    m, _spec = hf_model("olmoe")
    ex = X.blocks(m)[0][2]
    with torch.no_grad():
        ex.gate_up_proj[:, 5].zero_()  # channel 5's gate: act(0)·up = 0 for every token
    gu = ex.gate_up_proj.detach().clone()
    dn = ex.down_proj.detach().clone()
    families.get("expert_slimming").apply(m, 1 / 64, calibrate(m, ids(4, 32)), align=1)
    assert X.expert_inter(ex) == 63
    keep = [c for c in range(64) if c != 5]
    for e in range(8):
        assert torch.equal(ex.gate_up_proj[e, :63], gu[e, keep])
        assert torch.equal(ex.gate_up_proj[e, 63:], gu[e, [64 + c for c in keep]])
        assert torch.equal(ex.down_proj[e], dn[e][:, keep])


# ---------------------------------------------------------------- dynamic top-k


def _grouped_rows(monkeypatch):
    """Every grouped GEMM call's computed rows (offsets[-1]) and input rows."""
    import transformers.integrations.moe as moe

    seen = []
    real = moe._grouped_linear

    def spy(x, w, offs, *a, **kw):
        seen.append((int(offs[-1]), int(x.shape[0])))
        return real(x, w, offs, *a, **kw)

    monkeypatch.setattr(moe, "_grouped_linear", spy)
    return seen


@pytest.mark.parametrize("model_type", ("qwen3_moe", "granitemoe", "mixtral"))
def test_dynamic_topk_grouped_mm_computes_exactly_each_tokens_k(model_type, monkeypatch):
    """k = 4, s = 0.375: each token 2 or 3 experts (p ½ each).  The rows grouped_mm computes
    are Σ per-token k (the recorder's count of the ids the experts run), not T·k; the output
    equals the class's own per-expert loop given the same ids (dropped slots skipped)."""
    m, spec = hf_model(model_type, num_experts_per_tok=4)
    dist = k_distribution(4, 0.375)
    assert dist == ((2, 0.5), (3, 0.5))
    X.skip_experts(m, dist, seed=3)
    seen = _grouped_rows(monkeypatch)
    x = ids(2, 64)
    with RoutingRecorder(m) as rec:
        rec.phase = "prefill"
        out = logits(m, x)
    assert torch.isfinite(out).all()
    counts = rec.counts("prefill")
    T = 2 * 64
    assert len(seen) == 2 * 2  # gate_up and down, per layer
    for j, c in enumerate(counts):
        routed = sum(c)
        assert 2 * T < routed < 3 * T  # each token 2 or 3, both drawn
        assert seen[2 * j] == (routed, T * 4) and seen[2 * j + 1][0] == routed
    # the sentinel slots cost nothing and change nothing: grouped_mm == the eager loop
    ex, router = X.blocks(m)[0][2], X.blocks(m)[0][3]
    h = torch.randn(48, spec.hidden_size, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        _l, w, idx = router(h)
        assert ((idx < 8).sum(-1) >= 2).all() and ((idx == 8).sum(-1) >= 1).all()
        if getattr(router.inner, "norm_topk_prob", True):
            assert torch.allclose(w.sum(-1), torch.ones(48), atol=1e-5)
        got = ex(h, idx, w)
        ex.config._experts_implementation = "eager"
        ref = ex(h, idx, w)
        ex.config._experts_implementation = "grouped_mm"
    assert torch.allclose(got, ref, atol=1e-5)


def test_dynamic_topk_keeps_the_weights_unrenormalised_where_the_router_does_not():
    """Qwen3-MoE with norm_topk_prob off: the kept weights are the router's own softmax values."""
    m, _spec = hf_model("qwen3_moe", num_experts_per_tok=4, norm_topk_prob=False)
    router = X.blocks(m)[0][3]
    h = torch.randn(16, 128, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        _l, w0, i0 = router(h)
        X.skip_experts(m, ((2, 1.0),), seed=0)
        _l, w, idx = X.blocks(m)[0][3](h)
    assert torch.equal(idx[:, :2], i0[:, :2]) and (idx[:, 2:] == 8).all()
    assert torch.allclose(w[:, :2], w0[:, :2]) and (w[:, 2:] == 0).all()


# ---------------------------------------------------------------- validate


@pytest.mark.parametrize("model_type", TYPES)
@pytest.mark.parametrize("family", EXPERT_FAMILIES)
def test_validate_builds_each_family_on_each_moe_type(model_type, family):
    """The built model holds the op list's experts, k, width (build checks it); its decoder
    weights drop by the achieved sparsity where weights are removed; it runs."""
    assert family in VALIDATE_FAMILIES[model_type]
    cfg = tiny_moe(model_type, num_experts_per_tok=4)
    strat = Strategy(family, 0.5, align=8)
    b = v.build_model(cfg, strat)
    assert X.shape_of(b.model) == expected_shape(b.spec, family, 0.5)
    scen = Scenario(prefill_batch=1, prompt_len=16, decode_batch=1, context_len=16, dtype="fp32")
    ach = build_phase_ops(b.spec, strat, scen, "prefill").achieved_sparsity
    if family in ("expert_pruning", "expert_slimming"):
        dense = v.build_model(cfg, Strategy("dense"))
        assert ach > 0.1
        assert 1 - _decoder_weights(b) / _decoder_weights(dense) == pytest.approx(ach, abs=1e-3)
    else:
        assert ach == pytest.approx(0.5)
    with torch.inference_mode():
        for ph, n in (("prefill", 24), ("decode", 24)):
            r = v.PhaseRun(b, ph, 2, n)
            r.prepare()
            out = r._fn()
            assert torch.isfinite(out.logits).all()


def test_a_built_model_that_disagrees_with_the_prediction_is_refused():
    from pis_tui.validation.build import _check_expert_shape

    b = v.build_model(tiny_moe("olmoe"), Strategy("topk_reduction", 0.5))
    X.set_top_k(b.model, 2)  # undo: the model no longer holds what the prediction prices
    with pytest.raises(MeasureError, match="prediction prices"):
        _check_expert_shape(b)


@pytest.mark.parametrize("family", EXPERT_FAMILIES)
def test_validate_run_of_each_family_gives_rows_from_the_pruned_models_routing(tmp_path, family):
    """A validate run: rows with predictions from each model's recorded routing; expert
    pruning's file holds the kept experts' counts at their dense ids (zeros at the removed)."""
    import json

    cfg = tiny_moe("granitemoe", num_experts_per_tok=4)
    rows = v.validate(cfg, [Strategy(family, 0.5, align=8)], prompt_len=16, decode_batches=(4,),
                      context_len=16, repeats=2, warmup=0, max_rounds=1,
                      routing_dir=str(tmp_path / "r"))
    assert len(rows) == 2
    for row in rows:
        assert row.predicted_ms > 0 and row.measured_ms > 0 and row.strategy == family
        assert row.achieved_sparsity > 0.1
        data = json.loads(open(row.routing["pruned"]["path"]).read())
        assert data["experts"] == 8
        zeros = [sum(1 for c in lay if c == 0) for lay in data["layers"]]
        if family == "expert_pruning":
            assert all(z >= 4 for z in zeros)  # the 4 removed experts
            assert row.routing["pruned"]["experts"] == 4
        if family == "topk_reduction":
            assert data["top_k"] == 2


@pytest.mark.parametrize("args,msg", [
    (["--strategy", "expert_pruning", "--sparsity", "0.9"], "fewer than the 2"),
    (["--strategy", "topk_reduction", "--sparsity", "0.9"], "at least one"),
    (["--strategy", "expert_slimming", "--sparsity", "0.5", "--align", "128"], "wider"),
])
def test_cli_bad_expert_input_is_one_line_exit_2(tmp_path, args, msg):
    assert_validate_refuses(tmp_path, args, msg)


def test_prune_refuses_bad_input_in_one_line():
    m, _spec = hf_model("mixtral")
    with pytest.raises(UserError, match="fewer than the 2"):
        families.get("expert_pruning").apply(m, 0.9, calibrate(m, ids(2, 16)))
    with pytest.raises(UserError, match="at least one"):
        families.get("topk_reduction").apply(m, 0.9, None)
    with pytest.raises(UserError, match="wider"):
        families.get("expert_slimming").apply(m, 0.5, calibrate(m, ids(2, 16)), align=128)


# ---------------------------------------------------------------- pis-tui quality


def test_cli_quality_measures_the_expert_families_on_an_moe_model(tmp_path, capsys):
    """`pis-tui quality` on a tiny Qwen3-MoE directory: each expert-level family pruned for
    real (expert pruning and slimming from the calibration's expert statistics), perplexity
    measured, the achieved sparsity the family's own."""
    import json
    import random

    from test_pruning import WORDS, _save_tokenizer

    from pis_tui.cli import main

    m, _spec = hf_model("qwen3_moe", num_experts_per_tok=4)
    d = tmp_path / "tiny-moe"
    m.save_pretrained(d)
    _save_tokenizer(d)
    rnd = random.Random(3)
    (d / "text.txt").write_text(" ".join(rnd.choice(WORDS) for _ in range(600)) + "\n")
    out = tmp_path / "q.json"
    rc = main(["quality", "--model", str(d), "--text", str(d / "text.txt"), "--strategies",
               ",".join(EXPERT_FAMILIES), "--sparsities", "0.5", "--align", "8", "--seq-len", "64",
               "--json", str(out), "--cache", str(tmp_path / "c.duckdb")])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    rows = {r["strategy"]: r for r in json.loads(out.read_text())["results"]}
    assert set(EXPERT_FAMILIES) <= set(rows)
    for fam in EXPERT_FAMILIES:
        r = rows[fam]
        assert r["ppl_pruned"] > 0 and r["ppl_pruned"] != r["ppl_dense"]
    assert rows["topk_reduction"]["achieved_sparsity"] == pytest.approx(0.5)
    assert rows["dynamic_topk"]["achieved_sparsity"] == pytest.approx(0.5)
    assert 0.2 < rows["expert_pruning"]["achieved_sparsity"] < 0.6


def test_cli_quality_leaves_the_expert_families_out_of_a_dense_models_default(tmp_path):
    """A dense model: asked by name, an expert-level family is one line, exit 2."""
    from test_pruning import _save_tiny

    d = tmp_path / "tiny-llama"
    _save_tiny(d)
    (d / "text.txt").write_text("a b c d " * 50)
    r = run_cli("quality", "--model", str(d), "--text", str(d / "text.txt"), "--strategies",
                "expert_pruning", "--cache", str(tmp_path / "c.duckdb"))
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "dense model" in lines[0], r.stderr


def test_validate_all_keeps_the_families_each_model_can_be_built_with():
    """`validate --all`: a dense model's standard set leaves the expert-level families out (it
    was refused whole), an MoE model's keeps them and leaves static_width_hidden out."""
    from pis_tui.commands.validate import _fits
    from pis_tui.validation.compare import standard_strategies

    _, dense = raw_config("qwen2.5-0.5b")
    _, moe = raw_config(tiny_moe("olmoe"))
    every = standard_strategies(extra=True)
    on_dense = {st.family for st in every if _fits(dense, st)}
    on_moe = {st.family for st in every if _fits(moe, st)}
    assert not on_dense & set(EXPERT_FAMILIES) and "static_width_hidden" in on_dense
    assert set(EXPERT_FAMILIES) <= on_moe and "static_width_hidden" not in on_moe
