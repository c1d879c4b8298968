"""Drill-down into one point: what the family did to M, N and K, and where the time goes."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Static

from .fmt import latency, loss_text, pct, speed


def _bar(share: float, width: int = 12) -> str:
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
    """

    def __init__(self, snapshot, point):
        super().__init__()
        self.snapshot = snapshot
        self.point = point
        self.by_time = True

    def compose(self) -> ComposeResult:
        with Vertical() as v:
            v.border_title = f"op list · {self.point.strategy} {pct(self.point.sparsity)} · {self.point.phase}"
            v.border_subtitle = "esc close · o order by time/position"
            yield Static(self._head(), id="ops-head")
            yield DataTable(id="ops-table", cursor_type="row", zebra_stripes=True)

    def _head(self) -> Text:
        from .. import families

        p, r = self.point, self.snapshot.result
        t = Text()
        t.append(f"{r.spec.name}", style="bold")
        t.append(f" · {p.strategy} ({families.get(p.strategy).axis if families.is_family(p.strategy) else '?'}) asked {pct(p.sparsity)}, "
                 f"achieved {pct(p.achieved_sparsity)} · {r.scenario.label(p.phase)} · "
                 f"{r.device.display_name} · {r.scenario.dtype} · {r.scenario.engine} kernels\n")
        t.append(f"latency {latency(p.latency_ms)} vs dense {latency(p.dense_latency_ms)} → "
                 f"{speed(p.speedup)} (FLOPs predict {speed(p.flops_speedup)}) · quality loss "
                 f"{loss_text(p.quality)} · timing {p.timing_source}\n", style="bold")
        po = r.phase_ops.get((p.strategy, p.sparsity, p.phase))
        if po is not None:
            for k, v in po.dims:
                t.append(f"  {k}: {v}\n")
            for n in po.notes:
                t.append(f"  note: {n}\n", style="dim")
        return t

    def on_mount(self) -> None:
        t = self.query_one(DataTable)
        for c in ("op", "kind", "shape", "count", "kernels", "GFLOP", "MB", "ms/call", "total ms", "share",
                  "", "source"):
            t.add_column(c, key=c or "bar")
        self._fill()
        t.focus()

    def _fill(self) -> None:
        t = self.query_one(DataTable)
        t.clear()
        p, r = self.point, self.snapshot.result
        try:
            est = r.estimate_for(p.strategy, p.sparsity, p.phase)
        except KeyError:
            return
        total = est.latency_ms or 1.0
        ops = list(est.ops)
        if self.by_time:
            ops.sort(key=lambda o: -o.total_ms)
        for i, po in enumerate(ops):
            o = po.op
            kind = "attention" if o.op_type == "attention" else getattr(o, "kind", o.op_type)
            share = po.total_ms / total
            t.add_row(o.name, kind, o.shape(), f"{o.count:g}",
                      "" if po.kernels is None else str(po.kernels), f"{o.flops() / 1e9:.3f}",
                      f"{o.bytes() / 1e6:.2f}", f"{po.ms_per_call:.4f}", f"{po.total_ms:.3f}",
                      pct(share), _bar(share), po.source + (f" ({po.note})" if po.note else ""),
                      key=str(i))

    def action_toggle_order(self) -> None:
        self.by_time = not self.by_time
        self._fill()

    def action_dismiss(self) -> None:  # type: ignore[override]
        self.dismiss(None)
