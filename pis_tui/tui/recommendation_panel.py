"""The recommendation of one phase: strategy, sparsity, speedup, loss, runner-up and why."""

from __future__ import annotations

from typing import Optional

from rich.cells import cell_len
from rich.text import Text
from textual.widgets import Static

from ..display import interval_text, method_short
from .fmt import (family_style, fit, flag_words, latency, loss_text, pct, quality_flags, rgb,
                  short_label, short_name, speed)

def panel_title(snapshot, phase: str, width: Optional[int] = None) -> str:
    """Scenario and budget, shortened to fit a border `width` cells wide."""
    scen = snapshot.result.scenario
    short = "ppl" if snapshot.metric == "ppl_increase" else "loss"
    budget = pct(snapshot.choices.active_budget)
    return fit([f"{scen.label(phase)} · {short} ≤ {budget}",
                f"{short_label(scen, phase)} · {short} ≤ {budget}", f"{phase} · {short} ≤ {budget}"],
               10**6 if width is None else width - 6)


def _sparsity(p) -> str:
    """The achieved sparsity; a combination's parts', "12.5+11.5%"."""
    if getattr(p, "parts", ()):
        vals = p.part_achieved or tuple(s for _, s in p.parts)
        return "+".join(f"{100 * v:.1f}" for v in vals) + "%"
    return pct(p.achieved_sparsity)


def _names(strategy: str) -> list[str]:
    """The family's name, then its short name (the registry's) where that is shorter."""
    short = short_name(strategy)
    return [strategy] + ([short] if short and cell_len(short) < cell_len(strategy) else [])


def recommendation_text(snapshot, phase: str, width: Optional[int] = None,
                        height: Optional[int] = None) -> Text:
    """Best (or the core's reason for keeping the dense model), runner-up with the margin,
    then where the best's figures come from (timing source, quality flags).

    The first line (family, sparsity, speedup, loss) always fits whole in `width` cells (the
    panel's text width): it falls back to the family's short name and drops the word "loss";
    a combination too long even so ("▶ dyn-depth+width 25.0+12.5% 1.14× 10.1%" in 36 cells)
    breaks before its figures, speedup and loss together on the next line.  The runner-up
    never wraps mid-line either (its loss alone on a line): too long, it breaks before its
    name ("2nd (+0.05×)", then name, sparsity, speedup and loss), else before its figures.
    The rest is whole while the panel has `height` lines for it, else the runner-up and
    source lines are shortened (only the dense model's reason still wraps).  The panels are
    narrow (two side by side, 36 cells of text at 80×24) and a short terminal gives them
    three lines."""
    if width is None:
        return _text(snapshot, phase, None, 0)
    for level in (0, 1, 2):
        t = _text(snapshot, phase, width, level)
        if height is None or level == 2 or _lines(t, width) <= height:
            return t
    return t  # pragma: no cover


def _lines(t: Text, width: int) -> int:
    from rich.console import Console

    return len(t.wrap(Console(width=width, legacy_windows=False), width))


def _text(snapshot, phase: str, width: Optional[int], level: int) -> Text:
    """`level` 0: the rest whole (it may wrap); 1: the runner-up shortened to one line; 2: the
    source line too."""
    room = 10**6 if width is None else max(width, 1)
    rec = snapshot.recs.get(phase)
    t = Text()
    if rec is None:
        t.append("no recommendation")
        return t
    best = rec.best
    if best is None:
        t.append("▶ keep the dense model", style="bold")
    else:
        sparsity = f" {_sparsity(best)}" if best.strategy != "dense" else ""
        figures = f"{sparsity} {speed(best.speedup)}"
        loss = loss_text(best.quality)
        variants = [(n, w) for n in _names(best.strategy) for w in ("loss ", "")]
        fits = next(((n, w) for n, w in variants
                     if cell_len(f"▶ {n}{figures} {w}{loss}") <= room), None)
        # too long even short (a combination's name and parts): break before the figures,
        # the speedup and its loss together on the next line
        name, word = fits or (variants[-1][0], "loss ")
        t.append("▶ ", style="bold")
        t.append(name, style=f"bold {rgb(family_style(best.strategy)[1])}")
        t.append(sparsity, style="bold")
        t.append(f" {speed(best.speedup)}" if fits else f"\n  {speed(best.speedup)}",
                 style="bold green")
        t.append(f" {word}{loss}")
    if best is None or best.strategy == "dense":
        t.append(f"\n  {rec.reason}", style="italic")  # the rest: wraps
    ru = rec.runner_up
    if ru is not None:
        t.append("\n" + _runner_up(rec, room, whole=level < 1))
    if best is not None:
        src = f"  {latency(best.latency_ms)} {best.timing_source}"
        flags = flag_words(best.quality, short=True)
        marks = quality_flags(best.quality)
        warn = [f" ⚠ quality {', '.join(flags)}", f" ⚠ {', '.join(flags)}",
                f" ⚠ quality{marks}" if marks else " ⚠ quality"] if flags else [""]
        if best.strategy != "dense" and best.speedup_lo is not None:  # where it fits the warning
            with_interval = src + f" · {interval_text(best)}×"
            if level < 2 or cell_len(with_interval + warn[-1]) <= room:
                src = with_interval
        method = method_short(best.quality) if best.strategy != "dense" else ""
        if method and level > 0 and cell_len(src + f" · {method}" + warn[-1]) <= room:
            src, method = src + f" · {method}", ""  # the method behind the quality figure
        t.append("\n" + src, style="dim")
        if flags:
            t.append(warn[0] if level < 2 else fit(warn, room - cell_len(src)), style="yellow")
        if method and level == 0:
            t.append(f"\n  quality: {method}", style="dim")
    passed = getattr(rec, "passed_over", ())
    if passed and best is not None:  # what the recommendation gave up, said where it fits
        p, pr = passed[0]
        d = (p.quality.value or 0.0) - (best.quality.value or 0.0)
        n = len(passed)
        more = f" (+{n - 1} more)" if n > 1 else ""
        name = f"{_names(p.strategy)[-1]}{_sparsity(p)}"
        v = {"a": "surely faster", "tie": "a tie", "b": "slower"}[pr.verdict]
        t.append("\n" + fit([f"  ↑ passed over {name} {pr.words()}, {v}, +{d:.1%} loss{more}",
                             f"  ↑ passed over {name} {pr.ratio:.2f}×, {v}, +{d:.1%}{more}",
                             f"  ↑ {n} faster, {v}: lower loss wins", f"  ↑ {n} faster"], room),
                 style="dim")
    faster = [p for p in rec.skipped if best is None or p.speedup > best.speedup]
    if faster:
        n = len(faster)
        t.append("\n" + fit([f"  ↑ {n} faster point{'s' * (n > 1)} skipped: flagged (see the table)",
                             f"  ↑ {n} faster skipped (flagged)", f"  ↑ {n} flagged"], room),
                 style="yellow")
    faster_x = [p for p in getattr(rec, "skipped_extrapolated", ())
                if best is None or p.speedup > best.speedup]
    if faster_x:
        n = len(faster_x)
        t.append("\n" + fit([f"  ↑ {n} faster skipped: quality extrapolated (see the table)",
                             f"  ↑ {n} faster skipped (extrapolated)", f"  ↑ {n} extrapolated"], room),
                 style="yellow")
    return t


def _runner_up(rec, room: int, whole: bool) -> str:
    """The runner-up, its margin over the best: on one line if it fits (`whole`: as it is,
    else shortened: the short name, no "at", no margin), else broken before its name (the
    margin on the first line), else before its figures.  Never wrapped mid-line, so its loss
    never stands alone."""
    ru = rec.runner_up
    margin = f" ({rec.margin:+.2f}×)" if rec.margin is not None else ""
    sp, figs, loss = _sparsity(ru), speed(ru.speedup), loss_text(ru.quality)
    names = _names(ru.strategy)
    lines = [f"  2nd {n} {sp} {figs}{at}{loss}{m}"
             for n in names for at, m in ((" at ", margin), (" ", margin), (" ", ""))]
    one = next((x for x in (lines[:1] if whole else lines) if cell_len(x) <= room), None)
    if one is not None:
        return one
    bodies = [f"  {n} {sp} {figs}{at}{loss}" for n in names for at in (" at ", " ")]
    body = next((b for b in bodies if cell_len(b) <= room), None)
    if body is not None and cell_len(f"  2nd{margin}") <= room:
        return f"  2nd{margin}\n{body}"
    return f"  2nd {names[-1]} {sp}\n" + fit([f"    {figs} {loss}{margin}", f"    {figs} {loss}"], room)


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
        self.snapshot = None
        self._no_estimate = ""  # where the reason is, while there is no estimate

    def show(self, snapshot) -> None:
        self.snapshot = snapshot
        self._no_estimate = ""
        t = recommendation_text(snapshot, self.phase, self.size.width or None,  # the text's size
                                self.size.height or None)
        self.plain = t.plain
        self.border_title = panel_title(snapshot, self.phase, self.outer_size.width or None)
        self.update(t, layout=False)  # fixed size: no layout pass

    def show_error(self, where: str = "the status line") -> None:
        """No estimate to recommend from (the sweep failed before any result): say so, rather
        than "estimating…" for ever."""
        self.snapshot, self._no_estimate = None, where
        line, why = f"{self.phase}: no estimate", f"(see {where})"
        gap = " " if cell_len(f"{line} {why}") <= (self.size.width or 10**6) else "\n"
        t = Text(f"{line}{gap}{why}", style="italic")
        self.plain = t.plain
        self.border_title = f"{self.phase} recommendation"
        self.update(t)

    def on_resize(self, event) -> None:
        if self.snapshot is not None:
            self.show(self.snapshot)
        elif self._no_estimate:
            self.show_error(self._no_estimate)
