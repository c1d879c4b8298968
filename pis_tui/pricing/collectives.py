"""Pricing collectives (tensor parallelism's all-reduces and all-gathers): measured through
torch.distributed where the cache holds them, else from the GPU profile's interconnect.

In order of trust, for a :class:`~pis_tui.model.ops.Collective` of S bytes over n ranks:

1. ``measured``: this collective, this message size, this world size and backend (NCCL on a
   GPU, gloo on the CPU) timed on this device (``pis-tui profile --tp N``; the cache's
   ``collective_timings``, keyed by device, backend, world size, collective, dtype and bytes);
2. ``interpolated``: between the sizes measured for it (log-log between the two nearest;
   below the smallest its time, which the latency dominates; above the largest scaled by the
   bytes, which the bandwidth dominates), within :data:`SIZE_REACH` of them;
3. ``unstable``: measured, but its rounds disagree (gloo on a small shared CPU varies
   several-fold from run to run): kept and shown as such, priced no better than interpolated
   (from stable sizes beside it where there are any; a size between or beyond unstable ones
   only is ``unstable`` too);
4. ``roofline``: the α–β ring model from the profile's ``interconnect`` block:

       t(S, n) = latency + S · ring_factor(n) / (bandwidth × attainable share)

   with the ring factor 2(n−1)/n for an all-reduce and (n−1)/n for an all-gather (what each
   rank sends over its link: nccl-tests' busbw), ``bandwidth`` the link's per-direction figure
   per GPU (NVLink, or PCIe for cards without it) and ``latency`` a floor per call;

Where none of these exists (the local CPU before its collectives are measured, a GPU whose
profile has no interconnect figures) tensor parallelism is refused with one line
(:func:`check`), before anything is priced.  No torch, no DuckDB.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Iterable, Optional

from . import sources
from ..errors import UserError
from ..model.ops import Collective
from .estimates import PricedOp

#: the share of the link's per-direction bandwidth a ring all-reduce's busbw attains (nccl-tests
#: reference figures: 8×A100 SXM4 over NVLink 3 reach 230–250 GB/s busbw of 300 GB/s each way,
#: 0.77–0.83; 8×H100 PCIe reach 35–45 of PCIe Gen5's 64, 0.55–0.70; 8×H100 SXM5 reach 460–480
#: of 450 with NVLink SHARP in the switch, which this ring model does not credit):
#: docs.alayanew.com/en/docs/tech-blog/2026-05-06-nccl-tests, "Reference numbers"
ATTAINABLE = {"nvlink": 0.80, "pcie": 0.60}
#: interpolate a measured collective at most this factor beyond the sizes measured for it
SIZE_REACH = 4.0


def backend_of(device) -> str:
    """The torch.distributed backend the device's collectives run (and are measured) on."""
    return "gloo" if device.kind == "cpu" else "nccl"


@dataclass(frozen=True)
class Interconnect:
    """A GPU profile's ``interconnect`` block: the link between the GPUs of one node."""

    kind: str  # nvlink | pcie
    label: str  # "NVLink 4 (NVSwitch)", "PCIe Gen4 x16"
    bandwidth_gbs: float  # per GPU, per direction
    latency_us: float  # floor of one collective call
    max_gpus: int
    sources: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def attainable(self) -> float:
        return ATTAINABLE.get(self.kind, ATTAINABLE["pcie"])

    def words(self) -> str:
        return (f"{self.kind} {self.bandwidth_gbs:g} GB/s × {self.attainable:.0%}, "
                f"{self.latency_us:g} µs floor")

    def to_dict(self) -> dict:
        return {"kind": self.kind, "label": self.label, "bandwidth_gbs": self.bandwidth_gbs,
                "latency_us": self.latency_us, "max_gpus": self.max_gpus,
                "attainable_share": self.attainable, "sources": dict(self.sources)}


def interconnect_of(device) -> Optional[Interconnect]:
    d = getattr(device, "interconnect", None)
    if not d:
        return None
    return Interconnect(kind=str(d["kind"]), label=str(d.get("label", d["kind"])),
                        bandwidth_gbs=float(d["bandwidth_gbs"]), latency_us=float(d["latency_us"]),
                        max_gpus=int(d.get("max_gpus", 8)), sources=dict(d.get("sources", {})))


def analytical_ms(op: Collective, ic: Interconnect) -> float:
    """The α–β ring model (see the module docs) for one call, in ms."""
    return ic.latency_us * 1e-3 + op.bus_bytes() / (ic.bandwidth_gbs * 1e9 * ic.attainable) * 1e3


def floor_ms(op: Collective, ic: Interconnect) -> float:
    """The least one call can take on this link: the latency floor plus the ring's bytes at
    the link's full bandwidth (for a physical ceiling)."""
    return ic.latency_us * 1e-3 + op.bus_bytes() / (ic.bandwidth_gbs * 1e9) * 1e3


@dataclass(frozen=True)
class CollectiveRecord:
    """A measured collective (a row of the cache's ``collective_timings``)."""

    kind: str
    dtype: str
    world: int
    bytes: int
    ms: float
    status: str = "ok"
    spread: Optional[float] = None
    backend: str = "gloo"
    loaded: bool = False
    why: str = ""


def as_record(row) -> Optional[CollectiveRecord]:
    get = (lambda k, d=None: row.get(k, d)) if isinstance(row, dict) else \
        (lambda k, d=None: getattr(row, k, d))
    ms = get("ms")
    if ms is None or not ms > 0:
        return None
    cond = get("conditions") or {}
    spread = get("spread")
    return CollectiveRecord(str(get("collective", get("kind"))), str(get("dtype")),
                            int(get("world_size", get("world"))), int(get("bytes")), float(ms),
                            str(get("status", "ok")), None if spread is None else float(spread),
                            str(get("backend", "gloo")), bool(cond.get("loaded")),
                            "; ".join(cond.get("unstable") or ()))


class CollectivePricer:
    """Prices the collectives of op lists on one device (the rule in the module docs)."""

    def __init__(self, device, measurements: Iterable = ()):
        self.device = device
        self.backend = backend_of(device)
        self.interconnect = interconnect_of(device)
        self._exact: dict = {}
        self._stable: dict = {}
        for row in measurements:
            rec = row if isinstance(row, CollectiveRecord) else as_record(row)
            if rec is None or rec.backend != self.backend:
                continue
            self._exact[(rec.kind, rec.dtype, rec.world, rec.bytes)] = rec
        self._all: dict = {}
        for (kind, dt, world, b), rec in self._exact.items():
            self._all.setdefault((kind, dt, world), []).append((b, rec.ms))
            if rec.status == "ok":
                self._stable.setdefault((kind, dt, world), []).append((b, rec.ms))
        for v in list(self._stable.values()) + list(self._all.values()):
            v.sort()

    def worlds(self) -> set:
        """World sizes some collective was measured at."""
        return {k[2] for k in self._exact}

    def measured_count(self) -> int:
        return len(self._exact)

    # ------------------------------------------------------------------ pricing
    def price(self, op: Collective) -> PricedOp:
        rec = self._exact.get((op.kind, op.dtype, op.world, int(op.bytes())))
        if rec is not None and rec.status == "ok":
            return PricedOp(op, rec.ms, "measured",
                            f"{op.kind} over {op.world} ranks ({self.backend}) measured here",
                            sources.uncertainty("measured", rec.spread), rec.loaded)
        interp = self._interpolate(op, self._stable)
        if rec is not None:  # unstable
            why = (f"its measurement ({rec.ms:.4g} ms, {self.backend}) is unstable: "
                   f"{rec.why or 'its rounds disagree'}")
            if interp is not None and interp[1]:
                return PricedOp(op, interp[0], "interpolated",
                                why + "; priced from the stable sizes measured beside it",
                                sources.uncertainty("interpolated"))
            return PricedOp(op, rec.ms, "unstable", why,
                            sources.uncertainty("unstable", rec.spread), rec.loaded)
        ic = self.interconnect
        if interp is not None and (interp[1] or ic is None):
            note = (f"from the {self.backend} {op.kind} sizes measured here"
                    + ("" if interp[1] else ", extrapolated past them"))
            return PricedOp(op, interp[0], "interpolated", note, sources.uncertainty("interpolated"))
        shaky = self._interpolate(op, self._all)  # only unstable sizes measured at this world
        if shaky is not None and (shaky[1] or ic is None):
            return PricedOp(op, shaky[0], "unstable",
                            f"from {self.backend} {op.kind} sizes measured here whose rounds "
                            "disagree" + ("" if shaky[1] else ", extrapolated past them"),
                            sources.uncertainty("unstable"))
        if ic is None:
            raise UserError(no_figures(self.device, op.world))
        return PricedOp(op, analytical_ms(op, ic), "roofline",
                        f"ring model: {ic.words()}", sources.uncertainty("roofline"))

    def work_ms(self, op: Collective) -> float:
        """The least time one call can take (for a family's physical ceiling)."""
        if self.interconnect is not None:
            return floor_ms(op, self.interconnect)
        return self.price(op).ms_per_call

    @staticmethod
    def _interpolate(op: Collective, table: dict) -> Optional[tuple[float, bool]]:
        """(ms, within reach) from the sizes in ``table`` measured for this collective, or None."""
        pts = table.get((op.kind, op.dtype, op.world))
        if not pts:
            return None
        b = op.bytes()
        xs = [p[0] for p in pts]
        near = xs[0] / SIZE_REACH <= b <= xs[-1] * SIZE_REACH
        if b <= xs[0]:
            return pts[0][1], near
        if b >= xs[-1]:
            return pts[-1][1] * b / xs[-1], near
        i = bisect.bisect_left(xs, b)
        (x0, y0), (x1, y1) = pts[i - 1], pts[i]
        t = (math.log(b) - math.log(x0)) / (math.log(x1) - math.log(x0))
        return math.exp(math.log(y0) + t * (math.log(y1) - math.log(y0))), True


def pricer(est) -> CollectivePricer:
    """The collective pricer of an estimator (``engine.make_estimator`` attaches one with the
    cache's measurements; otherwise one from the device's profile alone)."""
    p = getattr(est, "collective_pricer", None)
    if p is None:
        p = CollectivePricer(est.device)
        est.collective_pricer = p
    return p


def no_figures(device, tp: int) -> str:
    where = ("measure them with 'pis-tui profile --gpu local --tp "
             f"{tp}'" if device.is_local else f"add an \"interconnect\" block to profiles/gpus/"
             f"{device.name}.json (see profiles/gpus/h200-sxm.json)")
    return (f"--tp {tp}: {device.display_name} has no interconnect figures and no collectives "
            f"measured at {tp} ranks, so its all-reduces cannot be priced; {where}")


def check(device, tp: int, pricer_: Optional[CollectivePricer] = None) -> None:
    """Tensor parallelism over ``tp`` ranks can be priced on ``device``, else a UserError."""
    if tp == 1:
        return
    p = pricer_ or CollectivePricer(device)
    ic = p.interconnect
    if ic is not None:
        if tp > ic.max_gpus:
            raise UserError(f"--tp {tp}: the {device.display_name} profile's interconnect figures "
                            f"({ic.label}) cover up to {ic.max_gpus} GPUs of one node")
        return
    if tp not in p.worlds():
        raise UserError(no_figures(device, tp))


def collective_ms(est) -> float:
    """Time in collectives of a phase estimate (per rank)."""
    return sum(p.total_ms for p in est.ops if isinstance(p.op, Collective))
