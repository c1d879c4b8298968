"""The explorer's Plan tab (`4`): computed in a worker from the backend, re-ranked without
re-pricing, its inputs checked on the spot, exported in the JSON and as CSV."""

from __future__ import annotations

import json

import jsonschema
import pytest
from textual.widgets import Input, Select, Static

from pis_tui.errors import PisError
from pis_tui.present.export import load_schema
from pis_tui.tui.app import PisApp
from pis_tui.tui.backend import Backend, Choices, PlanInputs
from pis_tui.tui.export_dialog import ExportDialog
from pis_tui.tui.plan_chart import PlanChart
from pis_tui.tui.plan_inputs import PlanInputsBar
from pis_tui.tui.plan_panel import PlanPanel
from test_tui import BIG, make_app, run, started, until


async def planned(app, pilot, n=1):
    await until(pilot, lambda: app.plans_done >= n and not app._planning, what=f"plan {n}")
    await pilot.pause(0.05)


async def open_plan(app, pilot):
    """After the first sweep, the Plan tab with its first plan."""
    await started(app, pilot)
    await pilot.press("4")
    await planned(app, pilot)


async def export(app, pilot, key: str, path) -> str:
    """Export through the dialog `key` opens; returns the name it offered."""
    await pilot.press(key)
    await until(pilot, lambda: isinstance(app.screen, ExportDialog), what="dialog")
    offered = app.screen.query_one(Input).value
    app.screen.query_one(Input).value = str(path)
    await pilot.press("enter")
    await until(pilot, lambda: app.last_export == str(path.resolve()), what="export")
    return offered


def panel(app) -> str:
    return app.query_one(PlanPanel).plain


def test_plan_tab_plans_once_and_reranks_without_repricing(tmp_path):
    async def go():
        app, be = make_app(tmp_path)
        async with app.run_test(size=BIG) as pilot:
            await started(app, pilot)
            assert be.planned == []  # nothing is planned before the tab is opened
            await pilot.press("4")
            await planned(app, pilot)
            ps = app.plan_snapshot
            assert len(be.planned) == 1 and ps.rec.best is not None
            assert panel(app).startswith(f"▶ {ps.name(ps.rec.best)}")
            assert "fits" in panel(app) and "free@32" in panel(app) and "dense" in panel(app)
            assert "may serve" in app.query_one(PlanChart).summary
            assert not app.query_one("#recs").display  # the per-phase panels give way
            # the budget re-ranks the plan, nothing is priced again
            before = ps.rec.best
            await pilot.press(*["plus"] * 10)
            await pilot.pause(0.2)
            assert len(be.planned) == 1 and app.plan_snapshot.rec.budget == pytest.approx(0.20)
            assert app.plan_snapshot.gain(app.plan_snapshot.rec.best) >= ps.gain(before)
            # so does the objective
            app.query_one("#plan-objective", Select).value = "throughput"
            await until(pilot, lambda: app.plan_snapshot.rec.objective == "throughput", what="re-rank")
            assert len(be.planned) == 1 and "tok/s" in panel(app)
            # a new workload is priced again
            app.query_one("#plan-preset", Select).value = "rag"
            await planned(app, pilot, 2)
            assert len(be.planned) == 2 and be.planned[-1][1].prompt_len == 8192
            assert app.query_one("#plan-prompt", Input).value == "8192"
            assert "rag 8192→256 ×8" in app.query_one(PlanPanel).border_title
            await pilot.press("1")
            await pilot.pause(0.1)
            assert app.query_one("#recs").display
            # choices changed on another tab: the plan follows when its tab is opened again
            app.set_choice("model", "qwen2.5-0.5b")
            await until(pilot, lambda: app.snapshot.choices.model == "qwen2.5-0.5b", what="re-sweep")
            assert len(be.planned) == 2
            await pilot.press("4")
            await planned(app, pilot, 3)
            assert be.planned[-1][0].model == "qwen2.5-0.5b"
    run(go())


def test_typed_workload_fields_are_checked_on_the_spot(tmp_path):
    async def go():
        app, be = make_app(tmp_path)
        async with app.run_test(size=BIG) as pilot:
            await open_plan(app, pilot)
            err = app.query_one("#plan-error", Static)

            def typed(**fields) -> str:
                for wid, text in fields.items():
                    app.query_one(f"#plan-{wid}", Input).value = text
                app.query_one(PlanInputsBar).apply_fields()
                return str(err.render())

            assert "cannot be met by any model" in typed(ttft="0") and err.display
            assert "give a number of milliseconds" in typed(ttft="abc")
            assert "at once must be 1" in typed(ttft="", conc="-3")
            assert len(be.planned) == 1  # nothing bad was planned
            typed(conc="64", tpot="9")
            await planned(app, pilot, 2)
            assert not err.display
            inputs = be.planned[-1][1]
            assert inputs.concurrency == 64 and inputs.tpot_ms == 9.0 and inputs.preset == "chat"
            assert app.query_one("#plan-preset", Select).value == "custom"
            assert "TPOT ≤ 9 ms" in app.plan_snapshot.rec.reason or app.plan_snapshot.rec.best is None
    run(go())


def test_the_plan_is_exported_in_the_json_and_as_csv(tmp_path):
    async def go():
        app, be = make_app(tmp_path)
        async with app.run_test(size=BIG) as pilot:
            await open_plan(app, pilot)
            out = tmp_path / "out.json"
            await export(app, pilot, "e", out)
            data = json.loads(out.read_text())
            jsonschema.validate(data, load_schema())
            assert data["plan"]["recommended"]["strategy"] == app.plan_snapshot.rec.best.strategy
            csv_out = tmp_path / "plan.csv"
            name = await export(app, pilot, "E", csv_out)
            assert "pis-tui-plan-" in name and name.endswith(".csv")
            lines = csv_out.read_text().splitlines()
            assert lines[0].startswith("strategy,sparsity,achieved_sparsity,class,")
            assert len(lines) == 1 + len(app.plan_snapshot.result.candidates)
    run(go())


def test_a_plan_that_fails_is_shown_not_raised(tmp_path):
    async def go():
        app, be = make_app(tmp_path)
        async with app.run_test(size=BIG) as pilot:
            await open_plan(app, pilot)
            app.set_choice("model", "broken")
            await pilot.pause(0.5)
            assert "refuses" in str(app.query_one("#plan-error", Static).render())
            assert app.plan_snapshot.choices.model == "llama-3.1-8b"  # the last good plan stays
    run(go())


def test_the_real_backend_plans_and_names_the_field_at_fault(tmp_path):
    be = Backend(cache_path=str(tmp_path / "c.duckdb"))
    ps = be.plan(Choices(), PlanInputs())
    assert ps.result.spec.name == "llama-3.1-8b" and ps.rec.best is not None
    assert ps.result.dense.classes[0].max_sequences == 498  # see test_plan's hand computation
    with pytest.raises(PisError) as e:
        be.plan(Choices(), PlanInputs(preset="nope"))
    assert e.value.field == "plan"
    with pytest.raises(PisError) as e:
        be.plan(Choices(gpu="no-such-gpu"), PlanInputs())
    assert e.value.field == "gpu"


def test_plan_help_and_palette_say_key_4():
    from pis_tui.tui.help_screen import HELP
    from pis_tui.tui.palette import ACTIONS

    assert "| `4` | Plan" in HELP and any(a == "tab('plan')" for _, _, a in ACTIONS)
    assert any(b.key == "4" and b.action == "tab('plan')" for b in PisApp.BINDINGS)
