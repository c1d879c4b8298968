"""Accuracy benchmark of pis-tui's predictions for quantized (int4 weight-only) models against
end-to-end timings on this machine's CPU: ``validate --precision int4-g128``.

A small dense model (random weights, transformers' own class, at reduced depth) is built
dense and pruned by static_depth, static_width and low_rank at 0.5 (``--families`` takes the
others validate builds: semi_structured_24 and unstructured run dense kernels here), every
model's linears quantized to int4 (torch's ``_weight_int4pack_mm_for_cpu``; the lm_head and
embeddings kept in the activation dtype), and each timed against the int4 dense model; the
int4 dense model is also timed against the unquantized one (the quantization's own speedup).
Predictions: the op list at the precision, priced from op times measured here (the int4 GEMMs
through the same kernel), plus the eager overhead of quantized tiny clones.

Scenario: prefill batch 1 × 128 tokens; decode batch 1, 16 and 64 at context 256; bf16
activations, the kernel's vectorised path (``--dtype fp32``: its slow path; see the result's notes).  Rows
whose measured speedup did not settle are reported unstable and left out of the errors; the
load average is recorded before, during (every 5 s) and after the run.

    PYTHONPATH=. python tests/benchmarks/validate_int4_cpu.py [--model qwen2.5-0.5b:4]
        [--families static_depth,static_width,low_rank] [--sparsity 0.5]
        [--precision int4-g128] [--dtype bf16] [--decode-batches 1,16,64] [--phase both]
        [--repeats 5] [--max-rounds 4] [--out NAME]

Writes ``<out>.result.md`` and ``.result.json`` beside this file (default out:
validate_int4_cpu; an absolute ``--out`` writes there).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))

from validate_moe_cpu import LoadWatch, _jsonable, _model, _pct, add_case_args  # noqa: E402

from pis_tui import validation as v  # noqa: E402
from pis_tui.families.strategy import Strategy  # noqa: E402
from pis_tui.validation.quantized import quantization_rows  # noqa: E402

MODEL = "qwen2.5-0.5b:4"
FAMILIES = ("static_depth", "static_width", "low_rank")
SPARSITIES = (0.5,)


def _stats(errors: list) -> str:
    """median, p90 and worst |error| (every quoted median is followed by its p90 and worst)."""
    import math
    import statistics

    if not errors:
        return "no stable, unflagged row"
    mags = sorted(abs(e) for e in errors)
    p90 = mags[min(len(mags) - 1, max(0, math.ceil(0.9 * len(mags)) - 1))]
    return (f"median |error| {statistics.median(mags):.1%}, p90 {p90:.1%}, worst {mags[-1]:.1%} "
            f"(over {len(mags)})")


def _row_md(r) -> str:
    d = r.to_dict()
    meas = f"{r.measured_speedup:.2f}" if r.stable else f"unstable ({r.measured_low:.2f}–{r.measured_high:.2f})"
    err = f"{r.error:+.1%}" if r.stable else "—"
    flags = " ".join(list(r.prediction_flags) + (["busy"] if r.contended else [])
                     + (["measured↑ceiling"] if r.above_ceiling else []))
    return (f"| {r.strategy} | {r.sparsity:g} | {r.achieved_sparsity:.1%} | {r.phase} | {r.batch} | "
            f"{r.dense_predicted_ms:.1f} | {r.dense_measured_ms:.1f} | {r.predicted_ms:.1f} | "
            f"{r.measured_ms:.1f} | {r.predicted_speedup:.2f} | {meas} | {err} | "
            f"{_pct(d['latency_error'])} | {flags} |")


def _quant_md(q, precision: str, dtype: str) -> str:
    meas = f"{q.measured_speedup:.2f}" if q.stable else f"unstable ({q.measured_low:.2f}–{q.measured_high:.2f})"
    err = f"{q.error:+.1%}" if q.stable else "—"
    flags = " ".join(list(q.prediction_flags) + (["busy"] if q.contended else []))
    return (f"| {q.phase} | {q.batch} | {q.dense_predicted_ms:.1f} | {q.dense_measured_ms:.1f} | "
            f"{q.predicted_ms:.1f} | {q.measured_ms:.1f} | {q.predicted_speedup:.2f} | {meas} | "
            f"{err} | {flags} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=MODEL, help="NAME[:LAYERS]")
    add_case_args(ap, FAMILIES, SPARSITIES, "validate_int4_cpu", extra=(
        ("--precision", {"default": "int4-g128"}),
        # bf16: the int4 CPU kernel's fast path (fp32 activations run ~8x slower than fp32 GEMMs)
        ("--dtype", {"default": "bf16", "choices": ("fp32", "bf16")})))
    args = ap.parse_args(argv)

    from pis_tui.cache import Cache
    from pis_tui.model.precision import parse_precision

    precision = parse_precision(args.precision).name
    strategies = [Strategy(f, float(s)) for f in args.families.split(",")
                  for s in args.sparsity.split(",")]
    phases = ("prefill", "decode") if args.phase == "both" else (args.phase,)
    cache_path = args.cache or str(Path(tempfile.mkdtemp()) / "ops.duckdb")
    raw, name = _model(args.model)
    load_before = os.getloadavg()
    out: dict = {"model": name, "ref": args.model, "precision": precision,
                 "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                 "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                 "scenario": {"prompt_len": args.prompt_len, "prefill_batches": args.prefill_batches,
                              "decode_batches": args.decode_batches,
                              "context_len": args.context_len, "dtype": args.dtype,
                              "repeats": args.repeats, "max_rounds": args.max_rounds},
                 "load_before": list(load_before)}
    warnings: list = []
    probes: dict = {}
    t0 = time.time()
    with LoadWatch() as watch, Cache.open(cache_path) as cache:
        rows = v.validate(raw, strategies, phases, prompt_len=args.prompt_len,
                          prefill_batches=[int(x) for x in args.prefill_batches.split(",")],
                          decode_batches=[int(x) for x in args.decode_batches.split(",")],
                          context_len=args.context_len, dtype=args.dtype, repeats=args.repeats,
                          max_rounds=args.max_rounds, cache=cache, precision=precision,
                          probes=probes, on_progress=lambda m: print("  ..", m, flush=True),
                          on_warning=warnings.append,
                          on_row=lambda r: print("  row", r.strategy, r.sparsity, r.phase,
                                                 r.batch, f"{r.predicted_speedup:.2f}",
                                                 r.status, flush=True))
        out["kernel_ratios"] = _kernel_ratios(cache, args.dtype, precision)
    out["load_during"] = watch.summary()
    out["load_after"] = list(os.getloadavg())
    out["seconds"] = round(time.time() - t0, 1)
    out["summary"] = _jsonable(v.accuracy_summary(rows))
    out["warnings"] = warnings
    out["probes"] = {k: {"precision": p.get("precision"), "ms": p["ms"],
                         "contended": p["contended"]} for k, p in probes.items()}
    out["rows"] = [r.to_dict(full=True) for r in rows]
    out["quantization"] = [q.to_dict(full=True) for q in quantization_rows(rows)]
    base = HERE / args.out  # an absolute --out replaces HERE
    Path(f"{base}.result.json").write_text(json.dumps(out, indent=1), encoding="utf-8")
    Path(f"{base}.result.md").write_text(_markdown(out, rows), encoding="utf-8")
    print(f"wrote {base}.result.md/.json ({out['seconds']} s)")
    return 0


def _kernel_ratios(cache, dtype: str, precision: str) -> dict:
    """For each M, the median over the shapes measured both ways of (int4 GEMM ms) / (the same
    GEMM unquantized, ms): what the kernel itself costs here, from the op times the
    predictions were priced from."""
    import re
    import statistics

    from pis_tui.device.local import local_device

    ms = {m.key: m.ms for m in cache.get_measurements(local_device().fingerprint, dtype)
          if m.ms and m.status == "ok"}
    ratios: dict = {}
    for key, t in ms.items():
        hit = re.fullmatch(rf"gemm:dense:{dtype}:{re.escape(precision)}@[^:]+:(\d+)x(\d+)x(\d+)", key)
        plain = hit and ms.get(f"gemm:dense:{dtype}:{hit[1]}x{hit[2]}x{hit[3]}")
        if plain:
            ratios.setdefault(int(hit[1]), []).append(t / plain)
    return {m: {"median": statistics.median(r), "min": min(r), "max": max(r), "shapes": len(r)}
            for m, r in sorted(ratios.items())}


def _markdown(out: dict, rows: list) -> str:
    sc, p, dt = out["scenario"], out["precision"], out["scenario"]["dtype"]
    ok = [r for r in rows if r.stable and not r.prediction_flags]
    qs = quantization_rows(rows)
    qok = [q for q in qs if q.stable and not q.prediction_flags]
    notes = sorted({n for r in rows for n in r.notes if n.startswith(f"{p}:")})
    lines = [f"# validate --precision {p} on {out['model']}, CPU {dt} activations "
             f"({out['started']})", "",
             f"Machine: {out['machine']}. Load average (1 min) before "
             f"{out['load_before'][0]:.2f}, during median {out['load_during']['median']:.2f} "
             f"(max {out['load_during']['max']:.2f}, {out['load_during']['samples']} samples), "
             f"after {out['load_after'][0]:.2f}. Run time {out['seconds']:.0f} s.", "",
             f"Scenario: prefill batch {sc['prefill_batches']} × {sc['prompt_len']}; decode batch "
             f"{sc['decode_batches']} at context {sc['context_len']}; {sc['repeats']} interleaved "
             f"pairs a round, at most {sc['max_rounds']} rounds; random weights. Every model's "
             f"linears are {p} (the lm_head and the embedding stay {dt}); unstable or flagged "
             "rows are shown and not counted.", ""]
    lines += [f"- {n}" for n in notes[:3]] + [""]
    lines += ["## Pruned vs dense, both quantized", "",
              f"Predicted vs measured speedup: {_stats([r.error for r in ok])}; the FLOPs ratio: "
              f"{_stats([r.flops_error for r in ok])}. Unstable rows: "
              f"{sum(1 for r in rows if not r.stable)}; flagged predictions: "
              f"{sum(1 for r in rows if r.stable and r.prediction_flags)}. Absolute latency "
              f"(predicted / measured − 1) of the pruned models: "
              f"{_stats([r.latency_error for r in ok if r.latency_error is not None])}.", ""]
    lines += [f"warning: {w}" for w in out["warnings"]] + ([""] if out["warnings"] else [])
    lines += ["| strategy | s | achieved | phase | b | dense pred ms | dense meas ms | "
              "pred ms | meas ms | pred × | meas × | error | ms error | flags |",
              "|" + "---|" * 14]
    lines += [_row_md(r) for r in rows] + [""]
    lines += [f"## The quantization's own speedup: {p} dense vs {dt} dense", "",
              f"Predicted vs measured: {_stats([q.error for q in qok])}.", "",
              f"| phase | b | {dt} pred ms | {dt} meas ms | {p} pred ms | {p} meas ms | pred × | "
              "meas × | error | flags |", "|" + "---|" * 10]
    lines += [_quant_md(q, p, dt) for q in qs] + [""]
    by_phase = {}
    for q in qs:
        by_phase.setdefault(q.phase, []).append(q)
    for ph, group in by_phase.items():
        lines.append(f"- {ph}: measured " + ", ".join(
            f"b{q.batch} {q.measured_speedup:.2f}×" if q.stable else
            f"b{q.batch} {q.measured_low:.2f}–{q.measured_high:.2f}× (unstable)" for q in group)
            + "; predicted " + ", ".join(f"b{q.batch} {q.predicted_speedup:.2f}×" for q in group))
    kr = out.get("kernel_ratios") or {}
    if kr:
        lines += ["", f"The {p} GEMMs themselves, as measured for the predictions: time over the "
                  f"same GEMM in {dt}, median over the shapes measured both ways: " + "; ".join(
                      f"M = {m}: {r['median']:.2f}× ({r['min']:.2f}–{r['max']:.2f}, {r['shapes']} "
                      "shapes)" for m, r in kr.items()) + "."]
    lines += ["", "## What these CPU timings do and do not tell about a GPU", "", _GPU_PARAGRAPH]
    return "\n".join(lines) + "\n"


_GPU_PARAGRAPH = (
    "They check the composition, not the kernel. A row agrees when the op list at the "
    "precision holds the GEMMs the real quantized model runs (every decoder linear through "
    "the int4 kernel, both low-rank factors, the lm_head and embedding unquantized, pruned "
    "widths and ranks aligned to the group) and when summing those op times measured one by "
    "one, plus the eager overhead of quantized linears, adds up to the forward; that "
    "accounting is the same on a GPU. They say nothing about the int4 kernel's speed there: "
    "`_weight_int4pack_mm_for_cpu` is another implementation than CUDA's tinygemm "
    "(`_weight_int4pack_mm`), and on the 2-core AVX-512 machine this script was written on its "
    "fp32-activation path was far slower than its bf16 one (896×896 at M = 128, one thread: "
    "~175 ms against ~2.3 ms) and than an fp32 GEMM (the ratios above), so the quantization's "
    "own speedup measured here can be a slowdown that a GPU, where int4 weight-only decode at "
    "small batch is bound by the weight bytes it reads, does not show; a CPU compute-bound at "
    "low arithmetic intensity says little of a GPU's prefill either. Host overhead differs "
    "too: a GPU is timed through CUDA graphs (none), this CPU eager (the quantized linears' "
    "Python measured by the probe's quantized clones). The GPU figures come from timing the "
    "quantized ops on the GPU (`tests/gpu`), never from these.")


if __name__ == "__main__":
    sys.exit(main())
