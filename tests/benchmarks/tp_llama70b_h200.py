"""Tensor parallelism's effect on pruning, estimated: llama-3.1-70b on 1, 2, 4 and 8 H200 SXM
GPUs of one node (issue 19 §5; the README's table).

No measurement: every op is priced by the analytical model (timing source roofline) and every
collective by the ring model over the h200-sxm profile's NVLink figures (450 GB/s a direction
per GPU × 0.80 attainable, a 10 µs latency floor per call; see profiles/gpus/h200-sxm.json and
pis_tui/pricing/collectives.py).  Default scenario (prefill 1 × 1024, decode batch 16 at context 1024,
bf16), the fused engine (what vLLM, SGLang and TensorRT-LLM run) and the eager one.

Run:  python tests/benchmarks/tp_llama70b_h200.py   (writes tp_llama70b_h200.result.md;
deterministic: tests/test_benchmark_results.py checks the committed result is what the code
gives now, and that the README carries its tables)
"""

from __future__ import annotations

import time
from pathlib import Path

from pis_tui.pricing.collectives import collective_ms
from pis_tui.decide.sweep import sweep
from pis_tui.model.scenario import Scenario

HERE = Path(__file__).resolve().parent
MODEL, GPU = "llama-3.1-70b", "h200-sxm"
DEGREES = (1, 2, 4, 8)
FAMILIES = ("static_depth", "static_width", "static_width_hidden", "low_rank")
SPARSITIES = (0.25, 0.5)
ENGINES = ("fused", "eager")
COMMAND = "python tests/benchmarks/tp_llama70b_h200.py"


def _sweeps(engine: str) -> dict:
    return {tp: sweep(MODEL, GPU, Scenario(dtype="bf16", engine=engine, tp=tp), FAMILIES,
                      SPARSITIES) for tp in DEGREES}


def _pt(r, fam: str, s: float, ph: str):
    return next(p for p in r.points if p.strategy == fam and abs(p.sparsity - s) < 1e-9
                and p.phase == ph)


def dense_table(runs: dict) -> list[str]:
    """Per degree: one GPU's memory and dense's times, and its collectives' share of them."""
    lines = ["| GPUs | weights / GPU | KV cache / GPU (decode 16 × 1024) | fits one H200 | "
             "dense prefill | collectives | dense decode step | collectives |",
             "|---|---|---|---|---|---|---|---|"]
    for tp, r in runs.items():
        mem = r.memory.get("per_rank") or r.memory
        pre, dec = r.dense("prefill"), r.dense("decode")
        fits = "yes" if all(r.memory["fits"].values()) else "no"

        def share(e):
            return f"{collective_ms(e) / e.latency_ms:.0%}" if tp > 1 else "–"
        lines.append(f"| {tp} | {mem['weights_gb']:.1f} GB | {mem['kv_cache_gb']['decode']:.2f} GB | "
                     f"{fits} | {pre.latency_ms:.1f} ms | {share(pre)} | {dec.latency_ms:.2f} ms | "
                     f"{share(dec)} |")
    return lines


def speedup_table(runs: dict, phase: str) -> list[str]:
    """Per family × sparsity: the speedup over dense at each degree, and at 8 GPUs the share
    of dense's collective time the pruned model keeps."""
    head = " | ".join(f"TP {tp}" for tp in DEGREES)
    lines = [f"| family | sparsity | {head} | collectives kept at TP 8 | FLOPs× |",
             "|---|---|" + "---|" * len(DEGREES) + "---|---|"]
    for fam in FAMILIES:
        for s in SPARSITIES:
            pts = [_pt(runs[tp], fam, s, phase) for tp in DEGREES]
            r8 = runs[8]
            kept = (collective_ms(r8.estimate_for(fam, s, phase))
                    / collective_ms(r8.dense(phase)))
            lines.append(f"| {fam} | {s:.0%} | " + " | ".join(f"{p.speedup:.2f}×" for p in pts)
                         + f" | {kept:.0%} | {pts[-1].flops_speedup:.2f}× |")
    return lines


def body() -> list[str]:
    """The result's lines after its date line (deterministic)."""
    lines = [f"- {MODEL} on {', '.join(map(str, DEGREES))} × {GPU}, bf16, prefill 1×1024, decode "
             "batch 16 @ 1024; **estimated** (analytical model and ring model, nothing measured)",
             f"- command: `{COMMAND}` (or one degree: `pis-tui sweep --model {MODEL} --gpu {GPU} "
             "--tp 8 --engine fused --strategies static_depth,static_width,static_width_hidden,"
             "low_rank --sparsities 0.25,0.5`)"]
    for engine in ENGINES:
        runs = _sweeps(engine)
        src = sorted({s for r in runs.values() for s in r.source_summary()})
        lines += ["", f"## engine {engine} (timing source: {', '.join(src)})", "",
                  "### dense, one GPU's share", ""] + dense_table(runs)
        for ph in ("decode", "prefill"):
            lines += ["", f"### {ph} speedup over dense at the same degree", ""] + speedup_table(runs, ph)
    return lines


def main() -> None:
    lines = ["# tp_llama70b_h200: tensor parallelism x pruning, llama-3.1-70b on H200 SXM (estimated)",
             "", f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"] + body()
    out = HERE / "tp_llama70b_h200.result.md"
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
