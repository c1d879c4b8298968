"""Drill-down into one point: what the family did to M, N and K, and where the time goes.

Where the time goes comes first (total ms, share, ms per call, calls) and fits a 120-column
terminal with the op's kind, shape (wrapped when long) and timing source; the roofline's inputs
(kernels, GFLOP, MB) follow, and the line under the table gives all of the highlighted op's,
with its source's note."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Static

from .fmt import latency, loss_text, pct, speed
from .points_table import RowTable


#: (key, header, fixed width or None): where the time goes first
COLUMNS = (("op", "op", None), ("total", "total ms", None), ("share", "share", None),
           ("per_call", "ms/call", None), ("count", "count", None), ("kind", "kind", None),
           ("shape", "shape", 21),  # long ones (attention's) wrap
           ("source", "source", None), ("kernels", "kernels", None), ("gflop", "GFLOP", None),
           ("mb", "MB", None))
BAR = 6


def _bar(share: float, width: int = BAR) -> str:
    full = share * width
    n = int(full)
    part = " ▏▎▍▌▋▊▉"[int((full - n) * 8)] if n < width else ""
    return ("█" * n + part).ljust(width)


class OpsScreen(ModalScreen):
    """``escape`` or ``q`` closes; ``o`` toggles sorting by time or by order."""

    BINDINGS = [
        Binding("escape,q,d", "dismiss", "close"),
        Binding("o", "toggle_order", "time/order"),
    ]
    DEFAULT_CSS = """
    OpsScreen { align: center middle; }
    OpsScreen > Vertical {
        width: 96%; height: 92%; border: thick $primary; background: $surface; padding: 0 1;
    }
    OpsScreen #ops-head { height: auto; max-height: 10; }
    OpsScreen DataTable { height: 1fr; }
    OpsScreen #ops-detail { height: auto; max-height: 3; color: $text-muted; }
    """

    def __init__(self, snapshot, point):
        super().__init__()
        self.snapshot = snapshot
        self.point = point
        self.by_time = True

    def compose(self) -> ComposeResult:
        with Vertical() as v:
            v.border_title = f"op list · {self._point_name()} · {self.point.phase}"
            v.border_subtitle = "esc close · o order by time/position"
            yield Static(self._head(), id="ops-head")
            yield RowTable(id="ops-table", cursor_type="row", zebra_stripes=True)
            yield Static("", id="ops-detail")

    def _point_name(self) -> str:
        from ..display import strategy_name

        p = self.point
        return strategy_name(p, achieved=False) if p.parts else f"{p.strategy} {pct(p.sparsity)}"

    def _head(self) -> Text:
        from .. import families
        from ..display import served_text

        p, r = self.point, self.snapshot.result
        known = families.is_family(p.strategy) or families.is_combo(p.strategy)
        t = Text()
        t.append(f"{r.spec.name}", style="bold")
        t.append(f" · {p.strategy} ({families.get(p.strategy).axis if known else '?'}) asked {pct(p.sparsity)}, "
                 f"achieved {pct(p.achieved_sparsity)} · {r.scenario.label(p.phase)} · "
                 f"{r.device.display_name} · {served_text(r.scenario.dtype, r.scenario.precision)} · {r.scenario.engine} kernels\n")
        t.append(f"latency {latency(p.latency_ms)} vs dense {latency(p.dense_latency_ms)} → "
                 f"{speed(p.speedup)} (FLOPs predict {speed(p.flops_speedup)}) · quality loss "
                 f"{loss_text(p.quality)} · timing {p.timing_source}\n", style="bold")
        po = r.ops_for(p) if hasattr(r, "ops_for") else r.phase_ops.get((p.strategy, p.sparsity, p.phase))
        if po is not None:
            for k, v in po.dims:
                t.append(f"  {k}: {v}\n")
            for n in po.notes:
                t.append(f"  note: {n}\n", style="dim")
        return t

    def on_mount(self) -> None:
        t = self.query_one(DataTable)
        for key, header, width in COLUMNS:
            t.add_column(header, key=key, width=width)
        self._fill()
        t.focus()

    def _fill(self) -> None:
        t = self.query_one(DataTable)
        t.clear()
        self.rows: dict = {}
        p, r = self.point, self.snapshot.result
        try:
            est = r.estimate_for(p.strategy, p.sparsity, p.phase, p.parts)
        except KeyError:
            return
        total = est.latency_ms or 1.0
        ops = list(est.ops)
        if self.by_time:
            ops.sort(key=lambda o: -o.total_ms)
        right = {"total", "per_call", "count", "kernels", "gflop", "mb"}
        top = max((po.total_ms for po in ops), default=0.0) / total or 1.0
        for i, po in enumerate(ops):
            o = po.op
            share = po.total_ms / total
            cells = {"op": o.name, "total": f"{po.total_ms:.3f}",  # the bar: against the top op's
                     "share": f"{pct(share):>6} {_bar(share / top)}", "per_call": f"{po.ms_per_call:.4f}",
                     "count": f"{o.count:g}", "kind": self._kind(o), "shape": o.shape(),
                     "source": po.source + ("*" if po.note else ""),
                     "kernels": "" if po.kernels is None else str(po.kernels),
                     "gflop": f"{o.flops() / 1e9:.3f}", "mb": f"{o.bytes() / 1e6:.2f}"}
            self.rows[str(i)] = po
            t.add_row(*(Text(cells[k], justify="right" if k in right else "left")
                        for k, _, _ in COLUMNS), key=str(i), height=None)
        self._detail()

    @staticmethod
    def _kind(o) -> str:
        if o.op_type == "grouped_gemm":
            return "grouped"
        return "attention" if o.op_type == "attention" else getattr(o, "kind", o.op_type)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._detail()

    def _detail(self) -> None:
        """The highlighted op whole: what the columns past the view hold, and its source's note
        (a "*" in the source column)."""
        t = self.query_one(DataTable)
        d = self.query_one("#ops-detail", Static)
        try:
            po = self.rows.get(t.coordinate_to_cell_key(t.cursor_coordinate).row_key.value)
        except Exception:  # noqa: BLE001 - empty table
            po = None
        if po is None:
            d.update("")
            return
        o = po.op
        kernels = "" if po.kernels is None else f" × {po.kernels} kernel{'s' * (po.kernels != 1)}"
        d.update(Text(f"{o.name}: {self._kind(o)} {o.shape()} · {o.count:g} call{'s' * (o.count != 1)}"
                      f"{kernels} · {o.flops() / 1e9:.3f} GFLOP · {o.bytes() / 1e6:.2f} MB · "
                      f"{po.source}" + (f" ({po.note})" if po.note else "")))

    def action_toggle_order(self) -> None:
        self.by_time = not self.by_time
        self._fill()

    def action_dismiss(self) -> None:  # type: ignore[override]
        self.dismiss(None)
