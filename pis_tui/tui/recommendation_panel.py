"""The recommendation of one phase: strategy, sparsity, speedup, loss, runner-up and why."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from .fmt import family_style, flag_words, latency, loss_text, pct, rgb, speed


def panel_title(snapshot, phase: str) -> str:
    label = snapshot.result.scenario.label(phase)
    short = "ppl" if snapshot.metric == "ppl_increase" else "loss"
    return f"{label} · {short} ≤ {pct(snapshot.choices.active_budget)}"


def recommendation_text(snapshot, phase: str) -> Text:
    """Best (or the core's reason for keeping the dense model), runner-up with the margin,
    then where the best's figures come from (timing source, quality flags)."""
    rec = snapshot.recs.get(phase)
    t = Text()
    if rec is None:
        t.append("no recommendation")
        return t
    best = rec.best
    if best is None:
        t.append("▶ keep the dense model", style="bold")
    else:
        color = rgb(family_style(best.strategy)[1])
        t.append("▶ ", style="bold")
        t.append(best.strategy, style=f"bold {color}")
        if best.strategy != "dense":
            t.append(f" {pct(best.achieved_sparsity)}", style="bold")
        t.append(f" {speed(best.speedup)}", style="bold green")
        t.append(f" loss {loss_text(best.quality)}")
    # line by line in order of importance: the panels are narrow (two side by side, ~36
    # columns inside at 80×24) and a short terminal cuts off what comes last
    if best is None or best.strategy == "dense":
        t.append(f"\n  {rec.reason}", style="italic")
    ru = rec.runner_up
    if ru is not None:
        margin = f" ({rec.margin:+.2f}×)" if rec.margin is not None else ""
        t.append(f"\n  2nd {ru.strategy} {pct(ru.achieved_sparsity)} {speed(ru.speedup)} "
                 f"at {loss_text(ru.quality)}{margin}")
    if best is not None:
        t.append(f"\n  {latency(best.latency_ms)} {best.timing_source}", style="dim")
        flags = flag_words(best.quality, short=True)
        if flags:
            t.append(" ⚠ quality " + ", ".join(flags), style="yellow")
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
