"""pis-tui's estimates (no measurement: timing_source roofline) beside the reference study's
Table 2 speedups for Llama-3.1-8B (family means; RTX Pro 6000 Blackwell; figures as quoted by
secondary summaries of arXiv 2606.09080, see ../shared/research/reference-study.md).

The study's exact prefill/decode lengths are not in those summaries: this uses pis-tui's defaults
(prefill 1 x 1024, decode batch 16 at context 1024, bf16). It is a plausibility check of the
analytical model, not a validation (that is `pis-tui validate` on a real device).

Run:  python tests/benchmarks/study_table2_check.py   (writes study_table2_check.result.md)
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from pis_tui.engine import sweep
from pis_tui.scenario import Scenario

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


def main() -> None:
    r = sweep("llama-3.1-8b", "rtx-pro-6000", Scenario(dtype="bf16"),
              sorted({f for f, _ in STUDY}), [0.25, 0.5])
    lines = ["# Estimated speedups beside the reference study's Table 2 (Llama-3.1-8B, RTX Pro 6000)", "",
             f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; pis-tui timing source: "
             f"{', '.join(sorted(r.source_summary()))} (nothing measured)",
             "- scenario: prefill 1×1024, decode batch 16 @ 1024, bf16 (the study's lengths are not known here)",
             "- error = predicted / reported − 1", "",
             "| family | sparsity | prefill study | prefill pis-tui | error | decode study | decode pis-tui | error | FLOPs× |",
             "|---|---|---|---|---|---|---|---|---|"]
    errs = []
    for (fam, s), (sp, sd) in STUDY.items():
        pts = {p.phase: p for p in r.points if p.strategy == fam and abs(p.sparsity - s) < 1e-9}
        ep, ed = pts["prefill"].speedup / sp - 1, pts["decode"].speedup / sd - 1
        errs += [abs(ep), abs(ed)]
        lines.append(f"| {fam} | {s:.0%} | {sp:.2f}× | {pts['prefill'].speedup:.2f}× | {ep:+.1%} | "
                     f"{sd:.2f}× | {pts['decode'].speedup:.2f}× | {ed:+.1%} | {pts['prefill'].flops_speedup:.2f}× |")
    flops_errs = []
    for (fam, s), (sp, sd) in STUDY.items():
        pts = {p.phase: p for p in r.points if p.strategy == fam and abs(p.sparsity - s) < 1e-9}
        flops_errs += [abs(pts["prefill"].flops_speedup / sp - 1), abs(pts["decode"].flops_speedup / sd - 1)]
    lines += ["", f"pis-tui (analytical, unmeasured): median |error| {statistics.median(errs):.1%}, worst {max(errs):.1%}.",
              f"FLOPs ratio as the predictor: median |error| {statistics.median(flops_errs):.1%}, worst {max(flops_errs):.1%}."]
    text = "\n".join(lines) + "\n"
    (HERE / "study_table2_check.result.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
