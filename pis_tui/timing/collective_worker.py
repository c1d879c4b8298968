"""One rank of a collective measurement (started by :func:`pis_tui.timing.collectives.measure`).

``python -m pis_tui.timing.collective_worker SPEC.json`` with PIS_RANK, PIS_WORLD and PIS_RDZV
(a file store) in the environment.  Joins the group, writes ``ready<rank>`` into the spec's
folder, times each wanted collective (:func:`~pis_tui.timing.collectives.time_collective`) and,
on rank 0, appends each result to the spec's ``out`` file as it is taken.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import timedelta
from pathlib import Path


def join(spec: dict):
    """Join the process group the environment names; returns (rank, world, torch device)."""
    import torch
    import torch.distributed as dist

    rank, world = int(os.environ["PIS_RANK"]), int(os.environ["PIS_WORLD"])
    device = "cpu"
    if spec["backend"] == "nccl":
        torch.cuda.set_device(rank)
        device = f"cuda:{rank}"
    else:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 1))
    dist.init_process_group(spec["backend"], init_method=os.environ["PIS_RDZV"], rank=rank,
                            world_size=world, timeout=timedelta(seconds=120))
    dist.barrier()
    Path(spec["status_dir"], f"ready{rank}").write_text("ready", encoding="utf-8")
    return rank, world, device


def main(path: str) -> int:
    import torch.distributed as dist

    from .collectives import summarise, time_collective

    spec = json.loads(Path(path).read_text(encoding="utf-8"))
    rank, world, device = join(spec)
    try:
        for kind, dtype, elems in spec["wanted"]:
            times, iters, loads = time_collective(kind, dtype, int(elems), rounds=spec["rounds"],
                                                  device=device, round_ms=spec["round_ms"])
            if rank == 0:
                row = summarise(kind, dtype, int(elems), world, spec["backend"], times, iters,
                                loads, spec["device_info"])
                with open(spec["out"], "a", encoding="utf-8") as f:
                    f.write(json.dumps(row, default=str) + "\n")
        dist.barrier()
        mark_done(spec, rank)
    finally:
        dist.destroy_process_group()
    return 0


def mark_done(spec: dict, rank: int) -> None:
    """This rank's work is complete and its results written (``done<rank>``): a crash while the
    process group tears down after it (gloo's threads: "terminate called without an active
    exception", SIGABRT) loses nothing, and the group says so instead of failing."""
    Path(spec["status_dir"], f"done{rank}").write_text("done", encoding="utf-8")


def run_worker(main, path: str) -> int:
    """Run a rank's ``main(path)``; when it raises, write the cause (``Type: message``, one
    line) to ``error<rank>`` in the spec's folder before the traceback reaches stderr, so the
    group reports what really failed, not the last line a library printed."""
    try:
        rc = main(path)
        # the results are written and flushed: leave without the interpreter's teardown, where
        # torch.distributed's threads can abort the process after the work is done
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc or 0)
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as e:
        first = (str(e).strip().splitlines() or [""])[0]
        cause = f"{type(e).__name__}: {first}" if first else type(e).__name__
        try:
            folder = json.loads(Path(path).read_text(encoding="utf-8"))["status_dir"]
            Path(folder, f"error{os.environ.get('PIS_RANK', '0')}").write_text(
                cause[:400], encoding="utf-8")
        except (OSError, ValueError, KeyError):
            pass
        raise


if __name__ == "__main__":  # pragma: no cover - run as a process
    sys.exit(run_worker(main, sys.argv[1]))
