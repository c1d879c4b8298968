"""Every accuracy figure the docs quote, as median, p90 and worst, from the committed results.

A median alone reads like a bound ("interpolation within 2.8 %" was a median: its p90 is
11.9 %, its worst 122 %), so docs/accuracy.md and docs/tensor-parallelism.md quote all three,
and take them from here: the validate runs' rows (``*.result.json``; the core rows their
summary counts: static depth, static width, low rank and dynamic depth, settled, the
prediction unflagged), the TP run's rows, and the tables the two estimate-only checks wrote
(``h200_reference_check.result.md``, ``study_table2_check.result.md``).  p90 is the sorted
|error| at index int(0.9·n), as h200_reference_check.py takes it.

Run:  python tests/benchmarks/accuracy_quotes.py   (writes accuracy_quotes.result.md; reads only
committed files, so a test checks the committed result is current, and another that the docs
quote each line of it)
"""

from __future__ import annotations

import json
import re
import statistics
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORE = ("static_depth", "static_width", "low_rank", "dynamic_depth")


def quote(errs) -> str:
    """How the docs quote a set of |errors|: "median 3.0 %, p90 9.6 %, worst 13.3 %"."""
    e = sorted(abs(x) for x in errs)
    return (f"median {100 * statistics.median(e):.1f} %, p90 {100 * e[int(len(e) * 0.9)]:.1f} %, "
            f"worst {100 * e[-1]:.1f} %")


def _core(doc: dict) -> list:
    return [r for r in doc["rows"] if r["strategy"] in CORE and r.get("status", "ok") == "ok"
            and not r.get("prediction_flags")]


def _validate_rows() -> list[tuple]:
    out = []
    for name, what in (("validate_qwen05b_cpu.result.json", "CPU validate, quiet"),
                       ("validate_qwen05b_cpu.quiet2.result.json", "CPU validate, second quiet run"),
                       ("validate_qwen05b_cpu.busy.result.json", "CPU validate, two hogs")):
        rows = _core(json.loads((HERE / name).read_text(encoding="utf-8")))
        out.append(("accuracy.md", f"{what}: pis-tui", name, len(rows), quote(r["error"] for r in rows)))
        if name == "validate_qwen05b_cpu.result.json":  # the docs quote this run's FLOPs ratio
            out.append(("accuracy.md", f"{what}: the FLOPs ratio", name, len(rows),
                        quote(r["flops_error"] for r in rows)))
    runs = json.loads((HERE / "validate_qwen05b_cpu.runs.json").read_text(encoding="utf-8"))["runs"]
    rows = runs[-1]["rows"]  # the earlier host's final-code run
    out.append(("accuracy.md", "CPU validate, the earlier host (AMD EPYC, 2026-11-28)",
                "validate_qwen05b_cpu.runs.json (last run)", len(rows), quote(r["error"] for r in rows)))
    tp = json.loads((HERE / "validate_tp2_cpu.result.json").read_text(encoding="utf-8"))["runs"]
    rows = [r for run in tp for r in run["rows"]]
    out.append(("tensor-parallelism.md", "TP 2 over gloo, 3 runs", "validate_tp2_cpu.result.json",
                len(rows), quote(r["error"] for r in rows)))
    return out


def _table_rows() -> list[tuple]:
    """The two estimate-only checks' figures, as their results print them."""
    out = []
    text = (HERE / "h200_reference_check.result.md").read_text(encoding="utf-8")
    sections = re.split(r"^## ", text, flags=re.M)[1:]
    names = ("H200 GEMM table: analytical, fused engine", "H200 GEMM table: analytical, eager engine",
             "H200 GEMM table: interpolation in M", "H200 GEMM table: interpolation across (N, K)")
    for name, sec in zip(names, sections):
        rows = [[c.strip() for c in r.strip().strip("|").split("|")]
                for r in sec.splitlines() if r.startswith("| ") and "%" in r]
        every = [r for r in rows if r[0] == "all"]  # a table by shape: its "all" row
        n, med, p90, worst = every[0][1:5] if every else rows[-1][0:4]
        out.append(("accuracy.md", name, "h200_reference_check.result.md", int(n),
                    f"median {_pct(med)} %, p90 {_pct(p90)} %, worst {_pct(worst)} %"))
    text = (HERE / "study_table2_check.result.md").read_text(encoding="utf-8")
    for engine in ("fused", "eager"):
        line = next(x for x in text.splitlines() if x.startswith(f"pis-tui ({engine} engine"))
        m = re.search(r"median ([\d.]+)%, p90 ([\d.]+)%, worst ([\d.]+)% over (\d+) figures", line)
        out.append(("accuracy.md", f"the study's Table 2: analytical, {engine} engine",
                    "study_table2_check.result.md", int(m.group(4)),
                    f"median {m.group(1)} %, p90 {m.group(2)} %, worst {m.group(3)} %"))
        m = re.search(r"independent ones: median ([\d.]+)%, p90 ([\d.]+)%, worst ([\d.]+)% over "
                      r"(\d+)", line)
        out.append(("accuracy.md", f"the study's Table 2: analytical, {engine} engine, the rows "
                    "not fitted to", "study_table2_check.result.md", int(m.group(4)),
                    f"median {m.group(1)} %, p90 {m.group(2)} %, worst {m.group(3)} %"))
    line = next(x for x in text.splitlines() if x.startswith("FLOPs ratio"))
    m = re.search(r"median ([\d.]+)%, p90 ([\d.]+)%, worst ([\d.]+)% over (\d+) figures", line)
    out.append(("accuracy.md", "the study's Table 2: the FLOPs ratio", "study_table2_check.result.md",
                int(m.group(4)), f"median {m.group(1)} %, p90 {m.group(2)} %, worst {m.group(3)} %"))
    return out


def _pct(cell: str) -> str:
    return cell.rstrip("%").strip()


def quotes() -> list[tuple]:
    """(docs page, what, result file, n, "median …, p90 …, worst …") for every figure quoted."""
    return _validate_rows() + _table_rows()


def body() -> list[str]:
    """The result's lines after its date line (deterministic: a test checks the committed
    result still matches them)."""
    lines = ["- |error| of every figure behind each quote; p90: the sorted value at index int(0.9·n)",
             "", "| docs page | figure | result file | n | quoted as |", "|---|---|---|---|---|"]
    lines += [f"| {page} | {what} | {src} | {n} | {q} |" for page, what, src, n, q in quotes()]
    return lines


def main() -> None:
    lines = ["# The accuracy figures the docs quote: median, p90 and worst", "",
             f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"] + body()
    text = "\n".join(lines) + "\n"
    (HERE / "accuracy_quotes.result.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
