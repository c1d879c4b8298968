"""The Plan view's answer: the recommended model with its per-phase figures, its memory
headroom and how many sequences it holds, each against dense; the runner-up; the reason."""

from __future__ import annotations

from rich.text import Text
from textual.containers import VerticalScroll
from textual.widgets import Static

from ..display import method_short
from .fmt import family_style, flag_words, latency, loss_text, pct, quality_flags, rgb, speed


def _gb(b: float) -> str:
    """Decimal GB as the core counts them; MB below a GB (small models)."""
    return f"{b / 1e9:.1f} GB" if abs(b) >= 1e9 else f"{b / 1e6:.0f} MB"


def _row(t: Text, label: str, mine: str, dense: str, ratio: str = "") -> None:
    t.append(f"\n  {label:<8}", style="dim")
    t.append(mine, style="bold")
    t.append(f" · dense {dense}")
    if ratio:
        t.append(f" {ratio}", style="green")


def _coll(c) -> str:
    """One rank's collectives in the mean decode step, and their share of it."""
    ms = c.tpot_collectives_ms
    return f"{latency(ms)} {pct(ms / c.tpot_ms, 0)}" if c.tpot_ms else latency(ms)


def plan_text(ps) -> Text:
    """What the panel says about a :class:`~pis_tui.tui.backend.PlanSnapshot`, most important
    first (a short terminal cuts off what comes last; the panel scrolls)."""
    rec, d = ps.rec, ps.result.dense
    t = Text()
    best = rec.best
    if best is None:
        t.append("✗ nothing to recommend", style="bold")
        t.append(f"\n  {rec.reason}", style="italic")
        return t
    g = ps.gain(best)
    t.append("▶ ", style="bold")
    t.append(ps.name(best), style=f"bold {rgb(family_style(best.strategy)[1])}")
    if g is not None:
        t.append(f" {speed(g)}", style="bold green")
        t.append(" e2e" if rec.objective == "latency" else " tok/s")
    t.append(f"\n  loss {loss_text(best.quality)}{quality_flags(best.quality)} · {best.timing_source}")
    method = method_short(best.quality) if best.strategy != "dense" else ""
    if method:
        t.append(f"\n  quality: {method}", style="dim")
    flags = flag_words(best.quality, short=True)
    if flags:
        t.append("\n  ⚠ quality " + ", ".join(flags), style="yellow")
    _row(t, "TTFT", latency(best.ttft_ms), latency(d.ttft_ms), speed(d.ttft_ms / best.ttft_ms))
    _row(t, "TPOT", latency(best.tpot_ms), latency(d.tpot_ms), speed(d.tpot_ms / best.tpot_ms))
    _row(t, "request", latency(best.e2e_ms), latency(d.e2e_ms))
    thr, dthr = best.throughput_tok_s, d.throughput_tok_s
    bb = "/".join(str(k.at_max_batch.batch) for k in best.classes if k.at_max_batch)
    db = "/".join(str(k.at_max_batch.batch) for k in d.classes if k.at_max_batch)
    _row(t, "tok/s", f"{thr:,.0f} @{bb}" if thr else "–", f"{dthr:,.0f} @{db}" if dthr else "none")
    tp = getattr(ps.result, "tp", 1)
    if tp > 1:  # tensor parallelism: the all-reduces' share of a decode step, which pruning
        # keeps (static width: the hidden size stays), drops (depth) or shrinks (hidden slicing)
        _row(t, "TP comm", _coll(best), _coll(d))
    _row(t, "weights" if tp == 1 else "wts/GPU", _gb(best.weights_bytes), _gb(d.weights_bytes))
    _row(t, "KV/tok", f"{best.kv_bytes_per_token / 1024:.0f} KiB", f"{d.kv_bytes_per_token / 1024:.0f} KiB")
    _row(t, "fits", f"{ps.sequences(best)} seqs", ps.sequences(d))
    conc = "/".join(str(k.cls.concurrency) for k in best.classes)
    _row(t, f"free@{conc}", _gb(ps.headroom_bytes(best)), _gb(ps.headroom_bytes(d)))
    spec = best.speculation
    if spec is not None:  # the dense model with a pruned draft: what it rests on
        a = spec.acceptance
        t.append(f"\n  draft {spec.draft} · γ {spec.gamma} · α {a.alpha:.2f} {a.decoding} "
                 f"({a.source}{', borrowed' if a.borrowed_from else ''}) · lossless", style="dim")
        stop = (f"stops paying at batch {spec.breakeven_batch}" if spec.breakeven_batch
                else "pays up to the memory limit")
        _row(t, "spec", stop, "–")
    if tp == 1 and (best.gpus_needed != 1 or d.gpus_needed != 1):
        # the fewest GPUs of this kind that hold each at the concurrency (tensor-parallel)
        def g(n):
            return ">8" if n is None else str(n)
        _row(t, "GPUs", g(best.gpus_needed), g(d.gpus_needed))
    ru = rec.runner_up
    if ru is not None:
        rg = ps.gain(ru)
        t.append(f"\n2nd {ps.name(ru)} {speed(rg) if rg is not None else ''} at {loss_text(ru.quality)}")
        t.append(f"\n  TTFT {latency(ru.ttft_ms)} · TPOT {latency(ru.tpot_ms)} · fits {ps.sequences(ru)}",
                 style="dim")
    t.append(f"\n{rec.reason}", style="dim italic")
    return t


class PlanPanel(VerticalScroll, can_focus=False):
    DEFAULT_CSS = """
    PlanPanel { width: 44; height: 1fr; border: round $primary 50%; padding: 0 1;
                scrollbar-size-vertical: 1; }
    PlanPanel > Static { width: 1fr; height: auto; }
    """

    def __init__(self, **kw):
        super().__init__(**kw)
        self.plain = ""
        self.border_title = "one model for both phases"

    def compose(self):
        yield Static("planning…", id="plan-text")

    def show(self, ps) -> None:
        t = plan_text(ps)
        self.plain = t.plain
        wl = ps.result.workload
        tp = getattr(ps.result, "tp", 1)
        self.border_title = (f"{wl.label()} · loss ≤ {pct(ps.rec.budget)}"
                             + (f" · TP {tp}" if tp > 1 else ""))  # figures per GPU (wts/GPU)
        self.query_one("#plan-text", Static).update(t)

    def show_message(self, text: str) -> None:
        self.plain = text
        self.query_one("#plan-text", Static).update(text)
