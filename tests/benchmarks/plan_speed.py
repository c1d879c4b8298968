"""Benchmark: `pis-tui plan` for llama-3.1-8b on h200-sxm over the default candidates.

Target (issue 17): under 1 s warm on the 2-core development machine, whole process included
(interpreter start, imports, the quality priors, every family × its default sparsities priced
end to end for the workload, the batch search, the table).  Warm: one untimed run first, so the
OS file cache and Python's bytecode cache hold what it reads.  Also times the planner alone in
one process (``plan.plan`` + ``recommend_plan``, after a first call) and how many kernels a plan
prices (each once: the memo per op key).

Run:  python tests/benchmarks/plan_speed.py   (writes plan_speed.result.md beside it)
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
REPEATS = 7
TARGET_S = 1.0


def time_cmd(args: list[str], env: dict) -> list[float]:
    out = []
    for i in range(REPEATS + 1):  # the first is the warm-up
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "pis_tui", *args], capture_output=True, text=True,
                           cwd=ROOT, env=env)
        if i:
            out.append(time.perf_counter() - t0)
        if p.returncode != 0:
            raise SystemExit(f"failed: {' '.join(args)}\n{p.stderr}")
    return out


def in_process(workload_args: dict) -> tuple[list[float], int, int]:
    sys.path.insert(0, str(ROOT))
    from pis_tui.decide.deployment import plan, recommend_plan
    from pis_tui.quality.model import build_quality_model
    from pis_tui.model.workload import Targets, single

    q = build_quality_model()
    wl = single("chat", targets=Targets(**workload_args))
    ts = []
    for i in range(REPEATS + 1):
        t0 = time.perf_counter()
        r = plan("llama-3.1-8b", "h200-sxm", wl, quality=q)
        recommend_plan(r, 0.10, "latency")
        if i:
            ts.append(time.perf_counter() - t0)
    return ts, len(r.candidates), r.priced_kernels


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    env = dict(os.environ, PIS_TUI_CACHE=str(tmp / "cache.duckdb"))
    base = ["plan", "--model", "llama-3.1-8b", "--gpu", "h200-sxm"]
    cases = [
        ("plan --workload chat (table)", base + ["--workload", "chat"]),
        ("plan --workload chat --json --csv (plus the per-phase sweep)",
         base + ["--workload", "chat", "--json", str(tmp / "p.json"), "--csv", str(tmp / "p.csv")]),
        ("plan --workload chat --ttft-ms 1000 --tpot-ms 10 --objective throughput (batch search)",
         base + ["--workload", "chat", "--ttft-ms", "1000", "--tpot-ms", "10", "--objective", "throughput"]),
        ("plan --mix chat:0.7,rag:0.3", base + ["--mix", "chat:0.7,rag:0.3"]),
    ]
    rows = []
    for label, args in cases:
        ts = time_cmd(args, env)
        med = statistics.median(ts)
        rows.append((label, med, min(ts), max(ts), "pass" if med < TARGET_S else "FAIL"))
    planner = []
    for label, targets in (("no targets", {}), ("TTFT ≤ 1000 ms, TPOT ≤ 10 ms", {"ttft_ms": 1000.0, "tpot_ms": 10.0})):
        ts, n, kernels = in_process(targets)
        planner.append((label, statistics.median(ts), min(ts), max(ts), n, kernels))
    lines = [
        "# plan_speed benchmark",
        "",
        f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- llama-3.1-8b on h200-sxm (roofline), the default candidates; {REPEATS} runs each after one "
        "warm-up, whole process wall time (interpreter start, imports, quality priors, plan, output)",
        "",
        "| command | median s | min s | max s | target s | result |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {r[0]} | {r[1]:.2f} | {r[2]:.2f} | {r[3]:.2f} | < {TARGET_S:.1f} | {r[4]} |" for r in rows]
    lines += ["", "The planner alone, in one process (after a first call):", "",
              "| chat workload | median s | min s | max s | candidates | kernels priced (once each) |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {p[0]} | {p[1]:.3f} | {p[2]:.3f} | {p[3]:.3f} | {p[4]} | {p[5]} |" for p in planner]
    text = "\n".join(lines) + "\n"
    (HERE / "plan_speed.result.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
