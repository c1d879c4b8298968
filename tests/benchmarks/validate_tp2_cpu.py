"""Tensor parallelism end to end on this CPU (issue 19 §4): qwen2.5-0.5b run as 2 gloo ranks.

qwen2.5-0.5b, fp32, ``validate --tp 2``: each model built as 2 tensor-parallel ranks of
torch.distributed (gloo over loopback, one core a rank), its linears sharded explicitly
(all-reduce after o/down, vocab-parallel embedding and lm_head); prefill 1×64, decode batch 1
and 8 at context 128; static_depth, static_width, low_rank and dynamic_depth at 0.5, dense
against pruned, predicted against measured speedup.

The whole comparison runs ``--runs`` times (the ops behind the predictions are measured once,
on one rank's share of the cores, and reused): the ranks measure the collectives afresh each
run, right before they time the models, so the result shows how far gloo's all-reduce moves
from run to run on a 2-core machine and what that does to the speedups.  Nothing is dropped:
every run's rows, every collective's rounds (min–max) and the unstable flags are written.

    PYTHONPATH=. python tests/benchmarks/validate_tp2_cpu.py [--runs 3] [--repeats 5] [--note TEXT]

Writes tests/benchmarks/validate_tp2_cpu.result.md and .result.json beside this file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from pis_tui.families.strategy import Strategy  # noqa: E402

MODEL = "qwen2.5-0.5b"
FAMILIES = ("static_depth", "static_width", "low_rank", "dynamic_depth")
SPARSITY = 0.5


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cache", default=None, help="DuckDB cache (default: a fresh temporary one)")
    ap.add_argument("--out", default=str(HERE / "validate_tp2_cpu.result"))
    ap.add_argument("--note", default="", help="what else ran on the machine, said in the result")
    ap.add_argument("--render", action="store_true",
                    help="only write the .md again from the .json (and --note, if given)")
    args = ap.parse_args()
    if args.render:
        doc = json.loads(Path(args.out + ".json").read_text())
        if args.note:
            doc["meta"]["note"] = args.note
            Path(args.out + ".json").write_text(json.dumps(doc, indent=1) + "\n")
        Path(args.out + ".md").write_text(report(doc["meta"], doc["runs"]))
        return 0

    import torch
    import transformers

    from pis_tui.cache import Cache
    from pis_tui.device.local import cpu_cores, local_device
    from pis_tui.validation.tp import validate_tp

    if args.cache is None:
        args.cache = os.path.join(tempfile.mkdtemp(prefix="pis-tp2-"), "cache.duckdb")
    cache = Cache.open(args.cache)
    strategies = [Strategy(f, SPARSITY) for f in FAMILIES]
    runs = []
    t_all = time.time()
    for i in range(args.runs):
        t0 = time.time()
        load0 = os.getloadavg()[0]

        def say(m, i=i):
            print(f"[run {i + 1}] {m}", file=sys.stderr, flush=True)
        rows = validate_tp(MODEL, strategies, ("prefill", "decode"), tp=2, prefill_batches=(1,),
                           prompt_len=64, decode_batches=(1, 8), context_len=128,
                           repeats=args.repeats, warmup=1, cache=cache, on_progress=say)
        runs.append({"run": i + 1, "seconds": round(time.time() - t0, 1), "load_start": load0,
                     "load_end": os.getloadavg()[0],
                     "rows": [r.to_dict(full=True) for r in rows]})
        print(f"run {i + 1}: {len(rows)} rows in {time.time() - t0:.0f} s", file=sys.stderr)
    device = local_device()
    meta = {"model": MODEL, "dtype": "fp32", "tp": 2, "backend": "gloo", "sparsity": SPARSITY,
            "families": FAMILIES, "prefill": "1×64", "decode": "batch 1 and 8 @ 128",
            "repeats": args.repeats, "runs": args.runs, "cores": cpu_cores(),
            "device": device.display_name, "torch": torch.__version__,
            "transformers": transformers.__version__, "platform": platform.platform(),
            "seconds": round(time.time() - t_all, 1), "note": args.note,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    Path(args.out + ".json").write_text(json.dumps({"meta": meta, "runs": runs}, indent=1) + "\n")
    Path(args.out + ".md").write_text(report(meta, runs))
    print(report(meta, runs))
    return 0


def _speedup(r: dict) -> str:
    if r.get("measured_speedup") is not None:
        return f"{r['measured_speedup']:.3f}"
    lo, hi = r.get("measured_interval") or (0.0, 0.0)
    return f"unstable ({lo:.2f}–{hi:.2f})"


def _pct(x: float) -> str:
    return f"{x:+.1%}"


def report(meta: dict, runs: list) -> str:
    out = ["# validate_tp2_cpu: tensor parallelism over 2 gloo ranks, predicted vs measured\n",
           f"{meta['model']}, {meta['dtype']}, `validate --tp 2` ({meta['backend']} over loopback, "
           f"one core a rank of {meta['cores']}), prefill {meta['prefill']}, decode "
           f"{meta['decode']}; {', '.join(meta['families'])} at {meta['sparsity']:g}; "
           f"{meta['repeats']} interleaved rounds per pair, the slowest rank's time each; "
           f"{meta['runs']} runs; torch {meta['torch']}, transformers {meta['transformers']}; "
           f"{meta['device']}; {meta['seconds']:.0f} s; {meta['date']}.\n",
           "Each rank's model has one rank's heads, KV heads, MLP channels and vocabulary rows; "
           "an all-reduce follows o_proj and down_proj, the embedding is vocab-parallel (an "
           "all-reduce) and the lm_head's logits are all-gathered.  The prediction is one rank's "
           "op list priced from ops measured on one core (fingerprint …:1t) and from the "
           "collectives the ranks measured in the same processes just before timing the models "
           "(their median round).  error = predicted speedup / measured speedup − 1.\n"]
    if meta.get("note"):
        out.append(f"Conditions: {meta['note']}\n")
    # the runs: how loaded the machine was (another process's work lands on the ranks' cores)
    out.append("## The runs\n")
    out.append("| run | seconds | load avg (1 min) at start | at end | dense measured / predicted (median over rows) |")
    out.append("|---|---|---|---|---|")
    for run in runs:
        ratios = [r["dense_measured_ms"] / r["dense_predicted_ms"] for r in run["rows"]
                  if r["dense_predicted_ms"]]
        off = f"{statistics.median(ratios):.2f}×" if ratios else "–"
        out.append(f"| {run['run']} | {run['seconds']:.0f} | {run['load_start']:.2f} | "
                   f"{run['load_end']:.2f} | {off} |")
    out.append("\nThe speedups are ratios of times taken in the same rounds (dense and pruned "
               "interleaved), so a loaded machine moves them less than it moves the absolute "
               "times; the last column shows how far the absolute times were off.\n")
    # the collectives, per run
    out.append("## The collectives, as the ranks measured them (gloo, 2 ranks)\n")
    out.append("| run | collective | bytes | median ms | min–max ms | max/min | spread (IQR/median) | status |")
    out.append("|---|---|---|---|---|---|---|---|")
    for run in runs:
        colls = run["rows"][0]["tp"]["collectives"] if run["rows"] else []
        for c in sorted(colls, key=lambda c: (c["collective"], c["bytes"])):
            out.append(f"| {run['run']} | {c['collective']} | {c['bytes']:,} | {c['ms']:.3f} | "
                       f"{c['min_ms']:.3f}–{c['max_ms']:.3f} | {c['max_ms'] / c['min_ms']:.1f}× | "
                       f"{c['spread']:.0%} | {c['status']} |")
    # across runs: the same collective's median
    by = {}
    for run in runs:
        for c in (run["rows"][0]["tp"]["collectives"] if run["rows"] else []):
            by.setdefault((c["collective"], c["bytes"]), []).append(c["ms"])
    out.append("\nAcross runs, each collective's median round: " + "; ".join(
        f"{k[0]} {k[1]:,} B {min(v):.3f}–{max(v):.3f} ms ({max(v) / min(v):.1f}×)"
        for k, v in sorted(by.items())) + ".\n")
    # rows
    out.append("## Predicted vs measured, every run\n")
    out.append("| run | strategy | phase | batch | pred ms | meas ms | dense pred | dense meas | pred × | meas × | error | pred coll. ms (dense/pruned) | spread | flags |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    errs = []
    for run in runs:
        for r in run["rows"]:
            t = r["tp"]
            if r.get("error") is not None:  # an unstable row has no figure (its interval only)
                errs.append((abs(r["error"]), r, run["run"]))
            flags = "unstable_collectives" if t["unstable_collectives"] else ""
            out.append(f"| {run['run']} | {r['strategy']} | {r['phase']} | {r['batch']} | "
                       f"{r['predicted_ms']:.1f} | {r['measured_ms']:.1f} | {r['dense_predicted_ms']:.1f} | "
                       f"{r['dense_measured_ms']:.1f} | {r['predicted_speedup']:.3f} | "
                       f"{_speedup(r)} | {_pct(r['error']) if r.get('error') is not None else '–'} | "
                       f"{t['dense_predicted_collectives_ms']:.1f}/{t['predicted_collectives_ms']:.1f} | "
                       f"{r['measured_spread']:.0%} | {flags} |")
    if errs:
        med = statistics.median(e for e, _, _ in errs)
        worst = max(errs, key=lambda e: e[0])
        flagged = sum(1 for _, r, _ in errs if r["tp"]["unstable_collectives"])
        out.append(f"\n**Result: median |error| {med:.1%}, worst {worst[0]:.1%} ({worst[1]['strategy']} "
                   f"{worst[1]['phase']} b{worst[1]['batch']}, run {worst[2]}) over {len(errs)} rows; "
                   f"{flagged} of them flagged unstable_collectives.**\n")
        # per row across runs: how far the measured speedup moved
        spread = {}
        for run in runs:
            for r in run["rows"]:
                if r.get("measured_speedup") is not None:
                    spread.setdefault((r["strategy"], r["phase"], r["batch"]), []).append(r["measured_speedup"])
        out.append("Measured speedup across runs (min–max): " + "; ".join(
            f"{k[0]} {k[1]} b{k[2]} {min(v):.2f}–{max(v):.2f}" for k, v in spread.items()) + ".\n")
    out.append("Not a GPU result: gloo over loopback on a shared 2-core CPU stands in for NCCL over "
               "NVLink, and its collectives are slow and vary several-fold; what this checks is "
               "the mechanics (per-rank shapes, the all-reduces the op list counts, the per-rank "
               "KV cache, pruning's effect on them) against a real torch.distributed run, with the "
               "spread reported rather than hidden.\n")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
