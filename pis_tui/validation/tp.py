"""``validate --tp N``: the pruned models run end to end as N tensor-parallel ranks of
torch.distributed (gloo on the CPU, NCCL on GPUs), against pis-tui's per-rank prediction.

Each rank's model is built with one rank's config (its query and KV heads, MLP channels and
rows of the vocabulary) and its linears sharded explicitly (:func:`.modules.tensor_parallel`:
an all-reduce after the row-parallel o/down projections, a vocab-parallel embedding and
lm_head whose logits are all-gathered); transformers' own tensor-parallel plan is not used
(it needs accelerate and does not cover the pruned wrappers).  On the CPU each rank gets its
share of the cores (``hardware.rank_threads``): the ops behind the predictions are measured
here on that many threads, under the rank device's fingerprint, and the collectives the op
lists need are measured by the ranks themselves right before the models are timed, in the
same processes (the predictions price them from those rows).  Dense and pruned runs are
interleaved and every sample is the slowest rank's.

gloo's all-reduce on a small CPU varies several-fold from run to run: every row carries the
measured collectives' spread and is flagged ``unstable_collectives`` when one of them was
unstable (see :mod:`pis_tui.timing.collectives`); nothing is dropped.
"""

from __future__ import annotations

import statistics
from typing import Callable, Optional

from ..families.phase_ops import build_phase_ops
from ..families.strategy import Strategy
from ..errors import UserError
from ..model.scenario import Scenario

#: a timed sample lasts at least this long on the CPU (calls per sample agreed by the ranks)
TARGET_MS = 150.0


def _scenario(ph: str, b: int, length: int, dtype: str, tp: int) -> Scenario:
    return Scenario(prefill_batch=b if ph == "prefill" else 1,
                    prompt_len=length if ph == "prefill" else 1,
                    decode_batch=b if ph == "decode" else 1,
                    context_len=length if ph == "decode" else 1, dtype=dtype, tp=tp)


def _median_spread(samples: list) -> tuple[float, float]:
    med = statistics.median(samples)
    if len(samples) >= 4:
        q = statistics.quantiles(samples, n=4)
        return med, (q[2] - q[0]) / med if med else 0.0
    return med, (max(samples) - min(samples)) / med if med else 0.0


def validate_tp(model, strategies: list, phases=("prefill", "decode"), *, tp: int = 2,
                prefill_batches=(1,), prompt_len: int = 128, decode_batches=(1, 16),
                context_len: int = 256, dtype: Optional[str] = None, repeats: int = 5,
                warmup: int = 1, cache=None, seed: int = 0, op_repeats: Optional[int] = None,
                collective_rounds: int = 7, timeout_s: float = 3600.0,
                on_progress: Optional[Callable[[str], None]] = None,
                on_row: Optional[Callable] = None, probe_overhead: bool = True) -> list:
    """Build each pruned model as ``tp`` ranks, time it against the dense one and compare with
    the per-rank prediction (see the module docs).  Returns :class:`ValidationRow` s with the
    tensor-parallel figures in their notes and :func:`_tp_extra` (``row.tp``)."""
    from ..device import local
    from ..model.tensor_parallel import check_model
    from ..timing import collectives as tc
    from .compare import _cases
    from .op_times import OpTimes
    from ..hf.config import check_buildable, raw_config, torch_dtype

    say = on_progress or (lambda msg: None)
    raw, spec = raw_config(model)
    check_buildable(spec)
    check_model(spec, tp)
    named = local.local_device()
    backend = tc.check_world(tp, named)  # a group this machine cannot start: exit 2, now
    dtype = dtype or ("fp32" if named.kind == "cpu" else "bf16")
    torch_dtype(dtype)
    cases = _cases(phases, prefill_batches, prompt_len, decode_batches, context_len)
    with local.rank_threads(tp) as threads:
        device = local.measuring_device()  # one rank's (its share of the cores on a CPU)
        if device.kind == "cpu":
            import torch

            torch.set_num_threads(local.cpu_threads())
        times = OpTimes(dtype, cache, on_progress=say, repeats=op_repeats)
        if device.kind == "cpu" and probe_overhead:
            _probe_overheads(raw, spec, cases, times, dtype, cache, device, say)
        po, wanted = _phase_ops(spec, [Strategy("dense")] + list(strategies), cases, dtype, tp)
        say(f"measuring the ops of every prediction (one rank: {threads or 'its'} thread(s))")
        times.ensure([o for p in po.values() for o in p.ops])
        # the group: the collectives first, then every model, in the same processes
        group = _GroupResults(tp, cache, say)
        say(f"starting {tp} ranks ({backend})")
        with tc.Group("pis_tui.validation.tp_worker", tp,
                      _worker_spec(raw, dtype, seed, repeats, warmup, strategies, cases, wanted,
                                   collective_rounds, backend, device, tp, threads),
                      kind=device.kind, threads=threads, timeout_s=timeout_s) as g:
            g.wait(group.got)
        rows = _compare_rows(spec, strategies, cases, po, group, times, device, dtype, tp,
                             backend, threads, repeats, cache, on_row)
        missing = [(st, c) for st in strategies for c in cases if (st, *c) not in group.timed]
        if missing:
            raise UserError(f"{len(missing)} row(s) were not timed by the {tp} ranks")
    return rows


def _probe_overheads(raw: dict, spec, cases: list, times, dtype: str, cache, device,
                     say: Callable[[str], None]) -> None:
    """One rank's eager framework overhead on the CPU, probed once per code path the cases
    take (unless the cache already holds it)."""
    from ..model.layer import overhead_phase
    from ..model.ops import Overhead
    from .probe import dispatch_probe

    have = set()
    if cache is not None:
        have = {m.key for m in cache.get_measurements(device.fingerprint, dtype)
                if m.key.startswith("ovh:")}
    for ph, b, length in cases:
        path = overhead_phase(ph, b)
        if Overhead("x", "forward", path, 1.0, dtype).key() in have:
            continue
        say(f"measuring the framework overhead ({path}) with tiny clones")
        dispatch_probe(raw, spec, ph, b, length, times, cache=cache)
        have.add(Overhead("x", "forward", path, 1.0, dtype).key())


def _phase_ops(spec, everyone: list, cases: list, dtype: str, tp: int) -> tuple[dict, dict]:
    """Each strategy's per-rank op list for each case, by (strategy, phase, batch, length),
    and the collectives they need (kind, dtype, elements), in order, each once."""
    from ..model.ops import Collective

    po = {}
    wanted: dict = {}
    for st in everyone:
        for ph, b, length in cases:
            p = po[(st, ph, b, length)] = build_phase_ops(
                spec, st, _scenario(ph, b, length, dtype, tp), ph)
            for o in p.ops:
                if isinstance(o, Collective):
                    wanted.setdefault((o.kind, o.dtype, o.elems), None)
    return po, wanted


def _worker_spec(raw: dict, dtype: str, seed: int, repeats: int, warmup: int, strategies: list,
                 cases: list, wanted: dict, collective_rounds: int, backend: str, device, tp: int,
                 threads) -> dict:
    """What the ranks (:mod:`.tp_worker`) are told: the model, the rows, the collectives to
    measure first and the rank device."""
    info = {"fingerprint": device.fingerprint, "display_name": device.display_name,
            "kind": device.kind, "backend": backend, "world_size": tp, "threads": threads}
    return {"model": raw, "dtype": dtype, "seed": seed, "repeats": repeats, "warmup": warmup,
            "target_ms": TARGET_MS if device.kind == "cpu" else 30.0,
            "strategies": [[s.family, s.sparsity, s.granularity, s.align] for s in strategies],
            "cases": [list(c) for c in cases], "collectives": [list(w) for w in wanted],
            "rounds": collective_rounds, "backend": backend, "kind": device.kind,
            "device_info": info}


class _GroupResults:
    """What the ranks report: the collectives they measured (stored in the cache as they
    come) and each row's samples, by (strategy, phase, batch, length)."""

    def __init__(self, tp: int, cache, say: Callable[[str], None]):
        self.tp, self.cache, self.say = tp, cache, say
        self.coll_rows: list = []
        self.timed: dict = {}

    def got(self, d: dict) -> None:
        tp, say = self.tp, self.say
        if d["type"] == "collective":
            self.coll_rows.append(d["row"])
            if self.cache is not None:
                self.cache.put_collectives([d["row"]])
            r = d["row"]
            say(f"{r['collective']} {r['bytes']:,} B over {tp} ranks: {r['ms']:.4g} ms "
                f"(spread {r['spread']:.0%}{', unstable' if r['status'] == 'unstable' else ''})")
            return
        fam, s, gran, align = d["strategy"]
        self.timed[(Strategy(fam, s, gran, align), *d["case"])] = d
        say(f"{fam} s={s:g} {d['case'][0]} batch {d['case'][1]}: timed as {tp} ranks")


def _compare_rows(spec, strategies: list, cases: list, po: dict, group: _GroupResults, times,
                  device, dtype: str, tp: int, backend: str, threads, repeats: int, cache,
                  on_row: Optional[Callable]) -> list:
    """The rows the ranks timed, each against its per-rank prediction (the collectives priced
    from the ranks' own measurements), stored in the cache and handed to ``on_row`` in
    turn."""
    from ..pricing.collectives import CollectivePricer
    from ..pricing.estimator import Estimator

    coll_rows = group.coll_rows
    pricer = CollectivePricer(device, coll_rows)
    est = Estimator(device, times.records())
    est.collective_pricer = pricer
    rows: list = []
    for st in strategies:
        for ph, b, length in cases:
            d = group.timed.get((st, ph, b, length))
            if d is None:
                continue
            de = est.estimate(po[(Strategy("dense"), ph, b, length)])
            pe = est.estimate(po[(st, ph, b, length)])
            row = _tp_row(st, ph, b, length, d, de, pe, coll_rows, tp, backend, threads, repeats)
            rows.append(row)
            if cache is not None and hasattr(cache, "put_validation"):
                from .compare import validation_record

                cache.put_validation([validation_record(row, spec, dtype,
                                                           "cpu" if device.kind == "cpu" else "cuda")])
            if on_row is not None:
                on_row(row)
    return rows


def _paired_speedup(d: dict, dm: float, pm: float) -> tuple:
    """The speedup as on one device: the median of the lockstep pairs' ratios (the medians'
    ratio ``dm / pm`` without pairs), its ~95 % interval, unstable when wider than the
    tolerance (one round here); returns (speedup, low, high, stable, pairs)."""
    from .stability import TOLERANCE, median_interval

    ratios = [a / c for a, c in zip(d["dense_samples"], d["pruned_samples"]) if c > 0]
    ms_ = statistics.median(ratios) if ratios else dm / pm
    lo, hi = median_interval(ratios) if ratios else (ms_, ms_)
    stable = (hi - lo) / (2 * ms_) <= TOLERANCE if ms_ > 0 else False
    return ms_, lo, hi, stable, len(ratios)


def _tp_row(st: Strategy, ph: str, b: int, length: int, d: dict, de, pe, coll_rows: list,
            tp: int, backend: str, threads, repeats: int):
    """One row: the ranks' samples ``d`` against the per-rank predictions (dense ``de``,
    pruned ``pe``), with the measured collectives' spread in its notes and ``row.tp``."""
    from .compare import ValidationRow

    dm, dsp = _median_spread(d["dense_samples"])
    pm, psp = _median_spread(d["pruned_samples"])
    ms_, lo, hi, stable, pairs = _paired_speedup(d, dm, pm)
    ps = de.latency_ms / pe.latency_ms
    fs = de.flops / pe.flops if pe.flops else 1.0
    shaky = [r for r in coll_rows if r["status"] == "unstable"]
    spreads = [r["spread"] for r in coll_rows]
    notes = tuple(d["notes"]) + (
        f"TP {tp} ({backend}): {len(coll_rows)} collective size(s) measured by the "
        f"ranks, spread {min(spreads):.0%}–{max(spreads):.0%} (IQR / median)"
        if spreads else "",)
    if shaky:
        notes += (f"unstable_collectives: {len(shaky)} of {len(coll_rows)} measured "
                  "collectives were unstable (gloo on a small CPU varies several-fold "
                  "run to run): this row's prediction is no better than they are",)
    return ValidationRow(
        st.family, st.sparsity, pe.achieved_sparsity, ph, b, length, pe.latency_ms, pm,
        de.latency_ms, dm, ps, ms_, ps / ms_ - 1.0, fs, fs / ms_ - 1.0,
        pe.timing_source, psp, dsp, repeats, st.granularity, tuple(n for n in notes if n),
        timing="eager", tp=_tp_extra(tp, backend, threads, de, pe, coll_rows),
        measured_low=lo, measured_high=hi, pairs=pairs, rounds=1, stable=stable)


def _tp_extra(tp: int, backend: str, threads, de, pe, coll_rows: list) -> dict:
    """A row's tensor-parallel figures (``row.tp``): degree, backend, threads a rank, the
    predicted collectives' time, the collectives the ranks measured and whether one was
    unstable."""
    from ..pricing.collectives import collective_ms

    shaky = [r for r in coll_rows if r["status"] == "unstable"]
    return {"tp": tp, "backend": backend, "threads_per_rank": threads,
            "predicted_collectives_ms": collective_ms(pe),
            "dense_predicted_collectives_ms": collective_ms(de),
            "collectives": [{k: r.get(k) for k in ("collective", "bytes", "ms",
                                                    "spread", "status")}
                            | {"min_ms": r["conditions"].get("min_ms"),
                               "max_ms": r["conditions"].get("max_ms")}
                            for r in coll_rows],
            "unstable_collectives": bool(shaky)}
