"""The family registry: one module per family, every list of families derived from it."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import jsonschema
import pytest

from pis_tui import families
from pis_tui.errors import UserError
from pis_tui.present.export import SCHEMA_PATH, build_schema, load_schema, schema_text
from pis_tui.families import Family
from pis_tui.model.spec import load_model_spec
from pis_tui.model.ops import Gemm
from pis_tui.model.scenario import Scenario
from pis_tui.families.strategy import Strategy, strategies_grid
from pis_tui.families.phase_ops import build_phase_ops

from helpers import ROOT


class ToyHalfMLP(Family):
    """A toy family for the tests: MLP channels halved whatever the sparsity, nothing else."""

    name = "toy_half_mlp"
    label = "toy half MLP"
    axis = "static N (toy)"
    description = "the MLP's channels halved (a test family)"
    mark, color, short = "T", (10, 20, 30), "toy"

    def shape(self, ctx, plan):
        plan.widths = replace(plan.widths, inter=plan.widths.inter // 2)
        plan.dims.append(("MLP channels", "halved"))

    def achieved_sparsity(self, ctx, plan, ops):
        return 0.5 * 3 * ctx.spec.hidden_size * ctx.spec.intermediate_size / ctx.spec.layer_params()


@pytest.fixture
def toy():
    fam = families.register(ToyHalfMLP())
    try:
        yield fam
    finally:
        families.unregister(fam.name)


def test_builtins_in_display_order():
    assert families.names() == families.BUILTIN
    assert families.pruned() == families.BUILTIN[1:]
    assert [f.name for f in families.all_families() if f.is_baseline] == ["dense"]


def test_every_family_declares_what_is_its_own():
    marks, shorts = set(), set()
    for f in families.all_families():
        assert f.name and f.label and f.axis and f.description and f.short, f
        assert len(f.mark) == 1 and len(f.color) == 3, f
        marks.add(f.mark)
        shorts.add(f.short)
        # real pruning: implemented (its own prune hook) or a reason why not
        assert f.is_baseline or (type(f).prune is not Family.prune) != bool(f.quality_unsupported), f
        lo, hi = 0.0, f.max_sparsity
        assert all(lo < s <= hi for s in f.default_sparsities), f
    assert len(marks) == len(shorts) == len(families.names())


def test_unknown_and_duplicate_names():
    with pytest.raises(UserError, match="unknown strategy 'nope'; choose from dense, static_depth"):
        families.get("nope")
    with pytest.raises(ValueError, match="already registered"):
        families.register(families.get("low_rank"))
    with pytest.raises(ValueError, match="built-in"):
        families.unregister("low_rank")
    with pytest.raises(TypeError):
        families.register(object())


def test_fixed_sparsity_and_grids():
    f24 = families.get("semi_structured_24")
    assert f24.effective_sparsity(0.3) == 0.5 and f24.sparsity_grid((0.25, 0.5)) == (0.5,)
    assert families.get("low_rank").sparsity_grid(None) == (0.125, 0.25, 0.375, 0.5)
    assert families.get("low_rank").sparsity_grid((0.0, 0.3)) == (0.3,)
    grid = strategies_grid(["semi_structured_24", "static_depth"], (0.25,))
    assert [(s.family, s.sparsity) for s in grid] == [("dense", 0.0), ("semi_structured_24", 0.5),
                                                      ("static_depth", 0.25)]


def test_speedup_ceiling_is_the_share_of_work_kept():
    """Static depth at 50% of 32 layers keeps the embedding, final norm and lm_head: with a
    unit of work per op the ceiling is (all ops) / (kept ops), below the naive 2×."""
    spec = load_model_spec("llama-3.1-8b")
    sc = Scenario()
    dense = build_phase_ops(spec, Strategy("dense"), sc, "decode")
    half = build_phase_ops(spec, Strategy("static_depth", 0.5), sc, "decode")
    per_call = lambda o: 0.0 if o.op_type == "overhead" else 1.0  # noqa: E731
    kernels = lambda po: sum(per_call(o) * o.count for o in po.ops)  # noqa: E731
    c = families.get("static_depth").speedup_ceiling(dense.ops, half.ops, per_call)
    assert c == pytest.approx(kernels(dense) / kernels(half)) and 1.9 < c < 2.0
    # by FLOPs (compute-bound roofline) it is the FLOPs ratio
    fl = lambda o: o.flops()  # noqa: E731
    assert families.get("static_depth").speedup_ceiling(dense.ops, half.ops, fl) == pytest.approx(
        sum(o.flops() * o.count for o in dense.ops) / sum(o.flops() * o.count for o in half.ops))
    assert families.get("dense").speedup_ceiling(dense.ops, dense.ops, fl) == 1.0


def test_a_registered_family_shapes_ops_through_the_generic_builder(toy):
    spec = load_model_spec("llama-3.1-8b")
    po = build_phase_ops(spec, Strategy("toy_half_mlp", 0.3), Scenario(), "prefill")
    g = {o.name: o for o in po.ops if isinstance(o, Gemm)}
    assert g["gate_proj"].n == 14336 // 2 and g["down_proj"].k == 14336 // 2
    assert g["q_proj"].n == 4096 and ("MLP channels", "halved") in po.dims
    mlp_share = 3 * 4096 * 14336 / spec.layer_params()
    assert po.achieved_sparsity == pytest.approx(0.5 * mlp_share, abs=1e-6)


def test_a_registered_family_appears_in_sweep_legend_and_schema(toy, tmp_path, capsys):
    from pis_tui.cli import main
    from pis_tui.tui.legend import legend_text

    out = tmp_path / "toy.json"
    rc = main(["sweep", "--model", "qwen2.5-0.5b", "--gpu", "h200-sxm", "--sparsities", "0.5",
               "--json", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "toy_half_mlp" in printed
    data = json.loads(out.read_text())
    assert {"toy_half_mlp", "static_depth"} <= {r["strategy"] for r in data["results"]}
    jsonschema.validate(data, load_schema())  # the generated enum holds the new family
    assert "toy_half_mlp" in build_schema()["$defs"]["family"]["enum"]
    assert "T toy" in legend_text().plain
    families.unregister("toy_half_mlp")
    assert "toy_half_mlp" not in build_schema()["$defs"]["family"]["enum"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, load_schema())
    families.register(toy)  # the fixture removes it again


def test_committed_schema_is_what_the_builtin_families_generate():
    assert SCHEMA_PATH.read_text(encoding="utf-8") == schema_text(build_schema()), \
        "regenerate it: python -m pis_tui.present.export"


def test_readme_taxonomy_table_matches_the_registry():
    text = (ROOT / "docs" / "taxonomy.md").read_text(encoding="utf-8")
    rows = dict((m.group(1), (m.group(2).strip(), m.group(3).strip())) for m in re.finditer(
        r"^\| `([a-z0-9_]+)` \| ([^|]+) \| (.+) \|$", text, re.M))
    for f in families.all_families():
        assert rows.get(f.name) == (f.axis, f.description), f.name


def test_lists_of_families_derive_from_the_registry(toy):
    from pis_tui import validation
    from pis_tui.families.prune import measurable, unsupported
    from pis_tui.commands.quality import parse_strategies
    from pis_tui.quality.model import build_quality_model

    assert "toy_half_mlp" in families.pruned()
    # a family without real pruning says why (the toy inherits the default hook)
    assert "toy_half_mlp" not in measurable()
    assert measurable() == tuple(f for f in families.BUILTIN[1:] if f != "static_width_hidden")
    assert set(unsupported()) == {"static_width_hidden", "toy_half_mlp"}
    assert "no real pruning is implemented" in unsupported()["toy_half_mlp"]
    assert parse_strategies(None)[0] == list(measurable())
    assert validation.standard_families() == ("static_depth", "dynamic_depth", "static_width",
                                              "low_rank")
    assert "toy_half_mlp" in validation.extra_families()
    q = build_quality_model().estimate("llama-3.1-8b", "toy_half_mlp", 0.5)
    assert q.value is None and q.source == "none"  # no data: no figure, no error

