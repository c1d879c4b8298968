"""Decode speedup against decode batch: where a pruned model pays off.

A decode step's cost moves from reading weights (memory-bound, small batch) toward computing
(large batch), and for a mixture of experts from reading the k experts a token picks to
streaming every expert once the step's tokens touch them all (:mod:`pis_tui.model.moe`).  A
family's speedup therefore depends on the batch in ways a FLOPs count cannot show; this prices
dense and each strategy's decode step at each batch of a grid (same context, engine, device and
estimator as the sweep) and, for an MoE model, the experts a step touches.  Pure estimation: no
torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional, Sequence

from ..families.phase_ops import build_phase_ops
from ..families.strategy import Strategy
from ..model.moe import mean_step, routing
from ..model.scenario import Scenario
from ..model.spec import ModelSpec

#: decode batches of the curve (powers of two: a step's experts touched and its GEMMs' M)
BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
#: the strategies drawn by default: the study's four core families at half their weights
DEFAULT_STRATEGIES = (("static_depth", 0.5), ("static_width", 0.5), ("low_rank", 0.5),
                      ("dynamic_depth", 0.5))
#: ... and for a mixture of experts: depth and the families that act on its routed experts
MOE_STRATEGIES = (("static_depth", 0.5), ("expert_pruning", 0.5), ("topk_reduction", 0.5),
                  ("dynamic_topk", 0.25), ("expert_slimming", 0.5))


def default_strategies(spec: ModelSpec) -> list:
    """What a batch curve draws when no strategy is named: the MoE set for an MoE model."""
    return [Strategy(f, s) for f, s in (MOE_STRATEGIES if spec.moe is not None else DEFAULT_STRATEGIES)]


@dataclass
class BatchCurve:
    batches: tuple
    dense_ms: list               # the dense decode step's latency at each batch
    speedups: dict               # strategy label → speedup at each batch
    experts_touched: Optional[list] = None  # an MoE model: expected distinct experts per layer
    experts: int = 0
    notes: list = field(default_factory=list)

    def best_batch(self, label: str) -> int:
        """The batch at which a strategy's speedup is largest."""
        s = self.speedups[label]
        return self.batches[max(range(len(s)), key=s.__getitem__)]

    def to_dict(self) -> dict:
        out = {"batches": list(self.batches), "dense_ms": self.dense_ms,
               "speedups": self.speedups}
        if self.experts_touched is not None:
            out.update(experts=self.experts, experts_touched=self.experts_touched)
        return out


def label(strategy: Strategy) -> str:
    return f"{strategy.family} {strategy.sparsity:.0%}"


def batch_curve(spec: ModelSpec, estimator, scenario: Scenario,
                strategies: Optional[Sequence[Strategy]] = None,
                batches: Sequence[int] = BATCHES) -> BatchCurve:
    """Dense and each strategy's decode step at every batch of ``batches`` (the scenario's
    context, engine and tensor parallelism), and their speedups."""
    strategies = list(strategies) if strategies is not None else default_strategies(spec)
    dense_ms, speed = [], {label(s): [] for s in strategies}
    for b in batches:
        scen = replace(scenario, decode_batch=int(b))
        d = estimator.estimate(build_phase_ops(spec, Strategy("dense", 0.0), scen, "decode")).latency_ms
        dense_ms.append(d)
        for s in strategies:
            p = estimator.estimate(build_phase_ops(spec, s, scen, "decode")).latency_ms
            speed[label(s)].append(d / p if p > 0 else float("nan"))
    curve = BatchCurve(tuple(batches), dense_ms, speed)
    if spec.moe is not None:
        r = routing(scenario.routing, spec.moe.experts, moe_layers=spec.moe.moe_layers, phase="decode")
        curve.experts = spec.moe.experts
        curve.experts_touched = [mean_step(b, spec.moe.top_k, r).distinct for b in batches]
    return curve


#: a step touches "every" expert when it touches this share of them (the law approaches E only
#: asymptotically)
ALL_TOUCHED = 0.99


def moe_batches(spec: ModelSpec, scenario: Scenario, batches: Sequence[int] = BATCHES) -> tuple:
    """The batches of ``batches`` from 1 to the first at which a decode step touches every
    expert (:data:`ALL_TOUCHED` of them, under the scenario's routing): where the expert-level
    families' speedups change."""
    r = routing(scenario.routing, spec.moe.experts, moe_layers=spec.moe.moe_layers, phase="decode")
    out = []
    for b in batches:
        out.append(b)
        if mean_step(b, spec.moe.top_k, r).distinct >= ALL_TOUCHED * spec.moe.experts:
            break
    return tuple(out)

