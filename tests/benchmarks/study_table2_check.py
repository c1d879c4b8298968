"""pis-tui's estimates (no measurement: timing_source roofline) beside the reference study's
Table 2 speedups for Llama-3.1-8B (family means; RTX Pro 6000 Blackwell; figures as quoted by
secondary summaries of arXiv 2606.09080, see ../shared/research/reference-study.md), under each
engine.

The study's exact prefill/decode lengths are not in those summaries: this uses pis-tui's defaults
(prefill 1 x 1024, decode batch 16 at context 1024, bf16). It is a plausibility check of the
analytical model, not a validation (that is `pis-tui validate` on a real device).

Run:  python tests/benchmarks/study_table2_check.py   (writes study_table2_check.result.md)
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from pis_tui.decide.sweep import sweep
from pis_tui.model.scenario import Scenario

HERE = Path(__file__).resolve().parent

# (family, sparsity): (prefill speedup, decode speedup) as reported
STUDY = {
    ("static_depth", 0.25): (1.29, 1.32), ("static_depth", 0.5): (1.88, 1.91),
    ("low_rank", 0.25): (1.15, 1.09), ("low_rank", 0.5): (1.43, 1.46),
    ("static_width", 0.25): (1.27, 1.27), ("static_width", 0.5): (1.77, 1.70),
    ("dynamic_depth", 0.25): (1.08, 0.91), ("dynamic_depth", 0.5): (1.44, 1.10),
    ("dynamic_sparse_attention", 0.25): (1.02, 1.02), ("dynamic_sparse_attention", 0.5): (1.05, 1.04),
    ("semi_structured_24", 0.5): (1.08, 1.14),
}


#: rows whose figure the estimate was fitted to (the rtx-pro-6000 "efficiency" block's
#: sparse24_bandwidth, its fitted_to): not independent evidence
FITTED = {("semi_structured_24", 0.5, "decode"):
          "the 2:4 memory-bound bandwidth share (0.60) is fitted to this row"}


ENGINE_WORDS = {
    "fused": "fused kernels: the study's own stack is closer to this one (PruningInferSim's "
             "wrappers call Triton RMSNorm and rotary kernels, wrapper/static/*.py, ops/utils)",
    "eager": "transformers' eager modules (what `validate` builds; not the study's stack)",
}


def quantiles(errs) -> str:
    """"median M, p90 P, worst W" of absolute errors (p90: the sorted value at index
    int(0.9·n), as h200_reference_check.py takes it)."""
    e = sorted(errs)
    return f"median {statistics.median(e):.1%}, p90 {e[int(len(e) * 0.9)]:.1%}, worst {e[-1]:.1%}"


def body() -> list[str]:
    """The result's lines after its date line (deterministic: a test checks the committed
    result still matches them)."""
    lines = ["- the study's speedups: its Table 2 (family means, Llama-3.1-8B, RTX Pro 6000 Blackwell) "
             "as quoted by secondary summaries of arXiv 2606.09080, not read from the paper",
             "- lengths: pis-tui's defaults, prefill 1×1024 and decode batch 16 @ 1024, bf16 "
             "(the study's own lengths are not known)",
             "- engines: each in its own table below, `fused` (closer to the study's stack) and "
             "`eager` (what `validate` builds); profile rtx-pro-6000, nothing measured",
             "- error = predicted / reported − 1; † = fitted to that row (not independent: the "
             "rtx-pro-6000 profile's figure is fitted to it, see its `fitted_to`)",
             "- median, p90, worst: of the |error| of every figure in the table (p90: the sorted "
             "value at index int(0.9·n))"]
    for engine in ("fused", "eager"):
        lines += [""] + _table(engine)
    lines += [f"- † {why}" for why in FITTED.values()]
    return lines


def _table(engine: str) -> list[str]:
    r = sweep("llama-3.1-8b", "rtx-pro-6000", Scenario(dtype="bf16", engine=engine),
              sorted({f for f, _ in STUDY}), [0.25, 0.5])
    lines = [f"## engine {engine}: {ENGINE_WORDS[engine]}", "",
             f"timing source: {', '.join(sorted(r.source_summary()))} (nothing measured)", "",
             "| family | sparsity | prefill study | prefill pis-tui | error | decode study | decode pis-tui | error | FLOPs× |",
             "|---|---|---|---|---|---|---|---|---|"]
    errs, indep = [], []
    for (fam, s), (sp, sd) in STUDY.items():
        pts = {p.phase: p for p in r.points if p.strategy == fam and abs(p.sparsity - s) < 1e-9}
        ep, ed = pts["prefill"].speedup / sp - 1, pts["decode"].speedup / sd - 1
        errs += [abs(ep), abs(ed)]
        indep += [abs(e) for e, ph in ((ep, "prefill"), (ed, "decode")) if (fam, s, ph) not in FITTED]
        mark = {ph: "†" if (fam, s, ph) in FITTED else "" for ph in ("prefill", "decode")}
        lines.append(f"| {fam} | {s:.0%} | {sp:.2f}× | {pts['prefill'].speedup:.2f}×{mark['prefill']} | {ep:+.1%} | "
                     f"{sd:.2f}× | {pts['decode'].speedup:.2f}×{mark['decode']} | {ed:+.1%} | "
                     f"{pts['prefill'].flops_speedup:.2f}× |")
    flops_errs = []
    for (fam, s), (sp, sd) in STUDY.items():
        pts = {p.phase: p for p in r.points if p.strategy == fam and abs(p.sparsity - s) < 1e-9}
        flops_errs += [abs(pts["prefill"].flops_speedup / sp - 1), abs(pts["decode"].flops_speedup / sd - 1)]
    lines += ["", f"pis-tui ({engine} engine, analytical, unmeasured, pis-tui's default lengths) "
                  f"against the study's speedups as quoted by secondary summaries: |error| "
                  f"{quantiles(errs)} over {len(errs)} figures; without the fitted row(s), the "
                  f"independent ones: {quantiles(indep)} over {len(indep)}.",
              f"FLOPs ratio as the predictor: |error| {quantiles(flops_errs)} over {len(flops_errs)} figures."]
    return lines


def main() -> None:
    lines = ["# Estimated speedups beside the reference study's Table 2 (Llama-3.1-8B, RTX Pro 6000)", "",
             f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"] + body()
    text = "\n".join(lines) + "\n"
    (HERE / "study_table2_check.result.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
