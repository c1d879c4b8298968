"""Accuracy benchmark of pis-tui's predictions for mixture-of-experts models against end-to-end
timings on this machine's CPU (fp32).

Each model is built with transformers' own class (random weights, experts through
``grouped_mm``), at reduced depth where it is too big to hold whole with a pruned copy, and
pruned by static_depth, static_width, low_rank and dynamic_depth at 0.25 and 0.5 (the families
that act on an MoE model's attention and layers; ``--families`` also takes the four that prune
the routed experts: expert_pruning, topk_reduction, dynamic_topk, expert_slimming).  Every
prediction, the dense model's and each pruned model's, is made from that model's own routing,
recorded from the forwards that are timed (prefill: the same input ids; decode: the timed step
at its batch over several steps): never ``balanced``.  The routing files are kept beside the
result (``<name>.routing/``) and each row shows what they say.

Scenario: prefill batch 1 × 128 tokens; decode batch 1, 16 and 64 at context 256.  Rows whose
measured speedup did not settle are reported unstable and left out of the errors; the load
average is recorded before, during (every 5 s) and after the run.

    PYTHONPATH=. python tests/benchmarks/validate_moe_cpu.py [--model granite-3.1-1b-a400m:8]
        [--model olmoe-1b-7b:4] [--families static_depth,dynamic_topk@0.4375] [--sparsity 0.5]
        [--decode-batches 1,16,64] [--phase both] [--repeats 5] [--out NAME]

``--model NAME[:LAYERS]`` (repeatable; default: granite-3.1-1b-a400m at 8 of its 24 layers and
olmoe-1b-7b at 4 of its 16).  Writes ``<out>.result.md`` and ``.result.json`` beside this file
(default out: validate_moe_cpu).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from pis_tui import validation as v  # noqa: E402
from pis_tui.families.strategy import Strategy  # noqa: E402
from pis_tui.hf.config import raw_config, reduce_layers  # noqa: E402

MODELS = ("granite-3.1-1b-a400m:8", "olmoe-1b-7b:4")
FAMILIES = ("static_depth", "static_width", "low_rank", "dynamic_depth")
SPARSITIES = (0.25, 0.5)


class LoadWatch:
    """The 1-minute load average every ``every`` seconds while the run goes."""

    def __init__(self, every: float = 5.0):
        self.every, self.samples = every, []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        t0 = time.time()
        while not self._stop.wait(self.every):
            self.samples.append((round(time.time() - t0, 1), os.getloadavg()[0]))

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()

    def summary(self) -> dict:
        vals = [x for _, x in self.samples] or [os.getloadavg()[0]]
        return {"median": statistics.median(vals), "max": max(vals), "min": min(vals),
                "samples": len(vals)}


def _model(ref: str) -> tuple:
    """(raw config to build, its name) for NAME[:LAYERS]."""
    name, _, layers = ref.partition(":")
    raw, spec = raw_config(name)
    if layers:
        raw = reduce_layers(raw, spec, int(layers))
        raw, spec = raw_config(raw)
    return raw, spec.name


def _row_md(r) -> str:
    d = r.to_dict()
    rt = (r.routing or {}).get("label", "")
    meas = f"{r.measured_speedup:.2f}" if r.stable else f"unstable ({r.measured_low:.2f}–{r.measured_high:.2f})"
    err = f"{r.error:+.1%}" if r.stable else "—"
    flags = " ".join(list(r.prediction_flags) + (["busy"] if r.contended else []))
    return (f"| {r.strategy} | {r.sparsity:g} | {r.achieved_sparsity:.1%} | {r.phase} | {r.batch} | "
            f"{r.dense_predicted_ms:.1f} | {r.dense_measured_ms:.1f} | {r.predicted_ms:.1f} | "
            f"{r.measured_ms:.1f} | {r.predicted_speedup:.2f} | {meas} | {err} | "
            f"{_pct(d['latency_error'])} | {flags} | {rt} |")


def _pct(x) -> str:
    return "—" if x is None else f"{x:+.1%}"


def add_case_args(ap, families, sparsities, out: str, extra=()) -> None:
    """The validate benchmarks' shared flags: the families and sparsities, the scenario, the
    rounds, the op-time cache and the output name (``extra``: (flag, kwargs) put before the
    scenario's)."""
    ap.add_argument("--families", default=",".join(families))
    ap.add_argument("--sparsity", default=",".join(map(str, sparsities)))
    for flag, kw in extra:
        ap.add_argument(flag, **kw)
    ap.add_argument("--phase", choices=("prefill", "decode", "both"), default="both")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--prefill-batches", default="1")
    ap.add_argument("--decode-batches", default="1,16,64")
    ap.add_argument("--context-len", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--max-rounds", type=int, default=4)
    ap.add_argument("--cache", default=None, help="op-time cache (default: a fresh one)")
    ap.add_argument("--out", default=out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", default=None, help="NAME[:LAYERS], repeatable")
    add_case_args(ap, FAMILIES, SPARSITIES, "validate_moe_cpu")
    args = ap.parse_args(argv)

    from pis_tui.cache import Cache

    # a family@sparsity item keeps its own sparsity (dynamic_topk@0.4375: 4 or 5 experts a token)
    strategies = [Strategy(f.split("@")[0], float(f.split("@")[1])) if "@" in f else None
                  for f in args.families.split(",")]
    strategies = [st for f, st in zip(args.families.split(","), strategies) if st is not None] + [
        Strategy(f, float(s)) for f in args.families.split(",") if "@" not in f
        for s in args.sparsity.split(",")]
    phases = ("prefill", "decode") if args.phase == "both" else (args.phase,)
    cache_path = args.cache or str(Path(tempfile.mkdtemp()) / "ops.duckdb")
    routing_root = HERE / f"{args.out}.routing"
    load_before = os.getloadavg()
    out: dict = {"models": [], "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                 "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                 "scenario": {"prompt_len": args.prompt_len, "prefill_batches": args.prefill_batches,
                              "decode_batches": args.decode_batches,
                              "context_len": args.context_len, "dtype": "fp32",
                              "repeats": args.repeats, "max_rounds": args.max_rounds},
                 "load_before": list(load_before)}
    md_rows: list = []
    t0 = time.time()
    with LoadWatch() as watch, Cache.open(cache_path) as cache:
        for ref in args.model or MODELS:
            raw, name = _model(ref)
            print(f"== {name}", flush=True)
            warnings: list = []
            tm = time.time()
            rows = v.validate(raw, strategies, phases, prompt_len=args.prompt_len,
                              prefill_batches=[int(x) for x in args.prefill_batches.split(",")],
                              decode_batches=[int(x) for x in args.decode_batches.split(",")],
                              context_len=args.context_len, repeats=args.repeats,
                              max_rounds=args.max_rounds, cache=cache,
                              routing_dir=str(routing_root / name),
                              on_progress=lambda m: print("  ..", m, flush=True),
                              on_warning=warnings.append,
                              on_row=lambda r: print("  row", r.strategy, r.sparsity, r.phase,
                                                     r.batch, f"{r.predicted_speedup:.2f}",
                                                     f"{r.measured_speedup:.2f}", r.status,
                                                     flush=True))
            s = v.accuracy_summary(rows)
            out["models"].append({"model": name, "ref": ref, "seconds": round(time.time() - tm, 1),
                                  "summary": _jsonable(s), "warnings": warnings,
                                  "rows": [r.to_dict(full=True) for r in rows]})
            md_rows.append((name, rows, s, warnings))
    out["load_during"] = watch.summary()
    out["load_after"] = list(os.getloadavg())
    out["seconds"] = round(time.time() - t0, 1)
    (HERE / f"{args.out}.result.json").write_text(json.dumps(out, indent=1), encoding="utf-8")
    (HERE / f"{args.out}.result.md").write_text(_markdown(out, md_rows), encoding="utf-8")
    print(f"wrote {args.out}.result.md/.json ({out['seconds']} s)")
    return 0


def _jsonable(s: dict) -> dict:
    return json.loads(json.dumps(s, default=str))


def _markdown(out: dict, md_rows: list) -> str:
    sc = out["scenario"]
    lines = [f"# validate on MoE models, CPU fp32 ({out['started']})", "",
             f"Machine: {out['machine']}. Load average (1 min) before "
             f"{out['load_before'][0]:.2f}, during median {out['load_during']['median']:.2f} "
             f"(max {out['load_during']['max']:.2f}, {out['load_during']['samples']} samples), "
             f"after {out['load_after'][0]:.2f}. Run time {out['seconds']:.0f} s.", "",
             f"Scenario: prefill batch {sc['prefill_batches']} × {sc['prompt_len']}; decode batch "
             f"{sc['decode_batches']} at context {sc['context_len']}; {sc['repeats']} interleaved "
             f"pairs a round, at most {sc['max_rounds']} rounds. Every prediction is made from the "
             "model's own routing recorded from its timed forwards (files in "
             "`<out>.routing/`); unstable rows are shown and not counted.", ""]
    for name, rows, s, warnings in md_rows:
        lines += [f"## {name}", ""]
        if s.get("n"):
            lat = s.get("latency_error") or {}
            dlat = s.get("dense_latency_error") or {}
            lines.append(f"Predicted vs measured speedup over {s['n']} stable rows: median "
                         f"|error| {s['median_abs_error']:.1%}, worst {s['worst_abs_error']:.1%} "
                         f"({s['worst']}); FLOPs ratio median {s['flops_median_abs_error']:.1%}. "
                         f"Unstable: {s['unstable']}; prediction flagged: {s['prediction_flagged']}."
                         + (f" Absolute latency (predicted/measured − 1): dense median "
                            f"{dlat['median']:+.1%}, pruned median {lat['median']:+.1%}."
                            if lat and dlat else ""))
        else:
            lines.append(f"No stable, unflagged row (unstable {s.get('unstable', 0)}, "
                         f"flagged {s.get('prediction_flagged', 0)}).")
        for w in warnings:
            lines.append(f"\nwarning: {w}")
        lines += ["", "| strategy | s | achieved | phase | b | dense pred ms | dense meas ms | "
                      "pred ms | meas ms | pred × | meas × | error | ms error | flags | routing |",
                  "|" + "---|" * 15]
        lines += [_row_md(r) for r in rows]
        lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
