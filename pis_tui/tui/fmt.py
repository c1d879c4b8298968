"""Formatting shared by the explorer's views (percent on screen, fractions in files)."""

from __future__ import annotations

from typing import Optional

from ..display import flag_words, latency, loss_text, pct, speed
from ..display import quality_marks as quality_flags

__all__ = ["flag_words", "latency", "loss_text", "pct", "speed", "quality_flags"]

#: one marker and colour per family: the Pareto and Beyond-FLOPs charts and the legend agree
FAMILY_STYLE = {
    "dense": ("D", (220, 220, 220)),
    "static_depth": ("L", (230, 85, 75)),
    "dynamic_depth": ("R", (240, 160, 60)),
    "static_width": ("W", (90, 200, 90)),
    "static_width_hidden": ("H", (70, 200, 200)),
    "semi_structured_24": ("2", (210, 110, 220)),
    "unstructured": ("U", (230, 220, 80)),
    "low_rank": ("K", (100, 150, 255)),
    "dynamic_sparse_attention": ("A", (170, 170, 170)),
}


def rgb(color: tuple) -> str:
    return "rgb({},{},{})".format(*color)

SHORT = {
    "dense": "dense",
    "static_depth": "depth",
    "dynamic_depth": "dyn-depth",
    "static_width": "width",
    "static_width_hidden": "width-hid",
    "semi_structured_24": "2:4",
    "unstructured": "unstruct",
    "low_rank": "low-rank",
    "dynamic_sparse_attention": "dyn-attn",
}






def quality_source_text(q) -> str:
    if q.value is None:
        return "none"
    src = {"prior": "prior", "user": "own CSV", "measured": "measured ppl",
           "dense": "dense"}.get(q.source, q.source)
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
