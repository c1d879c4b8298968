"""Quality priors, interpolation, borrowing, user file and measured rows (pis_tui.quality.model)."""

from __future__ import annotations


import pytest

from pis_tui.errors import UserError
from pis_tui import families
from pis_tui.quality.model import build_quality_model
from pis_tui.quality.priors import literature_path, load_priors, load_user_csv, normalize_model_name

FAMILIES = families.names()
PRUNED = [f for f in FAMILIES if f != "dense"]
MODELS = ["llama-3.1-8b", "qwen2.5-7b", "llama-3.2-1b", "mistral-7b-v0.3", "llama-3.1-70b",
          "qwen2.5-0.5b", "some-org/unknown-model"]
GRID = [i / 200 for i in range(0, 191)]  # 0 … 0.95


def _curve_rows(protocol, metric, model, family):
    return [r for r in load_priors() if r.on_curve and r.protocol == protocol and r.metric == metric
            and r.model == model and r.family == family and r.quality_loss is not None]


# --------------------------------------------------------------------------- shipped data

def test_every_prior_row_is_cited_and_well_formed():
    rows = load_priors()
    assert len(rows) > 100
    for r in rows:
        assert r.citation.strip(), r
        assert r.family in FAMILIES and r.family != "dense"
        assert r.protocol in ("lora", "training-free", "trained", "unknown")
        assert r.metric in ("accuracy_drop", "ppl_increase")
        assert (r.metric == "accuracy_drop") == (r.metric_kind == "accuracy")
        assert 0 < r.sparsity < 1
        assert r.secondary == ("secondary" in r.citation.lower())
        if "[uncertain]" in r.citation:
            assert r.uncertain
        if r.on_curve:
            assert r.quality_loss is not None
        if r.quality_loss is not None and r.dense is not None and r.pruned is not None:
            calc = ((r.dense - r.pruned) if r.metric_kind == "accuracy" else (r.pruned - r.dense)) / r.dense
            assert calc == pytest.approx(r.quality_loss, abs=1e-3)


def test_study_table2_means_shipped_and_secondary():
    study = [r for r in load_priors() if r.citation.startswith("Beyond FLOPs") and r.protocol == "lora"]
    fams = {r.family for r in study if r.on_curve}
    assert {"static_depth", "dynamic_depth", "static_width", "semi_structured_24", "low_rank",
            "dynamic_sparse_attention"} <= fams
    assert all(r.secondary for r in study)
    assert all(r.model == "Llama-3.1-8B" for r in study)
    # the per-method points behind the family means are kept but not averaged in twice
    assert any(not r.on_curve for r in study)


def test_priors_are_cached_and_read_from_profiles():
    assert "profiles" in str(literature_path()) and "shared" not in str(literature_path())
    a, b = load_priors(), load_priors()
    assert a == b and a[0] is b[0]


# --------------------------------------------------------------------------- estimates

@pytest.mark.parametrize("protocol", ["lora", "training-free"])
def test_curves_are_monotone_zero_at_zero_and_bounded(protocol):
    qm = build_quality_model(protocol)
    for model in MODELS:
        for fam in PRUNED:
            vals = [qm.estimate(model, fam, s).value for s in GRID]
            if vals[1] is None:
                assert all(v is None for v in vals[1:])
                continue
            assert vals[0] == 0.0
            for a, b in zip(vals, vals[1:]):
                assert b >= a - 1e-12, (model, fam)
            assert all(0.0 <= v <= 1.0 for v in vals)


def test_dense_and_zero_sparsity_cost_nothing():
    for protocol in ("lora", "training-free"):
        qm = build_quality_model(protocol)
        for model in MODELS:
            e = qm.estimate(model, "dense", 0.0)
            assert e.value == 0.0 and e.metric == "accuracy_drop"
            assert qm.estimate(model, "static_depth", 0.0).value == 0.0


def test_knots_reproduce_the_mean_of_the_shipped_rows():
    for protocol in ("lora", "training-free"):
        qm = build_quality_model(protocol)
        for fam in ("static_depth", "static_width"):
            rows = _curve_rows(protocol, "accuracy_drop", "Llama-3.1-8B", fam)
            assert rows
            by_s = {}
            for r in rows:
                by_s.setdefault(round(r.sparsity, 6), []).append(max(0.0, r.quality_loss))
            means = {s: sum(v) / len(v) for s, v in by_s.items()}
            info = qm.curve_info("llama-3.1-8b", fam)
            assert info["n_points"] == len(rows) and info["borrowed_from"] is None
            knots = dict(info["knots"])
            for s, m in means.items():
                # equal unless the isotonic fit had to pool a dip
                if all(means[t] <= m for t in means if t < s) and all(means[t] >= m for t in means if t > s):
                    assert knots[s] == pytest.approx(m)


def test_aggregate_lowest_is_the_lowest_figure():
    qm = build_quality_model("training-free", aggregate="lowest")
    rows = [r for r in _curve_rows("training-free", "accuracy_drop", "Llama-3.1-8B", "static_width")
            if r.sparsity == 0.125]
    e = qm.estimate("llama-3.1-8b", "static_width", 0.125)
    assert e.value == pytest.approx(min(r.quality_loss for r in rows))
    assert len(e.citations) == 1


def test_extrapolation_is_flagged_and_not_optimistic():
    qm = build_quality_model("lora")
    info = qm.curve_info("llama-3.1-8b", "static_depth")
    top = info["max_sparsity"]
    inside = qm.estimate("llama-3.1-8b", "static_depth", top)
    beyond = qm.estimate("llama-3.1-8b", "static_depth", min(0.95, top + 0.2))
    assert not inside.extrapolated and beyond.extrapolated
    assert beyond.value >= inside.value
    assert "extrapolated" in beyond.note


def test_borrowing_is_noted_and_prefers_the_same_line():
    qm = build_quality_model("lora")
    e = qm.estimate("qwen2.5-7b", "static_depth", 0.25)
    assert e.borrowed_from == "Llama-3.1-8B"
    assert "quality borrowed from Llama-3.1-8B" in e.note
    own = qm.estimate("llama-3.1-8b", "static_depth", 0.25)
    assert own.borrowed_from is None and e.value == own.value
    # an HF id of the same model is the same model
    assert qm.estimate("meta-llama/Llama-3.1-8B", "static_depth", 0.25).borrowed_from is None
    # training-free static depth has Llama-3.1-8B, Llama-3-8B and Llama-2-7B rows:
    # a Llama-3.2 borrows within its generation, not from the 7B of Llama-2
    tf = build_quality_model("training-free")
    assert tf.estimate("llama-3.2-1b", "static_depth", 0.25).borrowed_from == "Llama-3.1-8B"


def test_normalize_model_name():
    assert normalize_model_name("meta-llama/Meta-Llama-3.1-8B") == "llama-3.1-8b"
    assert normalize_model_name("Llama-3.1-8B") == normalize_model_name("llama-3.1-8b")
    assert normalize_model_name("Qwen/Qwen2.5-7B") == "qwen-2.5-7b"
    assert normalize_model_name("/models/llama3-8b/") == "llama-3-8b"


def test_families_without_data_say_so():
    qm = build_quality_model("lora")
    e = qm.estimate("llama-3.1-8b", "unstructured", 0.5)
    assert e.value is None and e.note == "no lora accuracy data for unstructured"
    tf = build_quality_model("training-free")
    e = tf.estimate("llama-3.1-8b", "dynamic_depth", 0.25)
    assert e.value is None and e.note == "no training-free accuracy data for dynamic_depth"
    assert tf.curve_info("llama-3.1-8b", "dynamic_depth")["n_points"] == 0


def test_protocols_and_metrics_never_mix():
    for protocol in ("lora", "training-free"):
        qm = build_quality_model(protocol)
        allowed = {r.citation for r in load_priors() if r.protocol == protocol and r.metric == "accuracy_drop"}
        for fam in PRUNED:
            for model in ("llama-3.1-8b", "qwen2.5-7b"):
                for s in (0.1, 0.25, 0.5, 0.8):
                    e = qm.estimate(model, fam, s)
                    if e.value is not None and s > 0:
                        assert e.citations and set(e.citations) <= allowed
                        assert e.protocol == protocol and e.source == "prior"
    a = build_quality_model("lora").estimate("llama-3.1-8b", "static_width", 0.5).value
    b = build_quality_model("training-free").estimate("llama-3.1-8b", "static_width", 0.5).value
    assert a != b
    ppl = build_quality_model("training-free", metric="ppl_increase")
    e = ppl.estimate("llama-3.1-8b", "unstructured", 0.5)
    assert e.metric == "ppl_increase" and e.value is not None
    assert set(e.citations) <= {r.citation for r in load_priors() if r.metric == "ppl_increase"}


def test_secondary_flag_follows_the_rows_behind_the_value():
    lora = build_quality_model("lora").estimate("llama-3.1-8b", "static_depth", 0.25)
    assert lora.secondary  # the study's Table 2 is quoted from summaries
    tf = build_quality_model("training-free")
    rows = _curve_rows("training-free", "accuracy_drop", "Llama-3.1-8B", "static_width")
    at = [r for r in rows if r.sparsity == 0.125]
    e = tf.estimate("llama-3.1-8b", "static_width", 0.125)
    assert e.secondary == any(r.secondary or r.uncertain for r in at)


def test_unknown_strategy_and_protocol_are_user_errors():
    with pytest.raises(UserError):
        build_quality_model("lora").estimate("llama-3.1-8b", "depthwise", 0.25)
    with pytest.raises(UserError):
        build_quality_model("finetuned")


# --------------------------------------------------------------------------- user file

def _write(tmp_path, text, name="quality.csv"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_user_points_override_priors_for_their_family(tmp_path):
    p = _write(tmp_path, "strategy,sparsity,quality_loss,model,note\n"
                         "static_depth,12.5%,1%,,our eval\n"
                         "static_depth,0.25,0.02,,\n"
                         "low_rank,0.25,0.05,llama-3.1-8b,\n")
    rows = load_user_csv(p)
    assert [r.line for r in rows] == [2, 3, 4]
    assert rows[0].sparsity == pytest.approx(0.125) and rows[0].quality_loss == pytest.approx(0.01)
    qm = build_quality_model("lora", user_csv=p)
    e = qm.estimate("qwen2.5-7b", "static_depth", 0.25)
    assert e.source == "user" and e.value == pytest.approx(0.02) and e.borrowed_from is None
    assert "our eval" in qm.estimate("qwen2.5-7b", "static_depth", 0.125).note
    mid = qm.estimate("qwen2.5-7b", "static_depth", 0.1875).value
    assert 0.01 < mid < 0.02
    assert qm.estimate("qwen2.5-7b", "static_depth", 0.5).extrapolated
    # model-specific row: only for that model
    assert qm.estimate("llama-3.1-8b", "low_rank", 0.25).source == "user"
    assert qm.estimate("qwen2.5-7b", "low_rank", 0.25).source == "prior"
    # families the file does not name keep their priors
    assert qm.estimate("llama-3.1-8b", "static_width", 0.25).source == "prior"


@pytest.mark.parametrize("text, needle", [
    ("strategy,sparsity,quality_loss\nstatic_depth,0.25,0.1\nstatic_depth,0.5,0.2\nstatic_width,abc,0.1\n",
     "line 4: sparsity 'abc' is not a number"),
    ("strategy,sparsity,quality_loss\nstatic_dept,0.25,0.1\n", "line 2: unknown strategy 'static_dept'"),
    ("strategy,sparsity,quality_loss\nstatic_depth,1.5,0.1\n", "line 2: sparsity 1.5 is outside"),
    ("strategy,sparsity,quality_loss\nstatic_depth,0.25,12\n", "line 2: quality_loss 12 is outside"),
    ("strategy,sparsity,quality_loss\nstatic_depth,0.25,\n", "line 2: quality_loss is empty"),
    ("strategy,sparsity\nstatic_depth,0.25\n", "line 1: missing column(s) quality_loss"),
    ("", "empty file"),
    ("strategy,sparsity,quality_loss\n", "no data rows"),
    ("strategy,sparsity,quality_loss\n\nstatic_depth,0.25,0.1,extra\n", "line 3: 4 fields"),
    ("strategy,sparsity,quality_loss\ndense,0.25,0.1\n", "line 2: dense has no loss"),
])
def test_user_file_errors_name_the_line(tmp_path, text, needle):
    p = _write(tmp_path, text)
    with pytest.raises(UserError) as ei:
        load_user_csv(p)
    assert needle in str(ei.value)
    assert "quality.csv" in str(ei.value)


def test_user_file_missing_is_a_user_error(tmp_path):
    with pytest.raises(UserError):
        load_user_csv(tmp_path / "nope.csv")


# --------------------------------------------------------------------------- measured

def test_measured_rows_switch_to_perplexity_and_use_only_them():
    rows = [("tiny", "static_depth", 0.25, 0.30), ("tiny", "static_depth", 0.5, 1.2),
            {"model": "tiny", "strategy": "low_rank", "sparsity": 0.25, "ppl_increase": 0.1}]
    qm = build_quality_model(measured_rows=rows)
    e = qm.estimate("tiny", "static_depth", 0.25)
    assert e.metric == "ppl_increase" and e.source == "measured" and e.value == pytest.approx(0.30)
    assert qm.estimate("tiny", "static_width", 0.25).value is None
    assert qm.estimate("tiny", "dense", 0.0).metric == "ppl_increase"
    with pytest.raises(UserError):
        build_quality_model(measured_rows=rows, user_csv="x.csv")


def test_oracle_rows_are_flagged_and_rank_below_measured_rows_of_the_same_point():
    # pis-tui quality measures the dynamic families on an oracle (every update computed, then
    # skipped): its rows note so, and their figure is an upper bound on quality, never
    # "measured here" without a caveat; a measured row of the same point wins over it
    from pis_tui.display import flag_words, quality_marks
    from pis_tui.quality.measured import ORACLE_RULE

    oracle = "oracle: smallest-norm sublayer updates zeroed per token"
    rows = [{"model": "m", "strategy": "dynamic_depth", "sparsity": 0.25, "ppl_increase": 0.1,
             "note": oracle},
            {"model": "m", "strategy": "dynamic_depth", "sparsity": 0.5, "ppl_increase": 0.4,
             "note": oracle},
            {"model": "m", "strategy": "dynamic_depth", "sparsity": 0.5, "ppl_increase": 0.6,
             "oracle": False, "note": "a learned router"},
            {"model": "m", "strategy": "dynamic_sparse_attention", "sparsity": 0.25,
             "ppl_increase": 0.02, "oracle": True},
            ("m", "static_depth", 0.25, 0.3)]
    qm = build_quality_model(measured_rows=rows)
    e = qm.estimate("m", "dynamic_depth", 0.25)  # only the oracle measured it: used, flagged
    assert e.value == pytest.approx(0.1) and e.oracle and "ᵒ" in quality_marks(e)
    assert "oracle" in e.method and "upper bound" in e.note
    assert any("upper bound" in w for w in flag_words(e))
    both = qm.estimate("m", "dynamic_depth", 0.5)  # measured and oracle: the measured one
    assert both.value == pytest.approx(0.6) and not both.oracle and "ᵒ" not in quality_marks(both)
    assert qm.estimate("m", "dynamic_sparse_attention", 0.25).oracle
    plain = qm.estimate("m", "static_depth", 0.25)
    assert not plain.oracle and plain.method == "measured here"
    assert "has both, the measured figure is used" in ORACLE_RULE
    assert "only where nothing else is measured" in ORACLE_RULE and "upper bound" in ORACLE_RULE
    # a row without a note or flag: its family's quality path says (the dynamic ones are oracles)
    bare = build_quality_model(measured_rows=[("m", "dynamic_depth", 0.25, 0.1)])
    assert bare.estimate("m", "dynamic_depth", 0.25).oracle
    # a combination measured with an oracle part, and one composed from an oracle part
    combo = build_quality_model(measured_rows=[
        {"model": "m", "strategy": "dynamic_depth@0.25+static_width@0.25", "sparsity": 0.4375,
         "ppl_increase": 0.5, "note": "dynamic_depth 0.25: " + oracle},
        ("m", "static_width", 0.25, 0.3), ("m", "dynamic_depth", 0.125, 0.05)])
    parts = (("dynamic_depth", 0.25), ("static_width", 0.25))
    q = combo.estimate_combo("m", "dynamic_depth+static_width", parts, (0.25, 0.25))
    assert q.source == "measured" and q.oracle and "upper bound" in q.note
    q = combo.estimate_combo("m", "dynamic_depth+static_width",
                             (("dynamic_depth", 0.125), ("static_width", 0.25)), (0.125, 0.25))
    assert q.composed and q.oracle and "ᵒ" in quality_marks(q)
