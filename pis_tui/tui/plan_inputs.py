"""The Plan view's workload inputs: a preset, prompt and answer lengths, requests at once, the
TTFT and TPOT targets and the objective.

It owns the :class:`~pis_tui.tui.backend.PlanInputs` and posts :class:`PlanInputsBar.Changed`
when a field settles (typed numbers after a short pause); bad input is shown on its own line,
never raised.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Optional

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Input, Label, Select, Static

from .backend import PlanInputs

CUSTOM = "custom"
#: (input id, PlanInputs field, label)
LENGTHS = (("plan-prompt", "prompt_len", "prompt"), ("plan-output", "output_len", "answer"),
           ("plan-conc", "concurrency", "at once"))
TARGETS = (("plan-ttft", "ttft_ms", "TTFT ≤"), ("plan-tpot", "tpot_ms", "TPOT ≤"))
OBJECTIVES = (("end-to-end latency", "latency"), ("throughput", "throughput"))
MAX_LEN = 1 << 20


class PlanInputsBar(Vertical, can_focus=False):
    #: escape in a field leaves it (keys go back to the app: `q` quits, `+`/`-` re-rank)
    BINDINGS = [Binding("escape", "app.leave_field", "leave the field", show=False)]
    DEFAULT_CSS = """
    PlanInputsBar { height: auto; padding: 0 1; }
    PlanInputsBar .row { height: 1; }
    PlanInputsBar Label { padding: 0 1 0 0; }
    PlanInputsBar .gap { padding: 0 1 0 2; }
    PlanInputsBar .unit { padding: 0 0 0 1; color: $text-muted; }
    PlanInputsBar Input { width: 8; background: $boost; }
    PlanInputsBar #plan-preset { width: 14; }
    PlanInputsBar #plan-objective { width: 24; }
    PlanInputsBar #plan-error { color: $error; height: auto; }
    """

    class Changed(Message):
        def __init__(self, inputs: PlanInputs, field: str) -> None:
            super().__init__()
            self.inputs = inputs
            self.field = field

    def __init__(self, inputs: PlanInputs, presets: dict, **kw):
        super().__init__(**kw)
        self.inputs = inputs
        self.presets = dict(presets)  # name -> (prompt, output, concurrency)
        self._debounce = None

    def compose(self) -> ComposeResult:
        i = self.inputs
        options = [(n, n) for n in self.presets] + [(CUSTOM, CUSTOM)]
        with Horizontal(classes="row"):
            yield Label("workload")
            yield Select(options, value=self._preset_of(i), allow_blank=False, compact=True, id="plan-preset")
            for wid, attr, label in LENGTHS:
                yield Label(label, classes="gap")
                yield Input(str(getattr(i, attr)), type="integer", id=wid, max_length=7, compact=True)
        with Horizontal(classes="row"):
            for wid, attr, label in TARGETS:
                yield Label(label, classes="gap" if wid != "plan-ttft" else "")
                v = getattr(i, attr)
                yield Input("" if v is None else f"{v:g}", placeholder="none", id=wid, max_length=8,
                            compact=True)
                yield Label("ms", classes="unit")
            yield Label("rank by", classes="gap")
            yield Select(OBJECTIVES, value=i.objective, allow_blank=False, compact=True, id="plan-objective")
        yield Static("", id="plan-error")

    def on_mount(self) -> None:
        self.query_one("#plan-error", Static).display = False

    def _preset_of(self, i: PlanInputs) -> str:
        nums = (i.prompt_len, i.output_len, i.concurrency)
        return i.preset if self.presets.get(i.preset) == nums else CUSTOM

    # ------------------------------------------------------------------ changes
    def set_error(self, text: str) -> None:
        w = self.query_one("#plan-error", Static)
        w.update(f"✗ {text}" if text else "")
        w.display = bool(text)

    def _post(self, inputs: PlanInputs, field: str) -> None:
        if inputs == self.inputs:
            return
        self.inputs = inputs
        self.post_message(self.Changed(inputs, field))

    def on_select_changed(self, event: Select.Changed) -> None:
        event.stop()
        if event.value is Select.BLANK:
            return
        if event.select.id == "plan-objective":
            self._post(replace(self.inputs, objective=str(event.value)), "objective")
            return
        name = str(event.value)
        if name == CUSTOM or name not in self.presets:
            return  # the numbers stay; typing them makes the workload custom
        p, o, c = self.presets[name]
        for (wid, _, _), v in zip(LENGTHS, (p, o, c)):
            inp = self.query_one(f"#{wid}", Input)
            with inp.prevent(Input.Changed):
                inp.value = str(v)
        self.set_error("")
        self._post(replace(self.inputs, preset=name, prompt_len=p, output_len=o, concurrency=c), "preset")

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        if self._debounce is not None:
            self._debounce.stop()
        self._debounce = self.set_timer(0.4, self.apply_fields)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.apply_fields()

    def apply_fields(self) -> Optional[PlanInputs]:
        """Read the typed numbers; post them, or say what is wrong."""
        vals: dict = {}
        for wid, attr, label in LENGTHS:
            text = self.query_one(f"#{wid}", Input).value.strip()
            try:
                v = int(text)
            except ValueError:
                self.set_error(f"{label}: {text!r} is not a whole number")
                return None
            if not 0 < v <= MAX_LEN:
                self.set_error(f"{label} must be 1…{MAX_LEN}, got {v}")
                return None
            vals[attr] = v
        for wid, attr, label in TARGETS:
            text = self.query_one(f"#{wid}", Input).value.strip().removesuffix("ms").strip()
            if not text:
                vals[attr] = None
                continue
            try:
                v = float(text)
            except ValueError:
                self.set_error(f"{label} {text!r}: give a number of milliseconds, or leave it empty")
                return None
            if not v > 0:
                self.set_error(f"a target of {v:g} ms cannot be met by any model: give a positive number")
                return None
            vals[attr] = v
        self.set_error("")
        new = replace(self.inputs, **vals)
        sel = self.query_one("#plan-preset", Select)
        with sel.prevent(Select.Changed):
            sel.value = self._preset_of(new)
        self._post(new, "fields")
        return new
