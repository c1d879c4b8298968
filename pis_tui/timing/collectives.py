"""Measuring collectives through torch.distributed: NCCL on GPUs, gloo on the CPU.

:func:`measure` starts ``world`` local processes (``python -m pis_tui.timing.collective_worker``,
one a GPU or one a share of the CPU's cores), which meet through a file store in a temporary
folder and time each asked collective in turn (:func:`time_collective`); rank 0 writes every
result to a file as soon as it is taken, so a run stopped by its time limit keeps what it
measured.  Everything is bounded in time: a group that does not start within ``start_s`` is
one clear error (exit 2: "cannot be started"), one that stops answering is killed after
``timeout_s`` (its processes, by their ids) and reported (exit 3) with what it had measured.

How one collective is timed (method ``torch-distributed``, version
:data:`~pis_tui.pricing.measured_table.COLLECTIVE_METHOD_VERSION`): a random tensor of the message's
size; three warm-up calls; the calls a round makes are agreed by all ranks (from five timed
calls, the slowest rank's: enough for
:data:`ROUND_MS`, at most :data:`MAX_ITERS`); then ``rounds`` rounds, each after a barrier
(and a device synchronisation on a GPU), each timed on every rank and taken as the slowest
rank's (a collective ends when its last rank does).  The time kept is the **median** round
(a serving engine meets the typical call, and gloo's variation is real, not noise to drop),
its ``spread`` the rounds' IQR / median, and the rounds, their load averages and the min/max
ratio are kept in ``conditions``.  A collective is ``unstable`` when its spread exceeds
:data:`UNSTABLE_SPREAD` or its slowest round is :data:`UNSTABLE_RATIO` × its fastest or more
(gloo's all-reduce on a 2-core CPU varies several-fold from run to run): kept and flagged,
never hidden.  ``busbw_gbs`` is nccl-tests' bus bandwidth: bytes × ring factor / time.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

from ..errors import MeasureError, UserError
from ..hf.config import TORCH_DTYPES
from ..pricing.measured_table import (COLLECTIVE_METHOD, COLLECTIVE_METHOD_VERSION, now_iso,
                                      software_versions)
from ..model.ops import ring_factor

WORKER = "pis_tui.timing.collective_worker"
#: a round lasts at least this long (ms) where the calls allow; at most MAX_ITERS calls
ROUND_MS = 20.0
MAX_ITERS = 200
DEFAULT_ROUNDS = 7
#: the rounds' IQR / median above which a collective is unstable
UNSTABLE_SPREAD = 0.25
#: ... or its slowest round this many times its fastest
UNSTABLE_RATIO = 2.0
#: seconds the ranks get to start (import torch) and meet
START_S = 60.0


def backend_for(kind: str) -> str:
    """torch.distributed's backend for a device kind ("gpu"/"cuda" → nccl, else gloo)."""
    return "nccl" if kind in ("gpu", "cuda") else "gloo"


def check_world(world: int, device) -> str:
    """The backend ``world`` ranks would measure with on ``device``, or a UserError (exit 2)
    saying why they cannot be started here."""
    if world < 2:
        raise UserError(f"a collective needs at least 2 ranks, not {world}")
    backend = backend_for(device.kind)
    if device.kind == "cpu":
        from ..device.local import cpu_cores

        cores = cpu_cores()
        if world > cores:
            raise UserError(f"cannot start {world} ranks for measuring on this CPU: it has "
                            f"{cores} core(s) and every rank needs one of its own (use --tp "
                            f"{max(d for d in (2, 4, 8) if d <= cores) if cores >= 2 else 1})"
                            if cores >= 2 else
                            f"cannot start {world} ranks for measuring on this CPU: it has one core")
        return backend
    import torch

    n = torch.cuda.device_count()
    if world > n:
        raise UserError(f"cannot start {world} ranks for measuring: NCCL needs one GPU a rank "
                        f"and {n} {'is' if n == 1 else 'are'} visible (CUDA_VISIBLE_DEVICES)")
    return backend


def summarise(kind: str, dtype: str, elems: int, world: int, backend: str, rounds_ms: list,
              iters: int, loads: list, device_info: dict) -> dict:
    """One collective's row for the cache from its rounds (see the module docs)."""
    from ..model.ops import dtype_bytes

    vals = sorted(rounds_ms)
    med = statistics.median(vals)
    if len(vals) >= 4:
        q = statistics.quantiles(vals, n=4)
        spread = (q[2] - q[0]) / med if med else 0.0
    else:
        spread = (vals[-1] - vals[0]) / med if med else 0.0
    ratio = vals[-1] / vals[0] if vals[0] > 0 else float("inf")
    reasons = []
    if spread > UNSTABLE_SPREAD:
        reasons.append(f"its rounds spread {spread:.0%} (IQR / median)")
    if ratio >= UNSTABLE_RATIO:
        reasons.append(f"its slowest round took {ratio:.1f}× its fastest")
    nbytes = elems * dtype_bytes(dtype)
    cond = {"rounds_ms": [round(v, 6) for v in rounds_ms], "min_ms": round(vals[0], 6),
            "max_ms": round(vals[-1], 6), "max_over_min": round(ratio, 3),
            "loads": [None if x is None else round(x, 2) for x in loads]}
    from ..device.local import cpu_threads

    real = [x for x in loads if x is not None]
    if backend == "gloo" and real:
        cond["loaded"] = max(real) > cpu_threads() + 0.5
    if reasons:
        cond["unstable"] = reasons
    busbw = nbytes * ring_factor(kind, world) / (med / 1e3) / 1e9 if med > 0 else None
    return {"fingerprint": device_info.get("fingerprint"), "backend": backend, "world_size": world,
            "collective": kind, "dtype": dtype, "bytes": nbytes, "ms": med, "spread": spread,
            "busbw_gbs": busbw, "rounds": len(rounds_ms), "iters": iters,
            "status": "unstable" if reasons else "ok",
            "note": f"median of {len(rounds_ms)} rounds of {iters} calls [{vals[0]:.4g}–{vals[-1]:.4g}] ms"
                    f" ({backend}, {world} ranks)",
            "conditions": cond, "device": device_info,
            "torch_version": software_versions().get("torch") or "",
            "method": COLLECTIVE_METHOD, "method_version": COLLECTIVE_METHOD_VERSION,
            "measured_at": now_iso()}


# ------------------------------------------------------------------ inside a process group

def time_collective(kind: str, dtype: str, elems: int, *, rounds: int = DEFAULT_ROUNDS,
                    device: str = "cpu", round_ms: float = ROUND_MS,
                    max_iters: int = MAX_ITERS) -> tuple[list, int, list]:
    """Time one collective on every rank of the current process group (all ranks call this
    with the same arguments).  Returns (round times in ms — the slowest rank's —, calls per
    round, load averages per round)."""
    import torch
    import torch.distributed as dist

    world = dist.get_world_size()
    tdt = getattr(torch, TORCH_DTYPES.get(dtype, "float32"))
    cuda = str(device).startswith("cuda")
    g = torch.Generator().manual_seed(1234 + dist.get_rank())
    if kind == "all_reduce":
        x = torch.randn(elems, generator=g).to(tdt).to(device)

        def call():
            dist.all_reduce(x)
    elif kind == "all_gather":
        part = max(1, elems // world)
        x = torch.randn(part, generator=g).to(tdt).to(device)
        if cuda:
            out = torch.empty(part * world, dtype=tdt, device=device)

            def call():
                dist.all_gather_into_tensor(out, x)
        else:
            outs = [torch.empty_like(x) for _ in range(world)]

            def call():
                dist.all_gather(outs, x)
    else:
        raise ValueError(f"unknown collective {kind!r}")

    def sync():
        if cuda:
            torch.cuda.synchronize()

    for _ in range(3):
        call()
    sync()
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(5):
        call()
    sync()
    one = torch.tensor([(time.perf_counter() - t0) / 5], dtype=torch.float64)
    one = one.to(device) if cuda else one
    dist.all_reduce(one, op=dist.ReduceOp.MAX)  # every rank runs the same number of calls
    iters = int(max(1, min(max_iters, round_ms / 1e3 / max(float(one.item()), 1e-7))))
    times, loads = [], []
    for _ in range(rounds):
        dist.barrier()
        sync()
        t0 = time.perf_counter()
        for _ in range(iters):
            call()
        sync()
        t = torch.tensor([(time.perf_counter() - t0) / iters * 1e3], dtype=torch.float64)
        t = t.to(device) if cuda else t
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        times.append(float(t.item()))
        try:
            loads.append(os.getloadavg()[0])
        except (OSError, AttributeError):
            loads.append(None)
    return times, iters, loads


# ------------------------------------------------------------------ starting the ranks

def rank_env(rank: int, world: int, rdzv: str, kind: str, threads: Optional[int]) -> dict:
    env = dict(os.environ)
    env.update(PIS_RANK=str(rank), PIS_WORLD=str(world), PIS_RDZV=rdzv)
    if kind == "cpu":
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # the ranks of one machine talk over loopback
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
    env.pop("PIS_TUI_DEBUG", None)
    return env


class Group:
    """``world`` worker processes of one module, started and bounded in time (a context
    manager: they are killed, by their ids, if still running on exit)."""

    def __init__(self, module: str, world: int, spec: dict, *, kind: str = "cpu",
                 threads: Optional[int] = None, start_s: float = START_S,
                 timeout_s: float = 600.0):
        self.module, self.world, self.spec, self.kind = module, world, spec, kind
        self.threads, self.start_s, self.timeout_s = threads, start_s, timeout_s
        self.dir = Path(tempfile.mkdtemp(prefix="pis-tui-tp-"))
        self.procs: list = []

    def __enter__(self):
        spec_path = self.dir / "spec.json"
        spec_path.write_text(json.dumps({**self.spec, "out": str(self.dir / "out.jsonl"),
                                         "status_dir": str(self.dir)}), encoding="utf-8")
        rdzv = f"file://{self.dir / 'rdzv'}"
        for r in range(self.world):
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", self.module, str(spec_path)],
                env=rank_env(r, self.world, rdzv, self.kind, self.threads),
                stdout=subprocess.DEVNULL, stderr=open(self.dir / f"err{r}.txt", "wb")))
        return self

    def __exit__(self, *exc):
        self.kill()
        return False

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:  # pragma: no cover
                pass

    def _cause(self, r: int, code: Optional[int]) -> str:
        """Why rank ``r`` ended with ``code``: the exception it reported (``error<r>``, written
        by :func:`pis_tui.timing.collective_worker.run_worker`), the signal that killed it, the
        last exception of a traceback on its stderr, or its exit code.  A library's warning on
        stderr is never taken for the cause."""
        try:
            reported = (self.dir / f"error{r}").read_text(encoding="utf-8").strip()
        except OSError:
            reported = ""
        if reported:
            return reported[:240]
        if code is not None and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            hint = " (out of memory, or stopped from outside?)" if -code == signal.SIGKILL else ""
            return f"killed by {name}{hint}"
        raised = _last_exception(self._stderr(r))
        if raised:
            return raised[:240]
        return f"exit code {code}"

    def _done(self, r: int) -> bool:
        """Rank ``r`` finished its work and wrote its results (``done<r>``,
        :func:`pis_tui.timing.collective_worker.mark_done`)."""
        return (self.dir / f"done{r}").exists()

    def _stderr(self, r: int) -> str:
        try:
            return (self.dir / f"err{r}.txt").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def _first_failed(self, failed: list, codes: list) -> int:
        """The rank to blame: one that reported an exception of its own (its peers then fail
        on the broken connection), else the first that ended."""
        for r in failed:
            if (self.dir / f"error{r}").exists():
                return r
        return failed[0]

    def ready(self) -> bool:
        return all((self.dir / f"ready{r}").exists() for r in range(self.world))

    def wait(self, on_result: Optional[Callable[[dict], None]] = None) -> list:
        """Wait for the group: the results rank 0 wrote (dicts), in order.  UserError when it
        cannot be started (within ``start_s``), MeasureError when it fails or stops answering
        later (what it measured is returned through ``on_result`` first)."""
        t0 = time.monotonic()
        seen = 0
        results: list = []
        out = self.dir / "out.jsonl"

        def drain():
            nonlocal seen
            if not out.exists():
                return
            lines = out.read_text(encoding="utf-8").splitlines()
            for ln in lines[seen:]:
                if not ln.strip():
                    continue
                d = json.loads(ln)
                results.append(d)
                if on_result is not None:
                    on_result(d)
            seen = len(lines)

        while True:
            codes = [p.poll() for p in self.procs]
            drain()
            if all(c == 0 or (c is not None and self._done(r)) for r, c in enumerate(codes)):
                return results  # a rank that crashed in teardown after its work is done is done
            failed = [r for r, c in enumerate(codes) if c not in (None, 0) and not self._done(r)]
            started = self.ready()
            if failed:
                time.sleep(0.2)  # a rank that raised writes its cause before it exits
                codes = [p.poll() for p in self.procs]
                failed = [r for r, c in enumerate(codes) if c not in (None, 0)]
                bad = self._first_failed(failed, codes)
                why = self._cause(bad, codes[bad])
                self.kill()
                drain()
                if not started:
                    raise UserError(f"cannot start {self.world} ranks ({self._backend()}) for "
                                    f"measuring: rank {bad} failed: {why}")
                raise MeasureError(f"the {self.world}-rank group failed while measuring (rank "
                                   f"{bad}: {why}); {len(results)} result(s) kept")
            elapsed = time.monotonic() - t0
            if not started and elapsed > self.start_s:
                self.kill()
                raise UserError(f"cannot start {self.world} ranks ({self._backend()}) for measuring: "
                                f"they did not meet within {self.start_s:g} s")
            if elapsed > self.timeout_s:
                self.kill()
                drain()
                raise MeasureError(f"the {self.world}-rank group took longer than "
                                   f"{self.timeout_s:g} s and was stopped; {len(results)} "
                                   "result(s) kept")
            time.sleep(0.05)

    def _backend(self) -> str:
        return backend_for(self.kind)


def _last_exception(text: str) -> str:
    """The exception line that ends the last traceback in ``text`` ('' when there is none)."""
    lines = text.splitlines()
    starts = [i for i, ln in enumerate(lines) if ln.startswith("Traceback (most recent call last)")]
    if not starts:
        return ""
    for ln in lines[starts[-1] + 1:]:  # the frames are indented; the exception is not
        if ln.strip() and not ln.startswith((" ", "\t")):
            return ln.strip()
    return ""


def measure(wanted: list, world: int, device, *, rounds: int = DEFAULT_ROUNDS,
            threads: Optional[int] = None, timeout_s: Optional[float] = None,
            start_s: float = START_S, round_ms: float = ROUND_MS,
            on_result: Optional[Callable[[dict], None]] = None) -> list:
    """Time the collectives ``wanted`` ((kind, dtype, elems) each) over ``world`` local ranks
    of ``device`` (a DeviceProfile: its kind picks the backend, its fingerprint keys the rows).
    Returns the rows for the cache (see :func:`summarise`), each also handed to ``on_result``
    as it arrives."""
    backend = check_world(world, device)
    if threads is None and device.kind == "cpu":
        from ..device.local import cpu_cores

        threads = max(1, cpu_cores() // world)
    info = {"fingerprint": device.fingerprint, "display_name": device.display_name,
            "kind": device.kind, "backend": backend, "world_size": world, "threads": threads}
    spec = {"wanted": [list(w) for w in wanted], "rounds": rounds, "round_ms": round_ms,
            "backend": backend, "kind": device.kind, "device_info": info}
    budget = timeout_s if timeout_s is not None else start_s + 30.0 + 5.0 * len(wanted) * rounds
    with Group(WORKER, world, spec, kind=device.kind, threads=threads, start_s=start_s,
               timeout_s=budget) as g:
        return g.wait(on_result)
