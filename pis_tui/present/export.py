"""Serialises sweep results and recommendations: the "pis-tui/1" JSON schema and CSV.

The schema ships as ``pis_tui/present/schema/pis-tui-1.schema.json``; keys are stable (scripts read
them): add, never rename.  Its lists of names are generated (:func:`build_schema`: the family
enum from the registry), and the committed file is what the built-in families generate
(``python -m pis_tui.present.export`` rewrites it; a test checks it is current).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Optional

from .. import families
from ..pricing.collectives import collective_ms
from ..decide.sweep import SweepResult
from ..families import MAX_SPARSITY
from ..decide.frontier import EXTRAPOLATED_RULE, TIE_RULE
from ..decide.compare import SELECTION_RULE
from ..pricing.sources import TIMING_SOURCES
from ..pricing.uncertainty import BLOCKING_FLAGS
from ..decide.points import Point, Recommendation
from ..model.scenario import ENGINES

SCHEMA_ID = "pis-tui/1"
SCHEMA_PATH = Path(__file__).resolve().parent / "schema" / "pis-tui-1.schema.json"


def _r(x: Optional[float], nd: int = 6) -> Optional[float]:
    return None if x is None else round(float(x), nd)


def quality_flags(q) -> dict:
    """A quality figure's caveats (``composed``: the rule a combination's figure was composed
    by, None for a figure of its own; ``floored_by``: the larger model whose own figure the
    borrowing rule raised it to; ``oracle``: measured on a quality oracle, an upper bound on
    quality, ranked below a measured figure of the same point)."""
    return {"extrapolated": q.extrapolated, "borrowed_from": q.borrowed_from,
            "secondary": q.secondary, "composed": q.composed, "floored_by": q.floored_by,
            "oracle": bool(getattr(q, "oracle", False))}


def parts_list(c) -> list:
    """A combination's parts: each family, its asked and achieved sparsity and its own quality
    figure (the figures the composed one is made of); [] for a family."""
    out = []
    qparts = c.quality.parts if c.quality is not None else ()
    for i, (fam, s) in enumerate(getattr(c, "parts", ())):
        ach = c.part_achieved[i] if i < len(c.part_achieved) else None
        d = {"family": fam, "sparsity": _r(s), "achieved_sparsity": _r(ach)}
        if i < len(qparts):
            q = qparts[i]
            d.update(quality_loss=_r(q.value), quality_source=q.source, quality_method=q.method,
                     quality_flags=quality_flags(q), citations=list(q.citations))
        out.append(d)
    return out


def _ref(p) -> dict:
    """A point named in a list: strategy, sparsity (and a combination's parts)."""
    d = {"strategy": p.strategy, "sparsity": _r(p.sparsity)}
    if getattr(p, "parts", ()):
        d["parts"] = [{"family": f, "sparsity": _r(s)} for f, s in p.parts]
    return d


def point_dict(p: Point, result: SweepResult) -> dict:
    q = p.quality
    e = result.estimate_for(p.strategy, p.sparsity, p.phase, p.parts)
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
        "quality_flags": quality_flags(q),
        "quality_note": q.note,
        "quality_method": q.method,
        "citations": list(q.citations),
        "parts": parts_list(p),
        "timing_source": p.timing_source,
        "timing_sources": {k: {"ops": v["ops"], "ms": _r(v["ms"])} for k, v in e.source_counts.items()},
        "speedup_interval": [_r(x) for x in p.interval],
        "speedup_interval_cut": p.interval_cut or None,
        "speedup_ceiling": _r(p.ceiling),
        "trust_flags": list(p.flags),
        "notes": list(e.notes),
        "collectives_ms": _r(collective_ms(e)),
        "dense_collectives_ms": _r(collective_ms(result.dense(p.phase))),
    }


def recommendation_dict(r: Recommendation) -> dict:
    best, ru = r.best, r.runner_up
    flags = {"extrapolated": False, "borrowed": False, "secondary": False}
    citations: list[str] = []
    if best is not None:
        q = best.quality
        flags = {"extrapolated": q.extrapolated, "borrowed": q.borrowed_from is not None,
                 "secondary": q.secondary, "composed": q.composed is not None,
                 "oracle": bool(getattr(q, "oracle", False))}
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
            **_ref(ru), "speedup": _r(ru.speedup), "quality_loss": _r(ru.quality_loss),
            "quality_method": ru.quality.method},
        "margin": _r(r.margin),
        "reason": r.reason,
        "protocol": best.quality.protocol if best else None,
        "flags": flags,
        "borrowed_from": best.quality.borrowed_from if best else None,
        "citations": citations,
        "frontier": [{**_ref(p), "speedup": _r(p.speedup), "quality_loss": _r(p.quality_loss)}
                     for p in r.frontier],
        "speedup_interval": [_r(x) for x in best.interval] if best else None,
        "trust_flags": list(best.flags) if best else [],
        "skipped_flagged": [{**_ref(p), "speedup": _r(p.speedup), "trust_flags": list(p.flags)}
                            for p in r.skipped],
        "tie_rule": TIE_RULE,
        "selection_rule": SELECTION_RULE,
        "passed_over": [{**_ref(p), "speedup": _r(p.speedup), "quality_loss": _r(p.quality_loss),
                         "ratio": _r(pr.ratio), "ratio_interval": [_r(pr.lo), _r(pr.hi)],
                         "verdict": pr.verdict, "no_more_work": pr.dominant in ("a", "both"),
                         "basis": pr.basis}
                        for p, pr in r.passed_over],
        "quality_method": best.quality.method if best else None,
        "quality_source": best.quality.source if best else None,
        "parts": parts_list(best) if best else [],
        "skipped_extrapolated": [{**_ref(p), "speedup": _r(p.speedup),
                                  "quality_loss": _r(p.quality_loss)}
                                 for p in r.skipped_extrapolated],
        "allow_extrapolated": r.allow_extrapolated,
        "extrapolated_rule": EXTRAPOLATED_RULE,
    }


def to_dict(result: SweepResult, recommendations: Optional[dict] = None,
            plan: Optional[dict] = None) -> dict:
    """The pis-tui/1 document; ``plan``: :func:`plan_dict`'s, under the ``plan`` key."""
    return {
        "schema": SCHEMA_ID,
        "model": result.spec.to_dict(),
        "gpu": result.device.to_dict(),
        "scenario": result.scenario.to_dict(),
        "quality": quality_dict(result),
        "results": [point_dict(p, result) for p in result.points],
        "recommendations": {ph: recommendation_dict(r) for ph, r in (recommendations or {}).items()},
        "timing_summary": result.source_summary(),
        **({"memory": result.memory} if result.memory else {}),  # sweeps always have it
        # a mixture of experts: decode speedup by batch, 1 to where every expert is touched
        **({"batch_curve": result.batch_curve.to_dict()}
           if getattr(result, "batch_curve", None) is not None else {}),
        # a served precision: what it does to the dense model, its kernel, its own quality cost
        **({"precision": result.precision} if getattr(result, "precision", None) else {}),
        "provenance": result.provenance,
        **({"plan": plan} if plan is not None else {}),
    }


def quality_dict(result: SweepResult) -> dict:
    """The quality side of a sweep: protocol, metric, the method asked and every rule."""
    from ..quality import model as ql
    from ..quality.compose import COMBO_RULE_TEXT
    from ..quality.measured import ORACLE_RULE

    rule = result.combo_rule or "multiplicative"
    return {"protocol": result.quality_protocol, "metric": result.quality_metric,
            "curves": {f: _curve_json(c) for f, c in result.quality_curves.items()},
            "method": result.quality_method or "mean",
            "method_rule": ql.METHOD_RULE,
            "combo_rule": rule, "combo_rule_text": COMBO_RULE_TEXT.get(rule, ""),
            "borrowing_rule": ql.BORROWING_RULE, "extrapolation_rule": ql.EXTRAPOLATION_RULE,
            "oracle_rule": ORACLE_RULE}


def _curve_json(c: dict) -> dict:
    out = dict(c)
    for k in ("methods", "citations", "knots"):
        if k in out and isinstance(out[k], tuple):
            out[k] = list(out[k])
    return out


def to_json(result: SweepResult, recommendations: Optional[dict] = None,
            plan: Optional[dict] = None) -> str:
    return json.dumps(to_dict(result, recommendations, plan), indent=2)


CSV_COLUMNS = ("strategy", "sparsity", "achieved_sparsity", "phase", "latency_ms",
               "dense_latency_ms", "speedup", "speedup_low", "speedup_high", "speedup_ceiling",
               "flops_speedup", "gap", "quality_loss", "quality_metric", "quality_source",
               "timing_source", "trust_flags", "parts", "quality_method", "quality_oracle")


def to_csv(result: SweepResult) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for p in result.points:
        d = point_dict(p, result)
        d["speedup_low"], d["speedup_high"] = d["speedup_interval"]
        d["trust_flags"] = " ".join(d["trust_flags"])
        d["quality_oracle"] = d["quality_flags"]["oracle"]
        d["parts"] = " + ".join(f"{x['family']}@{x['sparsity']:g}" for x in d["parts"])
        w.writerow(d)
    return buf.getvalue()


# --------------------------------------------------------------------------- the plan

def _gb(x: Optional[float]) -> Optional[float]:
    return None if x is None else round(float(x) / 1e9, 3)


def served_dict(s) -> Optional[dict]:
    if s is None:
        return None
    return {"batch": s.batch, "ttft_ms": _r(s.ttft_ms), "tpot_ms": _r(s.tpot_ms),
            "tpot_method": s.tpot_method, "tpot_contexts": list(s.tpot_contexts),
            "e2e_ms": _r(s.e2e_ms), "throughput_tok_s": _r(s.throughput_tok_s, 3),
            "decode_tok_s": _r(s.decode_tok_s, 3), "memory_gb": _gb(s.memory_bytes),
            "fits": s.fits, "meets_targets": not s.misses, "misses": list(s.misses),
            "timing_source": s.timing_source,
            "ttft_collectives_ms": _r(s.ttft_collectives_ms),
            "tpot_collectives_ms": _r(s.tpot_collectives_ms)}


def candidate_dict(c, result, rec) -> dict:
    from ..decide.deployment import gain

    q = c.quality
    ranked = [k.key for k in rec.ranked]
    return {
        "strategy": c.strategy, "sparsity": _r(c.sparsity), "achieved_sparsity": _r(c.achieved_sparsity),
        "quality_loss": _r(q.value), "quality_metric": q.metric, "quality_source": q.source,
        "quality_protocol": q.protocol,
        "quality_flags": quality_flags(q),
        "quality_note": q.note, "citations": list(q.citations),
        "quality_method": q.method, "parts": parts_list(c),
        "weights_gb": _gb(c.weights_bytes), "kv_bytes_per_token": c.kv_bytes_per_token,
        "max_sequences": c.max_sequences, "gpus_needed": c.gpus_needed,
        "ttft_ms": _r(c.ttft_ms), "tpot_ms": _r(c.tpot_ms), "e2e_ms": _r(c.e2e_ms),
        "throughput_tok_s": _r(c.throughput_tok_s, 3),
        "latency_gain": _r(gain(c, result.dense, "latency")),
        "throughput_gain": _r(gain(c, result.dense, "throughput")),
        "timing_source": c.timing_source,
        **_gain_interval(rec.points.get(c.key)),
        "feasible": c.key in ranked,
        "rank": ranked.index(c.key) + 1 if c.key in ranked else None,
        "why_not": rec.why_not(c),
        "classes": [{"name": k.cls.name, "share": _r(k.share), "prompt_len": k.cls.prompt_len,
                     "output_len": k.cls.output_len, "concurrency": k.cls.concurrency,
                     "per_sequence_bytes": int(round(k.per_sequence_bytes)),
                     "activation_bytes": {ph: int(round(v)) for ph, v in k.activation_bytes.items()},
                     "max_sequences": k.max_sequences,
                     "at_concurrency": served_dict(k.at_concurrency),
                     "at_max_batch": served_dict(k.at_max_batch),
                     "why_no_batch": k.why_no_batch} for k in c.classes],
        "notes": list(c.notes),
        # self-speculative decoding: the draft, γ, α and where speculation stops paying
        **({"speculative": speculation_dict(c.speculation)} if c.speculation is not None else {}),
    }


def speculation_dict(s) -> dict:
    from ..decide.speculative import RULE

    return {"draft": s.draft, "draft_key": list(s.draft_key), "gamma": s.gamma,
            "gammas": [{"gamma": g, "e2e_ms": _r(ms)} for g, ms in s.gammas],
            "acceptance": s.acceptance.to_dict(), "shares_weights": s.shares_weights,
            "draft_weights_gb": _gb(s.draft_weights_bytes),
            "draft_kv_bytes_per_token": s.draft_kv_bytes_per_token,
            "tokens_per_iteration": _r(s.tokens_per_iteration),
            "gain_range_factor": [_r(x) for x in s.gain_range],
            "breakeven_batch": s.breakeven_batch,
            "by_batch": [{"batch": b, "speculative_ms": _r(sp), "dense_ms": _r(d), "gamma": g}
                         for b, sp, d, g in s.by_batch],
            "lossless": True, "rule": RULE}


def _gain_interval(p) -> dict:
    """A candidate's gain under the objective as the ranking saw it: its ~95 % interval
    against dense (paired, cut at the ceiling), the ceiling, the trust flags."""
    if p is None:
        return {"gain_interval": None, "gain_interval_cut": None, "gain_ceiling": None,
                "trust_flags": []}
    return {"gain_interval": [_r(x) for x in p.interval], "gain_interval_cut": p.interval_cut or None,
            "gain_ceiling": _r(p.ceiling), "trust_flags": list(p.flags)}


def headroom_bytes(c, result) -> float:
    """Usable memory left at the workload's concurrency (the tightest class of a mix)."""
    return min(result.usable_bytes - k.at_concurrency.memory_bytes for k in c.classes)


def pick_dict(c, result, objective: str) -> Optional[dict]:
    """The recommended model (or the runner-up) with its per-phase figures against dense."""
    if c is None:
        return None
    from ..decide.deployment import gain

    d = result.dense
    return {
        "strategy": c.strategy, "sparsity": _r(c.sparsity), "achieved_sparsity": _r(c.achieved_sparsity),
        "quality_loss": _r(c.quality.value), "gain": _r(gain(c, d, objective)),
        "flags": {"extrapolated": c.quality.extrapolated, "borrowed": c.quality.borrowed_from is not None,
                  "secondary": c.quality.secondary, "composed": c.quality.composed is not None,
                  "oracle": bool(getattr(c.quality, "oracle", False))},
        "quality_method": c.quality.method, "quality_source": c.quality.source,
        "parts": parts_list(c),
        "per_phase": {
            "prefill": {"ttft_ms": _r(c.ttft_ms), "dense_ttft_ms": _r(d.ttft_ms),
                        "speedup": _r(d.ttft_ms / c.ttft_ms)},
            "decode": {"tpot_ms": _r(c.tpot_ms), "dense_tpot_ms": _r(d.tpot_ms),
                       "speedup": _r(d.tpot_ms / c.tpot_ms)}},
        "per_phase_at_max_batch": _at_max_phases(c, d),
        "e2e_ms": _r(c.e2e_ms), "dense_e2e_ms": _r(d.e2e_ms),
        "throughput_tok_s": _r(c.throughput_tok_s, 3), "dense_throughput_tok_s": _r(d.throughput_tok_s, 3),
        "memory": {"weights_gb": _gb(c.weights_bytes), "dense_weights_gb": _gb(d.weights_bytes),
                   "kv_bytes_per_token": c.kv_bytes_per_token,
                   "dense_kv_bytes_per_token": d.kv_bytes_per_token,
                   "max_sequences": c.max_sequences, "dense_max_sequences": d.max_sequences,
                   "headroom_gb": _gb(headroom_bytes(c, result)),
                   "dense_headroom_gb": _gb(headroom_bytes(d, result)),
                   # the fewest GPUs of this kind holding it at the concurrency (0: not computed
                   # under --tp; null: more than a node's 8)
                   "gpus_needed": c.gpus_needed, "dense_gpus_needed": d.gpus_needed},
        "timing_source": c.timing_source,
    }


def _at_max_phases(c, d) -> Optional[dict]:
    """TTFT and TPOT at each class's largest good batch (share-weighted), against dense's at
    its own; None when a class has no such batch."""
    if c.at_max_batch("ttft_ms") is None:
        return None
    out = {"batch": [k.at_max_batch.batch for k in c.classes],
           "dense_batch": [k.at_max_batch.batch if k.at_max_batch else None for k in d.classes]}
    for ph, attr in (("prefill", "ttft_ms"), ("decode", "tpot_ms")):
        mine, dense = c.at_max_batch(attr), d.at_max_batch(attr)
        out[ph] = {attr: _r(mine), "dense_" + attr: _r(dense)}
    return out


def plan_dict(result, rec) -> dict:
    """A plan (``plan.PlanResult``) and its ranking (``plan.PlanRecommendation``) as the
    document's ``plan`` key."""
    from ..pricing.memory import USABLE
    from ..decide import deployment as pl

    return {
        "objective": rec.objective,
        "tp": getattr(result, "tp", 1),
        "budget": _r(rec.budget),
        "quality_metric": result.quality_metric,
        "quality_protocol": result.quality_protocol,
        "workload": result.workload.to_dict(),
        "dtype": result.dtype,
        "engine": result.engine,
        **({"precision": result.precision_effect} if getattr(result, "precision_effect", None) else {}),
        # drafts offered as speculative candidates that had no acceptance figure, and why
        "speculative_skipped": [{"draft": d, "why": w} for d, w in getattr(result, "spec_skipped", ())],
        "rules": {"serving_model": pl.SERVING_MODEL, "tpot": pl.TPOT_RULE, "batch": pl.BATCH_RULE,
                  "throughput": pl.THROUGHPUT_RULE, "memory": pl.MEMORY_RULE},
        "memory": {"device_gb": float(result.device.memory_gb or 0.0),
                   "usable_gb": _gb(result.usable_bytes), "usable_share": USABLE,
                   "units": "decimal GB (1e9 bytes)"},
        "recommended": pick_dict(rec.best, result, rec.objective),
        "runner_up": pick_dict(rec.runner_up, result, rec.objective),
        "reason": rec.reason,
        "selection_rule": SELECTION_RULE,
        "passed_over": [{**_ref(c), "gain": _r(pl.gain(c, result.dense, rec.objective)),
                         "quality_loss": _r(c.quality.value), "ratio": _r(pr.ratio),
                         "ratio_interval": [_r(pr.lo), _r(pr.hi)], "verdict": pr.verdict,
                         "no_more_work": pr.dominant in ("a", "both"), "basis": pr.basis}
                        for c, pr in rec.passed_over],
        "frontier": [{**_ref(c), "gain": _r(pl.gain(c, result.dense, rec.objective)),
                      "quality_loss": _r(c.quality.value)} for c in rec.frontier],
        "candidates": [candidate_dict(c, result, rec) for c in result.candidates],
        "warnings": list(result.warnings),
        "priced_kernels": result.priced_kernels,
        "elapsed_s": round(result.elapsed_s, 4),
    }


PLAN_CSV_COLUMNS = (
    "strategy", "sparsity", "achieved_sparsity", "class", "share", "prompt_len", "output_len",
    "concurrency", "weights_gb", "kv_bytes_per_token", "max_sequences", "ttft_ms", "tpot_ms",
    "tpot_method", "e2e_ms", "fits", "meets_targets", "max_batch", "max_batch_ttft_ms",
    "max_batch_tpot_ms", "throughput_tok_s", "decode_tok_s", "latency_gain", "throughput_gain",
    "quality_loss", "quality_metric", "quality_source", "timing_source", "rank", "recommended",
    "why_not", "parts", "quality_method", "quality_oracle",
    # a speculative candidate's draft, γ and α (empty for a pruned model)
    "draft", "gamma", "alpha", "alpha_source", "breakeven_batch")


def plan_csv(result, rec) -> str:
    """One row per candidate × request class (the candidate's gains and rank repeat)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=PLAN_CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    best = rec.best.key if rec.best is not None else None
    for c in result.candidates:
        d = candidate_dict(c, result, rec)
        for k in d["classes"]:
            at, mx = k["at_concurrency"], k["at_max_batch"] or {}
            w.writerow({
                "strategy": c.strategy, "sparsity": d["sparsity"], "achieved_sparsity": d["achieved_sparsity"],
                "class": k["name"], "share": k["share"], "prompt_len": k["prompt_len"],
                "output_len": k["output_len"], "concurrency": k["concurrency"],
                "weights_gb": d["weights_gb"], "kv_bytes_per_token": d["kv_bytes_per_token"],
                "max_sequences": k["max_sequences"], "ttft_ms": at["ttft_ms"], "tpot_ms": at["tpot_ms"],
                "tpot_method": at["tpot_method"], "e2e_ms": at["e2e_ms"], "fits": at["fits"],
                "meets_targets": at["meets_targets"], "max_batch": mx.get("batch"),
                "max_batch_ttft_ms": mx.get("ttft_ms"), "max_batch_tpot_ms": mx.get("tpot_ms"),
                "throughput_tok_s": mx.get("throughput_tok_s"), "decode_tok_s": mx.get("decode_tok_s"),
                "latency_gain": d["latency_gain"], "throughput_gain": d["throughput_gain"],
                "quality_loss": d["quality_loss"], "quality_metric": d["quality_metric"],
                "quality_source": d["quality_source"], "timing_source": d["timing_source"],
                "rank": d["rank"], "recommended": c.key == best, "why_not": d["why_not"],
                "parts": " + ".join(f"{x['family']}@{x['sparsity']:g}" for x in d["parts"]),
                "quality_method": d["quality_method"],
                "quality_oracle": d["quality_flags"]["oracle"],
                **({"draft": c.speculation.draft, "gamma": c.speculation.gamma,
                    "alpha": c.speculation.acceptance.alpha,
                    "alpha_source": c.speculation.acceptance.source,
                    "breakeven_batch": c.speculation.breakeven_batch}
                   if c.speculation is not None else {})})
    return buf.getvalue()


def build_schema() -> dict:
    """The pis-tui/1 JSON Schema for the families registered now (the committed file with its
    generated lists filled in)."""
    with open(SCHEMA_PATH, encoding="utf-8") as f:
        schema = json.load(f)
    schema["$defs"]["family"]["enum"] = list(families.names())
    schema["$defs"]["combo"]["enum"] = list(families.combo_names())
    schema["$defs"]["timing_source"]["enum"] = list(TIMING_SOURCES)
    schema["$defs"]["trust_flag"]["enum"] = list(BLOCKING_FLAGS)
    schema["$defs"]["result"]["properties"]["sparsity"]["maximum"] = MAX_SPARSITY
    schema["$defs"]["plan_candidate"]["properties"]["sparsity"]["maximum"] = MAX_SPARSITY
    schema["properties"]["scenario"]["properties"]["engine"]["enum"] = list(ENGINES)
    schema["$defs"]["plan"]["properties"]["engine"]["enum"] = list(ENGINES)
    return schema


def schema_text(schema: dict) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def load_schema() -> dict:
    """The schema every export is validated against (generated: see :func:`build_schema`)."""
    return build_schema()


if __name__ == "__main__":  # regenerate the committed schema from the built-in families
    SCHEMA_PATH.write_text(schema_text(build_schema()), encoding="utf-8")
    print(f"wrote {SCHEMA_PATH}")
