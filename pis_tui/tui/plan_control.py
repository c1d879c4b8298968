"""The Plan tab's controller: the part of :class:`~pis_tui.tui.app.PisApp` that prices a plan
for the current choices and workload in a worker, keeps at most one running (a change while
it runs queues one more), drops a plan for choices no longer current, and re-ranks the last
plan at a new budget or objective without pricing it again.

A mixin: it reads and writes the app's state (``choices``, ``plan_inputs``,
``plan_snapshot``, ``plans_done``, ``_planning``, ``_plan_queued``, ``_full``), which
:class:`~pis_tui.tui.app.PisApp` sets up.
"""

from __future__ import annotations

from typing import Optional

from textual import work

from ..errors import PisError
from .backend import Choices, PlanInputs, PlanSnapshot
from .messages import PlanDone, PlanFailed
from .plan_inputs import PlanInputsBar
from .plan_view import PlanView


class PlanControl:
    """Pricing and re-ranking the Plan tab's plan (mixed into the app)."""

    def _plan_current(self, ps: Optional[PlanSnapshot]) -> bool:
        """The plan was priced for the current choices and workload (budget and objective
        only re-rank)."""
        return (ps is not None and ps.choices.sweep_key() == self.choices.sweep_key()
                and ps.inputs.plan_key() == self.plan_inputs.plan_key())

    def request_plan(self) -> None:
        """Price the plan for the current choices and workload, unless it already is."""
        if self._plan_current(self.plan_snapshot):
            self._rerank_plan()
            return
        if self._planning:
            self._plan_queued = True
            return
        self._planning = True
        self._plan_queued = False
        if self._full:
            self.query_one(PlanView).show_busy()
        self._plan_worker(self.choices, self.plan_inputs)

    @work(thread=True, exclusive=True, group="plan", exit_on_error=False)
    def _plan_worker(self, choices: Choices, inputs: PlanInputs) -> None:
        try:
            ps = self.backend.plan(choices, inputs)
        except PisError as e:
            self.post_message(PlanFailed(choices, inputs, str(e)))
        except Exception as e:  # noqa: BLE001 - a bug: shown, never a crash
            self.post_message(PlanFailed(choices, inputs, f"internal error: {type(e).__name__}: {e}"))
        else:
            self.post_message(PlanDone(ps))

    def _plan_finished(self) -> None:
        self._planning = False
        if self._plan_queued:
            self._plan_queued = False
            self.request_plan()

    def on_plan_done(self, msg: PlanDone) -> None:
        if self.closing:
            return
        self._plan_finished()
        if not self._plan_current(msg.snapshot):
            self.request_plan()
            return
        self.plan_snapshot = msg.snapshot
        self.plans_done += 1
        self._rerank_plan(force=True)

    def on_plan_failed(self, msg: PlanFailed) -> None:
        if self.closing:
            return
        self._plan_finished()
        if (msg.choices.sweep_key() != self.choices.sweep_key()
                or msg.inputs.plan_key() != self.plan_inputs.plan_key()):
            return
        if self._full:
            self.query_one(PlanView).show_error(msg.error)
        self.notify(msg.error, title="cannot plan", severity="error", timeout=8)

    def _rerank_plan(self, force: bool = False) -> None:
        """Re-rank the plan at the current budget and objective (nothing priced again)."""
        ps = self.plan_snapshot
        if ps is None or not self._plan_current(ps):
            return
        budget, objective = self.choices.active_budget, self.plan_inputs.objective
        if force or ps.rec.budget != budget or ps.rec.objective != objective or \
                ps.choices.extrapolated != self.choices.extrapolated:
            rec = self.backend.rank_plan(ps.result, budget, objective, self.choices.allow_extrapolated)
            ps = PlanSnapshot(self.choices, self.plan_inputs, ps.result, rec, ps.elapsed_s)
            self.plan_snapshot = ps
        if self._full:
            self.query_one(PlanView).show(ps)

    def on_plan_inputs_bar_changed(self, msg: PlanInputsBar.Changed) -> None:
        """The workload or objective changed on the Plan tab (a handler by its name: an
        ``@on`` handler is found only on a class built by textual's message-pump metaclass,
        which a mixin is not)."""
        self.plan_inputs = msg.inputs
        self.request_plan()
