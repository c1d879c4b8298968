"""The recommendation of one phase: strategy, sparsity, speedup, loss, runner-up and why."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from .fmt import FAMILY_STYLE, flag_words, loss_text, pct, rgb, speed


def panel_title(snapshot, phase: str) -> str:
    label = snapshot.result.scenario.label(phase)
    short = "ppl" if snapshot.metric == "ppl_increase" else "loss"
    return f"{label} · {short} ≤ {pct(snapshot.choices.active_budget)}"


def recommendation_text(snapshot, phase: str) -> Text:
    """Best (with quality flags), runner-up with the margin, then the core's reason."""
    rec = snapshot.recs.get(phase)
    t = Text()
    if rec is None:
        t.append("no recommendation")
        return t
    best = rec.best
    if best is None:
        t.append("▶ keep the dense model", style="bold")
    else:
        color = rgb(FAMILY_STYLE.get(best.strategy, ("?", (255, 255, 255)))[1])
        t.append("▶ ", style="bold")
        t.append(best.strategy, style=f"bold {color}")
        if best.strategy != "dense":
            t.append(f" {pct(best.achieved_sparsity)}", style="bold")
        t.append(f" {speed(best.speedup)}", style="bold green")
        t.append(f" loss {loss_text(best.quality)}")
        t.append(f" · {best.latency_ms:.3g} ms {best.timing_source}", style="dim")
        flags = flag_words(best.quality)
        if flags:
            t.append(" ⚠ " + ", ".join(flags), style="yellow")
    ru = rec.runner_up
    if ru is not None:
        margin = f", {rec.margin:+.2f}×" if rec.margin is not None else ""
        t.append(f"\n  runner-up {ru.strategy} {pct(ru.achieved_sparsity)} {speed(ru.speedup)} "
                 f"at {loss_text(ru.quality)}{margin}")
    if best is None or best.strategy == "dense":
        t.append(f"\n  {rec.reason}", style="italic")
    return t


class RecommendationPanel(Static):
    DEFAULT_CSS = """
    RecommendationPanel {
        width: 1fr; height: 6;
        border: round $primary 50%; padding: 0 1;
    }
    """

    def __init__(self, phase: str, **kw):
        super().__init__(f"{phase}: estimating…", **kw)
        self.phase = phase
        self.border_title = f"{phase} recommendation"
        self.plain = ""

    def show(self, snapshot) -> None:
        t = recommendation_text(snapshot, self.phase)
        self.plain = t.plain
        self.border_title = panel_title(snapshot, self.phase)
        self.update(t, layout=False)  # fixed size: no layout pass
