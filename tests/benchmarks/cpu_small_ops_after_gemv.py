"""A small op's own wall time right after a real-size weight stream, against the warm loop the
op cases are timed in (docs/accuracy.md, "Absolute latency": the host cost that only a
real-width model pays).

qwen2.5-0.5b's shapes, fp32, decode batch 1: transformers' RMSNorm body (6 aten calls),
apply_rotary_pos_emb on q and k (16), one add; each timed alone (perf_counter around the one
call, median of 120 calls a round, median over the rounds, the timer's own cost subtracted)
after nothing, after a k_proj-size GEMV (0.46 MB of weights), after a gate_proj-size GEMV
(17 MB, the weights rotated over ~2 GB as a forward streams them) on 2 threads and on 1, and
after a plain 17 MB read.

    PYTHONPATH=. python tests/benchmarks/cpu_small_ops_after_gemv.py [--rounds 7]

Writes cpu_small_ops_after_gemv.result.md beside this file (or --out).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics as st
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", default=str(HERE / "cpu_small_ops_after_gemv.result.md"))
    args = ap.parse_args()

    import torch
    import transformers
    import transformers.models.qwen2.modeling_qwen2 as q2

    torch.set_num_threads(2)
    F = torch.nn.functional
    norm = q2.Qwen2RMSNorm(896)
    h, s = torch.randn(1, 1, 896), torch.randn(896)
    q, k = torch.randn(1, 14, 1, 64), torch.randn(1, 2, 1, 64)
    cos, sin = torch.randn(1, 1, 64), torch.randn(1, 1, 64)
    n_big = 123  # 123 × 17 MB ≈ 2 GB, the model's weights
    pool = torch.randn(n_big * 4864 * 896)
    big = [pool[i * 4864 * 896:(i + 1) * 4864 * 896].view(4864, 896) for i in range(n_big)]
    small = [pool[i * 896 * 128:(i + 1) * 896 * 128].view(128, 896) for i in range(2000)]
    x = torch.randn(1, 896)

    def one_thread(f):
        torch.set_num_threads(1)
        f()
        torch.set_num_threads(2)

    before = {
        "nothing (warm loop, as the op cases are timed)": lambda i: None,
        "a 0.46 MB GEMV (k_proj)": lambda i: F.linear(x, small[i % 2000]),
        "a 17 MB GEMV (gate_proj), 2 threads": lambda i: F.linear(x, big[i % n_big]),
        "the same GEMV on 1 thread": lambda i: one_thread(lambda: F.linear(x, big[i % n_big])),
        "a plain read of 17 MB, 1 thread": lambda i: one_thread(lambda: big[i % n_big].sum()),
    }
    ops = {"RMSNorm (6 aten calls)": lambda: q2.Qwen2RMSNorm.forward(norm, h),
           "rotary on q and k (16)": lambda: q2.apply_rotary_pos_emb(q, k, cos, sin),
           "one add": lambda: s.add(1.0), "nothing": lambda: None}
    res: dict = {}
    pc = time.perf_counter
    load0 = os.getloadavg()[0]
    t_start = time.time()
    with torch.inference_mode():
        for _ in range(args.rounds):
            for bn, pre in before.items():
                for on, f in ops.items():
                    ts = []
                    for i in range(120):
                        pre(i)
                        t = pc()
                        f()
                        ts.append(pc() - t)
                    res.setdefault((bn, on), []).append(st.median(ts) * 1e6)
    load1 = os.getloadavg()[0]
    names = [o for o in ops if o != "nothing"]
    lines = ["# cpu_small_ops_after_gemv: a small op's own time right after a weight stream", "",
             f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; torch "
             f"{torch.__version__}, transformers {transformers.__version__}, 2 threads; "
             f"{args.rounds} rounds of 120 calls (medians); load average {load0:.2f} at the "
             f"start, {load1:.2f} at the end; {time.time() - t_start:.0f} s; "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", "",
             "| before the op | " + " | ".join(names) + " |",
             "|---|" + "---|" * len(names)]
    for bn in before:
        base = st.median(res[(bn, "nothing")])
        lines.append(f"| {bn} | " + " | ".join(
            f"{st.median(res[(bn, on)]) - base:.1f} µs" for on in names) + " |")
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
