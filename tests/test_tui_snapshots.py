"""SVG snapshots of the explorer (pytest-textual-snapshot), with the fake engine's fixed
data and fixed terminal sizes.  Refresh after an intended change with
``pytest tests/test_tui_snapshots.py --snapshot-update`` and look at the SVGs."""

from __future__ import annotations

import time

from pis_tui.tui.app import PisApp
from pis_tui.tui.backend import Choices
from tui_fakes import FakeBackend


def app_for(tmp_path):
    return PisApp(FakeBackend(tmp_path / "measured.txt"), restore=False)


def ready(*keys, plan: bool = False):
    async def run_before(pilot) -> None:
        app = pilot.app
        t0 = time.monotonic()
        while app.snapshot is None or app._sweeping or not app._full:
            assert time.monotonic() - t0 < 20, "no sweep"
            await pilot.pause(0.05)
        if keys:
            await pilot.press(*keys)
        while plan and (app.plan_snapshot is None or app._planning):
            assert time.monotonic() - t0 < 30, "no plan"
            await pilot.pause(0.05)
        await pilot.pause(0.2)
    return run_before


def test_main_screen_120x36(snap_compare, tmp_path):
    assert snap_compare(app_for(tmp_path), terminal_size=(120, 36), run_before=ready())


def test_main_screen_80x24(snap_compare, tmp_path):
    assert snap_compare(app_for(tmp_path), terminal_size=(80, 24), run_before=ready())


def test_beyond_flops_120x36(snap_compare, tmp_path):
    assert snap_compare(app_for(tmp_path), terminal_size=(120, 36), run_before=ready("2"))


def test_beyond_flops_80x24(snap_compare, tmp_path):
    assert snap_compare(app_for(tmp_path), terminal_size=(80, 24), run_before=ready("2"))


def test_points_table(snap_compare, tmp_path):
    assert snap_compare(app_for(tmp_path), terminal_size=(120, 36), run_before=ready("3", "f", "f"))


def test_points_table_80x24(snap_compare, tmp_path):
    assert snap_compare(app_for(tmp_path), terminal_size=(80, 24), run_before=ready("3"))


def test_op_drill_down(snap_compare, tmp_path):
    assert snap_compare(app_for(tmp_path), terminal_size=(100, 30), run_before=ready("3", "d"))


def test_op_drill_down_120x36(snap_compare, tmp_path):
    assert snap_compare(app_for(tmp_path), terminal_size=(120, 36), run_before=ready("3", "d"))


def test_op_drill_down_80x24(snap_compare, tmp_path):
    assert snap_compare(app_for(tmp_path), terminal_size=(80, 24), run_before=ready("3", "d"))


def test_plan_view_120x36(snap_compare, tmp_path):
    assert snap_compare(app_for(tmp_path), terminal_size=(120, 36), run_before=ready("4", plan=True))


def test_plan_view_80x24(snap_compare, tmp_path):
    assert snap_compare(app_for(tmp_path), terminal_size=(80, 24), run_before=ready("4", plan=True))


def test_setup_over_the_charts_80x24(snap_compare, tmp_path):
    """A narrow terminal: the setup panel (s) is drawn over the charts, which keep their size."""
    assert snap_compare(app_for(tmp_path), terminal_size=(80, 24), run_before=ready("2", "s"))


def failed(*keys, quiet: bool = False):
    """A first sweep that fails (the fake engine refuses the model): nothing to draw; `quiet`:
    its notice gone."""
    async def run_before(pilot) -> None:
        app = pilot.app
        t0 = time.monotonic()
        while not (app.last_error and app._full):
            assert time.monotonic() - t0 < 20, "no failure"
            await pilot.pause(0.05)
        if quiet:
            app.clear_notifications()
        if keys:
            await pilot.press(*keys)
        await pilot.pause(0.3)
    return run_before


def test_first_sweep_failed_120x36(snap_compare, tmp_path):
    app = PisApp(FakeBackend(tmp_path / "measured.txt"), Choices(model="broken"), restore=False)
    assert snap_compare(app, terminal_size=(120, 36), run_before=failed())


def test_first_sweep_failed_80x24(snap_compare, tmp_path):
    app = PisApp(FakeBackend(tmp_path / "measured.txt"), Choices(model="broken"), restore=False)
    # the setup panel, raised over the charts to fix the choice, hidden again (s): the panels
    assert snap_compare(app, terminal_size=(80, 24), run_before=failed("s", quiet=True))
