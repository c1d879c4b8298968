"""On a CUDA GPU: each op kind timed through graph replay and eager with weights and KV caches
rotated past L2, checked against float64 references, and against two bounds that can fail: a
graph-replayed call runs faster than an eager one (no launch overhead), and never faster than
the roofline floor of the device's own measured peaks (a time below it would mean the
"streamed" weights came from L2).  Also 2:4 through torch's semi-structured tensors (or
``unsupported``), the device decision against NVML, and a sticky CUDA error in a subprocess."""

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from pis_tui.device import local as hardware
from pis_tui import timing  # noqa: E402
from pis_tui.model.ops import ELEMENTWISE_KINDS, Attention, Elementwise, Gemm  # noqa: E402

pytestmark = pytest.mark.gpu
ROOT = Path(__file__).resolve().parents[2]
#: a measured time may beat the floor built from the measured copy bandwidth by this much (a
#: GEMM's weight stream can run a little faster than a copy); an L2-resident one beats it ~2×
FLOOR_SLACK = 0.8


@pytest.fixture(scope="module")
def ctx(device_ctx):
    return device_ctx


@pytest.fixture(scope="module")
def peaks(ctx):
    return timing.measure_device_peaks(ctx, "bf16")


def floor_ms(op, peaks) -> float:
    return max(op.flops() / (peaks["peak_tflops"] * 1e12),
               op.bytes() / (peaks["bandwidth_gbs"] * 1e9)) * 1e3


def test_the_device_is_the_gpu_torch_sees_and_nvml_names_the_same(ctx):
    assert ctx.is_cuda and ctx.method == "cuda-graph"
    assert ctx.fingerprint == hardware.local_device().fingerprint
    named = hardware._named_gpu()  # the estimate path's name (NVML or nvidia-smi, no torch)
    assert named is not None and hardware.gpu_fingerprint(named.name) == ctx.fingerprint
    assert ctx.capability == "{}.{}".format(*torch.cuda.get_device_capability())
    assert ctx.clocks.get("clocks.sm", 0) > 0 and ctx.clocks["source"] in ("nvml", "nvidia-smi")


def test_peaks_are_plausible(peaks):
    assert 10 < peaks["peak_tflops"] < 5000 and 200 < peaks["bandwidth_gbs"] < 20000


def test_streamed_gemm_replays_faster_than_eager_and_not_faster_than_the_floor(ctx, peaks):
    op = Gemm("q", 16, 4096, 4096, dtype="bf16")  # 32 MiB of weights: rotated past L2
    m = timing.measure_op(op, ctx)
    assert m.status == "ok", m.note
    assert "graph capture failed" not in m.note and "rotated copies" in m.note
    assert m.ms < m.eager_ms, (m.ms, m.eager_ms)
    assert m.ms >= FLOOR_SLACK * floor_ms(op, peaks), (m.ms, floor_ms(op, peaks), m.note)


def test_compute_bound_gemm_is_near_the_measured_peak(ctx, peaks):
    op = Gemm("up", 4096, 14336, 4096, dtype="bf16")
    m = timing.measure_op(op, ctx)
    assert m.status == "ok", m.note
    f = floor_ms(op, peaks)
    assert 0.9 * f <= m.ms <= 2.0 * f, (m.ms, f)
    assert m.ms <= m.eager_ms * 1.05


def test_gemm_matches_reference(ctx):
    err, tol = timing.verify_op(Gemm("q", 64, 256, 512, dtype="bf16"), ctx)
    assert err < tol


@pytest.mark.parametrize("op", [
    Attention("prefill", 1, 32, 8, 1024, 1024, 128, dtype="bf16"),
    Attention("decode", 16, 32, 8, 1, 1024, 128, dtype="bf16"),
], ids=lambda o: o.name)
def test_sdpa_attention(ctx, peaks, op):
    err, tol = timing.verify_op(replace(op, batch=1, kv_len=256, q_len=min(op.q_len, 256)), ctx)
    assert err < tol
    m = timing.measure_op(op, ctx)
    assert m.status == "ok" and "graph capture failed" not in m.note, m.note
    assert m.ms < m.eager_ms and m.ms >= FLOOR_SLACK * floor_ms(op, peaks), (m.ms, m.eager_ms, m.note)
    if op.q_len == 1:
        assert "rotated copies" in m.note  # the KV cache streams from memory


@pytest.mark.parametrize("kind", ELEMENTWISE_KINDS)
def test_elementwise_kinds(ctx, kind):
    extra = {"embedding": 128256, "topk": 8, "rotary": 128, "block_pool": 64, "gather": 0,
             "kv_write": 2048}.get(kind, 0)
    small = Elementwise(kind, kind, 37, 1024, dtype="bf16", extra=min(extra, 4096) if kind == "embedding" else extra)
    err, tol = timing.verify_op(small, ctx)
    assert err < tol, (kind, err, tol)
    m = timing.measure_op(Elementwise(kind, kind, 4096, 4096, dtype="bf16", extra=extra), ctx)
    assert m.status == "ok" and "graph capture failed" not in m.note, m.note
    assert m.ms < m.eager_ms, (kind, m.ms, m.eager_ms)


def test_semi_structured_24(ctx):
    op = Gemm("up", 4096, 14336, 4096, dtype="bf16", kind="sparse_24", density=0.5)
    m = timing.measure_op(op, ctx)
    if not ctx.sparse_24:
        assert m.status == "unsupported" and m.note, m.note
        return
    err, tol = timing.verify_op(Gemm("q", 64, 256, 256, dtype="bf16", kind="sparse_24", density=0.5), ctx)
    assert err < tol
    assert m.status == "ok" and "2:4 semi-structured sparse" in m.note, m.note
    dense = timing.measure_op(replace(op, kind="dense", density=1.0), ctx)
    # 2:4 halves the weight and the MACs: at this size it must not be much slower than dense
    assert m.ms < 1.2 * dense.ms, (m.ms, dense.ms)


def test_a_sticky_cuda_error_stops_a_profile_in_its_process():
    code = """
import torch
from pis_tui import profiling, timing
from pis_tui.commands._store import MemoryStore
from pis_tui.errors import MeasureError
from pis_tui.model.ops import Gemm
ctx = timing.open_device("local")
real = timing.measure.build_case
def build(op, c, check=False, **kw):
    if op.n == 96:  # a device-side assert: poisons this process's CUDA context
        torch.zeros(4, device="cuda")[torch.tensor([10], device="cuda")].sum().item()
    return real(op, c, check, **kw)
timing.measure.build_case = build
store = MemoryStore()
ops = [Gemm("a", 8, 64, 32, dtype="bf16"), Gemm("b", 8, 96, 32, dtype="bf16"), Gemm("c", 8, 128, 32, dtype="bf16")]
try:
    profiling.run_profile(ops, ctx, store, calibrate=False, repeats=2)
    print("NOT RAISED")
except MeasureError as e:
    print("RAISED", e)
print("STORED", sorted(m.status for m in store.get_measurements(ctx.fingerprint)))
"""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env=env, cwd=str(ROOT))
    assert "RAISED the GPU hit an unrecoverable error" in p.stdout, p.stdout + p.stderr[-2000:]
    assert "STORED ['error', 'ok']" in p.stdout, p.stdout


def _moe_op(tokens: int):
    """Qwen3-30B-A3B's experts' gate+up (E 128, k 8, [2·768, 2048] each) at ``tokens`` tokens,
    balanced routing, bf16: 805 MB of experts, far past L2."""
    from pis_tui.model import moe
    from pis_tui.model.ops import GroupedGemm

    r = moe.routing("balanced", 128)
    st = moe.mean_step(tokens, 8, r)
    return GroupedGemm("experts_gate_up", 128, st.distinct, st.routed_rows, st.padded_rows,
                       1536, 2048, 1.0, "bf16", top_k=8, tokens=tokens, routing=r.id,
                       shares=r.shares)


@pytest.mark.parametrize("tokens", [1, 16, 256])
def test_grouped_gemm_replays_in_a_graph_matches_its_reference_and_respects_the_floor(ctx, peaks, tokens):
    """grouped_mm on SM80+: offsets on the device, every drawn step replayed in one CUDA graph
    (no host sync: no graph_capture condition), the float64 loop agrees, and the time is not
    below the floor of the experts it touched (their weights streamed from memory)."""
    op = _moe_op(tokens)
    err, tol = timing.verify_op(op, ctx)
    assert err < tol
    m = timing.measure_op(op, ctx)
    assert m.status == "ok", m.note
    if torch.cuda.get_device_capability() >= (8, 0):
        assert "graph_capture" not in m.conditions, m.note
        assert "grouped_mm over" in m.note
    assert m.ms >= FLOOR_SLACK * floor_ms(op, peaks), (m.ms, floor_ms(op, peaks), m.note)
