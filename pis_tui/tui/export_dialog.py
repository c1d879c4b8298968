"""``e`` / ``E``: where to write the JSON / CSV; an existing file is overwritten only when
confirmed; errors stay in the dialog."""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, Static

from ..errors import PisError


class ExportDialog(ModalScreen):
    """Dismisses with the path written, or None when cancelled."""

    BINDINGS = [Binding("escape", "cancel", "cancel")]
    DEFAULT_CSS = """
    ExportDialog { align: center middle; }
    ExportDialog > Vertical {
        width: 80%; max-width: 100; height: auto; border: thick $primary;
        background: $surface; padding: 1 2;
    }
    ExportDialog #export-error { color: $error; height: auto; }
    ExportDialog #export-hint { color: $text-muted; }
    """

    def __init__(self, default_path: str, write, fmt: str = "json"):
        super().__init__()
        self.default_path = default_path
        self.write = write  # callable(path, fmt) -> Path, raises PisError
        self.fmt = fmt  # what a name without .json/.csv gets
        self._overwrite_ok = ""  # a path the user confirmed overwriting

    def compose(self) -> ComposeResult:
        with Vertical() as v:
            v.border_title = "export"
            yield Label("Write results to (enter confirms, esc cancels):")
            yield Input(self.default_path, id="export-path", select_on_focus=False)
            what = ("the points as CSV (a name ending in .json writes the pis-tui/1 JSON)"
                    if self.fmt == "csv" else "pis-tui/1 JSON with the recommendations (a name "
                    "ending in .csv writes the points as CSV)")
            yield Static(f"Writes {what}. Quality loss is a fraction in files.", id="export-hint")
            yield Static("", id="export-error")

    def on_mount(self) -> None:
        inp = self.query_one(Input)
        inp.focus()
        inp.cursor_position = len(inp.value)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        path = event.value.strip()
        err = self.query_one("#export-error", Static)
        if not path:
            err.update("give a file name")
            return
        target = Path(path).expanduser()
        if target.is_file() and self._overwrite_ok != path:
            self._overwrite_ok = path
            err.update(f"{target} exists: enter again to overwrite it, or change the name")
            return
        try:
            written = self.write(path, self.fmt)
        except PisError as e:
            err.update(f"✗ {e}")
            return
        except OSError as e:
            err.update(f"✗ {path}: {e.strerror or e}")
            return
        self.dismiss(str(written))

    def action_cancel(self) -> None:
        self.dismiss(None)
