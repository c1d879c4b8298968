"""Quality per method (--quality-method mean|best|NAME), the borrowing rule, and extrapolated
quality shown but not ranked (--allow-extrapolated)."""

from __future__ import annotations

import json

import pytest

from helpers import run_cli

from pis_tui.errors import UserError
from pis_tui.quality.model import QualityModel, Obs, build_quality_model
from pis_tui.quality.priors import load_priors, method_key, method_name


def _rows(family, model="Llama-3.1-8B", protocol="lora", metric="accuracy_drop"):
    return [r for r in load_priors() if r.on_curve and r.family == family and r.model == model
            and r.protocol == protocol and r.metric == metric and r.quality_loss is not None]


# ------------------------------------------------------------------------------ method names

def test_method_names_join_the_rows_of_one_method():
    assert method_name("static NK (Tyr-the-Pruner, +LoRA)") == "Tyr-the-Pruner"
    assert method_name("Tyr-the-Pruner*") == "Tyr-the-Pruner"
    assert method_name("dynamic M (SkipGPT, +LoRA)") == "SkipGPT"
    assert method_name("static M (mean)") == method_name("static M (Shortened-taylor/CoopPruner mean)")
    assert method_name("LLM-Pruner (Element2, +LoRA Alpaca)") == "LLM-Pruner"
    assert method_name("Wanda 2:4") == "Wanda" and method_key("Shortened-PPL") == method_key("Shortened-ppl")
    assert method_name("RIA + channel permutation") == "RIA + channel permutation"


# ------------------------------------------------------------------------------ mean, NAME, best

def test_static_width_at_half_by_method_on_llama_8b():
    """The issue's figures: static width 50 % with LoRA on Llama-3.1-8B — FLAP 33.6 %,
    LLM-Pruner 37.6 %, the family mean 30.3 %; Tyr-the-Pruner's rows (Týr's own 20.0 % and the
    study's 26.4 %) average to 23.2 %."""
    at = lambda method: build_quality_model("lora", method=method).estimate(  # noqa: E731
        "llama-3.1-8b", "static_width", 0.5)
    rows = [r for r in _rows("static_width") if r.sparsity == 0.5]
    assert at(None).value == pytest.approx(sum(r.quality_loss for r in rows) / len(rows))
    assert at(None).value == pytest.approx(0.30336) and at("mean").method.startswith("mean of 4 methods")
    assert at("FLAP").value == pytest.approx(0.336) and at("flap").method == "FLAP"
    assert at("LLM-Pruner").value == pytest.approx(0.3764)
    tyr = [r.quality_loss for r in rows if method_name(r.method) == "Tyr-the-Pruner"]
    assert sorted(tyr) == pytest.approx([0.1998, 0.264])
    assert at("Tyr-the-Pruner").value == pytest.approx(sum(tyr) / 2)
    best = at("best")
    assert best.value == at("Tyr-the-Pruner").value and best.method.startswith("Tyr-the-Pruner (best of 4")


def test_best_is_one_method_not_the_lowest_per_sparsity():
    """Method A is better over the range, B is lower at one sparsity: best follows A's curve
    everywhere (the lowest figure per sparsity would mix them)."""
    obs = [Obs("M-7B", "static_width", 0.25, 0.05, "a", method="A"),
           Obs("M-7B", "static_width", 0.5, 0.10, "a", method="A"),
           Obs("M-7B", "static_width", 0.25, 0.02, "b", method="B"),
           Obs("M-7B", "static_width", 0.5, 0.40, "b", method="B")]
    best = QualityModel("lora", "accuracy_drop", "prior", obs, [], method="best")
    e = best.estimate("M-7B", "static_width", 0.25)
    assert e.value == pytest.approx(0.05) and e.method.startswith("A (best of 2")
    assert best.estimate("M-7B", "static_width", 0.5).value == pytest.approx(0.10)
    lowest = QualityModel("lora", "accuracy_drop", "prior", obs, [], aggregate="lowest")
    assert lowest.estimate("M-7B", "static_width", 0.25).value == pytest.approx(0.02)  # not best
    # a method compared where every method has rows: B alone to 0.25 would win by its one point
    obs2 = obs[:2] + [Obs("M-7B", "static_width", 0.25, 0.04, "c", method="C")]
    m = QualityModel("lora", "accuracy_drop", "prior", obs2, [], method="best")
    assert m.estimate("M-7B", "static_width", 0.5).method.startswith("C (best of 2 methods: lowest mean loss over 0–25%)")


def test_a_named_method_sets_its_family_only_and_unknown_names_are_refused():
    qm = build_quality_model("lora", method="best,FLAP")
    assert qm.method_for("static_width") == method_key("FLAP") and qm.method_for("low_rank") == "best"
    assert qm.estimate("llama-3.1-8b", "low_rank", 0.5).method == "Dobi-SVD"
    with pytest.raises(UserError, match="unknown quality method 'Nope'.*choose mean, best or one of"):
        build_quality_model("lora", method="Nope")
    with pytest.raises(UserError, match="two methods of static_width"):
        build_quality_model("lora", method="FLAP,LLM-Pruner")
    with pytest.raises(UserError, match="a method of the literature priors"):
        build_quality_model(measured_rows=[("m", "static_depth", 0.25, 0.1)], method="FLAP")
    # a method of another protocol is not offered under this one
    with pytest.raises(UserError, match="unknown quality method 'ShortGPT'"):
        build_quality_model("lora", method="ShortGPT")
    assert build_quality_model("training-free", method="ShortGPT").method_for("static_depth") == "shortgpt"


def test_every_recommendation_names_its_method(tmp_path):
    out = tmp_path / "r.json"
    r = run_cli("recommend", "--model", "llama-3.1-8b", "--gpu", "h200-sxm", "--quality-method", "best",
                "--strategies", "families", "--json", str(out))
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    for ph in ("prefill", "decode"):
        rec = doc["recommendations"][ph]
        assert rec["strategy"] != "dense" and rec["quality_method"]
        assert f"(quality: {rec['quality_method']})" in rec["reason"]
    assert doc["quality"]["method"] == "best"
    assert doc["quality"]["curves"]["static_width"]["method"].startswith("Tyr-the-Pruner")
    assert "quality method:" in r.stdout


# ------------------------------------------------------------------------------ the borrowing rule

def test_a_smaller_model_never_loses_less_than_a_larger_one_of_its_line():
    """qwen2.5-0.5b has no static-width rows: it borrows LLaMA-7B's (nearest in size), whose one
    20 % point extrapolates to 12.6 % at 50 %; Llama-3.1-8B, larger and of that line, has its
    own 30.3 % there: the borrowed figure is raised to it."""
    qm = build_quality_model("lora")
    own = qm.estimate("llama-3.1-8b", "static_width", 0.5)
    e = qm.estimate("qwen2.5-0.5b", "static_width", 0.5)
    assert e.value == pytest.approx(own.value) and e.floored_by == "Llama-3.1-8B"
    assert e.borrowed_from == "Llama-3.1-8B" and not e.extrapolated
    assert "LLaMA-7B's curve gives 12.6% extrapolated" in e.note
    # at every sparsity the floor holds and the curve still never falls
    vals = []
    for s in (0.1, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8):
        x = qm.estimate("qwen2.5-0.5b", "static_width", s)
        ref = qm.estimate("llama-3.1-8b", "static_width", min(s, 0.5))
        assert x.value >= ref.value - 1e-12
        vals.append(x.value)
    assert vals == sorted(vals)
    # past the larger model's data the figure is its last one: a lower bound, still extrapolated
    beyond = qm.estimate("qwen2.5-0.5b", "static_width", 0.6)
    assert beyond.extrapolated and "a lower bound" in beyond.note


def test_the_rule_does_not_touch_own_data_or_larger_models():
    qm = build_quality_model("lora")
    own = qm.estimate("llama-3.1-8b", "static_depth", 0.25)
    assert own.floored_by is None and own.borrowed_from is None
    big = qm.estimate("llama-3.1-70b", "static_width", 0.5)  # borrows; no larger model has data
    assert big.borrowed_from and big.floored_by is None


def test_qwen_recommend_no_longer_ranks_a_borrowed_extrapolated_point(tmp_path):
    out = tmp_path / "r.json"
    r = run_cli("recommend", "--model", "qwen2.5-0.5b", "--gpu", "h200-sxm", "--json", str(out))
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    by = {(x["strategy"], x["sparsity"], x["phase"]): x for x in doc["results"]}
    w = by[("static_width", 0.5, "prefill")]
    assert w["quality_flags"]["floored_by"] == "Llama-3.1-8B" and w["quality_loss"] == pytest.approx(0.30336)
    for ph in ("prefill", "decode"):
        rec = doc["recommendations"][ph]
        assert not rec["flags"]["extrapolated"]


# ------------------------------------------------------------------------------ extrapolated: shown, not ranked

def test_extrapolated_points_are_shown_but_skipped_unless_allowed(tmp_path):
    """Static depth at 62.5 % lies past every curve's data (50 %): its 40.8 % loss is
    extrapolated, so within a 50 % budget it is listed, not recommended; --allow-extrapolated
    ranks it."""
    args = ("recommend", "--model", "llama-3.1-8b", "--gpu", "h200-sxm", "--strategies", "static_depth",
            "--sparsities", "0.625", "--budget", "0.5", "--phase", "prefill")
    out = tmp_path / "a.json"
    r = run_cli(*args, "--json", str(out))
    assert r.returncode == 0, r.stderr
    rec = json.loads(out.read_text())["recommendations"]["prefill"]
    assert rec["strategy"] == "dense" and "extrapolated" in rec["reason"]
    assert [(x["strategy"], x["sparsity"]) for x in rec["skipped_extrapolated"]] == [("static_depth", 0.625)]
    assert "--allow-extrapolated" in rec["reason"] and rec["allow_extrapolated"] is False
    r = run_cli(*args, "--allow-extrapolated", "--json", str(out))
    rec = json.loads(out.read_text())["recommendations"]["prefill"]
    assert rec["strategy"] == "static_depth" and rec["flags"]["extrapolated"] and rec["allow_extrapolated"]
    # the frontier leaves it out the same way
    r = run_cli("frontier", *args[1:9], "--json", "-")
    front = json.loads(r.stdout)["frontier"]["prefill"]
    assert [p["strategy"] for p in front] == ["dense"]
    r = run_cli("frontier", *args[1:9], "--allow-extrapolated", "--json", "-")
    assert [p["strategy"] for p in json.loads(r.stdout)["frontier"]["prefill"]] == ["dense", "static_depth"]


def test_rounding_past_the_last_point_is_no_extrapolation():
    """Low rank's 50 % of llama-3.1-8b removes 50.03 % (ranks rounded to 8): that reads the
    50 % point; 0.6 percentage points past it is an extrapolation."""
    from pis_tui.model.spec import load_model_spec
    from pis_tui.quality.curves import EDGE_TOL
    from pis_tui.model.scenario import Scenario
    from pis_tui.families.strategy import Strategy
    from pis_tui.families.phase_ops import build_phase_ops

    a = build_phase_ops(load_model_spec("llama-3.1-8b"), Strategy("low_rank", 0.5), Scenario(),
                        "prefill").achieved_sparsity
    assert 0.5 < a < 0.5 + EDGE_TOL
    qm = build_quality_model("lora")
    at = qm.estimate("llama-3.1-8b", "low_rank", a)
    assert not at.extrapolated and at.value == pytest.approx(0.2046)
    past = qm.estimate("llama-3.1-8b", "low_rank", 0.5 + EDGE_TOL + 0.001)
    assert past.extrapolated and past.value > 0.2046


def test_the_explorer_command_takes_a_quality_method():
    """``pis-tui tui --quality-method``: an unknown method is refused before the screen opens
    (one line, exit 2); a known one passes to the explorer (here: no terminal)."""
    bad = run_cli("tui", "--quality-method", "no-such-pruner", "--no-restore")
    assert bad.returncode == 2 and "unknown quality method 'no-such-pruner'" in bad.stderr
    assert len([x for x in bad.stderr.splitlines() if x.strip()]) == 1
    for method in ("best", "FLAP", "ShortGPT"):  # ShortGPT: a training-free method
        ok = run_cli("tui", "--quality-method", method, "--no-restore")
        assert ok.returncode == 2 and "needs a terminal" in ok.stderr, (method, ok.stderr)
    wrong = run_cli("tui", "--quality-method", "ShortGPT", "--protocol", "lora", "--no-restore")
    assert wrong.returncode == 2 and "unknown quality method 'ShortGPT'" in wrong.stderr


# ------------------------------------------------- docs/accuracy.md's comparison with the study

@pytest.mark.parametrize("engine,method,winners", [
    ("eager", "best", ("static_depth", "dynamic_depth", "dynamic_depth")),
    ("fused", "best", ("static_depth", "dynamic_depth", "static_width")),  # the study's three
    ("fused", "mean", ("static_depth", "dynamic_depth", "dynamic_depth")),  # the family mean: 30.3 %
])
def test_which_family_wins_at_3_16_27_percent(engine, method, winners):
    """docs/accuracy.md's table: llama-3.1-8b, LoRA, prefill 8 × 1024 on h200-sxm, families only, the
    fastest point within each budget whose quality is not extrapolated."""
    from pis_tui import families
    from pis_tui.decide.sweep import sweep
    from pis_tui.model.scenario import Scenario

    qm = build_quality_model("lora", method=method)
    r = sweep("llama-3.1-8b", "h200-sxm", Scenario(8, 1024, 16, 1024, "bf16", engine),
              families.pruned(), quality=qm, phases=("prefill",))
    got = []
    for budget in (0.03, 0.16, 0.27):
        ok = [p for p in r.points if p.strategy != "dense" and p.quality.value is not None
              and p.quality.value <= budget + 1e-9 and not p.quality.extrapolated]
        got.append(max(ok, key=lambda p: p.speedup).strategy)
    assert tuple(got) == winners
    sw = next(p for p in r.points if p.strategy == "static_width" and p.sparsity == 0.5)
    assert sw.quality.value == pytest.approx(0.2319 if method == "best" else 0.30336, abs=1e-4)
