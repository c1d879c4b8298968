"""Formatting shared by the explorer's views (percent on screen, fractions in files)."""

from __future__ import annotations

from typing import Optional

from .. import families
from ..display import flag_words, latency, loss_text, pct, speed
from ..display import quality_marks as quality_flags

__all__ = ["flag_words", "latency", "loss_text", "pct", "speed", "quality_flags", "family_style",
           "short_name", "family_names", "rgb", "fit", "short_label", "sparsity_cell"]


def _known(name: str) -> bool:
    return families.is_family(name) or families.is_combo(name)


def family_style(name: str) -> tuple[str, tuple]:
    """A family's (or a combination's) chart marker and colour (the registry's): the Pareto and
    Beyond-FLOPs charts, the table and the legend agree."""
    if _known(name):
        f = families.get(name)
        return f.mark, tuple(f.color)
    if name == "speculative":  # the dense model with a pruned draft of itself (plan only)
        return "S", SPECULATIVE_COLOR
    return "?", (255, 255, 255)


#: the Plan view's speculative candidates (not a family: the dense model with a draft)
SPECULATIVE_COLOR = (255, 200, 60)


def short_name(name: str) -> str:
    return families.get(name).short or name if _known(name) else name


def family_names() -> tuple[str, ...]:
    """Every registered family, in the registry's order (dense first), then every combination:
    the series of the charts, the legend and the table's filter."""
    return families.strategy_names()


def sparsity_cell(p) -> str:
    """The asked sparsity in a narrow cell: a combination's parts, "12.5%+25.0%"."""
    parts = getattr(p, "parts", ())
    if parts:
        return "+".join(pct(s) for _, s in parts)
    return pct(p.sparsity)


def fit(options, width: int) -> str:
    """The first of `options` (longest first) that fits in `width` cells, else the last: a
    narrow terminal (80×24) gets a shorter title instead of one cut off with "…"."""
    from rich.cells import cell_len

    options = list(options)
    return next((o for o in options if cell_len(o) <= width), options[-1])


def short_label(scenario, phase: str) -> str:
    """The scenario of a phase in fewer cells: "decode 16 @ 1024" for "decode batch 16 @ 1024"."""
    return scenario.label(phase).replace(" batch ", " ")


def rgb(color: tuple) -> str:
    return "rgb({},{},{})".format(*color)


def quality_source_text(q) -> str:
    if q.value is None:
        return "none"
    src = {"prior": "prior", "user": "own CSV", "measured": "measured ppl",
           "dense": "dense", "composed": f"composed ({getattr(q, 'composed', '') or '?'})"}.get(q.source, q.source)
    if getattr(q, "oracle", False):  # an upper bound on quality, not a measurement of it
        src = "oracle ppl (upper bound)" if q.source == "measured" else f"{src}, oracle"
    if q.citations:
        first = q.citations[0]
        short = first.split("(")[0].strip() if "(" in first else first
        src += f" [{short[:28]}{'…' if len(short) > 28 else ''}]"
    return src



def duration(s: Optional[float]) -> str:
    if s is None or s != s or s < 0:
        return "–"
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def metric_label(metric: str) -> str:
    return "perplexity increase" if metric == "ppl_increase" else "accuracy drop"
