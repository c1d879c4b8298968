"""Prices ops on a device, and phases as sums of their ops.

For each op, in order of trust:

1. ``measured``: a measurement of exactly this kernel call on this device (the cache);
2. ``shipped``: the same, from a table measured on that GPU elsewhere (profiles/measured/);
3. ``interpolated``: the roofline time divided by the *utilization* of the nearest measured
   shapes of the same kind on this device (log-space in M, N, K for GEMMs; never below the
   roofline).  Only near ones count: a GEMM's (N, K) neighbours within 4× (log distance), each
   used at most 2× beyond the M range measured for it; an attention shape within 4× overall.
   A few measured kernels must not lend a decode kernel's (memory-bound) utilization to
   prefill GEMMs of other shapes: past that reach the op stays ``roofline``;
4. ``roofline``: the roofline floor max(FLOPs/peak, bytes/bandwidth) corrected by an
   analytical efficiency model (tile and wave quantization on GPUs, attainable shares of peak
   and bandwidth, a per-kernel launch overhead);
5. ``unsupported``: the device has no kernel for it (2:4 without sparse tensor cores, or on a
   CPU): priced as the dense kernel it falls back to, so no speedup is claimed.

Eager framework overhead (:class:`~pis_tui.model.ops.Overhead`) is priced from its measurement on
this device (the dispatch probe of ``pis_tui.validation`` stores it in the cache, CPU only)
and otherwise at zero: GPU measurements are CUDA-graph replays, which have no host overhead.
An unmeasured overhead op is reported with source ``roofline`` but does not lower a phase's
``timing_source`` (its zero is the methodology on a GPU); on a CPU the estimate then carries a
note that the overhead was not measured.

Collectives (tensor parallelism's all-reduces) are priced by :mod:`pis_tui.pricing.collectives`, which
``price`` hands them to.

No torch, no DuckDB: measurements arrive as plain records (key, op dict, ms, status).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, replace
from typing import Iterable, Optional

from . import collectives, engines as execution, quantized, sources
from ..device.gpus import DeviceProfile, efficiency
from ..model.ops import (Attention, Collective, Elementwise, Gemm, GroupedGemm, Op, Overhead, dtype_bytes, kernel_of,
                         op_from_dict)
from .estimates import PhaseEstimate, PricedOp

M_REACH = math.log(2.0)  # extrapolate a (N, K) pair's utilization at most 2× past its M range
NK_REACH = math.log(4.0)  # (N, K) neighbours within 4× (distance in log space)
ATTN_REACH = math.log(4.0)  # attention shapes within 4× (summed log distances)
EW_REACH = 4.0  # elementwise ops: at most 4× past the measured byte range of their kind

# The analytical model's attainable shares of the datasheet peaks (GEMM, attention, bandwidth,
# 2:4) and the per-kernel floor are each GPU profile's (its "efficiency" block, a source per
# value; hardware.efficiency gives the defaults of a profile that has none).
TILE_N = 128
SPLIT_K_MIN = 512  # smallest K slice a split-K GEMM hands to one CTA


@dataclass(frozen=True)
class MeasuredRecord:
    key: str
    op: Op
    ms: float
    status: str = "ok"
    spread: Optional[float] = None
    loaded: bool = False  # measured while the machine was loaded (its conditions say so)
    why: str = ""  # unstable: the reasons
    estimated: str = ""  # a timing scaled from another kernel's (FlexAttention fallback): why
    graph_capture: str = ""  # timed without a CUDA graph: eager launches included
    #: a solved figure (the dispatch probe's overheads): its standard error over its value
    solve_u: Optional[float] = None
    #: the kernel that ran (a quantized GEMM's: ``aten._weight_int4pack_mm_for_cpu``)
    kernel: str = ""


#: transformers' eager attention of a soft-capped model (Gemma 2, transformers 5.25): the
#: kernels between QKᵀ and PV (scale, ÷cap, tanh, ×cap, +mask, softmax), as traced
#: (profiles/architectures/gemma2.json), and the passes over the scores they and the GEMMs make
SCORE_KERNELS = 6
SCORE_PASSES = 2 * SCORE_KERNELS + 2


def _as_record(m) -> Optional[MeasuredRecord]:
    get = (lambda k, d=None: m.get(k, d)) if isinstance(m, dict) else (lambda k, d=None: getattr(m, k, d))
    status = get("status", "ok")
    op = get("op")
    if isinstance(op, dict):
        d = dict(op)
        d.setdefault("count", 1.0)
        try:
            op = op_from_dict(d)
        except (KeyError, TypeError):
            return None
    ms = get("ms")
    if op is None or (status in ("ok", "unstable") and (ms is None or not ms > 0)):
        return None
    cond = get("conditions") or {}
    spread = get("spread")
    solve = (cond.get("probe") or {}).get("solve") or {}
    solve_u = solve.get("relative_uncertainty")
    return MeasuredRecord(get("key") or op.key(), op, float(ms or 0.0), status,
                          None if spread is None else float(spread), bool(cond.get("loaded")),
                          "; ".join(cond.get("unstable") or ()), str(cond.get("estimated") or ""),
                          str(cond.get("graph_capture") or ""),
                          None if solve_u is None else float(solve_u), str(cond.get("kernel") or ""))


class Estimator:
    def __init__(self, device: DeviceProfile, measurements: Iterable = (), shipped: Iterable = (),
                 calibration: Optional[dict] = None, engine: str = execution.DEFAULT_ENGINE):
        self.device = device
        self.calibration = calibration or {}
        self.engine = execution.check_engine(engine)
        self.profile = execution.load(self.engine)
        self.eff = efficiency(device, self.engine)
        self._exact: dict[str, tuple[MeasuredRecord, str]] = {}
        self._by_class: dict[tuple, list[MeasuredRecord]] = {}
        for source, rows in (("shipped", shipped), ("measured", measurements)):
            for raw in rows:
                rec = _as_record(raw)
                if rec is None:
                    continue
                self._exact[rec.key] = (rec, source)
                # an estimate is no anchor for its neighbours: only measured kernels are
                if rec.status == "ok" and not rec.estimated and not isinstance(rec.op, Overhead):
                    self._by_class.setdefault(_class_of(rec.op), []).append(rec)
        self._gemm_index: dict[tuple, dict[tuple[int, int], list[tuple[float, float]]]] = {}

    # ---------------------------------------------------------------- roofline

    def peak(self, dtype: str, sparse: bool = False) -> float:
        cal = self.calibration.get(dtype) or {}
        if cal.get("peak_tflops") and not sparse:
            return float(cal["peak_tflops"]) * 1e12
        if cal.get("peak_tflops") and sparse:  # scale the measured dense rate by the spec ratio
            return float(cal["peak_tflops"]) * 1e12 * self.device.peak(dtype, True) / self.device.peak(dtype)
        return self.device.peak(dtype, sparse)

    def bandwidth(self, dtype: str = "bf16") -> float:
        cal = self.calibration.get(dtype) or next(iter(self.calibration.values()), {}) or {}
        if cal.get("bandwidth_gbs"):
            return float(cal["bandwidth_gbs"]) * 1e9
        return self.device.bandwidth

    def roofline_ms(self, op: Op) -> float:
        """The hardware floor of one call: max(FLOPs/peak, bytes/bandwidth)."""
        sparse = isinstance(op, Gemm) and op.kind == "sparse_24" and self.device.sparse_24
        flops = op.flops()
        peak = self.peak(quantized.compute_dtype(op, self.device), sparse)
        return max(flops / peak, op.bytes() / self.bandwidth(op.dtype)) * 1e3

    def _shares(self, op, sparse: bool = False) -> tuple[float, float, float]:
        """(peak FLOP/s, share of it, share of the bandwidth) a GEMM's kernel reaches: the
        dense kernel's, or a quantized one's (:mod:`pis_tui.pricing.quantized`)."""
        e = self.eff
        m = quantized.mode(op, self.device)
        if m == "w8a8":
            return (self.peak("fp8", sparse), e["sparse24"] if sparse else e["fp8_gemm"],
                    e["sparse24_bandwidth"] if sparse else e["bandwidth"])
        if m == "weight_only" or (m == "emulated" and self.engine == "fused"):
            share = (e["sparse24"] if sparse else e["gemm"]) * e["w4a16"]
            return self.peak(op.dtype, sparse), share, e["w4a16_bandwidth"]
        return (self.peak(op.dtype, sparse), e["sparse24"] if sparse else e["gemm"],
                e["sparse24_bandwidth"] if sparse else e["bandwidth"])

    def work_ms(self, op: Op) -> float:
        """The least time one call can take, for a physical ceiling: the roofline of the kernel
        that really runs here plus the device's per-kernel floor; eager host overhead at its
        priced cost (the same code path runs it in the dense and the pruned model)."""
        if isinstance(op, Overhead):
            return self.price(op).ms_per_call
        if isinstance(op, Collective):  # tensor parallelism: pis_tui.pricing.collectives
            return collectives.pricer(self).work_ms(op)
        return self._cost(kernel_of(op, sparse_24=self.device.sparse_24), "dense", None, ideal=True)

    def _gemm_ms(self, op: Gemm) -> float:
        """A GEMM kernel: tile and wave quantization over the attainable share of peak, or its
        bytes over the attainable share of bandwidth, whichever is longer (no floor)."""
        d, e = self.device, self.eff
        bw = self.bandwidth(op.dtype)
        if quantized.mode(op, d) == "emulated" and self.engine == "eager":
            # a dequantization kernel of its own, then the dense GEMM at the activation dtype
            dense = replace(op, quant="")
            return (self._gemm_ms(dense) + quantized.dequant_bytes(op) / (bw * e["bandwidth"]) * 1e3
                    + d.launch_overhead_us * 1e-3)
        sparse = op.kind == "sparse_24" and d.sparse_24
        peak, share, bw_share = self._shares(op, sparse)
        if d.kind == "cpu":
            t_c = op.flops() / (peak * share)
            return max(t_c, op.bytes() / (bw * bw_share)) * 1e3
        # the GPU computes whole output tiles in whole waves; when the tiles cannot fill the
        # SMs, kernels split K across CTAs (split-K)
        tile_m = 64 if op.m <= 64 else 128
        tiles = math.ceil(op.m / tile_m) * math.ceil(op.n / TILE_N)
        sms = max(d.sm_count, 1)
        split = max(1, min(sms // tiles, op.k // SPLIT_K_MIN)) if tiles < sms else 1
        waves = math.ceil(tiles * split / sms)
        per_tile = 2.0 * tile_m * TILE_N * (op.k / split) / (peak / sms)
        t_c = waves * per_tile / share
        # a memory-bound GEMM also waits for its first bytes and its last wave to drain
        t_m = e["gemm_latency_us"] * 1e-6 + op.bytes() / (bw * bw_share)
        return max(t_c, t_m) * 1e3

    def _grouped_ms(self, op: GroupedGemm, ideal: bool = False) -> float:
        """The routed experts' grouped GEMM: the weights of the experts touched and the rows'
        activations over the bandwidth, or the rows' FLOPs over the peak, whichever is longer.
        Under ``fused`` (a fused-MoE kernel as vLLM and SGLang run it: each expert's rows padded
        to the kernel's BLOCK_SIZE_M) the padded rows are computed; under ``eager`` (torch's
        grouped_mm) the rows themselves.  No tile or wave model yet: the share of peak is the
        GEMM efficiency of the device."""
        rows = op.padded_rows if self.engine == "fused" else op.rows
        flops = 2.0 * rows * op.n * op.k
        peak, share, bw_share = self._shares(op)
        if ideal:
            peak, share, bw_share = self.peak(quantized.compute_dtype(op, self.device)), 1.0, 1.0
        t = max(flops / (peak * share), op.bytes() / (self.bandwidth(op.dtype) * bw_share)) * 1e3
        if not ideal and quantized.mode(op, self.device) == "emulated" and self.engine == "eager":
            t += quantized.dequant_bytes(op) / (self.bandwidth(op.dtype) * self.eff["bandwidth"]) * 1e3
        return t

    def _attention_ms(self, op: Attention) -> float:
        e = self.eff
        bw = self.bandwidth(op.dtype)
        t_c = op.flops() / (self.peak(op.dtype) * e["attention" if self.device.kind != "cpu" else "gemm"])
        return max(t_c, op.bytes() / (bw * e["bandwidth"])) * 1e3

    def kernels_of(self, op: Op, family: str = "dense", phase: Optional[str] = None, arch: str = ""):
        """The kernels the engine runs for one call of an op (None: one of its own); ``arch``: the
        architecture whose traced kernels come first (:meth:`Engine.kernels`)."""
        if isinstance(op, Overhead):
            return None
        return self.profile.kernels(family, phase, op.name, arch, self.device.kind)

    def launches(self, op: Op, family: str = "dense", phase: Optional[str] = None,
                 merged: Optional[dict] = None, arch: str = "") -> Optional[int]:
        """Kernel launches per call of ``op`` under the engine (None: host overhead,
        no kernel; 0: inside another op's kernel or a merged GEMM)."""
        if isinstance(op, Overhead):
            return None
        if isinstance((merged or {}).get(op.name), str):
            return 0
        kernels = self.kernels_of(op, family, phase, arch)
        return 1 if kernels is None else len(kernels)

    def analytical_ms(self, op: Op, family: str = "dense", phase: Optional[str] = None,
                      arch: str = "") -> float:
        """The documented model (no measurement): each kernel the engine runs for
        the op costs max(FLOPs / (peak × share), bytes / (bandwidth × share)) plus the
        device's per-kernel floor; the op's own GEMM or attention kernel by the GEMM / attention
        model, the other kernels (casts, reductions, copies, glue) by the bytes they move."""
        return self._cost(op, family, phase, ideal=False, arch=arch)

    def _cost(self, op: Op, family: str, phase: Optional[str], ideal: bool, arch: str = "") -> float:
        """analytical_ms, or (``ideal``) the least time the same kernels can take: each at its
        roofline (shares of 1) plus the per-kernel floor (the physical ceiling's work)."""
        floor = self.device.launch_overhead_us * 1e-3
        kernels = self.kernels_of(op, family, phase, arch)
        if kernels is not None and not kernels:
            return 0.0  # runs inside another op's kernel (a residual add in a fused norm)
        bw = self.bandwidth(op.dtype) * (1.0 if ideal else self.eff["bandwidth"])
        if isinstance(op, GroupedGemm):
            # one kernel on a GPU (torch's grouped_mm, a fused-MoE kernel); on the CPU
            # grouped_mm is a loop over the experts that got tokens: a floor each
            launches = op.groups if self.device.kind == "cpu" else 1.0
            return self._grouped_ms(op, ideal) + floor * launches
        if isinstance(op, (Gemm, Attention)):
            if ideal:
                core = self.roofline_ms(op) + floor
            else:
                core = (self._gemm_ms(op) if isinstance(op, Gemm) else self._attention_ms(op)) + floor
        elif kernels is None:  # one kernel moving the op's bytes
            return op.bytes() / bw * 1e3 + floor
        else:
            core = 0.0
        if kernels:
            u = execution.unit(op)
            core += sum(k.bytes(u, op.dtype) / bw * 1e3 + floor
                        for k in kernels if not (execution.is_leaf(k) and op.op_type != "elementwise"))
        return core

    # ---------------------------------------------------------------- pricing

    def price(self, op: Op, family: str = "dense", phase: Optional[str] = None,
              arch: str = "") -> PricedOp:
        """One op's time per call, its source, its relative uncertainty and its kernel launches
        per call (:meth:`launches`, the op as its own GEMM: :meth:`estimate` sets a merged
        GEMM's); :meth:`_price_op` says how."""
        p = self._price_op(op, family, phase, arch)
        return _with_kernels(p, self.launches(op, family, phase, arch=arch))

    def _price_op(self, op: Op, family: str = "dense", phase: Optional[str] = None,
                  arch: str = "", as_is: bool = False) -> PricedOp:
        """One op's time per call, its source and its relative uncertainty (the rule in
        :mod:`pis_tui.pricing.sources`).  An ``unstable`` measurement is priced no better than
        interpolated: from its stable neighbours where they reach, else at its own time,
        labelled ``unstable``.  ``family`` and ``phase`` pick the op's kernels in the
        engine.  Under the fused engine an elementwise op's measurements (the eager
        kernels the device timed) do not apply: it is priced from the fused kernels.  A
        collective (tensor parallelism) is priced by :mod:`pis_tui.pricing.collectives` (measured
        through torch.distributed, else the interconnect), one kernel under either engine."""
        if isinstance(op, Collective):
            return collectives.pricer(self).price(op)
        if getattr(op, "quant", "") or (isinstance(op, Elementwise) and op.kind == "act_quant"):
            q = self._price_quantized(op, family, phase, arch)
            if q is not None:
                return q
        if isinstance(op, Overhead):
            hit = self._exact.get(op.key())
            if hit and hit[0].status in ("ok", "unstable") and hit[0].ms and self.device.kind == "cpu":
                rec = hit[0]
                if rec.status == "unstable":  # the probe's rounds disagreed, its solve was
                    # ill-conditioned, hit its bound, or ran on a busy machine: its own
                    # (bounded) time, labelled for what it is
                    return PricedOp(op, rec.ms, "unstable",
                                    f"dispatch probe unstable: {rec.why}",
                                    uncertainty=sources.uncertainty("unstable", rec.spread, rec.solve_u),
                                    loaded=rec.loaded)
                # solved from the timed tiny clones, never timed itself: its own label
                return PricedOp(op, rec.ms, "solved",
                                uncertainty=sources.uncertainty("solved", rec.spread, rec.solve_u),
                                loaded=rec.loaded)
            why = ("CUDA-graph timing: no host overhead" if self.device.kind != "cpu"
                   else "eager framework overhead not measured on this CPU")
            return PricedOp(op, 0.0, "roofline", why)
        if isinstance(op, GroupedGemm) and (self.engine != "eager" or not op.tokens):
            why = (f"{self.engine} engine: a fused-MoE kernel (rows padded to its tile), not the "
                   "grouped_mm measured" if op.tokens else "no routing to measure it from")
            return PricedOp(op, self.analytical_ms(op, family, phase, arch), "roofline",
                            f"the experts touched (distinct-experts law), estimated: {why}",
                            sources.uncertainty("roofline"))
        if isinstance(op, GroupedGemm):
            hit = self._exact.get(op.key())
            if hit and hit[0].status == "ok" and not hit[0].estimated:
                # measured at the routing's profile (moe.measured_profile); this step's own
                # experts touched and rows by the roofline
                rec, source = hit
                scale = self._grouped_roofline(op) / self._grouped_roofline(rec.op)
                note = "" if abs(scale - 1.0) < 0.01 else (
                    f"measured at the routing's profile {op.routing} ({rec.op.groups:.1f} experts "
                    f"touched), scaled by the roofline to this step's {op.groups:.1f}")
                return PricedOp(op, rec.ms * scale, source, note,
                                sources.uncertainty(source, rec.spread), loaded=rec.loaded)
        if isinstance(op, Attention) and (op.window or op.softcap) and not as_is:
            return self._price_windowed(op, family, phase, arch)
        unsupported = isinstance(op, Gemm) and op.kind == "sparse_24" and not self.device.sparse_24
        # 2:4 with 4-bit weights: torch has no such kernel (Sparse-Marlin is a serving engine's)
        no_sparse_int4 = (isinstance(op, Gemm) and op.kind == "sparse_24" and self.engine == "eager"
                          and quantized.mode(op, self.device) == "weight_only")
        if unsupported or no_sparse_int4:
            p = self.price(kernel_of(op, sparse_24=False))
            where = (f"no 2:4 sparse kernel on {self.device.display_name}" if unsupported else
                     f"no 2:4 {op.quant} kernel in torch (eager)")
            return PricedOp(op, p.ms_per_call, "unsupported", f"{where}: runs dense ({p.source} time)",
                            p.uncertainty, p.loaded)
        if self.engine != "eager" and isinstance(op, Elementwise):
            return PricedOp(op, self.analytical_ms(op, family, phase, arch), "roofline",
                            f"{self.engine} engine: its own kernels, not the eager ones measured",
                            sources.uncertainty("roofline"))
        hit = self._exact.get(kernel_of(op).key())
        if hit and hit[0].status == "ok" and hit[0].estimated:
            rec = hit[0]
            return PricedOp(op, rec.ms, "estimated", f"not a measurement of its own kernel: {rec.estimated}",
                            sources.uncertainty("estimated", rec.spread), rec.loaded)
        if hit and hit[0].status == "ok":
            rec, source = hit
            note = (f"timed without a CUDA graph ({rec.graph_capture}): eager launches included"
                    if rec.graph_capture else "")
            if rec.kernel:
                note = "; ".join(x for x in (f"kernel {rec.kernel}", note) if x)
            return PricedOp(op, rec.ms, source, note, sources.uncertainty(source, rec.spread),
                            loaded=rec.loaded)
        if hit and hit[0].status == "unsupported" and isinstance(op, Gemm) and op.kind == "sparse_24":
            p = self.price(kernel_of(op, sparse_24=False))
            return PricedOp(op, p.ms_per_call, "unsupported", "2:4 kernel unavailable: runs dense",
                            p.uncertainty, p.loaded)
        ms = self._interpolate(op)
        if hit and hit[0].status == "unstable":
            rec = hit[0]
            why = f"its measurement ({rec.ms:.4g} ms) is unstable: {rec.why or 'see the cache'}"
            if ms is not None:
                return PricedOp(op, ms, "interpolated", why + "; priced from its stable neighbours",
                                sources.uncertainty("interpolated"))
            return PricedOp(op, rec.ms, "unstable", why, sources.uncertainty("unstable", rec.spread),
                            rec.loaded)
        if ms is not None:
            return PricedOp(op, ms, "interpolated", self._quant_note(op),
                            uncertainty=sources.uncertainty("interpolated"))
        return PricedOp(op, self.analytical_ms(op, family, phase, arch), "roofline",
                        self._quant_note(op), uncertainty=sources.uncertainty("roofline"))

    def _quant_note(self, op: Op) -> str:
        """The kernel an unmeasured quantized GEMM is priced as (the engine's assumption)."""
        key = quantized.kernel_key(op, self.device)
        if not key:
            return ""
        k = self.profile.quantized.get(key) or {}
        return f"{op.quant}: {k.get('kernel', 'a ' + key + ' kernel')} assumed ({self.engine} engine)"

    def _price_quantized(self, op: Op, family: str, phase: Optional[str], arch: str) -> Optional[PricedOp]:
        """What quantization changes in pricing before the usual order of trust: fp8 on a
        device without fp8 tensor cores runs emulated (its activation quantization not at
        all), and a quantized grouped GEMM is never measured (no torch kernel groups int4
        experts; fp8's grouped kernel is not timed yet): the analytical model, its kernel
        named.  None: price it as any op (a quantized GEMM's measurement keys on its kernel)."""
        native = quantized.fp8_native(self.device)
        if isinstance(op, Elementwise):  # act_quant
            if native:
                return None
            return PricedOp(op, 0.0, "emulated",
                            f"not run: fp8 is emulated as weight-only on {self.device.display_name} "
                            "(no fp8 tensor cores)", 0.0)
        m = quantized.mode(op, self.device)
        if m == "emulated":
            k = self.profile.quantized.get("fp8_emulated") or {}
            return PricedOp(op, self.analytical_ms(op, family, phase, arch), "emulated",
                            f"{op.quant} on {self.device.display_name} (no fp8 tensor cores): "
                            f"{k.get('kernel', 'dequantized to ' + op.dtype)} ({self.engine} engine)",
                            sources.uncertainty("emulated"))
        if isinstance(op, GroupedGemm):
            return PricedOp(op, self.analytical_ms(op, family, phase, arch), "roofline",
                            "the experts touched (distinct-experts law), estimated: "
                            + self._quant_note(op), sources.uncertainty("roofline"))
        return None

    def _price_windowed(self, op: Attention, family: str, phase: Optional[str], arch: str) -> PricedOp:
        """Sliding-window or soft-capped attention as the engine runs it.  ``fused``
        (FlashAttention with a window and soft-capping): only the window's pairs, no extra
        pass.  ``eager`` (transformers): in prefill SDPA applies a sliding window as a mask, so
        every causal pair is computed; in decode the sliding layer's cache holds only the
        window, so a step reads and computes the window's keys; a soft-capped model runs transformers' eager attention, which
        materialises the scores: QKᵀ written, then
        read by PV: :data:`SCORE_KERNELS` kernels between the two GEMMs, each reading and writing
        B·H·q·kv elements, plus QKᵀ's write and PV's read — :data:`SCORE_PASSES` passes over the
        score matrix, priced by bandwidth (and a launch floor each) on top of the attention
        kernel.  The base kernel
        keeps its own source; the passes are roofline, so the op is labelled no better."""
        eager = self.engine == "eager"
        masked = eager and op.q_len > 1  # eager prefill: the window is a mask over all pairs
        base = replace(op, window=0 if masked else op.window, softcap=False)
        p = self._price_op(base, family, phase, arch, as_is=True)
        notes = [p.note] if p.note else []
        extra = 0.0
        if op.window and masked:
            notes.append(f"eager SDPA applies the {op.window}-key window as a mask: every causal "
                         "pair is computed")
        if op.softcap and eager:
            scores = op.batch * op.q_heads * op.q_len * op.kv_len
            bw = self.bandwidth(op.dtype) * self.eff["bandwidth"]
            extra = (SCORE_PASSES * scores * dtype_bytes(op.dtype) / bw * 1e3
                     + SCORE_KERNELS * self.device.launch_overhead_us * 1e-3)
            notes.append(f"soft-capped logits: eager attention materialises the scores "
                         f"({SCORE_KERNELS} kernels, {SCORE_PASSES} passes, priced by bandwidth)")
        source = p.source if not extra else sources.weakest({p.source, "roofline"})
        unc = p.uncertainty if not extra else max(p.uncertainty, sources.uncertainty("roofline"))
        return PricedOp(op, p.ms_per_call + extra, source, "; ".join(notes), unc, p.loaded)

    def _merged(self, ops) -> dict:
        """{op name: the GEMM that computes it}: under a profile that merges GEMMs (q/k/v, gate/up)
        the head op is priced as one GEMM of their summed N, the others at 0."""
        out: dict = {}
        by_name = {o.name: o for o in ops if isinstance(o, Gemm)}
        for head, parts in self.profile.merged_gemms.items():
            got = [by_name.get(n) for n in parts]
            if any(g is None for g in got):
                continue
            h = got[0]
            if all((g.m, g.k, g.count, g.dtype, g.kind, g.density, g.quant)
                   == (h.m, h.k, h.count, h.dtype, h.kind, h.density, h.quant)
                   for g in got):
                out[head] = replace(h, n=sum(g.n for g in got), name=head)
                for n in parts[1:]:
                    out[n] = head
        return out

    def estimate(self, phase_ops) -> PhaseEstimate:
        fam, phase = phase_ops.strategy.family, phase_ops.phase
        arch = getattr(phase_ops, "arch", "")
        merged = self._merged(phase_ops.ops) if self.profile.merged_gemms else {}
        heads = {n: self.price(m, fam, phase, arch) for n, m in merged.items() if not isinstance(m, str)}
        price, launches = self.price, self.launches
        priced = []
        latency = flops = 0.0
        counts: dict[str, dict] = {}
        core_sources, all_sources = set(), set()
        unmeasured_overhead = False
        for o in phase_ops.ops:
            m = merged.get(o.name)
            if isinstance(m, str):  # computed by the head's merged GEMM
                h = heads[m]
                p = PricedOp(o, 0.0, h.source, f"computed in the merged {m} GEMM", 0.0, h.loaded, 0)
            elif m is not None:
                h = heads[o.name]
                p = PricedOp(o, h.ms_per_call, h.source,
                             "; ".join(x for x in (f"one GEMM for "
                                                   f"{', '.join(self.profile.merged_gemms[o.name])}",
                                                   h.note) if x),
                             h.uncertainty, h.loaded, launches(o, fam, phase, merged, arch))
            else:  # price() counted its launches (a merged GEMM's parts are the cases above)
                p = price(o, fam, phase, arch)
            priced.append(p)
            total = p.ms_per_call * o.count
            latency += total
            c = counts.get(p.source)
            if c is None:
                c = counts[p.source] = {"ops": 0, "ms": 0.0}
            c["ops"] += 1
            c["ms"] += total
            all_sources.add(p.source)
            if isinstance(o, Overhead) and p.ms_per_call == 0.0:
                unmeasured_overhead = unmeasured_overhead or o.count > 0
            else:
                core_sources.add(p.source)
            flops += o.effective_flops() * o.count
        weakest = sources.weakest(core_sources or all_sources)
        s = phase_ops.strategy
        notes = tuple(phase_ops.notes)
        if self.device.kind == "cpu" and unmeasured_overhead:
            notes += ("eager framework overhead not measured on this CPU (pis-tui validate "
                      "measures it): the estimate omits it",)
        return PhaseEstimate(s.family, s.sparsity, phase_ops.achieved_sparsity, phase_ops.phase,
                             tuple(priced), latency, flops, weakest, counts, notes)

    # ---------------------------------------------------------------- interpolation

    def _interpolate(self, op: Op) -> Optional[float]:
        cands = self._by_class.get(_class_of(op))
        if not cands:
            return None
        roof = self.roofline_ms(op)
        if isinstance(op, GroupedGemm):
            return self._grouped_interp(op, cands)
        if isinstance(op, Gemm):
            u = self._gemm_utilization(op, cands)
        elif isinstance(op, Attention):
            u = _nearest_utilization(op, cands, self.roofline_ms, _attn_distance)
        else:
            return _elementwise_interp(op, cands, roof)
        if u is None or u <= 0:
            return None
        return roof / min(u, 1.0)

    def _gemm_utilization(self, op: Gemm, cands: list[MeasuredRecord]) -> Optional[float]:
        cls = _class_of(op)
        idx = self._gemm_index.get(cls)
        if idx is None:
            idx = {}
            for r in cands:
                idx.setdefault((r.op.n, r.op.k), []).append(
                    (math.log(r.op.m), self.roofline_ms(r.op) / r.ms))
            for v in idx.values():
                v.sort()
            self._gemm_index[cls] = idx
        lm = math.log(op.m)

        def reaches(pts) -> bool:
            return pts[0][0] - M_REACH <= lm <= pts[-1][0] + M_REACH

        if (op.n, op.k) in idx:
            pts = idx[(op.n, op.k)]
            return _interp_sorted(pts, lm) if reaches(pts) else None
        # nearest (N, K) pairs in log space, inverse-distance weighted, each interpolated at M
        ln, lk = math.log(op.n), math.log(op.k)
        scored = sorted((d, nk) for d, nk in (
            (math.hypot(math.log(n) - ln, math.log(k) - lk), (n, k)) for n, k in idx)
            if d <= NK_REACH and reaches(idx[nk]))
        near = scored[:4]
        if not near:
            return None
        wsum = usum = 0.0
        for dist, nk in near:
            w = 1.0 / (dist * dist)
            wsum += w
            usum += w * _interp_sorted(idx[nk], lm)
        return usum / wsum


    def _grouped_roofline(self, op: GroupedGemm) -> float:
        """A grouped GEMM's hardware floor as grouped_mm runs it (its rows, no tile padding)."""
        flops = 2.0 * op.rows * op.n * op.k
        peak = self.peak(quantized.compute_dtype(op, self.device))
        return max(flops / peak, op.bytes() / self.bandwidth(op.dtype)) * 1e3

    def _grouped_interp(self, op: GroupedGemm, cands: list[MeasuredRecord]) -> Optional[float]:
        """Neighbours of a grouped GEMM: the same experts, top-k, routing, N and K (the class) at
        other token counts T.  Its share of the roofline (which follows the experts the step
        touches, the distinct-experts law) is interpolated linearly in log T between the
        nearest measured T, within the GEMMs' reach (``M_REACH``); none: None."""
        pts = sorted((math.log(r.op.tokens), self._grouped_roofline(r.op) / r.ms)
                     for r in cands if r.op.tokens)
        if not pts or not op.tokens:
            return None
        lt = math.log(op.tokens)
        if not pts[0][0] - M_REACH <= lt <= pts[-1][0] + M_REACH:
            return None
        u = _interp_sorted(pts, lt)
        return self._grouped_roofline(op) / min(u, 1.0) if u > 0 else None


def _with_kernels(p: PricedOp, kernels: Optional[int]) -> PricedOp:
    """``p`` with its kernel launches (dataclasses.replace, without its cost: a plan prices
    tens of thousands)."""
    if p.kernels == kernels:
        return p
    return PricedOp(p.op, p.ms_per_call, p.source, p.note, p.uncertainty, p.loaded, kernels)


def _class_of(op: Op) -> tuple:
    if isinstance(op, GroupedGemm):
        return ("ggemm", op.kind, op.dtype, op.experts, op.top_k, op.k_dist, op.routing, op.n, op.k,
                op.quant)
    if isinstance(op, Gemm):
        kernel = "sparse_24" if op.kind == "sparse_24" else "dense"
        return ("gemm", kernel, op.dtype, op.quant)
    if isinstance(op, Attention):
        return ("attn", op.dtype, op.q_len == 1, op.block_density < 1.0)
    return ("ew", op.kind, op.dtype)


def _interp_sorted(pts: list[tuple[float, float]], x: float) -> float:
    """Linear interpolation over sorted (x, y) points; flat beyond the ends."""
    xs = [p[0] for p in pts]
    i = bisect.bisect_left(xs, x)
    if i <= 0:
        return pts[0][1]
    if i >= len(pts):
        return pts[-1][1]
    (x0, y0), (x1, y1) = pts[i - 1], pts[i]
    if x1 == x0:
        return y1
    t = (x - x0) / (x1 - x0)
    return y0 + t * (y1 - y0)


def _attn_distance(a: Attention, b: Attention) -> float:
    return (abs(math.log(a.batch * a.q_heads) - math.log(b.batch * b.q_heads))
            + abs(math.log(a.q_len) - math.log(b.q_len))
            + abs(math.log(a.kv_len) - math.log(b.kv_len))
            + abs(math.log(a.head_dim) - math.log(b.head_dim))
            + abs(math.log(a.q_heads / a.kv_heads) - math.log(b.q_heads / b.kv_heads)))


def _nearest_utilization(op, cands, roofline, dist, reach: float = ATTN_REACH) -> Optional[float]:
    best = min(cands, key=lambda r: dist(op, r.op))
    if dist(op, best.op) > reach:
        return None
    return roofline(best.op) / best.ms


def _elementwise_interp(op: Elementwise, cands: list[MeasuredRecord], roof: float) -> Optional[float]:
    """Memory-bound ops: time is piecewise-linear in bytes moved between measured sizes.  Past
    the measured range it reaches at most ``EW_REACH``× (like GEMMs' M reach; beyond, None:
    the analytical model prices it): below the smallest size it keeps that size's time (the
    fixed cost dominates); above the largest it grows along the slope of the two largest
    sizes (with one size: in proportion to bytes, an upper bound, since that time includes
    the fixed cost)."""
    pts = sorted((r.op.bytes(), r.ms) for r in cands)
    b = op.bytes()
    lo, hi = pts[0][0], pts[-1][0]
    if b < lo / EW_REACH or b > hi * EW_REACH:
        return None
    if b <= lo:
        return max(roof, pts[0][1])
    if b >= hi:
        if len(pts) >= 2 and hi > pts[-2][0]:
            slope = max(0.0, (pts[-1][1] - pts[-2][1]) / (hi - pts[-2][0]))
            return max(roof, pts[-1][1] + slope * (b - hi))
        return max(roof, pts[-1][1] * b / hi)
    return max(roof, _interp_sorted(pts, b))


def roofline_ms(op: Op, device: DeviceProfile) -> float:
    """Convenience for callers that only need the floor (e.g. ordering a measurement plan)."""
    return Estimator(device).roofline_ms(op)
