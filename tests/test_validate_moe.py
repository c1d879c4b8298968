"""pis-tui validate on mixture-of-experts models: transformers' own MoE classes built with
grouped_mm experts, pruned by the families that act on them (really pruned: their weights
against the prediction's achieved sparsity), and predicted from each model's own recorded
routing, never balanced.

Tiny configs from the presets (2 layers, hidden 128, 8 experts, top-2); no network."""

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from helpers import run_cli  # noqa: E402

from pis_tui import validation as v  # noqa: E402
from pis_tui.errors import UserError  # noqa: E402
from pis_tui.families.phase_ops import build_phase_ops  # noqa: E402
from pis_tui.families.strategy import Strategy  # noqa: E402
from pis_tui.hf.config import EXPERTS_IMPL, VALIDATE_FAMILIES  # noqa: E402
from pis_tui.hf.modules import moe_linears  # noqa: E402
from pis_tui.model.moe import routing  # noqa: E402
from pis_tui.model.scenario import Scenario  # noqa: E402
from pis_tui.model.spec import load_preset_config  # noqa: E402
from pis_tui.validation import compare  # noqa: E402
from pis_tui.validation.routing_files import record_row  # noqa: E402

PRESETS = {"qwen3_moe": "qwen3-30b-a3b", "mixtral": "mixtral-8x7b", "olmoe": "olmoe-1b-7b",
           "granitemoe": "granite-3.1-1b-a400m"}


def tiny_moe(model_type, **over):
    """A preset's config (or, for Qwen2-MoE, transformers' default) at a tiny size."""
    if model_type in PRESETS:
        cfg = {k: x for k, x in load_preset_config(PRESETS[model_type]).items()
               if not k.startswith("_")}
    else:
        from pis_tui.hf.architecture_trace import default_config

        cfg = default_config(model_type)
    cfg.update(num_hidden_layers=2, hidden_size=128, num_attention_heads=4, num_key_value_heads=2,
               head_dim=32, vocab_size=512, max_position_embeddings=2048, num_experts_per_tok=2)
    for k in ("moe_intermediate_size", "intermediate_size", "shared_expert_intermediate_size"):
        if k in cfg:
            cfg[k] = 64
    for k in ("num_experts", "num_local_experts"):
        if k in cfg:
            cfg[k] = 8
    cfg.setdefault("_name", f"tiny-{model_type}")
    cfg.update(over)
    return cfg


TYPES = ("qwen3_moe", "mixtral", "olmoe", "granitemoe", "qwen2_moe")
CASES = [(t, f) for t in TYPES for f in VALIDATE_FAMILIES[t] if f != "dense"]


def _decoder_weights(b) -> int:
    """Weights of the decoder layers (2-D linears, 3-D experts; norms left out)."""
    return sum(p.numel() for p in b.model.model.layers.parameters() if p.dim() >= 2)


def _achieved(b, strat) -> float:
    scen = Scenario(prefill_batch=1, prompt_len=16, decode_batch=1, context_len=16, dtype="fp32")
    return build_phase_ops(b.spec, strat, scen, "prefill").achieved_sparsity


def _runs(b, batch=2, prompt=24, ctx=24):
    with torch.inference_mode():
        for ph, n in (("prefill", prompt), ("decode", ctx)):
            r = v.PhaseRun(b, ph, batch, n)
            r.prepare()
            out = r._fn()
            assert out.logits.shape == (batch, 1, b.config.vocab_size)
            assert torch.isfinite(out.logits).all()


@pytest.mark.parametrize("model_type", TYPES)
def test_each_moe_type_builds_with_grouped_mm_experts_and_runs(model_type):
    b = v.build_model(tiny_moe(model_type), Strategy("dense"))
    assert type(b.model).__name__ == b.spec.architecture.model_class
    assert b.spec.moe is not None and b.spec.moe.experts == 8
    assert b.model.config._experts_implementation == EXPERTS_IMPL == "grouped_mm"
    # the router is drawn for real: no two experts share a row of scores
    gate = [m for n, m in b.model.named_modules() if n.endswith((".gate", ".router"))][0]
    assert len({tuple(r.tolist()) for r in gate.weight}) == 8
    _runs(b)


@pytest.mark.parametrize("model_type,family", CASES)
def test_each_allowed_family_really_prunes_the_moe_model(model_type, family):
    """The built model is pruned as the prediction says: its decoder weights drop by the
    achieved sparsity (static depth, static width, low rank), its masked linears hold the
    zeros (2:4, unstructured), its layers route (dynamic depth), its attention is block
    sparse; and it runs."""
    cfg = tiny_moe(model_type)
    strat = Strategy(family, 0.5, align=8)
    dense = v.build_model(cfg, Strategy("dense"))
    b = v.build_model(cfg, strat)
    ach = _achieved(b, strat)
    if family in ("static_depth", "static_width", "low_rank"):
        assert ach > 0.05
        assert 1 - _decoder_weights(b) / _decoder_weights(dense) == pytest.approx(ach, abs=1e-3)
    elif family in ("semi_structured_24", "unstructured"):
        lins = moe_linears(b.model)
        assert any(".self_attn." in n for n in lins)
        zeros = sum(int((x.weight == 0).sum()) for x in lins.values())
        total = sum(x.weight.numel() for x in lins.values())
        assert zeros / total == pytest.approx(ach, abs=0.02)
    elif family == "dynamic_depth":
        assert sum(type(m).__name__ == "RoutedLayer" for m in b.model.modules()) == 2
    elif family in ("expert_pruning", "topk_reduction", "dynamic_topk", "expert_slimming"):
        # the routed experts' surgery: tests/test_expert_families_real.py
        from pis_tui.hf.experts import shape_of

        assert shape_of(b.model) != shape_of(dense.model) or family == "dynamic_topk"
    else:
        assert b.model.config._attn_implementation != dense.model.config._attn_implementation
    _runs(b)


@pytest.mark.parametrize("model_type,family,why", [
    ("olmoe", "static_width_hidden", "routed expert"),
    ("qwen2_moe", "low_rank", "fused GEMM"),
])
def test_a_family_that_cannot_act_on_an_moe_model_is_one_line(model_type, family, why):
    with pytest.raises(UserError) as e:
        v.build_model(tiny_moe(model_type), Strategy(family, 0.5))
    assert why in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("family,steps", [("static_depth", 4), ("dynamic_depth", 3)])
def test_the_recorded_routing_is_the_timed_forwards_and_reads_per_phase(tmp_path, family, steps):
    """Prefill: the very forward that is timed (its input ids); decode: the timed step at its
    batch, over several steps; a static-depth model's file (fewer MoE layers) is read for the
    dense model's op list; the timed step's ids are left as they were."""
    cfg = tiny_moe("olmoe")
    b = v.build_model(cfg, Strategy(family, 0.5))
    pre = v.PhaseRun(b, "prefill", 2, 24)
    pre.prepare()
    rec = record_row(b, pre, tmp_path, "pre", dense_moe_layers=2)
    data = json.loads((tmp_path / "pre.json").read_text())
    assert data["format"] == "pis-tui-routing/1" and list(data["phases"]) == ["prefill"]
    kept = 2 * 24 if family == "static_depth" else 2 * 12  # dynamic depth: half the tokens
    assert rec.tokens == data["phases"]["prefill"]["tokens"] == kept
    assert all(sum(layer) == kept * 2 for layer in data["layers"])  # top-2
    assert rec.moe_layers == (1 if family == "static_depth" else 2)
    dec = v.PhaseRun(b, "decode", 4, 24)
    dec.prepare()
    ids = dec.ids.clone()
    rec = record_row(b, dec, tmp_path, "dec", steps=steps, dense_moe_layers=2)
    assert torch.equal(dec.ids, ids)
    ph = json.loads((tmp_path / "dec.json").read_text())["phases"]["decode"]
    assert ph["steps"] == steps and ph["batch"] == 4
    assert ph["tokens"] == steps * (4 if family == "static_depth" else 2)
    assert 2 <= rec.touched_per_step <= 8
    for phase, f in (("prefill", "pre"), ("decode", "dec")):
        r = routing(str(tmp_path / f"{f}.json"), 8, moe_layers=2, phase=phase)
        assert r.id.startswith(f"{f}:{phase}#") and len(r.shares) == rec.moe_layers


def test_validate_predicts_each_model_from_its_own_recorded_routing(tmp_path, monkeypatch):
    """Every prediction of an MoE validate run is made from a recorded routing file (the
    dense model's and the pruned model's apart), never balanced; each row names its files."""
    seen = []
    real = compare.predict

    def spy(spec, strategy, scenario, phase, times):
        seen.append((strategy.family, phase, scenario.routing))
        return real(spec, strategy, scenario, phase, times)

    monkeypatch.setattr(compare, "predict", spy)
    rows = v.validate(tiny_moe("qwen3_moe"), [Strategy("static_depth", 0.5)], prompt_len=16,
                      decode_batches=(1, 4), context_len=16, repeats=2, warmup=0, max_rounds=1,
                      routing_dir=str(tmp_path / "routing"))
    assert len(rows) == 3 and len(seen) == 6
    files = {p.name for p in (tmp_path / "routing").iterdir()}
    assert all(r.endswith(".json") and r != "balanced" for _, _, r in seen)
    assert {r.rsplit("/", 1)[-1] for _, _, r in seen} == files
    for fam, ph, r in seen:
        assert ("dense_" if fam == "dense" else "static_depth_") in r and f"_{ph}_" in r
    for row in rows:
        d = row.to_dict()
        assert d["routing"]["pruned"]["path"].endswith(".json")
        assert d["routing"]["dense"]["moe_layers"] == 2 and d["routing"]["pruned"]["moe_layers"] == 1
        assert row.predicted_ms > 0 and row.measured_ms > 0
    # the predictions' grouped GEMMs follow the recorded routing's law (measured at its profile)
    from pis_tui.hf.config import raw_config
    from pis_tui.model import moe

    _, spec = raw_config(tiny_moe("qwen3_moe"))
    first = [r for fam, ph, r in seen if fam == "dense" and ph == "prefill"][0]
    po = build_phase_ops(spec, Strategy("dense"), Scenario(
        prefill_batch=1, prompt_len=16, decode_batch=1, context_len=16, dtype="fp32",
        routing=first), "prefill")
    gg = [o for o in po.ops if type(o).__name__ == "GroupedGemm"]
    r = moe.routing(first, spec.moe.experts, moe_layers=spec.moe.moe_layers, phase="prefill")
    assert r.id.startswith("dense_prefill_b1_L16:prefill#")
    law = moe.mean_step(16, spec.moe.top_k, r)
    assert gg and all(o.groups == pytest.approx(law.distinct) for o in gg)
    assert all(o.routing == moe.measured_profile(r)[0] for o in gg)


def _config_dir(tmp_path, cfg):
    cfg = dict(cfg)
    cfg["architectures"] = [{"qwen3_moe": "Qwen3MoeForCausalLM", "olmoe": "OlmoeForCausalLM"}[
        cfg["model_type"]]]
    d = tmp_path / "tiny-moe"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({k: x for k, x in cfg.items()
                                               if not k.startswith("_")}))
    return d


@pytest.mark.parametrize("args,msg", [
    (["--strategy", "static_width_hidden", "--sparsity", "0.5"], "routed expert"),
    (["--strategy", "static_depth", "--sparsity", "0.5", "--tp", "2"], "--tp is not offered"),
    (["--strategy", "static_depth", "--sparsity", "0.5", "--layers", "3"], "has 2 decoder layers"),
])
def test_cli_refusals_are_one_line_exit_2(tmp_path, args, msg):
    assert_validate_refuses(tmp_path, args, msg)


def assert_validate_refuses(tmp_path, args, msg) -> None:
    """`validate` of a tiny OLMoE with ``args`` exits 2 with one line holding ``msg``, and
    writes no result."""
    d = _config_dir(tmp_path, tiny_moe("olmoe"))
    r = run_cli("validate", "--model", str(d), *args, "--json", str(tmp_path / "x.json"),
                "--cache", str(tmp_path / "c.duckdb"))
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.returncode == 2 and len(lines) == 1 and msg in lines[0], r.stderr
    assert not (tmp_path / "x.json").exists()


def test_cli_a_model_that_does_not_fit_is_one_line(tmp_path):
    """Qwen3-30B-A3B whole in fp32 (about 120 GB with a pruned copy) does not fit this
    machine: refused before anything is built; at 2 layers it would."""
    r = run_cli("validate", "--model", "qwen3-30b-a3b", "--strategy", "static_depth",
                "--sparsity", "0.5", "--cache", str(tmp_path / "c.duckdb"))
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "needs about" in lines[0] and "qwen3-30b-a3b" in lines[0]


def test_layers_keeps_the_real_widths_and_experts():
    from pis_tui.hf.config import raw_config, reduce_layers

    raw, spec = raw_config("qwen3-30b-a3b")
    small = reduce_layers(raw, spec, 2)
    _, s2 = raw_config(small)
    assert s2.name == "qwen3-30b-a3b-2L" and s2.num_layers == 2
    assert (s2.hidden_size, s2.moe.experts, s2.moe.expert_inter, s2.vocab_size) == \
        (spec.hidden_size, spec.moe.experts, spec.moe.expert_inter, spec.vocab_size)
    assert s2.moe.moe_layers == 2
    with pytest.raises(UserError):
        reduce_layers(raw, spec, 0)
