"""The Points table's keys and the drill into a point: the part of
:class:`~pis_tui.tui.app.PisApp` that answers ``d`` (or enter on a row: the ops of the
highlighted point, else of the recommended one), ``f`` (the family shown in the table and
on Beyond FLOPs), ``p`` (the table's phase), ``o`` / ``O`` (its sort and its direction).

A mixin: it reads the app's ``snapshot``, ``_full`` and ``_stale_tabs`` and redraws a tab
through the app's ``_show_tab``.
"""

from __future__ import annotations

from textual.widgets import DataTable, TabbedContent

from .backend import PHASES
from .ops_screen import OpsScreen
from .points_table import PointsView


class PointsControl:
    """The table's keys and the ops drill-down (mixed into the app)."""

    def selected_point(self):
        """The highlighted row on the points tab; elsewhere the recommended point (of the
        table's phase filter when it has one, else prefill's)."""
        if self.snapshot is None:
            return None
        pv = self.query_one(PointsView) if self._full else None
        if pv is not None and self.query_one(TabbedContent).active == "points":
            if "points" in self._stale_tabs:
                self._stale_tabs.discard("points")
                pv.show(self.snapshot)
            p = pv.current()
            if p is not None:
                return p
        phase = pv.phase if pv is not None and pv.phase in PHASES else "prefill"
        return self.snapshot.recs[phase].best

    def action_drill(self) -> None:
        if self.snapshot is None:
            self.notify("nothing computed yet", severity="warning")
            return
        p = self.selected_point()
        if p is None:
            self.notify("highlight a point in the table first (3)", severity="warning")
            return
        self.push_screen(OpsScreen(self.snapshot, p))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id == "points-table":
            self.action_drill()

    def action_cycle_family(self) -> None:
        if not self._full:
            return
        fam = self.query_one(PointsView).cycle_family()
        if self.snapshot is not None:
            self._stale_tabs.add("flops")
            self._show_tab(self.query_one(TabbedContent).active)
        self._say(f"table and Beyond FLOPs: {fam}")

    def action_cycle_phase(self) -> None:
        if not self._full:
            return
        self._say(f"table phase: {self.query_one(PointsView).cycle_phase()}")

    def action_cycle_sort(self) -> None:
        if not self._full:
            return
        self._say(f"table sorted by {self.query_one(PointsView).cycle_sort()}")

    def _say(self, text: str) -> None:
        """A short toast, unless the table (whose title says it) is on screen."""
        if self.query_one(TabbedContent).active != "points":
            self.notify(text, timeout=2)

    def action_reverse_sort(self) -> None:
        if not self._full:
            return
        self.query_one(PointsView).toggle_reverse()
