"""Writes tests/data/tp1_golden.json: the op lists and numbers of pis-tui before tensor
parallelism (issue 19), which ``--tp 1`` must reproduce exactly (tests/test_tensor_parallel.py).

Run with the checkout to take the figures from on PYTHONPATH: main before issue 19 was merged
into it (f37161b: issue 16's kernel-level estimates, --engine eager|fused)::

    git archive f37161b | tar -x -C /tmp/pis-main
    PYTHONPATH=/tmp/pis-main python tests/data/make_tp1_golden.py tests/data/tp1_golden.json

Op lists: every op's name, key and count for qwen2.5-0.5b (every family at 0.25 and 0.5,
both phases, granularity layer and sublayer); a digest of the same for llama-3.1-8b and
llama-3.1-70b.  Numbers: each phase's latency on h200-sxm and on rtx-4090 (roofline: no
shipped tables) under the eager engine (keyed by the GPU) and the fused one ("GPU|fused"), the sweep's points for llama-3.1-8b on h200-sxm (speedup, interval,
ceiling), and the plan of llama-3.1-8b on h200-sxm for the chat workload.
"""

import hashlib
import json
import sys


def op_rows(po):
    return [[o.name, o.key(), round(float(o.count), 9)] for o in po.ops]


def digest(rows) -> str:
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def main(out: str) -> None:
    from pis_tui import families
    from pis_tui.decide.sweep import make_estimator, sweep
    from pis_tui.device.choose import load_gpu
    from pis_tui.model.spec import load_model_spec
    from pis_tui.decide.deployment import plan
    from pis_tui.quality.model import build_quality_model
    from pis_tui.model.scenario import Scenario
    from pis_tui.families.strategy import Strategy
    from pis_tui.families.phase_ops import build_phase_ops
    from pis_tui.model.workload import single

    doc = {"op_lists": {}, "digests": {}, "latency_ms": {}, "achieved": {}}
    scen = Scenario()
    gpus = {g: load_gpu(g) for g in ("h200-sxm", "rtx-4090")}
    ests = {g: make_estimator(d, "bf16") for g, d in gpus.items()}
    ests.update({f"{g}|fused": make_estimator(d, "bf16", engine="fused") for g, d in gpus.items()})
    for model in ("qwen2.5-0.5b", "llama-3.1-8b", "llama-3.1-70b"):
        spec = load_model_spec(model)
        for fam in families.names():
            f = families.get(fam)
            for s in f.sparsity_grid((0.25, 0.5)) if not f.is_baseline else (0.0,):
                for gran in ("layer", "sublayer"):
                    if gran == "sublayer" and fam != "static_depth":
                        continue
                    for ph in ("prefill", "decode"):
                        po = build_phase_ops(spec, Strategy(fam, s, gran), scen, ph)
                        key = f"{model}|{fam}|{s}|{gran}|{ph}"
                        rows = op_rows(po)
                        if model == "qwen2.5-0.5b":
                            doc["op_lists"][key] = rows
                        doc["digests"][key] = digest(rows)
                        doc["achieved"][key] = po.achieved_sparsity
                        doc["latency_ms"][key] = {g: e.estimate(po).latency_ms for g, e in ests.items()}
    q = build_quality_model(protocol="lora")
    res = sweep("llama-3.1-8b", "h200-sxm", scen, quality=q)
    doc["sweep_points"] = [[p.strategy, p.sparsity, p.phase, p.latency_ms, p.speedup,
                            list(p.interval), p.ceiling, list(p.flags)] for p in res.points]
    doc["memory"] = res.memory
    pr = plan("llama-3.1-8b", "h200-sxm", single("chat"), quality=q)
    doc["plan"] = [[c.strategy, c.sparsity, c.weights_bytes, c.kv_bytes_per_token,
                    c.max_sequences, c.ttft_ms, c.tpot_ms, c.e2e_ms, c.throughput_tok_s]
                   for c in pr.candidates]
    with open(out, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=0, sort_keys=True)
        fh.write("\n")
    print(f"wrote {out}: {len(doc['digests'])} op lists")


if __name__ == "__main__":
    main(sys.argv[1])
