"""Benchmark: `pis-tui sweep --model llama-3.1-8b --gpu h200-sxm --json out.json` wall time.

Target (issue 2): under 2 s on the 2-core development machine, whole process included
(interpreter start, imports, the sweep of every family × 4 sparsities × 2 phases, JSON).
Also times `sweep --gpu local` (estimates from the cache) for the warm-cache target of issue 3.

Run:  python tests/benchmarks/sweep_speed.py   (writes sweep_speed.result.md beside it)
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


def time_cmd(args: list[str], env: dict) -> list[float]:
    out = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "pis_tui", *args], capture_output=True, text=True,
                           cwd=ROOT, env=env)
        out.append(time.perf_counter() - t0)
        if p.returncode != 0:
            raise SystemExit(f"failed: {' '.join(args)}\n{p.stderr}")
    return out


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    env = dict(os.environ, PIS_TUI_CACHE=str(tmp / "cache.duckdb"))
    rows = []
    cases = [
        ("sweep llama-3.1-8b on h200-sxm, --json", ["sweep", "--model", "llama-3.1-8b", "--gpu", "h200-sxm",
                                                     "--json", str(tmp / "out.json")], 2.0),
        ("sweep llama-3.1-8b on local (cache), --json", ["sweep", "--model", "llama-3.1-8b", "--gpu", "local",
                                                          "--json", str(tmp / "out2.json")], 2.0),
        ("recommend llama-3.1-8b on h200-sxm", ["recommend", "--model", "llama-3.1-8b", "--gpu", "h200-sxm",
                                                "--budget", "0.1", "--json", str(tmp / "rec.json")], 2.0),
    ]
    for label, args, target in cases:
        ts = time_cmd(args, env)
        med = statistics.median(ts)
        rows.append((label, med, min(ts), max(ts), target, "pass" if med < target else "FAIL"))
    lines = [
        "# sweep_speed benchmark",
        "",
        f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- {REPEATS} runs each, whole process wall time (interpreter start, imports, sweep, JSON)",
        "",
        "| command | median s | min s | max s | target s | result |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {r[0]} | {r[1]:.2f} | {r[2]:.2f} | {r[3]:.2f} | < {r[4]:.1f} | {r[5]} |" for r in rows]
    text = "\n".join(lines) + "\n"
    (HERE / "sweep_speed.result.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
