"""Exporting from the explorer (``e`` JSON, ``E`` CSV): the part of
:class:`~pis_tui.tui.app.PisApp` that offers a file name in the export dialog
(:mod:`pis_tui.tui.export_dialog`) and has the backend write the snapshot there, with the plan
when it is the current choices' (and, on the Plan tab, the plan as the CSV).

A mixin: it reads the app's ``snapshot`` and ``plan_snapshot`` and sets ``last_export``.
"""

from __future__ import annotations

from typing import Optional

from textual.widgets import TabbedContent

from .backend import export_name
from .export_dialog import ExportDialog


class ExportControl:
    """The export actions (mixed into the app)."""

    def _export_dialog(self, ext: str) -> None:
        if self.snapshot is None:
            self.notify("nothing to export yet", severity="warning")
            return
        snap = self.snapshot
        # the plan travels in the JSON when it is the current choices' (and, on the Plan tab,
        # is what the CSV holds)
        ps = self.plan_snapshot if self._plan_current(self.plan_snapshot) else None
        on_plan = self._full and self.query_one(TabbedContent).active == "plan" and ps is not None
        csv_of = "plan" if on_plan else "points"

        def done(path: Optional[str]) -> None:
            if path:
                self.last_export = path
                self.notify(f"wrote {path}", title="exported", timeout=8)

        name = export_name(snap, ext, "plan" if on_plan and ext == "csv" else "")
        self.push_screen(ExportDialog(name, lambda p, fmt: self.backend.export(snap, p, fmt, ps, csv_of),
                                      ext), done)

    def action_export(self) -> None:
        self._export_dialog("json")

    def action_export_csv(self) -> None:
        self._export_dialog("csv")
