"""The explorer: pick a model, GPU and budget; read a recommendation per phase off live
charts; measure in the background; export.

It only presents what the core computes: every number comes from a
:class:`~pis_tui.tui.backend.Backend` (the engine's ``sweep``, the quality model and
``pareto.recommend``).  Sweeps run in a thread worker (0.1-0.4 s, no torch); measuring runs
in a subprocess driven by a thread worker (:mod:`pis_tui.tui.profile_worker`); the budget
re-ranks on the spot without re-sweeping.

:class:`PisApp` holds the layout, the startup, the sweeping, the showing and the choices; the
rest is mixed in from rooms named for what they hold: the Plan tab's controller
(:mod:`.plan_control`), measuring (:mod:`.measure_control`), exporting
(:mod:`.export_control`), the Points table's keys and the drill into a point
(:mod:`.points_control`), saving the choices (:mod:`.save_control`) and frame time
(:mod:`.frame_time`).  The workers' messages are in :mod:`.messages`.  The state they share
is set up once, in ``PisApp.__init__``.
"""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import replace
from typing import Optional

from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Footer, Header, Static, TabbedContent, TabPane

from ..display import sweep_measured_label
from ..errors import PisError
from ..pricing.sources import ordered
from .backend import PHASES, Backend, Choices, PlanInputs, PlanSnapshot, Snapshot, plan_presets
from .export_control import ExportControl
from .batch_chart import BatchChart
from .flops_chart import FlopsChart, gap_lines, tp_lines
from .fmt import family_style, metric_label, pct, rgb, speed
from .fmt import fit as fit_text  # "fit" names the memory-fit warning below
from .frame_time import FrameTime
from .help_screen import HelpScreen
from .legend import Legend
from .measure_control import MeasureControl
from .messages import OptionsReady, Restored, SweepDone, SweepFailed
from .palette import PisCommands
from .pareto_chart import ParetoChart
from .plan_control import PlanControl
from .plan_view import PlanView
from .points_control import PointsControl
from .points_table import PointsView
from .profile_worker import ProfileRunner
from .progress import ProfilePanel
from .recommendation_panel import RecommendationPanel
from .save_control import SaveControl
from .setup_panel import ERROR_FIELDS, SetupPanel

#: narrower terminals (columns) hide the setup panel until asked for, then draw it over the charts
NARROW = 110

CSS = """
Screen { layout: vertical; }
#main { height: 1fr; }
#content { width: 1fr; }
TabbedContent { height: 1fr; }
TabPane { padding: 0; }
.charts { height: 1fr; }
#gap-summary { height: auto; max-height: 10; padding: 0 1; }  /* + TP's lines (wrapped) */
#recs { height: auto; }
#bottom { height: 1; background: $boost; }
#status { height: 1; width: 1fr; padding: 0 1; color: $text-muted; }
#bottom.measuring #status { display: none; }
#status.error { color: $error; }
"""


class PisApp(PlanControl, MeasureControl, ExportControl, PointsControl, SaveControl, FrameTime,
             App):
    """``PisApp(backend=Backend())``; tests inject a fake backend."""

    TITLE = "pis-tui"
    CSS = CSS
    AUTO_FOCUS = None  # keys go to the app's bindings until the user tabs into a field
    COMMANDS = App.COMMANDS | {PisCommands}
    ENABLE_COMMAND_PALETTE = True
    BINDINGS = [
        Binding("q", "quit", "quit"),
        Binding("ctrl+c", "quit", "quit", show=False, priority=True),
        Binding("question_mark", "help", "help"),
        Binding("s", "toggle_setup", "setup"),
        Binding("plus,equals_sign,right_square_bracket", "budget(1)", "budget+", key_display="+"),
        Binding("minus,left_square_bracket", "budget(-1)", "budget-", key_display="-"),
        Binding("1", "tab('pareto')", "pareto", show=False),
        Binding("2", "tab('flops')", "FLOPs", show=False),
        Binding("3", "tab('points')", "points", show=False),
        Binding("4", "tab('plan')", "plan", show=False),
        Binding("5", "tab('batch')", "batch", show=False),
        Binding("d", "drill", "ops"),
        Binding("f", "cycle_family", "family"),
        Binding("p", "cycle_phase", "phase", show=False),
        Binding("o", "cycle_sort", "sort", show=False),
        Binding("O", "reverse_sort", "reverse", show=False),
        Binding("m", "measure", "measure"),
        Binding("x", "cancel_measure", "cancel"),
        Binding("e", "export", "export"),
        Binding("E", "export_csv", "csv", show=False),
        Binding("r", "recompute", "recompute", show=False),
    ]

    def __init__(self, backend: Optional[Backend] = None, choices: Optional[Choices] = None, *,
                 overrides: Optional[dict] = None, restore: bool = True, monitor_lag: bool = False,
                 save_delay: float = 1.0, resweep_interval: float = 0.5):
        super().__init__()
        self.backend = backend or Backend()
        self.choices = choices or Choices()
        self._explicit_choices = choices is not None
        self.overrides = dict(overrides or {})
        self.restore = restore
        self.snapshot: Optional[Snapshot] = None
        self.model_options: list = []
        self.gpu_options: list = []
        self.runner: Optional[ProfileRunner] = None
        self.last_error: str = ""
        self.profile_error: str = ""
        self.last_export: Optional[str] = None
        self.profile_events: list = []
        self.sweeps_done = 0
        # the Plan tab: its inputs, the last plan computed, and its worker's state
        self.plan_inputs = PlanInputs()
        self.plan_snapshot: Optional[PlanSnapshot] = None
        self.plans_done = 0
        self._planning = False
        self._plan_queued = False
        self.save_delay = save_delay
        self.resweep_interval = resweep_interval
        self._measure_dirty = False
        self._last_resweep = 0.0
        self._sweeping = False
        self._sweep_queued = False
        self._save_timer = None
        self._unsaved: Optional[Choices] = None  # good choices waiting for the save timer
        self._saved_choices: Optional[Choices] = None  # what the last save wrote
        self._restored = False  # the choices came from the last session
        self._field_error: tuple[str, str] = ("", "")  # (setup field, message) of a failed sweep
        self._shown_warnings: tuple = ()  # the result's warnings last notified (memory fit)
        self.started_at = time.perf_counter()
        self.monitor_lag = monitor_lag
        self.lags: list[float] = []
        self._lag_last = 0.0
        self.setup_visible = True
        self._setup_pinned = False  # shown or hidden by the user (s), not by the width
        self._short: Optional[int] = None  # size tier: 0 short, 1 normal, 2 tall
        self._full = False  # setup panel, Beyond FLOPs and the table mounted
        self._stale_tabs: set = set()
        self._mounting = False
        self._quit_after_mount = False
        self.heap_frozen = False
        self._old_hangup = None  # the SIGHUP handler before ours
        self._subtitles: list = []  # the header's subtitle, longest first

    # ------------------------------------------------------------------ layout
    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="main"):
            # the setup panel, the Beyond-FLOPs charts and the table are mounted right after
            # the first chart is drawn (see _mount_rest): the first chart comes sooner
            with Vertical(id="content"):
                with TabbedContent(initial="pareto", id="tabs"):
                    with TabPane("Pareto", id="pareto"):
                        with Horizontal(classes="charts"):
                            for ph in PHASES:
                                yield ParetoChart(ph, id=f"pareto-{ph}")
                        yield Legend(id="legend")
                    yield TabPane("Beyond FLOPs", id="flops")
                    yield TabPane("Points", id="points")
                    yield TabPane("Plan", id="plan")
                    yield TabPane("Batch", id="batch")
                with Horizontal(id="recs"):
                    for ph in PHASES:
                        yield RecommendationPanel(ph, id=f"rec-{ph}")
        # one fixed row shared by the status line and the measuring bar: showing the bar
        # never moves the charts (a full repaint)
        with Horizontal(id="bottom"):
            yield Static("starting…", id="status")
            yield ProfilePanel(id="profile")
        yield Footer()

    def on_mount(self) -> None:
        self.title = "pis-tui"
        self.setup_visible = self.size.width >= NARROW
        self._apply_size()
        if self.monitor_lag:
            self._start_lag_monitor()
        self.set_interval(min(self.resweep_interval, 0.25), self._coalesced_resweep)
        self._catch_hangup()
        self._startup()

    def _catch_hangup(self) -> None:
        """An SSH connection that drops sends SIGHUP, which would end the app on the spot:
        instead stop the measuring child politely (it keeps what it measured), save the
        choices and quit."""
        if not hasattr(signal, "SIGHUP") or threading.current_thread() is not threading.main_thread():
            return
        try:
            self._old_hangup = signal.signal(signal.SIGHUP, self._on_hangup)
        except (ValueError, OSError):
            pass

    def _on_hangup(self, signum=None, frame=None) -> None:
        if self.runner is not None and self.runner.running:
            self.runner.cancel(grace_s=1.0)
        self._flush_save()
        self.exit()

    def on_resize(self, event) -> None:
        if self._short is not None:  # after mount; the event's size (self.size may lag it)
            self._apply_size(event.size.height)
            self._fit_header(event.size.width)
            self._fit_setup(event.size.width)

    def _fit_setup(self, width: Optional[int] = None) -> None:
        """The setup panel on a narrow terminal (< NARROW columns): hidden unless asked for
        (`s`), and then drawn over the charts rather than squeezing them to 20 columns (and
        Beyond FLOPs to one row).  On a wide one: shown beside them.  A panel the user showed
        or hid stays so across resizes."""
        if not self._full:
            return
        narrow = (width or self.size.width) < NARROW
        panel = self.query_one(SetupPanel)
        panel.set_class(narrow, "-drawer")
        if not self._setup_pinned and self.setup_visible == narrow:
            self.setup_visible = not narrow
            panel.display = self.setup_visible
            if not self.setup_visible and panel.has_focus_within:
                self.set_focus(None)

    def _apply_size(self, rows: Optional[int] = None) -> None:
        """Short terminals (< 30 rows): no header, lower recommendation panels; tall ones
        (34+ rows) give the panels a line more, so a wrapped runner-up is not cut off.
        Styles are set on the few widgets concerned (an app-wide class would restyle every
        widget)."""
        rows = rows or self.size.height
        tier = 0 if rows < 30 else (1 if rows < 34 else 2)
        if tier == self._short:
            return
        self._short = tier
        self.query_one(Header).display = tier > 0
        for ph in PHASES:
            self.query_one(f"#rec-{ph}", RecommendationPanel).styles.height = 5 + tier

    # ------------------------------------------------------------------ startup
    @work(thread=True, group="startup", exit_on_error=False)
    def _startup(self) -> None:
        base = self.choices
        if "gpu" not in self.overrides and not self._explicit_choices:
            try:
                base = replace(base, gpu=self.backend.default_gpu())
            except PisError:
                pass
        restored = None
        if self.restore:
            restored = self.backend.load_choices(base)
        choices = restored or base
        if self.overrides:
            choices = replace(choices, **self.overrides)
        self.post_message(Restored(choices, restored is not None))
        self._compute(choices)
        models = self.backend.model_options()
        gpus = self.backend.gpu_options()
        self.post_message(OptionsReady(models, gpus))

    async def _mount_rest(self) -> None:
        """Mount what the first chart does not need: setup panel, Beyond FLOPs, table."""
        if self._full or self._mounting:
            return
        self._mounting = True
        panel = SetupPanel(self.choices, self.backend.validate_model, id="setup")
        panel.display = self.setup_visible
        panel.set_class(self.size.width < NARROW, "-drawer")
        await self.query_one("#main").mount(panel, before="#content")
        await self.query_one("#flops", TabPane).mount(
            Horizontal(*(FlopsChart(ph, id=f"flops-{ph}") for ph in PHASES), classes="charts"),
            Static("", id="gap-summary"))
        await self.query_one("#points", TabPane).mount(PointsView(id="points-view"))
        await self.query_one("#plan", TabPane).mount(
            PlanView(self.plan_inputs, plan_presets(), id="plan-view"))
        await self.query_one("#batch", TabPane).mount(BatchChart(id="batch-chart"))
        self._full = True
        self._freeze_heap()
        if self._quit_after_mount:
            self.exit()
            return
        if self.model_options or self.gpu_options:
            panel.set_options(self.model_options, self.gpu_options)
        if self.snapshot is not None:
            snap, self.snapshot = self.snapshot, None
            self._show(snap)
            self.query_one(PointsView).show(snap)  # opens at its top row (the fastest)
            self._stale_tabs.discard("points")
            self._stale_tabs.add("batch")
        where, text = self._field_error
        if where:
            panel.set_error(where, text)
        self._update_setup_info()

    def on_restored(self, msg: Restored) -> None:
        if self.closing:
            return
        self._show_backend_warnings()
        self.choices = msg.choices
        self._restored = msg.restored
        if msg.restored:
            self._saved_choices = msg.choices  # already what the cache holds
        if self._full:
            self.query_one(SetupPanel).set_choices(msg.choices)
        self._sweeping = True
        self._update_setup_info()
        if msg.restored:
            self.set_status("restored your last choices; estimating…")

    def on_options_ready(self, msg: OptionsReady) -> None:
        if self.closing:
            return
        self._show_backend_warnings()
        self.model_options, self.gpu_options = msg.models, msg.gpus
        if self._full:
            self.query_one(SetupPanel).set_options(msg.models, msg.gpus)
        self._update_setup_info()

    def _update_setup_info(self) -> None:
        if not self._full:
            return
        panel = self.query_one(SetupPanel)
        gpu = self.choices.gpu
        info = ""
        snap = self.snapshot
        if snap is not None and snap.choices.gpu == gpu:
            info = snap.result.device.display_name
            if gpu == "local":  # the status line's "N measured": the same count
                kernels = snap.result.source_summary()
                info += " · " + sweep_measured_label(kernels.get("measured", 0), sum(kernels.values()))
        panel.set_gpu_info(info)
        if gpu == "local":
            panel.set_measure_info("m: measure here (background); x cancels")
        else:
            panel.set_measure_info("measuring needs GPU 'local' (this machine)")

    # ------------------------------------------------------------------ sweeping
    def _compute(self, choices: Choices, field: str = "") -> None:
        """Runs in a worker thread: sweep + recommend, then post the result."""
        try:
            snap = self.backend.compute(choices)
        except PisError as e:
            self.post_message(SweepFailed(choices, str(e), getattr(e, "field", "") or field))
        except Exception as e:  # noqa: BLE001 - a bug: shown, never a crash
            self.post_message(SweepFailed(choices, f"internal error: {type(e).__name__}: {e}", field))
        else:
            self.post_message(SweepDone(snap))

    @work(thread=True, exclusive=True, group="sweep", exit_on_error=False)
    def _sweep_worker(self, choices: Choices, field: str) -> None:
        self._compute(choices, field)

    def request_sweep(self, field: str = "") -> None:
        if self._sweeping:
            self._sweep_queued = True
            return
        self._sweeping = True
        self._sweep_queued = False
        self.set_status("estimating…")
        self._sweep_worker(self.choices, field)

    def _coalesced_resweep(self) -> None:
        """Re-sweep as measurements arrive, at most every `resweep_interval`, and rarely
        enough that sweeping takes under a quarter of one core (on a CPU device the app's
        own work would otherwise disturb the timings being taken, so at most every 2 s)."""
        if not self._measure_dirty or self._sweeping:
            return
        snap = self.snapshot
        gap = self.resweep_interval
        if snap is not None:
            gap = max(gap, 4 * snap.elapsed_s)
            if getattr(snap.result.device, "kind", "gpu") == "cpu" and self.resweep_interval >= 0.5:
                gap = max(gap, 2.0)
        if time.monotonic() - self._last_resweep < gap:
            return
        self._last_resweep = time.monotonic()
        self._measure_dirty = False
        self.request_sweep("measure")

    def _sweep_finished(self) -> None:
        self._sweeping = False
        if self._sweep_queued:
            self._sweep_queued = False
            self.request_sweep()

    def on_sweep_done(self, msg: SweepDone) -> None:
        if self.closing:
            return
        self._show_backend_warnings()
        snap = msg.snapshot
        stale = snap.choices.sweep_key() != self.choices.sweep_key()
        self._sweep_finished()
        if stale:
            self._sweep_queued = False
            self.request_sweep()
            return
        if snap.choices != self.choices:
            snap = Snapshot(self.choices, snap.result, self.backend.recommend(
                snap.result, self.choices.active_budget, self.choices.allow_extrapolated),
                snap.elapsed_s, snap.measured_ops, snap.warnings)
        self.sweeps_done += 1
        self._schedule_save(snap.choices)  # only choices that compute are kept for next time
        if self._full and self._field_error[0]:
            self.query_one(SetupPanel).set_error(self._field_error[0], "")
        self._field_error = ("", "")
        self.query_one("#status").remove_class("error")
        self.last_error = ""
        self._show(snap)

    def on_sweep_failed(self, msg: SweepFailed) -> None:
        if self.closing:
            return
        self._show_backend_warnings()
        self._sweep_finished()
        if msg.choices.sweep_key() != self.choices.sweep_key():
            return
        self.last_error = msg.error
        where = self._error_field(msg)
        if self._full:
            if self._field_error[0] and self._field_error[0] != where:
                self.query_one(SetupPanel).set_error(self._field_error[0], "")
            if where:
                self.query_one(SetupPanel).set_error(where, msg.error)
        self._field_error = (where, msg.error)
        first = self.snapshot is None
        tail = " (showing the last good result)" if not first else ""
        if first and self._restored:
            tail = " — your last session's choices; change them in the setup panel (s)"
        self.set_status(f"✗ {msg.error}{tail}", error=True)
        self.notify(msg.error, title="cannot compute", severity="error", timeout=8)
        if first:
            # nothing to draw: say so in the charts, and bring up the setup panel (mounted
            # after the first chart otherwise) so the choice can be fixed
            for ph in PHASES:
                self.query_one(f"#pareto-{ph}", ParetoChart).show_error("cannot compute: see below")
                self.query_one(f"#rec-{ph}", RecommendationPanel).show_error()
            self._setup_pinned = True  # to fix the choice: kept up whatever the width
            if not self._full:
                self.setup_visible = True
                self.call_after_refresh(self._mount_rest)
            else:
                self.query_one(SetupPanel).display = self.setup_visible = True

    @staticmethod
    def _error_field(msg: SweepFailed) -> str:
        """The setup field with an error line for a failed sweep ("" when none: the status
        line alone says it).  The backend names the field at fault; else the one changed."""
        field = "quality" if msg.field == "protocol" else msg.field
        return field if field in ERROR_FIELDS else ""

    # ------------------------------------------------------------------ showing
    def _show(self, snap: Snapshot, rerank_only: bool = False) -> None:
        """Draw `snap`.  To keep every frame short while measurements stream in, a re-rank
        (budget change) redraws only what the budget moves, hidden tabs are redrawn when
        they are next shown, and the second chart is drawn on the next frame."""
        first = self.snapshot is None
        self.snapshot = snap
        self.query_one("#pareto-prefill", ParetoChart).show(snap)
        self.query_one(Legend).show_unplotted(snap)
        for ph in PHASES:
            self.query_one(f"#rec-{ph}", RecommendationPanel).show(snap)
        self.call_after_refresh(self._show_second, snap)
        if not self._full:
            self.call_after_refresh(self._mount_rest)
        else:
            pv = self.query_one(PointsView)
            if rerank_only:
                pv.snapshot = snap
            else:
                self._stale_tabs = {"flops", "points", "batch"}
                self._show_tab(self.query_one(TabbedContent).active)
        self._update_setup_info()
        r = snap.result
        budget = f"budget {pct(snap.choices.active_budget)}"
        tp = f"{r.scenario.tp} × " if r.scenario.tp > 1 else ""  # tensor parallelism: the GPUs
        served = r.scenario.precision or r.scenario.dtype
        self._subtitles = [f"{r.spec.name} · {tp}{r.device.display_name} · {served} "
                           f"{r.scenario.engine} · {budget}",
                           f"{r.spec.name} · {tp}{snap.choices.gpu} · {served} · {budget}",
                           f"{r.spec.name} · {budget}"]
        self._fit_header()
        kernels = ", ".join(f"{n} {k}" for k, n in ordered(r.source_summary()))
        q = f"{r.quality_protocol} {metric_label(r.quality_metric)}"
        src = {"priors": "priors", "csv": "own CSV", "measured": "measured"}[snap.choices.quality]
        running = " · measuring…" if self.runner is not None and self.runner.running else ""
        fit = ""
        warnings = tuple(r.warnings)
        if warnings:
            fits = all(r.memory.get("fits", {}).values())
            fit = "⚠ " + ("memory is tight" if fits else "does not fit on this GPU") + " (see the notice) · "
            if warnings != self._shown_warnings:
                self.notify("\n".join(warnings), title="memory", severity="warning", timeout=12)
        self._shown_warnings = warnings
        self.set_status(f"{fit}{len(r.points)} points in {snap.elapsed_s:.2f}s · kernels: {kernels} · "
                        f"quality: {src}, {q}{running}", error=bool(fit),
                        shorter=(f"{fit}kernels: {kernels} · quality: {src}, {q}{running}",
                                 f"{fit}kernels: {kernels}{running}"))

    def _show_second(self, snap: Snapshot) -> None:
        if snap is self.snapshot:
            self.query_one("#pareto-decode", ParetoChart).show(snap)

    def _show_tab(self, tab: str) -> None:
        """Bring a tab's views up to date with the snapshot if it went stale while hidden."""
        if not self._full or self.snapshot is None or tab not in self._stale_tabs:
            return
        self._stale_tabs.discard(tab)
        pv = self.query_one(PointsView)
        if tab == "flops":
            for ph in PHASES:
                self.query_one(f"#flops-{ph}", FlopsChart).show(self.snapshot, family=pv.family)
            self._show_gaps()
        elif tab == "points":
            pv.show(self.snapshot)
        elif tab == "batch":
            self.query_one(BatchChart).show(self.snapshot)

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        tab = event.pane.id or ""
        # the Plan tab has its own recommendation (one model for both phases): the per-phase
        # panels give it their rows
        self.query_one("#recs").display = tab != "plan"
        self._show_tab(tab)
        if tab == "plan":
            self.request_plan()

    def _show_gaps(self) -> None:
        snap = self.snapshot
        if snap is None:
            return
        fam = self.query_one(PointsView).family
        t = Text()
        t.append("At each family's largest sparsity — real vs FLOPs-predicted speedup:\n", style="dim")
        for ph in PHASES:
            t.append(f"{ph:8s}", style="bold")
            for f, ach, real, flops in gap_lines(snap, ph, fam):
                marker, color = family_style(f)
                t.append(f" {marker}", style=f"bold {rgb(color)}")
                t.append(f" {pct(ach, 0)} {speed(real)}/{speed(flops)}")
            t.append("\n")
        for ph in PHASES:  # tensor parallelism: how much of its all-reduce time each keeps
            tpl = tp_lines(snap, ph, fam)
            if tpl is None:
                break
            deg, share, kept = tpl
            t.append(f"TP {deg} {ph}: collectives {pct(share, 0)} of dense; kept", style="dim")
            for f, k in kept:
                marker, color = family_style(f)
                t.append(f" {marker}", style=f"bold {rgb(color)}")
                t.append(f" {pct(k, 0)}")
            t.append("\n")
        self.query_one("#gap-summary", Static).update(t)

    def set_status(self, text: str, error: bool = False, shorter=()) -> None:
        """One row: `text`, or the first of the `shorter` versions that fits the terminal."""
        st = self.query_one("#status", Static)
        st.set_class(error, "error")
        st.update(fit_text([text, *shorter], self.size.width - 2), layout=False)  # no layout pass

    def _fit_header(self, width: Optional[int] = None) -> None:
        """The header's subtitle, shortened to fit (the header centres "pis-tui — …")."""
        if self._subtitles:
            self.sub_title = fit_text(self._subtitles, (width or self.size.width) - 24)

    # ------------------------------------------------------------------ choices
    @on(SetupPanel.Changed)
    def _setup_changed(self, msg: SetupPanel.Changed) -> None:
        self._apply_choices(msg.choices, msg.field)

    def _apply_choices(self, choices: Choices, field: str) -> None:
        old = self.choices
        self.choices = choices
        self._update_setup_info()
        if choices.sweep_key() != old.sweep_key():
            self.request_sweep(field)
            if self._full and self.query_one(TabbedContent).active == "plan":
                self.request_plan()  # the plan follows the choices while its tab is up
        elif self.snapshot is not None and self.snapshot.choices.sweep_key() == choices.sweep_key():
            self._rerank()
            self._schedule_save(choices)
        # else: these choices failed to compute (or are being computed); the last good
        # result stays on screen under the error, never re-ranked as if it were theirs

    def _rerank(self) -> None:
        snap = self.snapshot
        recs = self.backend.recommend(snap.result, self.choices.active_budget,
                                      self.choices.allow_extrapolated)
        self._show(Snapshot(self.choices, snap.result, recs, snap.elapsed_s, snap.measured_ops,
                            snap.warnings), rerank_only=True)
        self._rerank_plan()

    def set_choice(self, name: str, value) -> None:
        """Palette and tests: change one choice as if typed in the setup panel."""
        c = self.choices.with_budget(value) if name == "budget" else replace(self.choices, **{name: value})
        if self._full:
            self.query_one(SetupPanel).set_choices(c)
        self._apply_choices(c, name)

    # ------------------------------------------------------------------ actions
    def action_budget(self, step: int) -> None:
        if self._full:
            self.query_one(SetupPanel).step_budget(step)
        else:
            self.set_choice("budget", self.choices.active_budget + step / 100.0)

    def action_toggle_setup(self) -> None:
        if not self._full:
            return
        self.setup_visible = not self.setup_visible
        self._setup_pinned = True
        self.query_one(SetupPanel).display = self.setup_visible
        if self.setup_visible:
            self.query_one("#model").focus()
        else:
            self.set_focus(None)  # keys go back to the app, not to a hidden field

    def action_leave_field(self) -> None:
        """Escape in a setup or plan field: focus goes back to the main view (the Points tab's
        table, else the app itself), so the next key is a command (`q` quits), not typed."""
        if self._full and self.query_one(TabbedContent).active == "points":
            self.query_one("#points-table", DataTable).focus()
        else:
            self.set_focus(None)

    def action_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab
        if tab == "points" and self._full:
            self.query_one("#points-table", DataTable).focus()

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_recompute(self) -> None:
        self.request_sweep("recompute")

    # ------------------------------------------------------------------ quitting
    async def action_quit(self) -> None:
        if self.runner is not None and self.runner.running:
            self.runner.cancel(grace_s=1.0)
        self._flush_save()
        if self._mounting and not self._full:
            self._quit_after_mount = True  # quitting mid-mount trips textual; finish first
            return
        self.exit()

    def _show_backend_warnings(self) -> None:
        """Cache problems the backend met in a worker (a corrupt file moved aside, a busy
        file, choices not restored): each said once, as a notice."""
        for w in self.backend.take_warnings():
            self.notify(w, title="cache", severity="warning", timeout=12)

    @property
    def closing(self) -> bool:
        """True once the app has begun shutting down: a worker's result that arrives then
        (a measurement's final event after `q`, a sweep) is dropped, not drawn into widgets
        that are gone (what was measured is already in the cache)."""
        return not self.is_running

    def on_unmount(self) -> None:
        self._flush_save()
        if self._old_hangup is not None:
            signal.signal(signal.SIGHUP, self._old_hangup)
            self._old_hangup = None
        self._thaw_heap()


def run_app(**kw) -> None:
    PisApp(**kw).run()
