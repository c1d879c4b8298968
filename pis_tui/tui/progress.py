"""The measuring bar: ops done/total, the op being timed, elapsed and ETA (re-measures at the end
of a run: their own count and ETA); hidden when idle."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Label, ProgressBar

from .fmt import duration


class ProfilePanel(Horizontal):
    DEFAULT_CSS = """
    ProfilePanel { height: 1; width: 1fr; display: none; padding: 0 1; }
    ProfilePanel.active { display: block; }
    ProfilePanel.failed #profile-label { color: $error; }
    ProfilePanel #profile-label { width: auto; padding-right: 1; }
    ProfilePanel ProgressBar { width: 34; }
    ProfilePanel #profile-current { width: 1fr; color: $text-muted; }
    """

    def __init__(self, **kw):
        super().__init__(**kw)
        self.last_event: dict = {}
        self.state = "idle"  # idle | running | cancelling | done | cancelled | failed

    def compose(self) -> ComposeResult:
        yield Label("measuring", id="profile-label")
        yield ProgressBar(total=None, show_eta=False, id="profile-bar")
        yield Label("", id="profile-current")

    def start(self, what: str) -> None:
        self.state = "running"
        self.remove_class("failed")
        self.add_class("active")
        # plain Text: "[x cancels]" as a markup string would be swallowed as a style tag
        self.query_one("#profile-label", Label).update(Text(f"measuring {what} · x cancels"))
        self.query_one(ProgressBar).update(total=None, progress=0)
        self.query_one("#profile-current", Label).update("starting the measuring process…")

    def progress(self, ev: dict) -> None:
        self.last_event = ev
        done, total = int(ev.get("done") or 0), ev.get("total")
        eta, current, count = ev.get("eta_s"), ev.get("current", ""), f"{done}/{total or '?'} ops"
        re = ev.get("remeasure")
        if isinstance(re, dict) and re.get("total"):
            # re-measures at the end of a run: their own count and ETA (the run's count sits
            # at its end while they run)
            done, total = int(re.get("done") or 0), re["total"]
            eta, current = re.get("eta_s"), re.get("current", "")
            count = f"re-measuring {done}/{total} {re.get('what') or 'ops'}"
        bar = self.query_one(ProgressBar)
        bar.update(total=float(total) if total else None, progress=float(done))
        # a fixed-size line: no layout pass (one ran for every progress event before); the
        # ETA comes first, where a narrow terminal does not cut it off
        self.query_one("#profile-current", Label).update(
            Text(f"{count} · ETA {duration(eta)} · {current} · "
                 f"{duration(ev.get('elapsed_s'))} elapsed"), layout=False)

    def cancelling(self) -> None:
        self.state = "cancelling"
        self.query_one("#profile-label", Label).update("cancelling…")

    def finish(self, ev: dict) -> str:
        """Show the final event; returns its summary in words."""
        if ev.get("event") == "error":
            self.state = "failed"
            self.add_class("failed")
            msg = f"measuring failed: {ev.get('message', '?')}"
            self.query_one("#profile-label", Label).update("✗ measuring failed")
            self.query_one("#profile-current", Label).update(str(ev.get("message", "")))
            return msg
        self.state = "cancelled" if ev.get("cancelled") else "done"
        parts = [f"{ev[k]} {k}" for k in ("measured", "reused", "failed") if ev.get(k) is not None]
        msg = ("measuring cancelled; what was measured is kept" if ev.get("cancelled")
               else "measuring done") + (f" ({', '.join(parts)})" if parts else "")
        self.query_one("#profile-label", Label).update(msg)
        self.query_one("#profile-current", Label).update("")
        if not ev.get("cancelled"):
            bar = self.query_one(ProgressBar)
            if bar.total:
                bar.update(progress=bar.total)
        self.set_timer(6.0, self._hide)
        return msg

    def _hide(self) -> None:
        if self.state in ("done", "cancelled"):
            self.remove_class("active")
            if self.parent is not None:
                self.parent.remove_class("measuring")
