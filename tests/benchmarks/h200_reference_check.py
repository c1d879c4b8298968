"""Checks pis-tui's H200 GEMM estimates against a third party's graph-timed H200 bf16 table.

The reference (35,743 GEMM shapes, NVIDIA aiconfigurator's h200_sxm table, timed through CUDA
graphs) is NOT shipped with pis-tui; this script reads it from the developers' shared folder
(default ../shared/reference-data/h200-bf16-gemm.parquet, or argv[1]) and reports:

1. the analytical model (timing_source "roofline": roofline + tile/wave quantization + launch
   cost) against every reference shape: how wrong pis-tui is for an H200 nobody measured;
2. leave-one-out interpolation in M: hide every other M of each (N, K) and price it from the
   rest (timing_source "interpolated");
3. leave-one-pair-out interpolation in (N, K): hide a whole (N, K) pair and price its shapes from
   the neighbouring pairs (what happens for a model width such as 14,336 that was not timed).

Run:  python tests/benchmarks/h200_reference_check.py [PATH]   (writes h200_reference_check.result.md)
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from pathlib import Path

import duckdb

from pis_tui.pricing.estimator import Estimator
from pis_tui.device.choose import load_gpu
from pis_tui.model.ops import Gemm

HERE = Path(__file__).resolve().parent
DEFAULT = HERE.parents[2] / "shared" / "reference-data" / "h200-bf16-gemm.parquet"


def load(path: Path) -> list[tuple[int, int, int, float]]:
    con = duckdb.connect()
    return con.execute(f"select m, n, k, latency_ms from read_parquet('{path}')").fetchall()


def rec(g: Gemm, ms: float) -> dict:
    return {"key": g.key(), "op": {"name": g.name, "m": g.m, "n": g.n, "k": g.k, "count": 1.0,
                                   "dtype": g.dtype, "kind": "dense", "density": 1.0,
                                   "op_type": "gemm"}, "ms": ms, "status": "ok"}


def errs(pairs) -> dict:
    e = sorted(abs(p / a - 1) for p, a in pairs)
    signed = statistics.median(p / a - 1 for p, a in pairs)
    n = len(e)
    return {"n": n, "median": e[n // 2], "p90": e[int(n * 0.9)], "worst": e[-1], "bias": signed}


def bucket(m: int) -> str:
    return "M ≤ 16 (decode)" if m <= 16 else "16 < M ≤ 256" if m <= 256 else "M > 256 (prefill)"


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT
    if not path.is_file():
        raise SystemExit(f"reference table not found: {path}")
    rows = load(path)
    dev = load_gpu("h200-sxm")
    base = Estimator(dev)
    lines = ["# H200 bf16 GEMM: pis-tui estimates vs a third-party graph-timed reference", "",
             f"- reference: {len(rows)} shapes (aiconfigurator h200_sxm, vLLM GEMM path, CUDA graphs); not shipped",
             f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             "- error = |predicted / reference − 1|; bias = median signed error (+ = pis-tui too slow)", ""]

    # 1. analytical model on every shape, under each engine's GEMM figures: the table is the
    # vLLM GEMM path, the fused engine's; the eager engine's GEMM share is fitted to end-to-end
    # anchors of transformers' eager modules and so also carries what those add around GEMMs
    for engine, words in (("fused", "the table's own GEMM path: gemm share 0.80 and bandwidth/latency "
                                    "fitted to this table (so not independent)"),
                          ("eager", "gemm share 0.65, bandwidth 0.92 and GEMM latency 2.6 us fitted to end-to-end "
                                    "points of eager modules (h200_eager_fit.py), not to this table")):
        base = Estimator(dev, engine=engine)
        by_b: dict[str, list] = {}
        for m, n, k, ms in rows:
            g = Gemm("g", m, n, k, dtype="bf16")
            by_b.setdefault(bucket(m), []).append((base.analytical_ms(g), ms))
            by_b.setdefault("all", []).append((base.analytical_ms(g), ms))
        lines += [f"## 1{'ab'[engine == 'eager']}. Analytical model, {engine} engine ({words}; "
                  "timing_source roofline)", "",
                  "| shapes | n | median | p90 | worst | bias |", "|---|---|---|---|---|---|"]
        for b in ("M ≤ 16 (decode)", "16 < M ≤ 256", "M > 256 (prefill)", "all"):
            e = errs(by_b[b])
            lines.append(f"| {b} | {e['n']} | {e['median']:.1%} | {e['p90']:.1%} | {e['worst']:.1%} | {e['bias']:+.1%} |")
        lines.append("")

    # 2. leave-one-out in M
    by_nk: dict[tuple, list] = {}
    for m, n, k, ms in rows:
        by_nk.setdefault((n, k), []).append((m, ms))
    pairs = []
    for (n, k), pts in by_nk.items():
        pts.sort()
        known = [rec(Gemm("g", m, n, k), ms) for i, (m, ms) in enumerate(pts) if i % 2 == 0]
        est = Estimator(dev, measurements=known)
        for i, (m, ms) in enumerate(pts):
            if i % 2 == 1:
                pairs.append((est.price(Gemm("g", m, n, k)).ms_per_call, ms))
    e = errs(pairs)
    lines += ["", "## 2. Interpolation in M (every other M of each (N, K) hidden)", "",
              "| n | median | p90 | worst | bias |", "|---|---|---|---|---|",
              f"| {e['n']} | {e['median']:.1%} | {e['p90']:.1%} | {e['worst']:.1%} | {e['bias']:+.1%} |"]

    # 3. leave-one-pair-out in (N, K)
    rnd = random.Random(0)
    keys = sorted(by_nk)
    sample = rnd.sample(keys, min(60, len(keys)))
    allrecs = {nk: [rec(Gemm("g", m, nk[0], nk[1]), ms) for m, ms in pts] for nk, pts in by_nk.items()}
    pairs = []
    for nk in sample:
        if min(nk) < 256:
            continue
        known = [r for other, rs in allrecs.items() if other != nk for r in rs]
        est = Estimator(dev, measurements=known)
        for m, ms in by_nk[nk]:
            pairs.append((est.price(Gemm("g", m, nk[0], nk[1])).ms_per_call, ms))
    e = errs(pairs)
    lines += ["", f"## 3. Interpolation across (N, K) ({len({p for p in sample if min(p) >= 256})} pairs hidden whole, N, K ≥ 256)", "",
              "| n | median | p90 | worst | bias |", "|---|---|---|---|---|",
              f"| {e['n']} | {e['median']:.1%} | {e['p90']:.1%} | {e['worst']:.1%} | {e['bias']:+.1%} |"]
    text = "\n".join(lines) + "\n"
    (HERE / "h200_reference_check.result.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
