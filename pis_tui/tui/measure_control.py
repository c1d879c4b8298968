"""Measuring from the explorer (``m``, ``x``): the part of :class:`~pis_tui.tui.app.PisApp`
that starts ``pis-tui profile`` on this machine in a subprocess driven by a thread worker
(:mod:`pis_tui.tui.profile_worker`), shows its progress in the bottom row, re-sweeps as
measurements land (coalesced by the app's sweeping) and once more when it ends, and cancels it.

A mixin: it reads and writes the app's state (``runner``, ``profile_events``,
``profile_error``, ``_measure_dirty``, ``choices``), which :class:`~pis_tui.tui.app.PisApp`
sets up.
"""

from __future__ import annotations

from textual import work

from .messages import OptionsReady, ProfileEvent
from .profile_worker import ProfileRunner
from .progress import ProfilePanel


class MeasureControl:
    """Measuring in the background, its progress and its end (mixed into the app)."""

    def action_measure(self) -> None:
        if self.runner is not None and self.runner.running:
            self.notify("already measuring (x cancels)", severity="warning")
            return
        if self.choices.gpu != "local":
            self.notify("measuring runs on this machine: choose GPU 'local' in the setup (s)",
                        severity="warning", timeout=6)
            return
        cmd = self.backend.profile_command(self.choices)
        self._freeze_heap()
        self.profile_events = []
        self.profile_error = ""
        self.runner = ProfileRunner(cmd, lambda ev: self.post_message(ProfileEvent(ev)))
        self.query_one("#bottom").add_class("measuring")
        self.query_one(ProfilePanel).start(self.choices.model)
        self._profile_worker(self.runner)

    @work(thread=True, exclusive=True, group="profile", exit_on_error=False)
    def _profile_worker(self, runner: ProfileRunner) -> None:
        runner.run()

    def on_profile_event(self, msg: ProfileEvent) -> None:
        if self.closing:
            return
        ev = msg.event
        self.profile_events.append(ev)
        panel = self.query_one(ProfilePanel)
        kind = ev.get("event")
        if kind == "progress":
            panel.progress(ev)
            self._measure_dirty = True
            return
        text = panel.finish(ev)
        if kind == "error":
            self.profile_error = text
            self.notify(text, title="measuring", severity="error", timeout=12)
        else:
            self.notify(text, title="measuring", timeout=6)
        self._measure_dirty = False
        self.request_sweep("measure")
        self._refresh_options()

    @work(thread=True, group="options", exit_on_error=False)
    def _refresh_options(self) -> None:
        self.post_message(OptionsReady(self.backend.model_options(), self.backend.gpu_options()))

    def action_cancel_measure(self) -> None:
        if self.runner is None or not self.runner.running:
            self.notify("nothing is being measured", timeout=3)
            return
        self.runner.cancel()
        self.query_one(ProfilePanel).cancelling()
