"""Serialises sweep results and recommendations: the "pis-tui/1" JSON schema and CSV.

The schema ships as ``pis_tui/schema/pis-tui-1.schema.json``; keys are stable (scripts read
them): add, never rename.  Its lists of names are generated (:func:`build_schema`: the family
enum from the registry), and the committed file is what the built-in families generate
(``python -m pis_tui.export`` rewrites it; a test checks it is current).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Optional

from . import families
from .engine import SweepResult
from .families import MAX_SPARSITY
from .pareto import TIE_RULE
from .sources import TIMING_SOURCES
from .uncertainty import BLOCKING_FLAGS
from .results import Point, Recommendation

SCHEMA_ID = "pis-tui/1"
SCHEMA_PATH = Path(__file__).resolve().parent / "schema" / "pis-tui-1.schema.json"


def _r(x: Optional[float], nd: int = 6) -> Optional[float]:
    return None if x is None else round(float(x), nd)


def point_dict(p: Point, result: SweepResult) -> dict:
    q = p.quality
    e = result.estimate_for(p.strategy, p.sparsity, p.phase)
    return {
        "strategy": p.strategy,
        "sparsity": _r(p.sparsity),
        "achieved_sparsity": _r(p.achieved_sparsity),
        "phase": p.phase,
        "latency_ms": _r(p.latency_ms),
        "dense_latency_ms": _r(p.dense_latency_ms),
        "speedup": _r(p.speedup),
        "flops_speedup": _r(p.flops_speedup),
        "gap": _r(p.gap),
        "quality_loss": _r(q.value),
        "quality_metric": q.metric,
        "quality_source": q.source,
        "quality_protocol": q.protocol,
        "quality_flags": {"extrapolated": q.extrapolated, "borrowed_from": q.borrowed_from,
                          "secondary": q.secondary},
        "quality_note": q.note,
        "citations": list(q.citations),
        "timing_source": p.timing_source,
        "timing_sources": {k: {"ops": v["ops"], "ms": _r(v["ms"])} for k, v in e.source_counts.items()},
        "speedup_interval": [_r(x) for x in p.interval],
        "speedup_ceiling": _r(p.ceiling),
        "trust_flags": list(p.flags),
        "notes": list(e.notes),
    }


def recommendation_dict(r: Recommendation) -> dict:
    best, ru = r.best, r.runner_up
    flags = {"extrapolated": False, "borrowed": False, "secondary": False}
    citations: list[str] = []
    if best is not None:
        q = best.quality
        flags = {"extrapolated": q.extrapolated, "borrowed": q.borrowed_from is not None,
                 "secondary": q.secondary}
        citations = list(q.citations)
    return {
        "strategy": best.strategy if best else None,
        "sparsity": _r(best.sparsity) if best else None,
        "achieved_sparsity": _r(best.achieved_sparsity) if best else None,
        "speedup": _r(best.speedup) if best else None,
        "quality_loss": _r(best.quality_loss) if best else None,
        "quality_metric": r.metric,
        "budget": _r(r.budget),
        "runner_up": None if ru is None else {
            "strategy": ru.strategy, "sparsity": _r(ru.sparsity), "speedup": _r(ru.speedup),
            "quality_loss": _r(ru.quality_loss)},
        "margin": _r(r.margin),
        "reason": r.reason,
        "protocol": best.quality.protocol if best else None,
        "flags": flags,
        "borrowed_from": best.quality.borrowed_from if best else None,
        "citations": citations,
        "frontier": [{"strategy": p.strategy, "sparsity": _r(p.sparsity),
                      "speedup": _r(p.speedup), "quality_loss": _r(p.quality_loss)}
                     for p in r.frontier],
        "speedup_interval": [_r(x) for x in best.interval] if best else None,
        "trust_flags": list(best.flags) if best else [],
        "skipped_flagged": [{"strategy": p.strategy, "sparsity": _r(p.sparsity),
                             "speedup": _r(p.speedup), "trust_flags": list(p.flags)}
                            for p in r.skipped],
        "tie_rule": TIE_RULE,
    }


def to_dict(result: SweepResult, recommendations: Optional[dict] = None) -> dict:
    return {
        "schema": SCHEMA_ID,
        "model": result.spec.to_dict(),
        "gpu": result.device.to_dict(),
        "scenario": result.scenario.to_dict(),
        "quality": {"protocol": result.quality_protocol, "metric": result.quality_metric,
                    "curves": result.quality_curves},
        "results": [point_dict(p, result) for p in result.points],
        "recommendations": {ph: recommendation_dict(r) for ph, r in (recommendations or {}).items()},
        "timing_summary": result.source_summary(),
        **({"memory": result.memory} if result.memory else {}),  # sweeps always have it
        "provenance": result.provenance,
    }


def to_json(result: SweepResult, recommendations: Optional[dict] = None) -> str:
    return json.dumps(to_dict(result, recommendations), indent=2)


CSV_COLUMNS = ("strategy", "sparsity", "achieved_sparsity", "phase", "latency_ms",
               "dense_latency_ms", "speedup", "speedup_low", "speedup_high", "speedup_ceiling",
               "flops_speedup", "gap", "quality_loss", "quality_metric", "quality_source",
               "timing_source", "trust_flags")


def to_csv(result: SweepResult) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for p in result.points:
        d = point_dict(p, result)
        d["speedup_low"], d["speedup_high"] = d["speedup_interval"]
        d["trust_flags"] = " ".join(d["trust_flags"])
        w.writerow(d)
    return buf.getvalue()


def build_schema() -> dict:
    """The pis-tui/1 JSON Schema for the families registered now (the committed file with its
    generated lists filled in)."""
    with open(SCHEMA_PATH, encoding="utf-8") as f:
        schema = json.load(f)
    schema["$defs"]["family"]["enum"] = list(families.names())
    schema["$defs"]["timing_source"]["enum"] = list(TIMING_SOURCES)
    schema["$defs"]["trust_flag"]["enum"] = list(BLOCKING_FLAGS)
    schema["$defs"]["result"]["properties"]["sparsity"]["maximum"] = MAX_SPARSITY
    return schema


def schema_text(schema: dict) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def load_schema() -> dict:
    """The schema every export is validated against (generated: see :func:`build_schema`)."""
    return build_schema()


if __name__ == "__main__":  # regenerate the committed schema from the built-in families
    SCHEMA_PATH.write_text(schema_text(build_schema()), encoding="utf-8")
    print(f"wrote {SCHEMA_PATH}")
