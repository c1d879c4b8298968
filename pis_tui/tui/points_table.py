"""Every point in a table: sortable by column (``o`` cycles the key, ``O`` reverses),
filtered by family (``f``) and phase (``p``); the line under it gives the highlighted
point's sources (citations, notes, which ops were measured)."""

from __future__ import annotations

from typing import Optional

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import DataTable, Static

from ..pricing.sources import RANK
from ..display import interval_text, trust_marks
from ..pricing.sources import ordered
from ..pricing.uncertainty import flag_words as trust_words
from ..display import strategy_name
from .fmt import (family_names, family_style, loss_text, pct, quality_flags, quality_source_text,
                  rgb, short_name, sparsity_cell, speed)

#: (key, header, sort key of a Point)
COLUMNS = (  # what decides first (speedup, loss), so a narrow screen still shows it whole
    ("phase", "phase", lambda p: p.phase),
    ("strategy", "strategy", lambda p: p.strategy),
    ("sparsity", "sparsity", lambda p: (p.sparsity, tuple(getattr(p, "parts", ())))),
    ("speedup", "speedup", lambda p: p.speedup),
    # the quality loss with its marks ("10.9%ᵉᵇˢ"): a header no wider than its cells, so the
    # column is its content's width, and before the interval, so it ends inside the view of a
    # 120-column terminal beside the setup panel and of an 80-column one
    ("loss", "loss", lambda p: (p.quality.value is None, p.quality.value or 0.0)),
    ("interval", "interval", None),  # read beside the speedup, not a sort key
    ("flops", "FLOPs ×", lambda p: p.flops_speedup),
    ("gap", "gap", lambda p: p.gap),
    ("latency", "latency ms", lambda p: p.latency_ms),
    ("achieved", "achieved", lambda p: p.achieved_sparsity),
    ("timing", "timing", lambda p: RANK.get(p.timing_source, len(RANK))),
    ("qsource", "quality source", lambda p: p.quality.source),
)
COLUMN_KEYS = tuple(c[0] for c in COLUMNS)
SORT_KEYS = tuple(c[0] for c in COLUMNS if c[2] is not None)


class RowTable(DataTable):
    """A table of rows: Home and End go to the first and the last row (a DataTable's move to
    the leftmost and rightmost column, which a row cursor does not have)."""

    BINDINGS = [Binding("home", "scroll_top", "first row", show=False),
                Binding("end", "scroll_bottom", "last row", show=False)]


def row_key(p) -> str:
    parts = "".join(f"|{f}@{s:.6f}" for f, s in getattr(p, "parts", ()))
    return f"{p.phase}|{p.strategy}|{p.sparsity:.6f}{parts}"


class PointsView(Vertical):
    DEFAULT_CSS = """
    PointsView { height: 1fr; border: round $primary 40%; }
    PointsView > DataTable { height: 1fr; }
    PointsView > #point-detail { height: auto; max-height: 4; padding: 0 1; color: $text-muted; }
    """

    def __init__(self, **kw):
        super().__init__(**kw)
        self.snapshot = None
        self.family: Optional[str] = None
        self.phase: Optional[str] = None
        self.sort_key = "speedup"
        self.reverse = True
        self.points: dict = {}
        self.shown: list = []

    def compose(self) -> ComposeResult:
        t = RowTable(id="points-table", cursor_type="row", zebra_stripes=True)
        for key, header, _ in COLUMNS:
            t.add_column(header, key=key)
        yield t
        yield Static("", id="point-detail")

    @property
    def table(self) -> DataTable:
        return self.query_one(DataTable)

    def show(self, snapshot) -> None:
        self.snapshot = snapshot
        self._refill()

    def title(self) -> str:
        fam = self.family or "all families"
        ph = self.phase or "both phases"
        arrow = "↓" if self.reverse else "↑"
        return f"{len(self.shown)} points · {fam} · {ph} · sorted by {self.sort_key} {arrow}"

    def _refill(self, keep: Optional[str] = None) -> None:
        if self.snapshot is None:
            return
        t = self.table
        if keep is None and t.row_count:
            try:
                keep = t.coordinate_to_cell_key(t.cursor_coordinate).row_key.value
            except Exception:  # noqa: BLE001 - empty or stale cursor
                keep = None
        pts = [p for p in self.snapshot.result.points
               if self.family in (None, p.strategy) and self.phase in (None, p.phase)]
        sk = dict((c[0], c[2]) for c in COLUMNS)[self.sort_key]
        pts.sort(key=lambda p: (sk(p), p.phase, p.strategy, p.sparsity, tuple(p.parts)),
                 reverse=self.reverse)
        self.points = {row_key(p): p for p in pts}
        self.shown = pts
        t.clear()
        for p in pts:
            color = rgb(family_style(p.strategy)[1])
            q = p.quality
            cells = {
                "phase": p.phase,
                "strategy": Text(short_name(p.strategy) if p.parts else p.strategy, style=color),
                "sparsity": Text(sparsity_cell(p), justify="right"),
                "speedup": Text(speed(p.speedup) + trust_marks(p), justify="right",
                                style="yellow" if p.flags else "bold" if p.speedup > 1 else ""),
                "interval": Text(interval_text(p), justify="right", style="dim"),
                "loss": Text(loss_text(q) + quality_flags(q), justify="right"),
                "flops": Text(speed(p.flops_speedup), justify="right"),
                "gap": Text(f"{round(100 * p.gap) + 0:+d}%", justify="right"),  # never "-0%"
                "latency": Text(f"{p.latency_ms:.3f}", justify="right"),
                "achieved": Text(pct(p.achieved_sparsity), justify="right"),
                "timing": p.timing_source,
                "qsource": quality_source_text(q),
            }
            t.add_row(*(cells[k] for k in COLUMN_KEYS), key=row_key(p))
        if keep and keep in self.points:
            self.select_key(keep)
        self.border_title = self.title()
        self._detail()

    def select_key(self, key: str) -> None:
        t = self.table
        try:
            t.move_cursor(row=t.get_row_index(key))
        except Exception:  # noqa: BLE001 - row filtered out
            pass

    def current(self):
        t = self.table
        if not t.row_count:
            return None
        try:
            key = t.coordinate_to_cell_key(t.cursor_coordinate).row_key.value
        except Exception:  # noqa: BLE001
            return None
        return self.points.get(key)

    def cycle_family(self) -> str:
        fams = [None] + [f for f in family_names() if f != "dense" and (
            self.snapshot is None or any(p.strategy == f for p in self.snapshot.result.points))]
        i = fams.index(self.family) if self.family in fams else 0
        self.family = fams[(i + 1) % len(fams)]
        self._refill()
        return self.family or "all families"

    def cycle_phase(self) -> str:
        order = [None, "prefill", "decode"]
        self.phase = order[(order.index(self.phase) + 1) % 3]
        self._refill()
        return self.phase or "both phases"

    def cycle_sort(self) -> str:
        i = SORT_KEYS.index(self.sort_key)
        self.sort_key = SORT_KEYS[(i + 1) % len(SORT_KEYS)]
        self.reverse = self.sort_key in ("speedup", "flops", "achieved", "sparsity")
        self._refill()
        return self.sort_key

    def toggle_reverse(self) -> None:
        self.reverse = not self.reverse
        self._refill()

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._detail()

    def _detail(self) -> None:
        p = self.current()
        d = self.query_one("#point-detail", Static)
        if p is None or self.snapshot is None:
            d.update("")
            return
        q = p.quality
        t = Text()
        name = strategy_name(p, achieved=False) if p.parts else f"{p.strategy} {pct(p.sparsity)}"
        t.append(f"{name} ({p.phase}): ", style="bold")
        try:
            e = self.snapshot.result.estimate_for(p.strategy, p.sparsity, p.phase, p.parts)
            srcs = ", ".join(f"{v['ops']} {k}" for k, v in ordered(e.source_counts))
            t.append(f"ops timed: {srcs}. ")
        except (KeyError, AttributeError, TypeError):
            pass
        if p.strategy != "dense" and p.speedup_lo is not None:
            t.append(f"Speedup {interval_text(p)}× (about 95 %)"
                     + (f", ceiling {speed(p.ceiling)}. " if p.ceiling else ". "))
        if p.flags:
            t.append("⚠ " + "; ".join(trust_words(p)) + ": not recommended. ", style="yellow")
        if getattr(q, "method", ""):
            t.append(f"Quality: {q.method}. ")
        if q.note:
            t.append(q.note + ". ")
        if q.citations:
            t.append("Source: " + "; ".join(q.citations), style="italic")
        t.append("  [enter/d: op list]", style="dim")
        d.update(t)
