"""Pilot tests of the explorer with a fake fast engine and a fake measuring process."""

from __future__ import annotations

import asyncio
import json
import time

import jsonschema
import pytest
from textual.widgets import DataTable, Input, Select, Static

from pis_tui.present.export import load_schema
from pis_tui.tui.app import PisApp
from pis_tui.tui.backend import Choices, resolve_model
from pis_tui.tui.export_dialog import ExportDialog
from pis_tui.tui.help_screen import HelpScreen
from pis_tui.tui.ops_screen import OpsScreen
from pis_tui.tui.pareto_chart import ParetoChart, nice_ticks
from pis_tui.tui.points_table import COLUMN_KEYS, PointsView
from pis_tui.tui.profile_worker import ProfileRunner
from pis_tui.tui.progress import ProfilePanel
from pis_tui.tui.recommendation_panel import RecommendationPanel
from pis_tui.tui.setup_panel import SetupPanel
from tui_fakes import FAKE_PROFILE, FakeBackend

BIG = (120, 36)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 180))


# Waits are generous: a passing wait returns as soon as its condition holds, and the CI machine
# is a shared 2-core one where a real-backend sweep has taken over 8 s (CI, 2026-12-06).
async def until(pilot, cond, timeout=30.0, what="condition"):
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.05)


async def started(app, pilot):
    await until(pilot, lambda: app.snapshot is not None and not app._sweeping and app._full,
                what="first sweep")
    await pilot.pause(0.05)


async def start_measuring(app, pilot):
    """After the first sweep: pick the local device and press `m` (measure)."""
    await started(app, pilot)
    app.set_choice("gpu", "local")
    await pilot.press("m")


def make_app(tmp_path, **kw):
    settings = kw.pop("settings", None)
    backend = FakeBackend(tmp_path / "measured.txt", settings=settings, **kw)
    return PisApp(backend, restore=True, save_delay=0.05, resweep_interval=0.1), backend


def rec_text(app, phase):
    return app.query_one(f"#rec-{phase}", RecommendationPanel).plain


# ---------------------------------------------------------------- startup and views

def test_startup_draws_charts_table_and_recommendations(tmp_path):
    async def go():
        app, be = make_app(tmp_path)
        async with app.run_test(size=BIG) as pilot:
            await started(app, pilot)
            snap = app.snapshot
            assert be.computed[0].model == "llama-3.1-8b" and be.computed[0].gpu == "h200-sxm"
            for ph in ("prefill", "decode"):
                best = snap.recs[ph].best
                assert best is not None and best.strategy in rec_text(app, ph)
                chart = app.query_one(f"#pareto-{ph}", ParetoChart)
                assert chart._has_data and "points" in chart.summary
            assert app.query_one("#points-table", DataTable).row_count == len(snap.result.points)
            assert "llama-3.1-8b" in app.sub_title and "budget 10.0%" in app.sub_title
            await until(pilot, lambda: app.query_one("#pareto-prefill", ParetoChart).drawn_with_data_at,
                        what="chart drawn")
    run(go())


def test_budget_keys_rerank_instantly_without_resweeping(tmp_path):
    async def go():
        app, be = make_app(tmp_path)
        async with app.run_test(size=BIG) as pilot:
            await started(app, pilot)
            n = len(be.computed)
            before = app.snapshot.recs["prefill"].best
            await pilot.press(*["plus"] * 5)
            await pilot.pause(0.1)
            assert app.choices.budget == pytest.approx(0.15)
            assert len(be.computed) == n, "a budget change must not re-sweep"
            after = app.snapshot.recs["prefill"].best
            assert after.speedup > before.speedup
            assert after.quality.value <= 0.15 + 1e-9
            assert "≤ 15.0%" in app.query_one("#rec-prefill", RecommendationPanel).border_title
            app.set_choice("budget", 0.01)
            await pilot.press("minus", "minus")
            await pilot.pause(0.1)
            assert app.choices.budget == 0.0
            assert "keep the dense model" in rec_text(app, "prefill")
            await until(pilot, lambda: be.saved and be.saved[-1].budget == 0.0, what="saved")
    run(go())


def test_change_model_gpu_and_scenario_resweeps(tmp_path):
    async def go():
        app, be = make_app(tmp_path)
        async with app.run_test(size=BIG) as pilot:
            await started(app, pilot)
            first = app.snapshot
            app.query_one("#model", Select).value = "qwen2.5-0.5b"
            await until(pilot, lambda: app.snapshot.choices.model == "qwen2.5-0.5b", what="model sweep")
            assert "qwen2.5-0.5b" in app.sub_title
            # quality slopes differ for this model: the decode pick changes
            assert app.snapshot.recs["decode"].best != first.recs["decode"].best
            gpu = app.query_one("#gpu", Select)
            gpu.focus()
            await pilot.press("enter", "down", "enter")  # h200-sxm -> a100-80gb
            await until(pilot, lambda: app.snapshot.choices.gpu == "a100-80gb", what="gpu sweep")
            assert "A100-80GB" in app.sub_title
            inp = app.query_one("#decode-batch", Input)
            inp.focus()
            await pilot.press("end", "backspace", "backspace", "6", "4")
            await until(pilot, lambda: app.snapshot.choices.decode_batch == 64, what="scenario sweep")
            # "decode batch 64 @ 1024 · loss ≤ 10.0%" does not fit beside the setup panel
            assert app.query_one("#rec-decode", RecommendationPanel).border_title.startswith(
                "decode 64 @ 1024 · loss ≤ 10.0%")
            await pilot.press("backspace", "backspace", "0")
            await pilot.pause(0.6)
            assert "must be 1" in str(app.query_one("#scenario-error", Static).render())
            assert app.snapshot.choices.decode_batch == 64
    run(go())


def test_typed_model_path_is_validated_on_the_spot(tmp_path):
    cfg = tmp_path / "tiny" / "config.json"
    cfg.parent.mkdir()
    cfg.write_text(json.dumps({"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128,
                               "num_attention_heads": 4, "vocab_size": 100, "model_type": "llama",
                               "architectures": ["LlamaForCausalLM"]}))
    moe = tmp_path / "moe.json"
    moe.write_text(json.dumps({"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128,
                               "num_attention_heads": 4, "vocab_size": 100, "num_local_experts": 8}))

    async def go():
        app, be = make_app(tmp_path)
        async with app.run_test(size=BIG) as pilot:
            await started(app, pilot)
            inp = app.query_one("#model-path", Input)
            err = app.query_one("#model-error", Static)
            for bad, words in ((tmp_path / "nope" / "config.json", "no such file"),
                               (tmp_path, "no config.json"), (moe, "needs at least one expert")):
                inp.focus()
                inp.value = str(bad)
                await pilot.press("enter")
                await pilot.pause(0.05)
                assert words in str(err.render()), str(err.render())
                assert app.choices.model == "llama-3.1-8b"
            inp.value = str(cfg.parent)
            await pilot.press("enter")
            await until(pilot, lambda: app.snapshot.choices.model == str(cfg.parent), what="typed model")
            assert "✓ tiny" in str(err.render())
    run(go())


def test_sweep_error_is_shown_and_last_result_kept(tmp_path):
    async def go():
        app, be = make_app(tmp_path)
        async with app.run_test(size=BIG, notifications=True) as pilot:
            await started(app, pilot)
            good = app.snapshot
            app.set_choice("model", "broken")
            await until(pilot, lambda: app.last_error, what="error")
            assert "refuses" in app.last_error
            assert app.snapshot is good
            assert "refuses" in str(app.query_one("#status", Static).render())
            assert any("refuses" in str(n.message) for n in app._notifications)
            app.set_choice("model", "qwen2.5-0.5b")
            await until(pilot, lambda: app.snapshot.choices.model == "qwen2.5-0.5b")
            assert app.last_error == ""
    run(go())


def test_a_sweep_that_fails_first_says_there_is_no_estimate(tmp_path):
    """Issue 31: TP 4 for qwen2.5-0.5b (4 does not divide its 14 query heads) failed; the
    status line said why but both recommendation panels stayed at "estimating…"."""
    from pis_tui.tui.backend import Backend

    async def go(size):
        app = PisApp(Backend(cache_path=str(tmp_path / "c.duckdb")),
                     Choices(model="qwen2.5-0.5b", gpu="h200-sxm", tp=4), restore=False)
        async with app.run_test(size=size) as pilot:
            await until(pilot, lambda: app.last_error and app._full, what="the failure")
            await pilot.pause(0.1)
            assert "14 query heads" in str(app.query_one("#status", Static).render())
            for ph in ("prefill", "decode"):
                panel = app.query_one(f"#rec-{ph}", RecommendationPanel)
                assert " ".join(panel.plain.split()) == f"{ph}: no estimate (see the status line)"
                assert "estimating" not in str(panel.render())
                assert all(len(ln) <= panel.size.width for ln in panel.plain.splitlines())
            app.set_choice("tp", 2)
            await until(pilot, lambda: app.snapshot is not None, what="recovery")
            await pilot.pause(0.1)
            assert rec_text(app, "prefill").startswith("▶ ")
    run(go(BIG))
    run(go((80, 24)))


def test_last_choices_are_restored(tmp_path):
    saved = Choices(model="qwen2.5-0.5b", gpu="a100-80gb", budget=0.07, decode_batch=32)

    async def go():
        app, be = make_app(tmp_path, settings={"tui.last_choices": saved.to_json()})
        async with app.run_test(size=BIG) as pilot:
            await started(app, pilot)
            assert be.computed[0] == saved
            assert app.query_one("#model", Select).value == "qwen2.5-0.5b"
            assert app.query_one("#decode-batch", Input).value == "32"
            assert "budget 7.0%" in app.sub_title
    run(go())


def test_failed_restored_choices_leave_the_setup_usable(tmp_path):
    """A last session's choice that no longer computes: the error is shown in its field, the
    charts say why they are empty, and fixing the choice in the setup panel recovers."""
    bad = Choices(model="broken", budget=0.07)

    async def go():
        app, be = make_app(tmp_path, settings={"tui.last_choices": bad.to_json()})
        async with app.run_test(size=BIG) as pilot:
            await until(pilot, lambda: app.last_error and app._full, what="setup after a failure")
            assert app.snapshot is None and app.query_one(SetupPanel).display
            status = str(app.query_one("#status", Static).render())
            assert "refuses" in status and "last session" in status
            assert "refuses" in str(app.query_one("#model-error", Static).render())
            assert "cannot compute" in app.query_one("#pareto-prefill", ParetoChart).border_title
            await pilot.press("plus")  # no result to re-rank: nothing pretends to be one
            await pilot.pause(0.2)
            assert app.snapshot is None and "refuses" in str(app.query_one("#status", Static).render())
            app.set_choice("model", "qwen2.5-0.5b")
            await until(pilot, lambda: app.snapshot is not None, what="recovery")
            assert app.last_error == "" and str(app.query_one("#model-error", Static).render()) == ""
        assert Choices.from_json(be.settings["tui.last_choices"]).model == "qwen2.5-0.5b"
        assert all(c.model != "broken" for c in be.saved)  # a failing choice is never kept
    run(go())


def test_a_failed_sweep_is_not_reranked_or_exported_as_current(tmp_path):
    async def go():
        app, be = make_app(tmp_path)
        async with app.run_test(size=BIG) as pilot:
            await started(app, pilot)
            good = app.snapshot
            app.set_choice("gpu", "a100-80gb")
            app.set_choice("model", "broken")
            await until(pilot, lambda: app.last_error, what="error")
            await pilot.press("plus")
            await pilot.pause(0.2)
            assert app.snapshot is good and app.snapshot.choices.gpu == "h200-sxm"
            assert "refuses" in str(app.query_one("#status", Static).render())
            await pilot.press("e")  # what is exported is the result on screen, named after it
            await until(pilot, lambda: isinstance(app.screen, ExportDialog))
            assert app.screen.query_one(Input).value.endswith("pis-tui-llama-3.1-8b-h200-sxm.json")
    run(go())


def test_choices_changed_just_before_quit_are_saved(tmp_path):
    async def go():
        app, be = make_app(tmp_path)
        app.save_delay = 30.0  # the timer never fires before the quit
        async with app.run_test(size=BIG) as pilot:
            await started(app, pilot)
            for _ in range(3):
                await pilot.press("plus")
            await pilot.pause(0.1)
            await pilot.press("q")
        assert Choices.from_json(be.settings["tui.last_choices"]).budget == pytest.approx(0.13)
    run(go())


def test_choices_are_saved_once_and_at_once_with_no_delay(tmp_path):
    async def go():
        app, be = make_app(tmp_path)
        app.save_delay = 0.0  # saved as soon as they compute (the startup benchmark does this)
        async with app.run_test(size=BIG) as pilot:
            await started(app, pilot)
            await until(pilot, lambda: len(be.saved) == 1, what="first save")
            for _ in range(3):  # re-sweeps of the same choices (as while measuring) rewrite nothing
                app.request_sweep("measure")
                await until(pilot, lambda: not app._sweeping)
                await pilot.pause(0.05)
            assert len(be.saved) == 1
            await pilot.press("plus")
            await until(pilot, lambda: len(be.saved) == 2, what="save after a change")
            assert be.saved[-1].budget == pytest.approx(0.11)
    run(go())


def test_choices_from_json_is_tolerant():
    base = Choices()
    assert Choices.from_json("not json", base) == base
    c = Choices.from_json(json.dumps({"model": "x", "budget": 7, "decode_batch": -3, "quality": "??",
                                      "unknown": 1}), base)
    assert c.model == "x" and c.budget == base.budget and c.decode_batch == 16 and c.quality == "priors"


# ---------------------------------------------------------------- table, drill-down, help, palette

def test_table_filter_sort_and_drill_down(tmp_path):
    async def go():
        app, be = make_app(tmp_path)
        async with app.run_test(size=BIG) as pilot:
            await started(app, pilot)
            await pilot.press("3")
            pv = app.query_one(PointsView)
            speeds = [p.speedup for p in pv.shown]
            assert speeds == sorted(speeds, reverse=True)
            await pilot.press("f")  # all -> static_depth (dense, the baseline, is no filter)
            assert {p.strategy for p in pv.shown} == {"static_depth"}
            assert app.query_one("#points-table", DataTable).row_count == len(pv.shown) == 8
            await pilot.press("p")
            assert {p.phase for p in pv.shown} == {"prefill"}
            await pilot.press("o")  # speedup -> quality loss (lowest first)
            assert pv.sort_key == "loss"
            ls = [p.quality.value for p in pv.shown]
            assert ls == sorted(ls)
            await pilot.press("o")  # -> FLOPs speedup (highest first)
            assert pv.sort_key == "flops"
            fl = [p.flops_speedup for p in pv.shown]
            assert fl == sorted(fl, reverse=True)
            await pilot.press("down", "d")
            await until(pilot, lambda: isinstance(app.screen, OpsScreen), what="ops screen")
            scr = app.screen
            assert scr.point == pv.current()
            assert scr.query_one(DataTable).row_count == 1
            assert "64 → 48" in str(scr.query_one("#ops-head", Static).render())
            await pilot.press("escape")
            await until(pilot, lambda: not isinstance(app.screen, OpsScreen))
            await pilot.press("1", "d")  # off the table: the recommended point of its phase
            await until(pilot, lambda: isinstance(app.screen, OpsScreen), what="ops screen")
            assert app.screen.point == app.snapshot.recs["prefill"].best
            await pilot.press("escape")
            await until(pilot, lambda: not isinstance(app.screen, OpsScreen))
            await pilot.press("question_mark")
            await until(pilot, lambda: isinstance(app.screen, HelpScreen), what="help")
            await pilot.press("escape")
            await until(pilot, lambda: not isinstance(app.screen, HelpScreen))
    run(go())


def test_the_points_tables_loss_column_is_whole_in_view(tmp_path):
    """Issue 31: the quality column was cut at the view's edge ("10.9%ᵇˢ" showed as "10.9%ᵇ")
    at 120 columns beside the setup panel, and at 80.  It is its content's width and comes
    right after the speedup: whole in view with the longest family name and every mark."""
    from dataclasses import replace

    from rich.cells import cell_len

    def col_end(table, key):
        x = 0
        for col in table.ordered_columns:
            x += col.get_render_width(table)
            if col.key.value == key:
                return x, col.get_render_width(table)
        raise KeyError(key)

    async def go(size):
        app, be = make_app(tmp_path)
        async with app.run_test(size=size) as pilot:
            await started(app, pilot)
            snap = app.snapshot
            pts = list(snap.result.points)
            q = pts[3].quality
            pts[3] = replace(pts[3], strategy="dynamic_sparse_attention",
                             quality=replace(q, value=0.1094, extrapolated=True,
                                             borrowed_from="llama-3.1-8b", secondary=True))
            snap.result.points = pts
            await pilot.press("3")
            pv = app.query_one(PointsView)
            pv.show(snap)
            await pilot.pause(0.1)
            table = app.query_one("#points-table", DataTable)
            row = table.get_row(next(k for k, p in pv.points.items() if p is pts[3]))
            cell = str(row[COLUMN_KEYS.index("loss")])
            assert cell == "10.9%ᵉᵇˢ"
            end, width = col_end(table, "loss")
            assert width >= cell_len(cell) + 2  # its content's width (cell padding 1 a side)
            assert width <= max(cell_len(cell), 4) + 2
            assert end <= table.scrollable_content_region.width, (end, table.scrollable_content_region)
            return app.query_one(SetupPanel).display
    assert run(go(BIG)) is True  # beside the setup panel
    assert run(go((80, 24))) is False


def test_the_op_drill_down_fits_where_the_time_goes_at_120_columns(tmp_path):
    """Issue 31: at 120 columns the op list cut its total ms, share and source columns.  They
    come first now and fit, with the kind and the shape (a long one wraps); the line under the
    table gives the highlighted op whole (the roofline's inputs past the view, the note)."""
    from rich.cells import cell_len

    from pis_tui.tui.backend import Backend

    async def go():
        app = PisApp(Backend(cache_path=str(tmp_path / "c.duckdb")), restore=False)
        async with app.run_test(size=BIG) as pilot:
            await started(app, pilot)
            snap = app.snapshot
            attn = next(p for p in snap.result.points if p.strategy == "dynamic_sparse_attention"
                        and p.phase == "prefill")
            for p in (snap.recs["prefill"].best, attn):
                app.push_screen(OpsScreen(snap, p))
                await until(pilot, lambda: isinstance(app.screen, OpsScreen), what="ops screen")
                await pilot.pause(0.1)
                table = app.screen.query_one(DataTable)
                x, ends = 0, {}
                for col in table.ordered_columns:
                    x += col.get_render_width(table)
                    ends[str(col.label)] = x
                view = table.scrollable_content_region.width
                for name in ("op", "total ms", "share", "ms/call", "count", "kind", "shape", "source"):
                    assert ends[name] <= view, (name, ends, view)
                shapes = [str(table.get_row_at(i)[list(ends).index("shape")])
                          for i in range(table.row_count)]
                longest = max(shapes, key=cell_len)
                assert cell_len(longest) > 21 and "B=1 H=32/8 q=1024 kv=1024 d=128" in longest
                row = next(i for i, sh in enumerate(shapes) if sh == longest)
                assert table.ordered_rows[row].height >= 2  # wrapped, not cut
                detail = str(app.screen.query_one("#ops-detail", Static).render())
                assert " GFLOP · " in detail and " MB · " in detail
                table.move_cursor(row=next(i for i in range(table.row_count) if str(
                    table.get_row_at(i)[list(ends).index("source")]).endswith("*")))
                await pilot.pause(0.05)
                assert "(CUDA-graph timing: no host overhead)" in str(
                    app.screen.query_one("#ops-detail", Static).render())
                await pilot.press("escape")
                await until(pilot, lambda: not isinstance(app.screen, OpsScreen))
    run(go())


def test_the_points_table_opens_at_the_top_and_home_end_go_to_the_ends(tmp_path):
    """Issue 31: the table opened scrolled to the recommended row under "sorted by speedup ↓"
    (the faster rows above it out of view), and Home did not go to the top."""
    async def go(size):
        app, be = make_app(tmp_path)
        async with app.run_test(size=size) as pilot:
            await started(app, pilot)
            await pilot.press("3")
            await pilot.pause(0.1)
            table = app.query_one("#points-table", DataTable)
            pv = app.query_one(PointsView)
            assert table.cursor_row == 0 and table.scroll_y == 0
            assert pv.current() is pv.shown[0] and pv.shown[0].speedup == max(p.speedup for p in pv.shown)
            await pilot.press("end")
            await pilot.pause(0.1)
            assert table.cursor_row == table.row_count - 1 and table.scroll_y > 0
            assert pv.current() is pv.shown[-1]
            await pilot.press("home")
            await pilot.pause(0.1)
            assert table.cursor_row == 0 and table.scroll_y == 0
            app.request_sweep("measure")  # a re-sweep keeps the row, still at the top
            await until(pilot, lambda: not app._sweeping)
            await pilot.pause(0.1)
            assert table.cursor_row == 0 and table.scroll_y == 0
    run(go(BIG))
    run(go((80, 24)))


def test_command_palette_runs_export(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    async def go():
        app, be = make_app(tmp_path)
        async with app.run_test(size=BIG) as pilot:
            await started(app, pilot)
            await pilot.press("ctrl+p")
            await pilot.pause(0.2)
            for ch in "export json":
                await pilot.press(ch if ch != " " else "space")
            await pilot.pause(0.5)
            await pilot.press("enter")
            await until(pilot, lambda: isinstance(app.screen, ExportDialog), what="export dialog")
            assert app.screen.query_one(Input).value == str(tmp_path / "pis-tui-llama-3.1-8b-h200-sxm.json")
    run(go())


# ---------------------------------------------------------------- export

def test_export_json_is_valid_and_csv_too(tmp_path):
    async def go():
        app, be = make_app(tmp_path)
        async with app.run_test(size=BIG) as pilot:
            await started(app, pilot)
            out = tmp_path / "out.json"
            await pilot.press("e")
            await until(pilot, lambda: isinstance(app.screen, ExportDialog))
            app.screen.query_one(Input).value = str(out)
            await pilot.press("enter")
            await until(pilot, lambda: app.last_export is not None, what="export")
            assert app.last_export == str(out.resolve())
            data = json.loads(out.read_text())
            jsonschema.validate(data, load_schema())
            assert data["recommendations"]["prefill"]["strategy"] == app.snapshot.recs["prefill"].best.strategy
            assert data["recommendations"]["prefill"]["budget"] == pytest.approx(0.10)
            csv_out = tmp_path / "points.csv"
            await pilot.press("E")
            await until(pilot, lambda: isinstance(app.screen, ExportDialog))
            assert app.screen.query_one(Input).value.endswith(".csv")
            app.screen.query_one(Input).value = str(csv_out)
            await pilot.press("enter")
            await until(pilot, lambda: app.last_export == str(csv_out.resolve()))
            lines = csv_out.read_text().splitlines()
            assert lines[0].startswith("strategy,") and len(lines) == 1 + len(app.snapshot.result.points)
    run(go())


def test_export_asks_before_overwriting_and_keeps_the_dialogs_format(tmp_path):
    async def go():
        app, be = make_app(tmp_path)
        async with app.run_test(size=BIG) as pilot:
            await started(app, pilot)
            out = tmp_path / "points"  # no extension: the CSV dialog writes CSV
            out.write_text("keep me")
            await pilot.press("E")
            await until(pilot, lambda: isinstance(app.screen, ExportDialog))
            dlg = app.screen
            dlg.query_one(Input).value = str(out)
            await pilot.press("enter")
            await pilot.pause(0.1)
            assert app.screen is dlg and out.read_text() == "keep me"
            assert "exists" in str(dlg.query_one("#export-error", Static).render())
            await pilot.press("enter")  # confirmed
            await until(pilot, lambda: app.last_export == str(out.resolve()))
            assert out.read_text().startswith("strategy,")
    run(go())


def test_export_to_unwritable_path_errors_in_the_dialog(tmp_path):
    async def go():
        app, be = make_app(tmp_path)
        async with app.run_test(size=BIG) as pilot:
            await started(app, pilot)
            await pilot.press("e")
            await until(pilot, lambda: isinstance(app.screen, ExportDialog))
            dlg = app.screen
            dlg.query_one(Input).value = str(tmp_path / "missing-dir" / "x.json")
            await pilot.press("enter")
            await pilot.pause(0.1)
            assert app.screen is dlg
            assert "does not exist" in str(dlg.query_one("#export-error", Static).render())
            dlg.query_one(Input).value = str(tmp_path)
            await pilot.press("enter")
            await pilot.pause(0.1)
            assert "is a directory" in str(dlg.query_one("#export-error", Static).render())
            await pilot.press("escape")
            await until(pilot, lambda: app.screen is not dlg)
            assert app.last_export is None
    run(go())


# ---------------------------------------------------------------- measuring

def test_measure_streams_progress_and_updates_views(tmp_path):
    async def go():
        app, be = make_app(tmp_path, n_ops=6, delay=0.05)
        async with app.run_test(size=BIG) as pilot:
            await started(app, pilot)
            await pilot.press("m")  # not local: refused
            await pilot.pause(0.05)
            assert app.runner is None
            app.set_choice("gpu", "local")
            await until(pilot, lambda: app.snapshot.choices.gpu == "local")
            await pilot.press("m")
            panel = app.query_one(ProfilePanel)
            assert panel.has_class("active")
            await until(pilot, lambda: panel.state == "done", what="profile done")
            prog = [e for e in app.profile_events if e["event"] == "progress"]
            assert prog and prog[-1]["done"] == 6 and prog[-1]["total"] == 6
            await until(pilot, lambda: app.snapshot.measured_ops == 6, what="re-sweep with measurements")
            await pilot.press("3")  # the hidden table catches up when shown
            pts = app.query_one(PointsView).shown
            assert sum(p.timing_source == "measured" for p in pts) >= 6
            table = app.query_one("#points-table", DataTable)
            col = COLUMN_KEYS.index("timing")
            timing = [table.get_row_at(i)[col] for i in range(table.row_count)]
            assert timing.count("measured") == sum(p.timing_source == "measured" for p in pts)
    run(go())


def test_the_measuring_bar_counts_remeasures_on_their_own(tmp_path):
    """Issue 31: re-measures at the end of a run showed "6/6 ops · ETA 0s"; they have their
    own count and ETA (the NDJSON's "remeasure")."""
    async def go():
        app, be = make_app(tmp_path, mode="remeasure", n_ops=6, delay=0.02)
        async with app.run_test(size=BIG) as pilot:
            await started(app, pilot)
            panel = app.query_one(ProfilePanel)
            label = panel.query_one("#profile-current", Static)
            seen, shown = [], panel.progress

            def progress(ev):  # every line the bar shows
                shown(ev)
                seen.append(str(label.render()))
            panel.progress = progress
            app.set_choice("gpu", "local")
            await pilot.press("m")
            await until(pilot, lambda: panel.state == "done", timeout=30, what="done")
            re = [t for t in seen if "re-measuring" in t]
            assert re, seen
            assert re[-1].startswith("re-measuring 2/3 unstable ops · ETA 10s · gemm op2 · ")
            assert not any("ETA 0s" in t for t in re)
            bar = panel.query_one("#profile-bar")
            panel.progress(next(e for e in app.profile_events if e.get("remeasure")))
            assert bar.total == 3 and str(label.render()).startswith("re-measuring 0/3 ")
    run(go())


def test_heap_is_frozen_while_running_and_handed_back_at_exit(tmp_path):
    """A full garbage collection of the app's heap stalled frames by ~100 ms while measuring:
    the long-lived heap is frozen once the screen is up and again when measuring starts."""
    import gc

    async def go():
        app, be = make_app(tmp_path, n_ops=3, delay=0.02)
        async with app.run_test(size=BIG) as pilot:
            await started(app, pilot)
            assert app.heap_frozen and gc.get_freeze_count() > 0
            frozen = gc.get_freeze_count()
            app.set_choice("gpu", "local")
            await until(pilot, lambda: app.snapshot.choices.gpu == "local")
            await pilot.press("m")
            assert gc.get_freeze_count() >= frozen
            await until(pilot, lambda: app.query_one(ProfilePanel).state == "done", what="done")
        assert not app.heap_frozen and gc.get_freeze_count() == 0

    run(go())


@pytest.mark.parametrize("mode,words", [("error", "out of memory"), ("crash", "cannot start")])
def test_measure_errors_are_shown(tmp_path, mode, words):
    async def go():
        app, be = make_app(tmp_path, mode=mode)
        async with app.run_test(size=BIG, notifications=True) as pilot:
            await start_measuring(app, pilot)
            panel = app.query_one(ProfilePanel)
            await until(pilot, lambda: panel.state == "failed", what="failure shown")
            assert words in app.profile_error
            assert any(words in str(n.message) for n in app._notifications)
            assert panel.has_class("failed")
    run(go())


def test_cancel_stops_the_process_and_keeps_measurements(tmp_path):
    async def go():
        app, be = make_app(tmp_path, n_ops=400, delay=0.05)
        async with app.run_test(size=BIG) as pilot:
            await start_measuring(app, pilot)
            await until(pilot, lambda: len(app.profile_events) >= 2, what="progress")
            proc = app.runner.proc
            await pilot.press("x")
            panel = app.query_one(ProfilePanel)
            await until(pilot, lambda: panel.state == "cancelled", what="cancelled")
            assert proc.poll() is not None
            kept = be.measured()
            assert 0 < kept < 400
            await until(pilot, lambda: app.snapshot.measured_ops == kept, what="kept measurements")
    run(go())


def test_quit_while_measuring_terminates_the_process(tmp_path):
    async def go():
        app, be = make_app(tmp_path, n_ops=400, delay=0.05)
        async with app.run_test(size=BIG) as pilot:
            await start_measuring(app, pilot)
            await until(pilot, lambda: len(app.profile_events) >= 1, what="progress")
            proc = app.runner.proc
            await pilot.press("q")
        return proc
    proc = run(go())
    proc.wait(timeout=5)
    assert proc.returncode is not None


def test_profile_runner_coalesces_progress(tmp_path):
    import sys

    events = []
    r = ProfileRunner([sys.executable, FAKE_PROFILE, str(tmp_path / "s.txt"), "ok", "40", "0.005"],
                      events.append, min_interval=0.1)
    final = r.run()
    prog = [e for e in events if e["event"] == "progress"]
    assert final["event"] == "done" and final["measured"] == 40
    assert 1 <= len(prog) < 40 and prog[-1]["done"] == 40  # coalesced, last one always passed


# ---------------------------------------------------------------- small screens, helpers

def test_usable_at_80x24(tmp_path):
    async def go():
        app, be = make_app(tmp_path)
        async with app.run_test(size=(80, 24)) as pilot:
            await started(app, pilot)
            assert not app.query_one("#setup").display
            for ph in ("prefill", "decode"):
                ch = app.query_one(f"#pareto-{ph}", ParetoChart)
                assert ch.size.width >= 30 and ch.size.height >= 8
                assert app.query_one(f"#rec-{ph}", RecommendationPanel).size.height >= 3
            await pilot.press("s")
            assert app.query_one("#setup").display
            assert app.focused is app.query_one("#model", Select)
    run(go())


def test_escape_leaves_a_text_field_so_q_quits(tmp_path):
    """Issue 31: escape did not leave the model path field (or the plan's), so the next `q`
    was typed into it."""
    async def go():
        app, be = make_app(tmp_path)
        async with app.run_test(size=BIG) as pilot:
            await started(app, pilot)
            path = app.query_one("#model-path", Input)
            path.focus()
            await pilot.press("a", "escape")
            assert app.focused is None and path.value == "a"
            await pilot.press("q")  # a command again, not a letter
            await pilot.pause(0.1)
            assert path.value == "a" and app.return_code == 0
    run(go())

    async def plan():  # the plan's inputs; on the Points tab the table takes the keys back
        app, be = make_app(tmp_path)
        async with app.run_test(size=BIG) as pilot:
            await started(app, pilot)
            await pilot.press("4")
            prompt = app.query_one("#plan-prompt", Input)
            prompt.focus()
            await pilot.press("escape")
            assert app.focused is None
            await pilot.press("3")
            app.query_one("#decode-batch", Input).focus()
            await pilot.press("escape")
            assert app.focused is app.query_one("#points-table", DataTable)
            await pilot.press("q")
            await pilot.pause(0.1)
            assert app.return_code == 0
    run(plan())


def test_the_setup_panel_on_a_narrow_terminal_leaves_the_charts_their_room(tmp_path):
    """Issue 31: at 80×24 the setup panel (s) took half the width, leaving 20-column charts and
    a one-row Beyond FLOPs plot.  There it is drawn over the charts, which keep their size; it
    follows the width on a resize until the user shows or hides it."""
    from textual.widgets import Tabs

    async def go():
        app, be = make_app(tmp_path)
        async with app.run_test(size=(80, 24)) as pilot:
            await started(app, pilot)
            setup = app.query_one(SetupPanel)
            charts = {w: app.query_one(f"#{w}").region for w in ("pareto-prefill", "pareto-decode")}
            await pilot.press("2")
            await pilot.pause(0.1)
            charts["flops-decode"] = app.query_one("#flops-decode").region
            await pilot.press("s")
            await pilot.pause(0.1)
            assert setup.display and setup.has_class("-drawer")
            assert app.focused is app.query_one("#model", Select)
            assert app.query_one("#flops-decode").region == charts["flops-decode"]
            assert app.query_one("#flops-decode").region.width >= 38
            assert app.query_one("#flops-decode").size.height >= 6  # not squeezed to one row
            assert app.query_one(Tabs).region.y < setup.region.y  # the tabs stay in view
            await pilot.press("1")
            await pilot.pause(0.1)
            for w in ("pareto-prefill", "pareto-decode"):
                assert app.query_one(f"#{w}").region == charts[w]
            await pilot.resize_terminal(120, 36)  # shown by the user: stays, beside the charts
            await pilot.pause(0.2)
            assert setup.display and not setup.has_class("-drawer")
            assert app.query_one("#content").region.x >= setup.region.right
    run(go())

    async def resize():  # not touched by the user: follows the width
        app, be = make_app(tmp_path)
        async with app.run_test(size=BIG) as pilot:
            await started(app, pilot)
            setup = app.query_one(SetupPanel)
            assert setup.display
            await pilot.resize_terminal(80, 24)
            await pilot.pause(0.2)
            assert not setup.display
            assert app.query_one("#pareto-decode", ParetoChart).size.width >= 30
            await pilot.resize_terminal(120, 36)
            await pilot.pause(0.2)
            assert setup.display and not setup.has_class("-drawer")
    run(resize())


def test_the_beyond_flops_caption_fits_its_border(tmp_path):
    """Issue 31: "speedup vs achieved sparsity · letters real, dots FLOPs" was cut ("… · lett…")
    on 40-column charts: the longest wording that fits is shown, whole."""
    from pis_tui.tui.flops_chart import FlopsChart

    async def go(size, keys=()):
        app, be = make_app(tmp_path)
        async with app.run_test(size=size) as pilot:
            await started(app, pilot)
            await pilot.press("2", *keys)
            await pilot.pause(0.2)
            subs = []
            for ph in ("prefill", "decode"):
                chart = app.query_one(f"#flops-{ph}", FlopsChart)
                room = chart.outer_size.width - 6
                assert len(chart.border_subtitle) <= room, chart.border_subtitle
                assert "…" not in chart.border_subtitle and len(chart.border_title) <= room
                assert "letters real" in chart.border_subtitle and "dots FLOPs" in chart.border_subtitle
                subs.append(chart.border_subtitle)
            return subs
    assert run(go(BIG)) == ["letters real, dots FLOPs-predicted"] * 2  # beside the setup panel
    assert run(go((80, 24))) == ["letters real, dots FLOPs-predicted"] * 2
    assert run(go(BIG, ("s",)))[0].startswith("speedup vs ")  # the setup hidden: room for more


def test_nice_ticks_and_model_resolution(tmp_path):
    assert nice_ticks(0, 36.3, 4) == [0, 10, 20, 30]
    assert nice_ticks(0.9, 2.1, 3) == [1.0, 1.5, 2.0]
    assert resolve_model("qwen2.5-0.5b").num_layers > 0
    with pytest.raises(Exception, match="not in the local Hugging Face cache"):
        resolve_model("someone/not-cached-model")


def test_latency_reads_without_e_notation():
    from pis_tui.display import latency

    assert [latency(x) for x in (None, 0.01234, 5.463, 576.4, 1012.0, 45678.0)] == [
        "–", "0.0123 ms", "5.46 ms", "576 ms", "1.01 s", "45.7 s"]


def test_worker_results_arriving_while_closing_are_dropped(tmp_path):
    """A measurement's final event or a sweep can land after `q` while the widgets are being
    torn down: nothing is drawn and nothing raises."""
    from pis_tui.tui.messages import ProfileEvent, SweepDone, SweepFailed

    async def go():
        app, be = make_app(tmp_path)
        async with app.run_test(size=BIG) as pilot:
            await started(app, pilot)
            snap = app.snapshot
            assert not app.closing
        return app, snap

    app, snap = run(go())
    assert app.closing
    app.on_profile_event(ProfileEvent({"event": "done", "measured": 3, "cancelled": True}))
    app.on_profile_event(ProfileEvent({"event": "error", "message": "x"}))
    app.on_sweep_done(SweepDone(snap))
    app.on_sweep_failed(SweepFailed(snap.choices, "boom", ""))
    assert app.profile_error == "" and app.last_error == ""


def test_a_model_that_does_not_fit_is_flagged(tmp_path):
    """Real engine (estimates only): llama-3.1-70b on a 24 GB RTX 4090."""
    from pis_tui.tui.backend import Backend

    async def go():
        app = PisApp(Backend(cache_path=str(tmp_path / "c.duckdb")),
                     Choices(model="llama-3.1-70b", gpu="rtx-4090"), restore=False)
        async with app.run_test(size=BIG, notifications=True) as pilot:
            await started(app, pilot)
            assert "does not fit on this GPU" in str(app.query_one("#status", Static).render())
            assert any("141 GB of 24 GB" in str(n.message) for n in app._notifications)
            app.set_choice("model", "llama-3.2-1b")
            await until(pilot, lambda: app.snapshot.choices.model == "llama-3.2-1b")
            assert "fit" not in str(app.query_one("#status", Static).render())
    run(go())


def test_cache_problems_are_shown_as_notices(tmp_path):
    """Real backend: a corrupt cache file is moved aside (the CLI warns on stderr; the app
    must say it too), and a busy file does not hold the screen for long."""
    from pis_tui.tui.backend import Backend

    import duckdb

    path = tmp_path / "c.duckdb"
    con = duckdb.connect(str(path))  # a DuckDB file (its header) whose blocks are garbage; a
    con.execute("CREATE TABLE t (a INTEGER)")  # file that is no DuckDB database is refused
    con.close()  # untouched instead (issue 30)
    data = bytearray(path.read_bytes())
    data[4096:] = b"\x00garbage, not a DuckDB block" * ((len(data) - 4096) // 29 + 1)
    path.write_bytes(bytes(data[: len(path.read_bytes())]))

    async def go():
        app = PisApp(Backend(cache_path=str(path)), restore=True, save_delay=0.05)
        async with app.run_test(size=BIG, notifications=True) as pilot:
            await started(app, pilot)
            await until(pilot, lambda: any("corrupt" in str(n.message) for n in app._notifications),
                        what="corrupt-cache notice")
    run(go())
    assert list(tmp_path.glob("c.duckdb.corrupt-*"))


def test_the_backend_names_the_field_at_fault(tmp_path):
    from pis_tui.errors import PisError
    from pis_tui.tui.backend import Backend

    be = Backend(cache_path=str(tmp_path / "c.duckdb"))
    cases = {"model": Choices(model=str(tmp_path / "nope" / "config.json")),
             "gpu": Choices(gpu="no-such-gpu"),
             "dtype": Choices(gpu="a100-80gb", dtype="fp64"),
             "quality": Choices(quality="csv", quality_csv=str(tmp_path / "missing.csv"))}
    for field, choices in cases.items():
        with pytest.raises(PisError) as e:
            be.compute(choices)
        assert e.value.field == field, (field, str(e.value))


def test_the_palette_offers_every_key_bound_action():
    from pis_tui.tui.palette import ACTIONS

    bound = {b.action for b in PisApp.BINDINGS}
    assert bound <= {a for _, _, a in ACTIONS}, bound - {a for _, _, a in ACTIONS}


def test_a_dropped_ssh_connection_stops_measuring_and_saves(tmp_path):
    import signal

    async def go():
        app, be = make_app(tmp_path, n_ops=400, delay=0.05)
        app.save_delay = 30.0
        async with app.run_test(size=BIG) as pilot:
            await start_measuring(app, pilot)
            await until(pilot, lambda: len(app.profile_events) >= 1, what="progress")
            assert signal.getsignal(signal.SIGHUP) == app._on_hangup
            proc = app.runner.proc
            await pilot.press("plus")
            app._on_hangup(signal.SIGHUP, None)  # what the kernel's SIGHUP calls
            await pilot.pause(0.2)
        return proc, be
    before = signal.getsignal(signal.SIGHUP)
    proc, be = run(go())
    proc.wait(timeout=5)
    assert proc.returncode is not None
    assert Choices.from_json(be.settings["tui.last_choices"]).budget == pytest.approx(0.11)
    assert signal.getsignal(signal.SIGHUP) == before  # handed back at exit


def test_op_drill_down_header_formats_latency_like_the_panels(tmp_path):
    from dataclasses import replace

    snap = FakeBackend(tmp_path / "measured.txt").compute(Choices())
    p = replace(snap.result.points[5], latency_ms=13730.0, dense_latency_ms=20512.0)
    head = OpsScreen(snap, p)._head().plain
    assert "latency 13.7 s vs dense 20.5 s → " in head and "e+" not in head
    small = replace(p, latency_ms=0.01234, dense_latency_ms=0.5)
    assert "latency 0.0123 ms vs dense 0.5 ms → " in OpsScreen(snap, small)._head().plain


def test_one_count_one_meaning_for_measured(tmp_path):
    """The GPU list counts the op timings cached, as `pis-tui gpus` does; the setup line
    under it and the status line count the sweep's kernels priced from a measurement."""
    from helpers import seed_local_timings

    from pis_tui.tui.backend import Backend

    path = tmp_path / "c.duckdb"
    seed_local_timings(path, ok=2, unsupported=1)
    local = Backend(cache_path=str(path)).gpu_options()[0][0]
    assert local == "local · 2 op timings cached"
    assert Backend(cache_path=str(tmp_path / "empty.duckdb")).gpu_options()[0][0] == "local · not measured yet"

    async def go():
        app, be = make_app(tmp_path, n_ops=6, delay=0.02)
        async with app.run_test(size=BIG) as pilot:
            await start_measuring(app, pilot)
            await until(pilot, lambda: app.query_one(ProfilePanel).state == "done", what="profile")
            await until(pilot, lambda: app.snapshot.measured_ops == 6 and not app._sweeping,
                        what="re-sweep with measurements")
            await pilot.pause(0.1)
            kernels = app.snapshot.result.source_summary()
            info = str(app.query_one("#gpu-info", Static).render())
            status = str(app.query_one("#status", Static).render())
            assert f"{kernels['measured']} of {sum(kernels.values())} kernels measured" in info
            assert f"{kernels['measured']} measured" in status and kernels["measured"] == 6
    run(go())


def test_unplotted_points_are_counted_and_explained(tmp_path):
    """Points without a quality figure have no x on a loss axis: the chart says how many and
    why, the legend names their families, the table lists them."""
    async def go():
        app, be = make_app(tmp_path)
        async with app.run_test(size=BIG) as pilot:
            await started(app, pilot)
            for ph in ("prefill", "decode"):
                chart = app.query_one(f"#pareto-{ph}", ParetoChart)
                assert chart.summary.endswith("; 4 points without a quality figure (unstructured), "
                                              "not plotted: see the table (3)")
                sub = chart.border_subtitle  # as much as fits: "4 without quality figure: table (3)"
                assert sub.startswith(("speedup vs acc. drop · 4 ", "4 without quality"))
                assert "without" in sub and "quality" in sub and sub.endswith("(3)")
                assert "unplotted" not in chart.border_subtitle
            legend = str(app.query_one("#legend").render())
            assert legend.rstrip().endswith("not plotted: U")
            await pilot.press("3")
            table = app.query_one("#points-table", DataTable)
            col, scol = COLUMN_KEYS.index("loss"), COLUMN_KEYS.index("strategy")
            rows = [table.get_row_at(i) for i in range(table.row_count)]
            assert sum(str(r[scol]) == "unstructured" and str(r[col]) == "–" for r in rows) == 8
    run(go())


def test_at_80x24_titles_and_the_recommendation_fit_whole(tmp_path):
    async def go():
        app, be = make_app(tmp_path)
        async with app.run_test(size=(80, 24)) as pilot:
            await started(app, pilot)
            for ph in ("prefill", "decode"):
                panel = app.query_one(f"#rec-{ph}", RecommendationPanel)
                room = panel.size.width  # the text's width (border and padding excluded)
                lines = panel.plain.splitlines()
                best = app.snapshot.recs[ph].best
                # family, sparsity, speedup and loss whole on the first line ("loss " dropped
                # when "▶ static_width 37.5% 1.30× loss 8.2%" is a cell too wide)
                assert lines[0] in [f"▶ {best.strategy} {100 * best.achieved_sparsity:.1f}% "
                                    f"{best.speedup:.2f}×{w} {100 * best.quality.value:.1f}%"
                                    for w in ("", " loss")]
                assert all(len(ln) <= room for ln in lines), lines  # nothing wraps, nothing is cut
                assert len(lines) <= panel.size.height
                assert len(panel.border_title) <= panel.outer_size.width - 6
                chart = app.query_one(f"#pareto-{ph}", ParetoChart)
                for title in (chart.border_title, chart.border_subtitle):
                    assert len(title) <= chart.outer_size.width - 6, title
            assert app.query_one("#rec-decode", RecommendationPanel).border_title == "decode 16 @ 1024 · loss ≤ 10.0%"
            status = str(app.query_one("#status", Static).render())
            assert len(status) <= 78 and "kernels:" in status
    run(go())


def test_a_long_family_name_keeps_the_recommendation_on_one_line(tmp_path):
    from dataclasses import replace

    from pis_tui.tui.recommendation_panel import recommendation_text

    snap = FakeBackend(tmp_path / "measured.txt").compute(Choices())
    rec = snap.recs["prefill"]
    best = replace(rec.best, strategy="dynamic_sparse_attention", achieved_sparsity=0.471,
                   speedup=1.234, latency_ms=13730.0,
                   quality=replace(rec.best.quality, extrapolated=True))
    ru = replace(rec.runner_up, strategy="dynamic_depth", achieved_sparsity=0.375)
    snap.recs = {"prefill": replace(rec, best=best, runner_up=ru)}
    wide = recommendation_text(snap, "prefill").plain.splitlines()
    assert wide[0].startswith("▶ dynamic_sparse_attention 47.1% 1.23× loss ")
    # 80×24: 36 cells × 3 lines; the first line whole, the rest shortened to one line each
    narrow = recommendation_text(snap, "prefill", width=36, height=3).plain.splitlines()
    assert narrow[0].startswith("▶ dyn-attn 47.1% 1.23× loss ")  # the registry's short name
    assert narrow[1].startswith("  2nd dyn-depth 37.5% ") and narrow[2].startswith("  13.7 s ")
    assert len(narrow) == 3 and all(len(ln) <= 36 for ln in narrow), narrow
    assert narrow[2] == "  13.7 s roofline ⚠ extrapolated"
    # a taller panel keeps the rest whole: the runner-up broken before its name, not wrapped
    tall = recommendation_text(snap, "prefill", width=36, height=6).plain
    assert tall.splitlines()[1:3] == ["  2nd (+0.05×)", "  dynamic_depth 37.5% 1.25× at 10.0%"]
    assert "⚠ quality extrapolated" in tall


def test_a_combinations_recommendation_keeps_its_loss_with_its_speedup(tmp_path):
    """Issue 31: a combination's line wrapped, its loss alone on the next line, at 120 columns
    (beside the setup panel) and at 80: it breaks before the name (the runner-up) or before
    the figures (a best too long even short), never inside the figures."""
    from dataclasses import replace

    from pis_tui.tui.recommendation_panel import recommendation_text

    snap = FakeBackend(tmp_path / "measured.txt").compute(Choices())
    rec = snap.recs["prefill"]
    combo = next(p for p in snap.result.points if p.parts and p.phase == "prefill")

    def as_combo(p, name, parts, speedup, loss):
        return replace(combo, strategy=name, parts=parts, part_achieved=tuple(s for _, s in parts),
                       speedup=speedup, quality=replace(combo.quality, value=loss))
    ru = as_combo(combo, "static_depth+static_width", (("static_depth", 0.125), ("static_width", 0.115)),
                  1.14, 0.085)
    best = as_combo(combo, "dynamic_depth+static_width", (("dynamic_depth", 0.25), ("static_width", 0.125)),
                    1.14, 0.101)
    for width in (36, 38):  # the panels' text at 80×24 and at 120×36 beside the setup panel
        for height in (3, 5):
            snap.recs = {"prefill": replace(rec, runner_up=ru, margin=0.09)}
            lines = recommendation_text(snap, "prefill", width=width, height=height).plain.splitlines()
            assert all(len(ln) <= width for ln in lines), lines
            two = lines[1:3]
            assert two == ["  2nd (+0.09×)", "  depth+width 12.5+11.5% 1.14× at 8.5%"] or \
                two == ["  2nd (+0.09×)", "  depth+width 12.5+11.5% 1.14× 8.5%"], lines
            snap.recs = {"prefill": replace(rec, best=best, runner_up=None, margin=None)}
            lines = recommendation_text(snap, "prefill", width=width, height=height).plain.splitlines()
            assert lines[:2] == ["▶ dyn-depth+width 25.0+12.5%", "  1.14× loss 10.1%"], lines

    async def go(size):  # on screen: the runner-up's line in the panel
        app, be = make_app(tmp_path)
        async with app.run_test(size=size) as pilot:
            await started(app, pilot)
            snap = app.snapshot
            snap.recs["decode"] = replace(snap.recs["decode"], runner_up=replace(
                ru, phase="decode"), margin=0.13)
            panel = app.query_one("#rec-decode", RecommendationPanel)
            panel.show(snap)
            lines = panel.plain.splitlines()
            assert all(len(ln) <= panel.size.width for ln in lines), lines
            i = next(i for i, ln in enumerate(lines) if ln.startswith("  2nd"))
            assert lines[i] == "  2nd (+0.13×)" and lines[i + 1].startswith("  ")
            assert lines[i + 1].rstrip().endswith("1.14× at 8.5%") or lines[i + 1].endswith("1.14× 8.5%")
    run(go(BIG))
    run(go((80, 24)))


def test_quality_method_combinations_and_extrapolated_choices(tmp_path):
    """The setup panel's quality method (mean, best, the protocol's methods), combination rule
    and extrapolated rule: a method or a rule re-sweeps, the extrapolated rule only re-ranks;
    combinations off leave the families alone; all are restored next time."""
    async def go():
        app, be = make_app(tmp_path)
        async with app.run_test(size=BIG) as pilot:
            await started(app, pilot)
            assert any(p.parts for p in app.snapshot.result.points)  # the fake combination
            methods = [v for _, v in app.query_one("#quality-method", Select)._options]
            assert methods[:2] == ["mean", "best"] and "Tyr-the-Pruner" in methods
            app.query_one("#quality-method", Select).value = "best"
            await until(pilot, lambda: app.snapshot.choices.quality_method == "best", what="method sweep")
            app.query_one("#combos", Select).value = "off"
            await until(pilot, lambda: app.snapshot.choices.combos == "off", what="combos off")
            assert not any(p.parts for p in app.snapshot.result.points)
            app.query_one("#combos", Select).value = "additive"
            await until(pilot, lambda: app.snapshot.choices.combos == "additive", what="additive")
            combo = next(p for p in app.snapshot.result.points if p.parts)
            assert combo.quality.composed == "additive"
            assert combo.quality.value == pytest.approx(sum(q.value for q in combo.quality.parts))
            n = len(be.computed)
            skipped = app.snapshot.recs["prefill"].skipped_extrapolated
            app.query_one("#extrapolated", Select).value = "rank"
            await until(pilot, lambda: app.snapshot.choices.extrapolated == "rank", what="re-rank")
            assert len(be.computed) == n  # re-ranked, not re-swept
            assert skipped and all(p.quality.extrapolated for p in skipped)  # fake 2:4 at 50 %
            assert app.snapshot.recs["prefill"].allow_extrapolated
            assert not app.snapshot.recs["prefill"].skipped_extrapolated
            await until(pilot, lambda: be.saved and be.saved[-1].extrapolated == "rank", what="saved")
        restored = Choices.from_json(be.settings["tui.last_choices"])
        assert (restored.quality_method, restored.combos, restored.extrapolated) == ("best", "additive", "rank")
        # nonsense in the saved settings falls back to the defaults
        bad = Choices.from_json(json.dumps({"combos": "max", "extrapolated": 3, "quality_method": ""}))
        assert (bad.combos, bad.extrapolated, bad.quality_method) == ("multiplicative", "skip", "mean")
    run(go())


# ---------------------------------------------------------------- tensor parallelism


def test_tensor_parallel_degrees_are_offered_and_resweep(tmp_path):
    from pis_tui.tui.setup_panel import TP_LABELS

    assert tuple(v for _, v in TP_LABELS) == (1, 2, 4, 8)

    async def go():
        app, be = make_app(tmp_path)
        async with app.run_test(size=BIG) as pilot:
            await started(app, pilot)
            sel = app.query_one("#tp", Select)
            assert sel.value == 1 and "× " not in app.sub_title
            sel.value = 8
            await until(pilot, lambda: app.snapshot.choices.tp == 8, what="tp sweep")
            assert be.computed[-1].tp == 8 and app.snapshot.result.scenario.tp == 8
            assert "8 × Fake H200-SXM" in app.sub_title
            await pilot.press("2")
            await pilot.pause(0.2)
            assert "TP 8" in app.query_one("#flops-decode").border_title
            assert "TP 8 decode: collectives" in str(app.query_one("#gap-summary", Static).render())
            await until(pilot, lambda: be.saved and be.saved[-1].tp == 8, what="saved")
    run(go())
    assert Choices.from_json('{"tp": 8}').tp == 8 and Choices.from_json('{"tp": 3}').tp == 1
    assert Choices(tp=2).sweep_key() != Choices().sweep_key()


def test_the_real_backend_shows_what_tensor_parallelism_does_to_pruning(tmp_path):
    """llama-3.1-70b over 8 H200s (estimates): static width keeps every all-reduce (the hidden
    size stays), static depth drops its layers' ones, hidden slicing shrinks them; the plan is
    one GPU's, its collectives shown."""
    from pis_tui.tui.backend import Backend, PlanInputs
    from pis_tui.tui.flops_chart import tp_lines
    from pis_tui.tui.plan_panel import plan_text

    be = Backend(cache_path=str(tmp_path / "c.duckdb"))
    c8 = Choices(model="llama-3.1-70b", gpu="h200-sxm", tp=8)
    snap = be.compute(c8)
    assert snap.result.scenario.tp == 8 and "per_rank" in snap.result.memory
    for ph in ("prefill", "decode"):
        deg, share, kept = tp_lines(snap, ph)
        kept = dict(kept)
        assert deg == 8 and 0.05 < share < 0.9, (ph, share)
        assert kept["static_width"] == pytest.approx(1.0)
        assert kept["static_depth"] < 0.6 and kept["static_width_hidden"] < 0.99
    assert tp_lines(be.compute(replace_tp(c8, 1)), "decode") is None
    from dataclasses import replace

    fused = be.compute(replace(c8, engine="fused"))  # both: the rank's kernels, fused
    assert (fused.result.scenario.engine, fused.result.scenario.tp) == ("fused", 8)
    assert fused.result.dense("decode").latency_ms < snap.result.dense("decode").latency_ms
    ps = be.plan(c8, PlanInputs())
    assert ps.result.tp == 8
    d = ps.result.dense
    assert 0 < d.tpot_collectives_ms < d.tpot_ms and 0 < d.ttft_collectives_ms < d.ttft_ms
    text = plan_text(ps).plain
    assert "TP comm" in text and "wts/GPU" in text
    one = be.plan(replace_tp(c8, 1), PlanInputs())
    assert one.result.dense.tpot_collectives_ms == 0.0 and "TP comm" not in plan_text(one).plain


def replace_tp(c, tp):
    from dataclasses import replace

    return replace(c, tp=tp)


def test_tensor_parallel_bad_input_names_the_field_at_fault(tmp_path, monkeypatch):
    """A degree the heads do not split into: the scenario's line; the local CPU with no
    collectives measured (no interconnect figures): the GPU's.  One line each."""
    from pis_tui.errors import PisError
    from pis_tui.tui.backend import Backend, PlanInputs

    be = Backend(cache_path=str(tmp_path / "c.duckdb"))
    for call in (lambda c: be.compute(c), lambda c: be.plan(c, PlanInputs())):
        with pytest.raises(PisError) as e:
            call(Choices(model="qwen2.5-0.5b", gpu="h200-sxm", tp=4))
        assert e.value.field == "scenario" and "14 query heads" in str(e.value)
        assert "\n" not in str(e.value)
    monkeypatch.setenv("PIS_TUI_NO_CUDA", "1")
    with pytest.raises(PisError) as e:
        be.compute(Choices(model="llama-3.2-1b", gpu="local", tp=2))
    assert e.value.field == "gpu" and "no interconnect figures" in str(e.value)
    assert "profile --gpu local --tp 2" in str(e.value) and "\n" not in str(e.value)

    async def go():  # on screen: under the scenario fields, the last good result kept
        app = PisApp(Backend(cache_path=str(tmp_path / "c2.duckdb")),
                     Choices(model="qwen2.5-0.5b", gpu="h200-sxm"), restore=False)
        async with app.run_test(size=BIG) as pilot:
            await started(app, pilot)
            app.query_one("#tp", Select).value = 4
            await until(pilot, lambda: "14 query heads" in str(
                app.query_one("#scenario-error", Static).render()), what="tp error")
            assert app.snapshot.choices.tp == 1
            app.query_one("#tp", Select).value = 2
            await until(pilot, lambda: app.snapshot.choices.tp == 2, what="tp 2 sweep")
            assert "14 query heads" not in str(app.query_one("#scenario-error", Static).render())
            await pilot.press("4")  # the plan: one GPU's share of 2
            await until(pilot, lambda: app.plan_snapshot is not None and not app._planning,
                        timeout=30, what="plan")
            from pis_tui.tui.plan_panel import PlanPanel

            panel = app.query_one(PlanPanel)
            assert panel.border_title.endswith("· TP 2") and "TP comm" in panel.plain
    run(go())


def test_the_batch_tab_draws_decode_speedup_by_batch_with_the_experts_touched(tmp_path):
    """Key 5: the Batch tab draws the core families' decode speedup against decode batch; for
    an MoE preset its subtitle says how many experts a step touches (8 at batch 1 … 128)."""
    from pis_tui.tui.backend import Backend, Choices
    from pis_tui.tui.batch_chart import BatchChart

    async def go():
        app = PisApp(Backend(cache_path=str(tmp_path / "c.duckdb")),
                     Choices(model="qwen3-30b-a3b", gpu="h200-sxm"), restore=False)
        async with app.run_test(size=BIG) as pilot:
            await started(app, pilot)
            await pilot.press("5")
            chart = app.query_one(BatchChart)
            await until(pilot, lambda: "strategies" in chart.summary, what="batch chart")
            assert "experts touched" in chart.border_subtitle and "128" in chart.border_subtitle
            assert chart.border_title.startswith("decode speedup by batch")
    run(go())
