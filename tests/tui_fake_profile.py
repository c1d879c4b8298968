"""A fake `pis-tui profile --progress-jsonl`: JSON lines out, one line per "measured" op
appended to a state file (the fake cache).  Modes: ok, error, crash, slow, remeasure (after the
ops, three of them re-measured: the run's count stays at its end, the pass has its own)."""

import json
import sys
import time

state, mode, n, delay = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])


def emit(**ev):
    print(json.dumps(ev), flush=True)


if mode == "crash":
    print("pis-tui: error: the fake profiler cannot start", file=sys.stderr)
    sys.exit(2)
measured = 0
t0 = time.monotonic()
try:
    for i in range(n):
        if mode == "error" and i == 2:
            emit(event="error", message="fake: CUDA out of memory on gemm M=4096")
            sys.exit(3)
        time.sleep(delay)
        with open(state, "a") as f:
            f.write(f"op{i}\n")
        measured += 1
        el = time.monotonic() - t0
        emit(event="progress", done=i + 1, total=n, current=f"gemm op{i}", elapsed_s=el,
             eta_s=el / (i + 1) * (n - i - 1))
    if mode == "remeasure":
        for j in range(3):
            time.sleep(max(delay, 0.12))  # past the runner's coalescing: each one is seen
            el = time.monotonic() - t0
            emit(event="progress", done=n + j, total=n + 3,
                 current=f"re-measuring {j}/3 unstable ops: gemm op{j}", elapsed_s=el,
                 eta_s=30.0 - 10 * j,
                 remeasure={"done": j, "total": 3, "what": "unstable ops",
                            "current": f"gemm op{j}", "eta_s": 30.0 - 10 * j})
except KeyboardInterrupt:
    emit(event="done", measured=measured, reused=0, failed=0, cancelled=True)
    sys.exit(130)
emit(event="done", measured=measured, reused=0, failed=0, cancelled=False)
