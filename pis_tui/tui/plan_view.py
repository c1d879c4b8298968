"""The Plan tab (``4``): one pruned model for a workload across both phases.

Workload inputs on top (:mod:`.plan_inputs`), the chart of quality loss against the gain under
the objective (:mod:`.plan_chart`) and the recommended model with its per-phase figures,
memory headroom and concurrency against dense (:mod:`.plan_panel`).  It draws what the app
hands it, a :class:`~pis_tui.tui.backend.PlanSnapshot` computed by the backend in a worker;
nothing is computed here.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical

from .backend import PlanInputs
from .plan_chart import PlanChart
from .plan_inputs import PlanInputsBar
from .plan_panel import PlanPanel


class PlanView(Vertical):
    DEFAULT_CSS = """
    PlanView { height: 1fr; }
    PlanView > Horizontal { height: 1fr; }
    """

    def __init__(self, inputs: PlanInputs, presets: dict, **kw):
        super().__init__(**kw)
        self._inputs = inputs
        self._presets = presets
        self.snapshot = None

    def compose(self) -> ComposeResult:
        yield PlanInputsBar(self._inputs, self._presets, id="plan-inputs")
        with Horizontal():
            yield PlanChart(id="plan-chart")
            yield PlanPanel(id="plan-panel")

    @property
    def inputs(self) -> PlanInputs:
        return self.query_one(PlanInputsBar).inputs

    def show(self, ps) -> None:
        self.snapshot = ps
        self.query_one(PlanInputsBar).set_error("")
        self.query_one(PlanChart).show(ps)
        self.query_one(PlanPanel).show(ps)

    def show_busy(self) -> None:
        if self.snapshot is None:
            self.query_one(PlanChart).show_message("computing…")

    def show_error(self, text: str) -> None:
        """A plan that failed: the inputs' error line says why; the last plan stays drawn."""
        self.query_one(PlanInputsBar).set_error(text)
        if self.snapshot is None:
            self.query_one(PlanChart).show_message("cannot compute: see above")
            self.query_one(PlanPanel).show_message(text)
