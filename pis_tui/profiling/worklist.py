"""Planning a measurement sweep: the distinct kernel calls it needs, most important first,
then an M grid for interpolation; and how the sweep's ops would be priced now."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

from ..model.ops import Attention, Collective, Gemm, GroupedGemm, Op, Overhead, measuring_form
from ..model.scenario import PHASES, Scenario

#: M values around typical GEMM tile boundaries (64/128/256) and powers of two
M_GRID = (1, 2, 4, 8, 16, 32, 64, 127, 128, 129, 255, 256, 257, 512, 1024, 2048, 4096)


@dataclass
class WorklistOptions:
    granularity: str = "layer"
    align: int = 128
    phases: tuple = PHASES
    #: M grid for interpolation: "model" (the dense model's GEMM pairs), "all" (every pair
    #: in the plan), or "none"
    grid: str = "model"
    m_grid: tuple = M_GRID
    #: skip grid points whose roofline time exceeds this (ms); None: no cap
    grid_max_ms: Optional[float] = None

    @classmethod
    def of(cls, options) -> "WorklistOptions":
        if options is None:
            return cls()
        if isinstance(options, cls):
            return options
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in dict(options).items() if k in known})


@dataclass
class WorkItem:
    op: Op
    share: float  # largest share of a phase's (roofline) time this op accounts for
    grid: bool = False
    label: str = ""


def roofline_fn(device):
    try:
        from ..pricing.estimator import roofline_ms

        return lambda op: roofline_ms(op, device)
    except ImportError:  # pragma: no cover - estimator is part of the package
        def f(op):
            return max(op.flops() / device.peak(op.dtype), op.bytes() / device.bandwidth) * 1e3
        return f


def label_of(op: Op) -> str:
    if isinstance(op, Gemm):
        kind = ("" if op.kind == "dense" else f" {op.kind}") + (f" {op.quant}" if op.quant else "")
        return f"GEMM{kind} {op.m}×{op.n}×{op.k} {op.dtype}"
    if isinstance(op, GroupedGemm):
        return (f"grouped GEMM E{op.experts} k{op.top_k} T{op.tokens} ({op.routing}) "
                f"{op.n}×{op.k} {op.dtype}")
    if isinstance(op, Attention):
        bs = f" block-sparse {op.block_density:.0%}" if op.block_density < 1 else ""
        return (f"attention{bs} B{op.batch} H{op.q_heads}/{op.kv_heads} q{op.q_len} kv{op.kv_len} "
                f"d{op.head_dim} {op.dtype}")
    if isinstance(op, Collective):
        return f"{op.shape()} {op.dtype}"
    return f"{op.kind} {op.rows}×{op.width} {op.dtype}"


def sweep_phase_ops(spec, scenario: Scenario, strategies=None, sparsities=None, options=None):
    """(strategy, phase, its op list) for every point of the sweep a worklist plans for:
    ``strategies`` (None: every pruned family) × ``sparsities`` (None: each family's grid) ×
    the options' phases, in the grid's order."""
    from .. import families
    from ..families.phase_ops import build_phase_ops
    from ..families.strategy import strategies_grid

    opt = WorklistOptions.of(options)
    for strat in strategies_grid(tuple(strategies) if strategies else families.pruned(),
                                 tuple(sparsities) if sparsities else None, opt.granularity,
                                 opt.align, spec=spec):
        for ph in opt.phases:
            yield strat, ph, build_phase_ops(spec, strat, scenario, ph)


def worklist_detailed(spec, device, scenario: Scenario, strategies=None, sparsities=None,
                  options=None) -> list[WorkItem]:
    opt = WorklistOptions.of(options)
    roof = roofline_fn(device)
    found: dict[str, WorkItem] = {}
    dense_pairs: set = set()
    all_pairs: set = set()
    pair_max_m: dict = {}
    grouped: dict = {}  # a grouped GEMM's class → (its largest T, that op)
    for strat, _, po in sweep_phase_ops(spec, scenario, strategies, sparsities, opt):
        times = [(o, roof(o) * o.count) for o in po.ops]
        total = sum(t for _, t in times) or 1.0
        for o, t in times:
            if isinstance(o, (Overhead, Collective)):
                continue  # the dispatch probe / torch.distributed measure these, not timing
            mo = measuring_form(o)
            k = mo.key()
            share = t / total
            cur = found.get(k)
            if cur is None:
                found[k] = WorkItem(mo, share, label=f"{label_of(mo)} ({o.name})")
            elif share > cur.share:
                cur.share = share
            if isinstance(mo, GroupedGemm) and mo.tokens:
                cls = (mo.kind, mo.dtype, mo.experts, mo.top_k, mo.routing, mo.n, mo.k)
                if mo.tokens > grouped.get(cls, (0, None))[0]:
                    grouped[cls] = (mo.tokens, mo)
            if isinstance(mo, Gemm):
                pair = (mo.n, mo.k, mo.kind, mo.dtype, mo.density, mo.quant)
                all_pairs.add(pair)
                pair_max_m[pair] = max(pair_max_m.get(pair, 0), mo.m)
                if strat.family == "dense":
                    dense_pairs.add(pair)
    planned = sorted(found.values(), key=lambda p: -p.share)
    if opt.grid != "none":
        max_m = max(scenario.prefill_batch * scenario.prompt_len, scenario.decode_batch)
        pairs = dense_pairs if opt.grid == "model" else all_pairs
        grid = []
        for pair in sorted(pairs):
            n, k, kind, dtype, dens, quant = pair
            # up to the first grid point at or above the largest M this pair runs at (an
            # lm_head runs at M = batch, never at the prompt's M), within the scenario
            top = min([g for g in opt.m_grid if g >= pair_max_m[pair]] or [pair_max_m[pair]])
            for m in opt.m_grid:
                if m > max_m or m > top:
                    continue
                g = Gemm("grid", m, n, k, 1.0, dtype, kind=kind, density=dens, quant=quant)
                if g.key() in found:
                    continue
                t = roof(g)
                if opt.grid_max_ms is not None and t > opt.grid_max_ms:
                    continue
                found[g.key()] = p = WorkItem(g, 0.0, grid=True, label=f"{label_of(g)} (M grid)")
                grid.append((t, p))
        # grouped GEMMs: the same experts and routing at powers of two of T up to the largest
        # T the sweep runs (the decode batch curve's steps), their interpolation's neighbours
        for top, g0 in grouped.values():
            for t in (x for x in opt.m_grid if x & (x - 1) == 0 and x < top):
                g = _grouped_at(g0, t)
                if g.key() in found:
                    continue
                rt = roof(g)
                if opt.grid_max_ms is not None and rt > opt.grid_max_ms:
                    continue
                found[g.key()] = p = WorkItem(g, 0.0, grid=True, label=f"{label_of(g)} (T grid)")
                grid.append((rt, p))
        grid.sort(key=lambda tp: tp[0])  # cheap points first: the grid fills in quickly
        planned += [p for _, p in grid]
    return planned


def _grouped_at(op: GroupedGemm, tokens: int) -> GroupedGemm:
    """``op``'s grouped GEMM at ``tokens`` tokens (the law's expected shape, for the roofline)."""
    from ..model.moe import Routing, mean_step

    st = mean_step(tokens, op.top_k, Routing(op.routing, op.shares, op.routing))
    return replace(op, name="grid", tokens=tokens, groups=st.distinct, rows=st.routed_rows,
                   padded_rows=st.routed_rows)


def collective_worklist(spec, scenario: Scenario, strategies=None, sparsities=None,
                     options=None) -> list[Collective]:
    """The distinct collectives (tensor parallelism: ``scenario.tp`` > 1) a sweep's op lists
    run, one call each, largest message first; measured through torch.distributed
    (:func:`pis_tui.profiling.measure_collectives`), not by the kernel timing."""
    if scenario.tp == 1:
        return []
    found: dict = {}
    for _, _, po in sweep_phase_ops(spec, scenario, strategies, sparsities, options):
        for o in po.ops:
            if isinstance(o, Collective):
                found.setdefault(o.key(), Collective("planned", o.kind, o.elems, o.world, 1.0,
                                                     o.dtype))
    return sorted(found.values(), key=lambda c: (-c.bytes(), c.kind))


def worklist(spec, device, scenario: Scenario, strategies=None, sparsities=None,
         options=None) -> list[Op]:
    """The ops (one call each) to measure for a sweep, most important first, then the M grid."""
    return [p.op for p in worklist_detailed(spec, device, scenario, strategies, sparsities, options)]


def source_counts(spec, device, scenario: Scenario, strategies=None, sparsities=None,
                  options=None, cache=None) -> dict:
    """How the sweep's distinct ops would be priced now: {measured, shipped, interpolated,
    roofline, unsupported} (what `profile` reports at the end)."""
    from ..decide.sweep import make_estimator

    est = make_estimator(device, scenario.dtype, cache, engine=scenario.engine)
    seen: dict = {}
    for _, _, po in sweep_phase_ops(spec, scenario, strategies, sparsities, options):
        for o in po.ops:
            k = o.key()
            if k not in seen:
                seen[k] = est.price(o).source
    out: dict = {}
    for s in seen.values():
        out[s] = out.get(s, 0) + 1
    return out
