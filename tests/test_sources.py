"""Timing sources: one definition, ranked once, the same words in docs/engines.md and the schema."""

import re

from pis_tui.present.export import build_schema

from helpers import ROOT


def test_readme_source_table_matches_the_one_definition():
    from pis_tui.pricing.sources import SOURCES, TIMING_SOURCES, weakest

    text = (ROOT / "docs" / "engines.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `([a-z]+)` \| (.+) \|$", text, re.M))
    for name, meaning in SOURCES:
        assert rows.get(name) == meaning, name
    assert build_schema()["$defs"]["timing_source"]["enum"] == list(TIMING_SOURCES)
    assert weakest(["measured", "roofline", "interpolated"]) == "roofline"
    assert weakest(["measured", "unstable"]) == "unstable"


def test_a_phase_takes_its_weakest_op_source():
    from pis_tui.pricing.estimator import Estimator
    from pis_tui.device.choose import load_gpu
    from pis_tui.model.spec import load_model_spec
    from pis_tui.model.scenario import Scenario
    from pis_tui.families.strategy import Strategy
    from pis_tui.families.phase_ops import build_phase_ops

    spec = load_model_spec("qwen2.5-0.5b")
    po = build_phase_ops(spec, Strategy("dense"), Scenario(), "decode")
    gemm = next(o for o in po.ops if o.op_type == "gemm")
    rec = {"key": gemm.key(), "op": gemm, "ms": 0.01}
    est = Estimator(load_gpu("h200-sxm"), [rec]).estimate(po)
    assert est.source_counts["measured"]["ops"] >= 1 and est.timing_source == "roofline"
