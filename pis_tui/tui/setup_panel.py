"""The setup sidebar: model, GPU, budget, scenario (tensor parallelism too), quality protocol
and source, dtype, kernels (the engine).

It owns the user's :class:`~pis_tui.tui.backend.Choices` and posts
:class:`SetupPanel.Changed` with the new choices whenever one field settles (typed numbers
after a short pause, a typed path on ``enter``).  Bad input is shown inline, never raised.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.widgets import Input, Label, Select, Static

from ..errors import PisError
from ..model.spec import preset_names
from .backend import (DTYPES, ENGINE_LABELS, PRECISION_LABELS, MAX_BUDGET, MAX_PPL_BUDGET, Choices,
                      quality_method_options)
from .budget_control import BudgetControl

SCENARIO_FIELDS = (("prefill-batch", "prefill_batch", "batch"), ("prompt-len", "prompt_len", "prompt"),
                   ("decode-batch", "decode_batch", "batch"), ("context-len", "context_len", "context"))
TP_LABELS = (("1 GPU", 1), ("2 GPUs", 2), ("4 GPUs", 4), ("8 GPUs", 8))
QUALITY_LABELS = (("literature priors (cited)", "priors"), ("own CSV file", "csv"),
                  ("measured perplexity (cache)", "measured"))
COMBO_LABELS = (("combinations: loss ×", "multiplicative"), ("combinations: loss +", "additive"),
                ("combinations: off", "off"))
EXTRAPOLATED_LABELS = (("extrapolated: not ranked", "skip"), ("extrapolated: ranked", "rank"))


ERROR_FIELDS = ("model", "gpu", "scenario", "quality", "dtype")  # each has an error line


class SetupPanel(VerticalScroll, can_focus=False):  # its fields take focus, not the panel
    #: escape in a field (a typed path, a number) leaves it: the next `q` quits, not typed
    BINDINGS = [Binding("escape", "app.leave_field", "leave the field", show=False)]
    DEFAULT_CSS = """
    SetupPanel { width: 36; padding: 0 1; border-right: tall $primary 40%;
                 scrollbar-size-vertical: 1; }
    /* a narrow terminal: drawn over the charts (they keep their width), not beside them */
    SetupPanel.-drawer { overlay: screen; width: 50%; margin-top: 2; background: $background; }
    SetupPanel .section { margin-top: 1; text-style: bold; color: $accent; }
    SetupPanel Select { width: 1fr; margin-bottom: 0; }
    SetupPanel Input { width: 1fr; background: $boost; }
    SetupPanel .row { height: 1; margin-bottom: 0; }
    SetupPanel .row Label { width: 9; }
    SetupPanel .error { color: $error; height: auto; }
    SetupPanel .info { color: $text-muted; height: auto; }
    SetupPanel #quality-csv { display: none; }
    SetupPanel.csv #quality-csv { display: block; }
    """

    class Changed(Message):
        def __init__(self, choices: Choices, field: str) -> None:
            super().__init__()
            self.choices = choices
            self.field = field

    def __init__(self, choices: Choices, validate_model: Callable[[str], object], **kw):
        super().__init__(**kw)
        self.choices = choices
        self.validate_model = validate_model
        self._model_options: list[tuple[str, str]] = [(choices.model, choices.model)]
        self._gpu_options: list[tuple[str, str]] = [(choices.gpu, choices.gpu)]
        self._debounce = None
        self._own_scenario_error = False  # the scenario line shows its own input check
        self._texts: dict[str, str] = {}  # what each info/error line shows

    # ------------------------------------------------------------------ layout
    def compose(self) -> ComposeResult:
        c = self.choices
        yield Label("Model", classes="section")
        yield Select(self._model_options, value=c.model, allow_blank=False, compact=True, id="model")
        yield Input(placeholder="or a config path / HF id ⏎", id="model-path", compact=True)
        yield Static("", id="model-error", classes="error")
        yield Label("GPU", classes="section")
        yield Select(self._gpu_options, value=c.gpu, allow_blank=False, compact=True, id="gpu")
        yield Static("", id="gpu-info", classes="info")
        yield Static("", id="gpu-error", classes="error")
        yield Label("Quality budget (+/-)", id="budget-label", classes="section")
        yield BudgetControl(c.active_budget, id="budget")
        yield Label("Prefill · decode", classes="section")
        for wid, attr, label in SCENARIO_FIELDS:
            with Horizontal(classes="row"):
                yield Label(label)
                yield Input(str(getattr(c, attr)), type="integer", id=wid, max_length=7, compact=True)
        with Horizontal(classes="row"):
            yield Label("TP")
            yield Select(TP_LABELS, value=c.tp, allow_blank=False, compact=True, id="tp")
        yield Static("", id="scenario-error", classes="error")
        yield Label("Quality", classes="section")
        yield Select([("LoRA-recovered (study)", "lora"), ("training-free", "training-free")],
                     value=c.protocol, allow_blank=False, compact=True, id="protocol")
        yield Select(QUALITY_LABELS, value=c.quality, allow_blank=False, compact=True, id="quality-source")
        yield Input(c.quality_csv, placeholder="path to your quality CSV ⏎", id="quality-csv", compact=True)
        yield Select(self._method_options(c), value=c.quality_method, allow_blank=False,
                     compact=True, id="quality-method")
        yield Select(COMBO_LABELS, value=c.combos, allow_blank=False, compact=True, id="combos")
        yield Select(EXTRAPOLATED_LABELS, value=c.extrapolated, allow_blank=False, compact=True,
                     id="extrapolated")
        yield Static("", id="quality-error", classes="error")
        yield Label("dtype · precision", classes="section")
        yield Select([(d if d != "auto" else "auto (bf16 GPU / fp32 CPU)", d) for d in DTYPES],
                     value=c.dtype, allow_blank=False, compact=True, id="dtype")
        yield Select(list(PRECISION_LABELS), value=c.precision, allow_blank=False, compact=True,
                     id="precision")
        yield Static("", id="dtype-error", classes="error")
        yield Label("Kernels", classes="section")
        yield Select(list(ENGINE_LABELS), value=c.engine, allow_blank=False, compact=True, id="engine")
        yield Static("m: measure on the local device", id="measure-info", classes="info")

    @staticmethod
    def _method_options(c: Choices) -> list[tuple[str, str]]:
        """mean, best and the protocol's methods; the chosen one kept if it is none of them."""
        opts = quality_method_options(c.protocol)
        if not any(v == c.quality_method for _, v in opts):
            opts.append((f"{c.quality_method} (typed)", c.quality_method))
        return opts

    def _sync_methods(self) -> None:
        s = self.query_one("#quality-method", Select)
        with s.prevent(Select.Changed):
            s.set_options(self._method_options(self.choices))
            s.value = self.choices.quality_method

    def on_mount(self) -> None:
        self.call_after_refresh(self._ready)

    def _ready(self) -> None:
        self._sync_quality_widgets()
        for w in ERROR_FIELDS:  # hide the empty error lines (not one set before this)
            if not self._texts.get(f"#{w}-error"):
                self.set_error(w, "")

    # ------------------------------------------------------------------ options
    def set_options(self, models: list[tuple[str, str]], gpus: list[tuple[str, str]]) -> None:
        c = self.choices
        if not any(v == c.model for _, v in models):
            models = models + [(f"{c.model}  (typed)", c.model)]
        if not any(v == c.gpu for _, v in gpus):
            gpus = gpus + [(c.gpu, c.gpu)]
        self._model_options, self._gpu_options = models, gpus
        ms, gs = self.query_one("#model", Select), self.query_one("#gpu", Select)
        with ms.prevent(Select.Changed), gs.prevent(Select.Changed):
            ms.set_options(models)
            ms.value = c.model
            gs.set_options(gpus)
            gs.value = c.gpu

    def set_choices(self, choices: Choices) -> None:
        """Show `choices` (restored settings, palette commands) without posting Changed."""
        self.choices = choices
        for wid, val in (("#model", choices.model), ("#gpu", choices.gpu),
                         ("#protocol", choices.protocol), ("#quality-source", choices.quality),
                         ("#dtype", choices.dtype), ("#combos", choices.combos),
                         ("#extrapolated", choices.extrapolated), ("#tp", choices.tp),
                         ("#engine", choices.engine), ("#precision", choices.precision)):
            s = self.query_one(wid, Select)
            if wid == "#model" and not any(v == val for _, v in self._model_options):
                self._model_options = self._model_options + [(f"{val}  (typed)", val)]
                with s.prevent(Select.Changed):
                    s.set_options(self._model_options)
            if wid == "#gpu" and not any(v == val for _, v in self._gpu_options):
                self._gpu_options = self._gpu_options + [(val, val)]
                with s.prevent(Select.Changed):
                    s.set_options(self._gpu_options)
            with s.prevent(Select.Changed):
                s.value = val
        for wid, attr, _ in SCENARIO_FIELDS:
            inp = self.query_one(f"#{wid}", Input)
            with inp.prevent(Input.Changed):
                inp.value = str(getattr(choices, attr))
        csv = self.query_one("#quality-csv", Input)
        with csv.prevent(Input.Changed):
            csv.value = choices.quality_csv
        self._sync_methods()
        self._sync_quality_widgets()

    def _sync_quality_widgets(self) -> None:
        c = self.choices
        self.set_class(c.quality == "csv", "csv")
        ppl = c.quality == "measured"
        self.query_one("#budget-label", Label).update(
            "Perplexity budget (+/-)" if ppl else "Quality budget (+/-)")
        self.query_one(BudgetControl).set(c.active_budget, MAX_PPL_BUDGET if ppl else MAX_BUDGET,
                                          "perplexity increase" if ppl else "accuracy drop")

    def set_gpu_info(self, text: str) -> None:
        self._set_text("#gpu-info", text)

    def set_measure_info(self, text: str) -> None:
        self._set_text("#measure-info", text)

    def set_error(self, where: str, text: str) -> None:
        self.set_note(where, f"✗ {text}" if text else "")

    def set_note(self, where: str, text: str) -> None:
        w = self._set_text(f"#{where}-error", text)
        w.display = bool(text)

    def _set_text(self, selector: str, text: str) -> Static:
        """Update a line only when its text changes: every update lays the screen out again
        (these lines wrap, so their height may change), and sweeps call this several times
        a second while measuring."""
        w = self.query_one(selector, Static)
        if self._texts.get(selector) != text:
            self._texts[selector] = text
            w.update(text)
        return w

    # ------------------------------------------------------------------ changes
    def _post(self, choices: Choices, field: str) -> None:
        if choices == self.choices:
            return
        self.choices = choices
        self.post_message(self.Changed(choices, field))

    def on_select_changed(self, event: Select.Changed) -> None:
        event.stop()
        if event.value is Select.BLANK:
            return
        wid = event.select.id
        c = self.choices
        if wid == "model":
            self.set_error("model", "")
            self._post(replace(c, model=str(event.value)), "model")
        elif wid == "gpu":
            self._post(replace(c, gpu=str(event.value)), "gpu")
        elif wid == "protocol":
            new = replace(c, protocol=str(event.value))
            if not any(v == new.quality_method for _, v in quality_method_options(new.protocol)):
                new = replace(new, quality_method="mean")  # that method has no rows here
            self.choices = new
            self._sync_methods()
            self.choices = c
            self._post(new, "protocol")
        elif wid == "quality-method":
            self._post(replace(c, quality_method=str(event.value)), "quality")
        elif wid == "combos":
            self._post(replace(c, combos=str(event.value)), "quality")
        elif wid == "extrapolated":
            self._post(replace(c, extrapolated=str(event.value)), "quality")
        elif wid == "quality-source":
            self.choices = replace(c, quality=str(event.value))
            self._sync_quality_widgets()
            self.set_error("quality", "")
            self.choices = c
            if event.value == "csv" and not c.quality_csv.strip():
                # nothing to compute until a path is given: ask for it, no error yet
                self.set_note("quality", "type the path of your quality CSV below, then Enter")
                self.query_one("#quality-csv", Input).focus()
                return
            self._post(replace(c, quality=str(event.value)), "quality")
        elif wid == "dtype":
            self._post(replace(c, dtype=str(event.value)), "dtype")
        elif wid == "precision":
            self._post(replace(c, precision=str(event.value)), "dtype")
        elif wid == "tp":
            self.set_error("scenario", "")
            self._post(replace(c, tp=int(event.value)), "scenario")
        elif wid == "engine":
            self._post(replace(c, engine=str(event.value)), "dtype")

    def on_budget_control_changed(self, event: BudgetControl.Changed) -> None:
        event.stop()
        self._post(self.choices.with_budget(event.value), "budget")

    def step_budget(self, pct: int) -> None:
        b = self.query_one(BudgetControl)
        b.action_step(pct)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        wid = event.input.id
        if wid == "model-path":
            self.apply_model_path(event.value)
        elif wid == "quality-csv":
            self._post(replace(self.choices, quality_csv=event.value.strip()), "quality")
        elif wid in {w for w, _, _ in SCENARIO_FIELDS}:
            self._apply_scenario()

    def apply_model_path(self, text: str) -> bool:
        ref = text.strip()
        if not ref:
            self.set_error("model", "type a preset, a config.json path or directory, or a cached HF id")
            return False
        try:
            spec = self.validate_model(ref)
        except PisError as e:
            self.set_error("model", str(e))
            return False
        except Exception as e:  # noqa: BLE001 - a bug: shown in the field, never a crash
            self.set_error("model", f"cannot read {ref}: {type(e).__name__}: {e}")
            return False
        self.set_note("model",
            f"✓ {getattr(spec, 'name', ref)}: {getattr(spec, 'num_layers', '?')} layers, "
            f"hidden {getattr(spec, 'hidden_size', '?')}")
        local = Path(ref).expanduser()
        if ref not in preset_names() and local.exists():
            ref = str(local.resolve())  # a path: kept absolute, so a restart elsewhere finds it
        c = replace(self.choices, model=ref)
        self.set_choices(c)
        self.post_message(self.Changed(c, "model"))
        return True

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id in {w for w, _, _ in SCENARIO_FIELDS}:
            event.stop()
            if self._debounce is not None:
                self._debounce.stop()
            self._debounce = self.set_timer(0.4, self._apply_scenario)

    def _apply_scenario(self) -> None:
        vals = {}
        for wid, attr, label in SCENARIO_FIELDS:
            text = self.query_one(f"#{wid}", Input).value.strip()
            try:
                v = int(text)
            except ValueError:
                self._own_scenario_error = True
                self.set_error("scenario", f"{attr.replace('_', ' ')}: {text!r} is not a whole number")
                return
            if not 0 < v <= 1 << 20:
                self._own_scenario_error = True
                self.set_error("scenario", f"{attr.replace('_', ' ')} must be 1…{1 << 20}, got {v}")
                return
            vals[attr] = v
        if self._own_scenario_error:
            # only its own line: a debounce that fires after a failed sweep (e.g. --tp 4 on 14
            # heads) must not wipe the app's error; a changed scenario re-sweeps, and a sweep
            # that succeeds clears the app's line itself
            self._own_scenario_error = False
            self.set_error("scenario", "")
        self._post(replace(self.choices, **vals), "scenario")
