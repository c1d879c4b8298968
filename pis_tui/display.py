"""How figures read on screen, shared by the CLI tables and the explorer (no textual here).

Fractions in files, percentages on screen; superscript marks for quality caveats.
"""

from __future__ import annotations

from typing import Optional


def pct(x: Optional[float], nd: int = 1) -> str:
    return "–" if x is None else f"{100 * x:.{nd}f}%"


def speed(x: Optional[float]) -> str:
    return "–" if x is None else f"{x:.2f}×"


def latency(ms: Optional[float]) -> str:
    """3 significant digits, never in e-notation: 0.0123 ms, 576 ms, 1.01 s."""
    if ms is None:
        return "–"
    if ms >= 1000:
        return f"{ms / 1000:.3g} s"
    return f"{ms:.3g} ms" if ms >= 0.001 else f"{ms:.2e} ms"


def sparsity_text(p) -> str:
    """The achieved sparsity, after the asked one where they differ: the family rounds to what
    the model allows (whole KV groups, aligned channels, whole layers, tokens, blocks), so
    qwen2.5-0.5b's heads asked 25 % are cut by 50 %: "25.0% → 26.9%".  A combination: each
    part's, "12.5% + 25.0% → 26.9%"."""
    parts = getattr(p, "parts", ())
    if parts:
        got_parts = getattr(p, "part_achieved", ()) or tuple(s for _, s in parts)
        asked = " + ".join(pct(s) for _, s in parts)
        got = " + ".join(pct(a) for a in got_parts)
        return got if asked == got else f"{asked} → {got}"
    asked, got = pct(p.sparsity), pct(p.achieved_sparsity)
    return got if asked == got else f"{asked} → {got}"


def strategy_name(p, achieved: bool = True) -> str:
    """A point (or candidate) in words: "static_depth 12.5%", a combination "static_depth
    12.5% + static_width 26.9%" (achieved sparsities; ``achieved=False``: the asked ones)."""
    parts = getattr(p, "parts", ())
    if parts:
        vals = (getattr(p, "part_achieved", ()) if achieved else ()) or tuple(s for _, s in parts)
        return " + ".join(f"{f} {_short_pct(v)}" for (f, _), v in zip(parts, vals))
    return f"{p.strategy} {_short_pct(p.achieved_sparsity if achieved else p.sparsity)}"


def method_short(q) -> str:
    """The method behind a quality figure in a few words: "Tyr-the-Pruner", "family mean",
    a combination's parts' joined by "+"; "" when none is known."""
    parts = getattr(q, "parts", ())
    if parts:
        return " + ".join(method_short(x) or "?" for x in parts)
    m = getattr(q, "method", "") or ""
    if m.startswith("mean of "):
        return "family mean"
    return m.split(" (best of ")[0]


def _short_pct(v: float) -> str:
    return f"{v * 100:.1f}".rstrip("0").rstrip(".") + "%"


def interval_text(p) -> str:
    """A point's speedup interval, "1.03–1.36" (none for dense, or where none was computed)."""
    if p.strategy == "dense" or p.speedup_lo is None:
        return "–"
    lo, hi = p.interval
    return f"{lo:.2f}–{hi:.2f}"


def trust_marks(p) -> str:
    """↑ above the family's physical ceiling, ≠ dense and pruned measured under different load."""
    return ("↑" if "above_ceiling" in p.flags else "") + ("≠" if "mixed_conditions" in p.flags else "")


TRUST_NOTE = ("speedup interval about 95 % (from the uncertainties of the ops behind it); ↑ above "
              "the family's physical ceiling, ≠ dense and pruned measured under different load: "
              "recommend skips both (--include-flagged keeps them)")

#: what the marks and arrows of the CLI tables and the explorer mean
SPARSITY_NOTE = "sparsity: asked → achieved where the family's rounding made them differ"
MARKS_NOTE = ("ᵉ extrapolated beyond the data (not ranked), ᵇ borrowed from another model, "
              "ˢ secondary source, ᶜ composed from a combination's parts, ᵒ measured on an "
              "oracle (every update computed, then skipped): an upper bound on quality")
#: the mark of a quality figure measured on an oracle (an upper bound on quality)
ORACLE_MARK = "ᵒ"


def quality_marks(q) -> str:
    """ᵉ extrapolated beyond the data, ᵇ borrowed from another model, ˢ secondary source,
    ᶜ composed from a combination's parts, ᵒ measured on an oracle (an upper bound)."""
    return (("ᵉ" if q.extrapolated else "") + ("ᵇ" if q.borrowed_from else "")
            + ("ˢ" if q.secondary else "") + ("ᶜ" if getattr(q, "composed", None) else "")
            + (ORACLE_MARK if getattr(q, "oracle", False) else ""))


def oracle_strategies(points) -> list[str]:
    """The strategies among ``points`` whose quality figure is an oracle's (an upper bound),
    in order, once each."""
    return list(dict.fromkeys(p.strategy for p in points
                              if getattr(p.quality, "oracle", False) and p.quality.value is not None))


def loss_text(q) -> str:
    if q is None or q.value is None:
        return "–"
    if q.metric == "ppl_increase":
        return f"+{100 * q.value:.1f}% ppl"
    return pct(q.value)


def flag_words(q, short: bool = False) -> list[str]:
    """Why a quality figure deserves care, in words; `short` drops the repeated "quality"
    (for narrow panels that say it once)."""
    out = []
    if getattr(q, "composed", None):
        out.append(f"composed ({q.composed})" if short else f"quality composed ({q.composed} rule)")
    if q.borrowed_from:
        out.append(f"from {q.borrowed_from}" if short else f"quality borrowed from {q.borrowed_from}")
    if getattr(q, "floored_by", None) and not short:
        out.append("raised by the borrowing rule")
    if q.extrapolated:
        out.append("extrapolated" if short else "quality extrapolated")
    if q.secondary:
        out.append("secondary source")
    if getattr(q, "oracle", False):
        out.append("oracle: an upper bound" if short else
                   "quality measured on an oracle: an upper bound")
    return out


def timings_label(n: int) -> str:
    """The local device's usable op timings in the cache (status ok, current software): the one
    count `pis-tui gpus` and the explorer's GPU list show, under one name ("measured" is kept
    for the timing source of a sweep's kernels)."""
    return f"{n} op timing{'s' if n != 1 else ''} cached" if n else "not measured yet"


def sweep_measured_label(measured: int, kernels: int) -> str:
    """How many of a sweep's distinct kernels are priced from a measurement on this device:
    the count the explorer's status line lists as "N measured"."""
    return (f"{measured} of {kernels} kernels measured" if measured
            else f"none of {kernels} kernels measured yet")


def served_text(dtype: str, precision: str = "") -> str:
    """The precision a model is served in, for a header: ``bf16``, or ``int4-g128 (bf16
    activations)`` for a quantized one."""
    return f"{precision} ({dtype} activations)" if precision else dtype
