"""One rank of ``validate --tp`` (started by :func:`pis_tui.validation.tp.validate_tp`).

``python -m pis_tui.validation.tp_worker SPEC.json`` with PIS_RANK, PIS_WORLD and PIS_RDZV in
the environment.  Every rank joins the group, times the collectives the predictions need
(:func:`pis_tui.timing.collectives.time_collective`), then builds its shard of the dense model
and of each pruned one and times each case, dense and pruned interleaved, in lockstep with the
other ranks (the same calls in the same order: the collectives inside the forwards match).
A sample is the slowest rank's time (a forward ends when its last rank does).  Rank 0 appends
each result to the spec's ``out`` file as it is taken.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def _agreed(value: float, device: str, op="max") -> float:
    """The largest (or summed) ``value`` over the ranks."""
    import torch
    import torch.distributed as dist

    t = torch.tensor([float(value)], dtype=torch.float64)
    if str(device).startswith("cuda"):
        t = t.to(device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return float(t.item())


def time_lockstep(runs: list, repeats: int, warmup: int, target_ms: float, device: str) -> list:
    """Like :func:`pis_tui.validation.run.measure_interleaved` (ABAB…, reversed every other
    round), with the calls per sample agreed by all ranks and each sample the slowest rank's."""
    import torch
    import torch.distributed as dist

    samples = [[] for _ in runs]
    with torch.inference_mode():
        for r in runs:
            for _ in range(max(0, warmup)):
                r.sample()
            dist.barrier()
            one = _agreed(r.sample(), device)
            r.inner = max(1, min(50, int(round(target_ms / max(one, 1e-3)))))
        for i in range(repeats):
            order = list(range(len(runs)))
            if i % 2:
                order.reverse()
            for j in order:
                dist.barrier()
                samples[j].append(_agreed(runs[j].sample(), device))
    return samples


def main(path: str) -> int:
    import torch.distributed as dist

    from ..families.strategy import Strategy
    from ..timing.collective_worker import join, mark_done
    from ..timing.collectives import summarise, time_collective
    from .build import build_from_spec
    from ..hf.config import raw_config
    from .run import PhaseRun

    spec_ = json.loads(Path(path).read_text(encoding="utf-8"))
    rank, world, device = join(spec_)
    out = spec_["out"]

    def put(obj: dict) -> None:
        if rank == 0:
            with open(out, "a", encoding="utf-8") as f:
                f.write(json.dumps(obj, default=str) + "\n")

    try:
        for kind, dtype, elems in spec_["collectives"]:
            times, iters, loads = time_collective(kind, dtype, int(elems), rounds=spec_["rounds"],
                                                  device=device)
            put({"type": "collective", "row": summarise(kind, dtype, int(elems), world,
                                                          spec_["backend"], times, iters, loads,
                                                          spec_["device_info"])})
        raw, spec = raw_config(spec_["model"])
        dt, seed = spec_["dtype"], spec_["seed"]
        tdev = "cpu" if device == "cpu" else device
        dense = build_from_spec(raw, spec, Strategy("dense"), device=tdev, dtype=dt, seed=seed,
                                tp=world, rank=rank)
        for fam, s, gran, align in spec_["strategies"]:
            strat = Strategy(fam, s, gran, align)
            pruned = build_from_spec(raw, spec, strat, device=tdev, dtype=dt, seed=seed, tp=world,
                                     rank=rank)
            for ph, b, length in spec_["cases"]:
                t0 = time.perf_counter()
                runs = [PhaseRun(dense, ph, b, length, seed=seed, cuda_graph=False),
                        PhaseRun(pruned, ph, b, length, seed=seed, cuda_graph=False)]
                try:
                    for r in runs:
                        r.prepare()
                    td, tp_ = time_lockstep(runs, spec_["repeats"], spec_["warmup"],
                                            spec_["target_ms"], device)
                finally:
                    for r in runs:
                        r.close()
                put({"type": "row", "strategy": [fam, s, gran, align], "case": [ph, b, length],
                     "dense_samples": td, "pruned_samples": tp_, "notes": list(pruned.notes),
                     "seconds": round(time.perf_counter() - t0, 3)})
            del pruned
        dist.barrier()
        mark_done(spec_, rank)
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":  # pragma: no cover - run as a process
    from ..timing.collective_worker import run_worker

    sys.exit(run_worker(main, sys.argv[1]))
