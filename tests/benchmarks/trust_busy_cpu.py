"""A new user's profile on a busy machine: does anything wrong pass as measured?

Profiles qwen2.5-0.5b on this CPU (fp32; dense, static_width, low_rank and dynamic_depth at
12.5 % and 50 %; prefill 1×128, decode batch 16 at context 256) into a fresh cache while a CPU
hog spins on one core for the first minute (started and stopped here, bounded in time), then
sweeps from that cache and reports:

* how many measurements were re-measured, stored unstable, or found inconsistent;
* the points' timing sources, intervals, ceilings and flags;
* whether any reported speedup lies above its physical ceiling unflagged, or sits far above its
  FLOPs ratio unflagged (more than 1.5× it), and whether any recommendation is flagged.

Run:  python tests/benchmarks/trust_busy_cpu.py   (writes trust_busy_cpu.result.md and .json)
Not part of the default suite (minutes, and it loads the machine on purpose).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
HOG_S = 60.0
STRATEGIES = ("static_width", "low_rank", "dynamic_depth")
SPARSITIES = (0.125, 0.5)
BUDGETS = (0.05, 0.10, 0.30)

HOG = """
import os, time
try:
    os.sched_setaffinity(0, {0})
except (AttributeError, OSError):
    pass
end = time.monotonic() + %f
x = 0
while time.monotonic() < end:
    x += 1
"""


def main() -> None:
    from pis_tui import profiling
    from pis_tui.cache import Cache
    from pis_tui.decide.sweep import sweep
    from pis_tui.device.local import local_device
    from pis_tui.model.spec import load_model_spec
    from pis_tui.decide.frontier import recommend
    from pis_tui.quality.model import build_quality_model
    from pis_tui.model.scenario import Scenario

    spec = load_model_spec("qwen2.5-0.5b")
    device = local_device()
    scen = Scenario(prefill_batch=1, prompt_len=128, decode_batch=16, context_len=256, dtype="fp32")
    tmp = tempfile.mkdtemp(prefix="pis-trust-")
    cache = Cache.open(os.path.join(tmp, "cache.duckdb"))
    planned = profiling.worklist_detailed(spec, device, scen, STRATEGIES, SPARSITIES)
    hog = subprocess.Popen([sys.executable, "-c", HOG % HOG_S])
    t0 = time.monotonic()
    load_start = os.getloadavg()[0]
    try:
        report = profiling.run_profile([p.op for p in planned], None, cache, device=device,
                                       labels={p.op.key(): p.label for p in planned})
    finally:
        hog.kill()
        hog.wait(timeout=10)
    elapsed = time.monotonic() - t0
    stored = cache.get_measurements(device.fingerprint, "fp32")
    statuses: dict = {}
    for m in stored:
        statuses[m.status] = statuses.get(m.status, 0) + 1
    contended_rounds = sum(m.conditions.get("contended_rounds", 0) for m in stored)
    unstable = [{"key": m.key, "ms": m.ms, "why": m.conditions.get("unstable")}
                for m in stored if m.status == "unstable"]

    result = sweep(spec, device, scen, STRATEGIES, SPARSITIES, quality=build_quality_model(),
                   cache=cache)
    rows, problems = [], []
    for p in result.points:
        if p.strategy == "dense":
            continue
        lo, hi = p.interval
        row = {"phase": p.phase, "strategy": p.strategy, "sparsity": p.sparsity,
               "speedup": round(p.speedup, 4), "interval": [round(lo, 4), round(hi, 4)],
               "ceiling": round(p.ceiling, 4) if p.ceiling else None,
               "flops_speedup": round(p.flops_speedup, 4), "timing_source": p.timing_source,
               "flags": list(p.flags)}
        rows.append(row)
        if p.ceiling and lo > p.ceiling and not p.flags:
            problems.append(f"{p.phase} {p.strategy} {p.sparsity}: above its ceiling, unflagged")
        if p.speedup > 1.5 * p.flops_speedup and not p.flags:
            problems.append(f"{p.phase} {p.strategy} {p.sparsity}: {p.speedup:.2f}× against FLOPs "
                            f"{p.flops_speedup:.2f}×, unflagged")
    recs = []
    for b in BUDGETS:
        for ph in ("prefill", "decode"):
            r = recommend(result.phase_points(ph), b, ph)
            best = r.best
            recs.append({"budget": b, "phase": ph,
                         "best": None if best is None else f"{best.strategy} {best.sparsity:g}",
                         "speedup": None if best is None else round(best.speedup, 4),
                         "flags": [] if best is None else list(best.flags),
                         "skipped_flagged": len(r.skipped)})
            if best is not None and best.flags:
                problems.append(f"{ph} budget {b}: recommended a flagged point")
    out = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "device": device.display_name,
           "hog_s": HOG_S, "load_at_start": load_start, "profile_s": round(elapsed, 1),
           "planned": len(planned), "report": report.to_dict(), "stored_statuses": statuses,
           "contended_rounds": contended_rounds, "unstable": unstable, "points": rows,
           "recommendations": recs, "problems": problems}
    (HERE / "trust_busy_cpu.result.json").write_text(json.dumps(out, indent=1, default=str))
    md = [f"# Profiling on a busy CPU: what passes as measured ({out['date']})", "",
          f"- device: {device.display_name}; qwen2.5-0.5b fp32, {', '.join(STRATEGIES)} at "
          f"{', '.join(f'{s:g}' for s in SPARSITIES)}; prefill 1×128, decode 16 @ 256",
          f"- a CPU hog on core 0 for the first {HOG_S:.0f} s; load average at the start "
          f"{load_start:.2f}; profile {elapsed:.0f} s, {len(planned)} ops planned",
          f"- measured {report.measured}, re-measured {report.remeasured}, stored unstable "
          f"{report.unstable} (of them inconsistent with a kernel doing more work: "
          f"{report.inconsistent}); {contended_rounds} rounds found contended and not used",
          f"- statuses in the cache: {', '.join(f'{k} {v}' for k, v in sorted(statuses.items()))}",
          "", "| phase | strategy | sparsity | speedup | interval | ceiling | FLOPs× | timing | flags |",
          "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['phase']} | {r['strategy']} | {r['sparsity']:g} | {r['speedup']:.2f}× | "
                  f"{r['interval'][0]:.2f}–{r['interval'][1]:.2f} | {r['ceiling']:.2f}× | "
                  f"{r['flops_speedup']:.2f}× | {r['timing_source']} | {' '.join(r['flags']) or '–'} |")
    md += ["", "| budget | phase | recommended | speedup | flagged | flagged points skipped |",
           "|---|---|---|---|---|---|"]
    for r in recs:
        sp = "–" if r["speedup"] is None else f"{r['speedup']:.2f}×"
        md.append(f"| {r['budget']:.0%} | {r['phase']} | {r['best']} | {sp} | "
                  f"{' '.join(r['flags']) or 'no'} | {r['skipped_flagged']} |")
    md += ["", "## Verdict", ""]
    md += [f"- {p}" for p in problems] or ["- no speedup above its ceiling or far above its FLOPs "
                                           "ratio passes unflagged; no recommendation is flagged"]
    (HERE / "trust_busy_cpu.result.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
