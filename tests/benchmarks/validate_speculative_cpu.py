"""Self-speculative decoding run for real on this machine's CPU (fp32) against the cost model
plan prices it by (pis_tui.decide.speculative; ``pis-tui validate-speculative``).

A random-weight model at reduced depth (default qwen2.5-0.5b at 8 of its 24 layers) decodes a
random prompt twice from one prefill, interleaved and repeated: plainly (one token a sequence a
step) and self-speculatively: γ steps of an early exit (the model's first L − round(s·L) layers,
then its norm and lm_head, sharing its weights and KV cache), one verification of the last
committed token and the γ drafted ones (the dense model, every position's logits), the cache
cropped back to the accepted tokens; each sequence's acceptances are drawn with a forced α (the
same draws every pair).  The measured speedup (dense decode time over speculative, prefill
excluded) is compared with the cost model's: the draft step (validate's prediction of the
static-depth model), the verification (the dense decode forward of γ + 1 tokens a sequence) and
the dense step, each priced from this CPU's measured op times (the dispatch probe's eager
overheads included) and averaged over the contexts the answer passes, times the iterations the
run realised.  The static batches include one where speculation loses on this CPU: at a large
batch the CPU is compute-bound and the verification of B·(γ+1) tokens costs about γ+1 steps.

Checks: the cost of the draft steps, the verification and the rollback on this CPU, given the
acceptances drawn.  Does not check: α (forced; ``pis-tui quality --acceptance`` measures it on
real weights), the outputs (a forced acceptance commits the draft's tokens), a GPU.

    PYTHONPATH=. python tests/benchmarks/validate_speculative_cpu.py [--model qwen2.5-0.5b:8]
        [--draft-sparsity 0.75] [--gamma 4] [--alpha 0.9] [--prompt-len 64] [--output-len 64]
        [--decode-batches 1,8,64] [--repeats 3] [--out validate_speculative_cpu]

Writes ``<out>.result.md`` and ``.result.json`` beside this file.
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

from pis_tui.validation import speculative as vs  # noqa: E402
from validate_moe_cpu import LoadWatch, _model  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="qwen2.5-0.5b:8", help="NAME[:LAYERS]")
    ap.add_argument("--draft-sparsity", type=float, default=0.75)
    ap.add_argument("--gamma", type=int, default=4)
    ap.add_argument("--alpha", type=float, default=0.9)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--decode-batches", default="1,8,64")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", default=None, help="op-time cache (default: a fresh one)")
    ap.add_argument("--out", default="validate_speculative_cpu")
    ap.add_argument("--from-json", metavar="FILE", default=None,
                    help="write the .result.md again from a run's .result.json (no run)")
    args = ap.parse_args(argv)
    if args.from_json:
        out = json.loads(Path(args.from_json).read_text(encoding="utf-8"))
        rows = [_row_of(d) for d in out["rows"]]
        md = Path(args.from_json).with_name(Path(args.from_json).name.replace(".json", ".md"))
        md.write_text(_markdown(out, rows), encoding="utf-8")
        print(f"wrote {md.name}")
        return 0

    from pis_tui.cache import Cache

    raw, name = _model(args.model)
    batches = [int(x) for x in args.decode_batches.split(",")]
    cache_path = args.cache or str(Path(tempfile.mkdtemp()) / "ops.duckdb")
    load_before = os.getloadavg()
    command = "PYTHONPATH=. python tests/benchmarks/validate_speculative_cpu.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    out: dict = {"model": name, "ref": args.model, "command": command.strip(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                 "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                 "scenario": {"draft_sparsity": args.draft_sparsity, "gamma": args.gamma,
                              "alpha": args.alpha, "prompt_len": args.prompt_len,
                              "output_len": args.output_len, "decode_batches": batches,
                              "dtype": "fp32", "repeats": args.repeats, "seed": args.seed},
                 "load_before": list(load_before)}
    warnings: list = []
    t0 = time.time()
    with LoadWatch() as watch, Cache.open(cache_path) as cache:
        rows = vs.validate_speculative(
            raw, batches, draft_sparsity=args.draft_sparsity, gamma=args.gamma, alpha=args.alpha,
            prompt_len=args.prompt_len, out_tokens=args.output_len, repeats=args.repeats,
            seed=args.seed, cache=cache, on_progress=lambda m: print("  ..", m, flush=True),
            on_warning=warnings.append,
            on_row=lambda r: print("  row", r.batch, r.iterations, f"{r.predicted_speedup:.2f}",
                                   f"{r.measured_speedup:.2f}", f"{r.error:+.1%}", flush=True))
    out["load_during"] = watch.summary()
    out["load_after"] = list(os.getloadavg())
    out["seconds"] = round(time.time() - t0, 1)
    out["summary"] = vs.summary(rows)
    out["warnings"] = warnings
    out["rows"] = [r.to_dict() for r in rows]
    (HERE / f"{args.out}.result.json").write_text(json.dumps(out, indent=1), encoding="utf-8")
    (HERE / f"{args.out}.result.md").write_text(_markdown(out, rows), encoding="utf-8")
    print(f"wrote {args.out}.result.md/.json ({out['seconds']} s)")
    return 0


def _row_of(d: dict):
    """A :class:`~pis_tui.validation.speculative.SpecRow` from its JSON dict."""
    from dataclasses import fields

    keep = {f.name for f in fields(vs.SpecRow)}
    kw = {k: v for k, v in d.items() if k in keep}
    kw["load"], kw["notes"] = tuple(kw["load"]), tuple(kw.get("notes", ()))
    return vs.SpecRow(**kw)


def _flags(r) -> str:
    return " ".join(x for x in ("busy" if r.contended else "",
                                f"{r.loaded_ops} op times unstable" if r.loaded_ops else "") if x)


def _markdown(out: dict, rows: list) -> str:
    sc, s = out["scenario"], out["summary"]
    E = rows[0].draft_layers if rows else "?"
    L = rows[0].layers if rows else "?"
    lines = [f"# validate-speculative, CPU fp32 ({out['started']})", "",
             f"Machine: {out['machine']}. Load average (1 min) before "
             f"{out['load_before'][0]:.2f}, during median {out['load_during']['median']:.2f} "
             f"(max {out['load_during']['max']:.2f}, {out['load_during']['samples']} samples), "
             f"after {out['load_after'][0]:.2f}. Run time {out['seconds']:.0f} s.", "",
             f"Command: `{out.get('command', '')}`", "",
             f"Model: {out['model']} (random weights, {L} layers); draft: its first {E} layers "
             f"(static depth {sc['draft_sparsity']:g}, an early exit sharing weights and KV "
             f"cache); γ {sc['gamma']}, forced α {sc['alpha']:g}; prompt {sc['prompt_len']}, "
             f"output {sc['output_len']} tokens a sequence; static decode batches "
             f"{', '.join(map(str, sc['decode_batches']))}; {sc['repeats']} interleaved "
             "dense/speculative pairs each (median), every pair from one prefill (excluded).", ""]
    if s.get("n"):
        lines.append(f"Predicted vs measured speedup over {s['n']} batches: median |error| "
                     f"{s['median_abs_error']:.1%}, p90 {s['p90_abs_error']:.1%}, worst "
                     f"{s['worst_abs_error']:.1%} (signed median {s['median_error']:+.1%}).")
    lose = [r.batch for r in rows if r.measured_speedup < 1.0]
    if lose:
        lines.append(f"\nSpeculation loses on this CPU at batch {', '.join(map(str, lose))} "
                     "(measured speedup below 1).")
    for w in out["warnings"]:
        lines.append(f"\nwarning: {w}")
    lines += ["", "| batch | iterations real / E | tokens min–max | dense meas ms | spec meas ms | "
                  "meas × | interval | pred × | error | dense pred ms | spec pred ms | "
                  "draft step pred / meas ms | verify pred / meas ms | rollback ms | load | flags |",
              "|" + "---|" * 16]
    for r in rows:
        lines.append(
            f"| {r.batch} | {r.iterations} / {r.expected_iterations:.1f} | "
            f"{r.tokens_min}–{r.tokens_max} | {r.dense_measured_ms:.0f} | "
            f"{r.spec_measured_ms:.0f} | {r.measured_speedup:.2f} | "
            f"{r.measured_low:.2f}–{r.measured_high:.2f} | {r.predicted_speedup:.2f} | "
            f"{r.error:+.1%} | {r.dense_predicted_ms:.0f} | {r.spec_predicted_ms:.0f} | "
            f"{r.draft_step_predicted_ms:.1f} / {r.draft_step_measured_ms:.1f} | "
            f"{r.verify_predicted_ms:.1f} / {r.verify_measured_ms:.1f} | "
            f"{r.rollback_measured_ms:.2f} | {r.load[0]:.1f} | {_flags(r)} |")
    lines += ["",
              "The speedup is the dense decode time over the speculative one (the prefill "
              "excluded); predicted from this CPU's measured op times (the dispatch probe's "
              "eager overheads included), the realised iterations × (γ draft steps + one "
              "verification), rollback priced at 0; E: the cost model's expected iterations of "
              "the static batch (batch_iterations); busy: other processes held cores while it was "
              "timed; op times unstable: measured under load or in disagreeing rounds. The "
              "measured step times are per iteration means of the last speculative run (draft "
              "step: the γ steps over γ).", "",
              "What this checks: the cost model's draft steps, verification of B·(γ+1) tokens "
              "and rollback on this CPU, given the acceptances drawn. What it does not: α "
              "(forced), the outputs (a forced acceptance commits the draft's tokens), a GPU. "
              "The batch's cache holds one length (a sequence that accepted fewer than the "
              "batch's maximum keeps the rejected positions: a few positions of attention more "
              "than a server with a length a sequence), and the cache is a DynamicCache (each "
              "step concatenates), which the prediction's KV write does not price.", ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
