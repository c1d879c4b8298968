"""The timing engine: every op kind computes what a reference computes, and is timed with the
right method, keys and statuses.  CPU tests use tiny shapes; CUDA ones are marked gpu."""

import math

import pytest

torch = pytest.importorskip("torch")

from pis_tui.device import local as hardware
from pis_tui import timing  # noqa: E402
from pis_tui.pricing.measured_table import software_versions  # noqa: E402
from pis_tui.model.ops import ELEMENTWISE_KINDS, Attention, Elementwise, Gemm  # noqa: E402


@pytest.fixture(scope="module")
def ctx():
    c = timing.open_device("local")
    yield c
    c.free()


def test_open_device_matches_hardware(ctx):
    assert ctx.fingerprint == hardware.local_device().fingerprint
    assert ctx.software == software_versions()
    if not ctx.is_cuda:
        assert ctx.threads == torch.get_num_threads() == hardware.cpu_threads()
        assert ctx.method == "cpu-wall" and "fp32" in ctx.dtypes and "bf16" in ctx.dtypes
        assert ctx.cache_mb == hardware._llc_mb()


def test_only_local_device_can_be_opened():
    from pis_tui.errors import UserError

    with pytest.raises(UserError, match="only measure the local device"):
        timing.open_device("h200-sxm")


GEMMS = [
    Gemm("q", 33, 96, 64, dtype="fp32"),
    Gemm("q", 16, 128, 64, dtype="bf16"),
    Gemm("u", 20, 96, 64, dtype="fp32", kind="unstructured", density=0.5),
    # a low-rank pair is two GEMMs through the rank
    Gemm("q.A", 24, 16, 64, dtype="fp32"),
    Gemm("q.B", 24, 96, 16, dtype="fp32"),
    Gemm("router", 24, 1, 64, dtype="fp32"),
]

ATTENTIONS = [
    Attention("prefill-gqa", 2, 4, 2, 40, 40, 16, dtype="fp32"),
    Attention("prefill-mha", 1, 4, 4, 24, 24, 16, dtype="fp32"),
    Attention("chunked", 1, 4, 2, 8, 40, 16, dtype="fp32"),
    Attention("decode-gqa", 3, 8, 2, 1, 70, 16, dtype="fp32"),
    Attention("decode-bf16", 2, 4, 1, 1, 64, 32, dtype="bf16"),
]

EWS = [Elementwise(k, k, 37, 128, dtype="fp32",
                   extra={"embedding": 500, "topk": 5, "rotary": 32, "block_pool": 16}.get(k, 0))
       for k in ELEMENTWISE_KINDS] + [Elementwise("rms-bf16", "rmsnorm", 9, 64, dtype="bf16")]


@pytest.mark.parametrize("op", GEMMS + ATTENTIONS + EWS, ids=lambda o: o.key())
def test_timed_op_matches_reference(ctx, op):
    err, tol = timing.verify_op(op, ctx)
    assert err < tol, f"{op.key()}: relative error {err:.2e} ≥ {tol:.1e}"


def test_reference_check_can_fail(ctx, monkeypatch):
    """verify_op really compares: a wrong kernel is caught."""
    op = Gemm("q", 8, 32, 16, dtype="fp32")
    real = timing.gemm.gemm_case

    def wrong(*a, **k):
        c = real(*a, **k)
        f = c.fn
        c.fn = lambda i: f(i) * 1.01
        return c
    monkeypatch.setattr(timing.gemm, "gemm_case", wrong)
    err, tol = timing.verify_op(op, ctx)
    assert err > tol


def test_measure_records_keys_method_and_stats(ctx):
    op = Gemm("q", 16, 128, 64, count=24.0, dtype="fp32")
    m = timing.measure_op(op, ctx, repeats=4)
    assert m.status == "ok", m.note
    assert m.key == op.key() and m.op["count"] == 24.0 and m.op["op_type"] == "gemm"
    assert m.ms > 0 and m.eager_ms > 0 and m.spread >= 0 and 2 <= m.repeats <= 4
    assert m.fingerprint == ctx.fingerprint and m.software == ctx.software
    assert m.method == ctx.method and m.method_version == ctx.method_version
    assert m.measured_at
    # the weight (32 KiB) is rotated among enough copies to exceed twice the cache
    copies = timing.case.copies_for(ctx, 128 * 64 * 4, False)
    assert copies * 128 * 64 * 4 > 2 * ctx.cache_mb * 2**20
    assert f"{copies} rotated copies" in m.note


def test_weights_past_the_cache_are_not_copied(ctx):
    assert timing.case.copies_for(ctx, 3 * ctx.cache_mb * 2**20, False) == 1
    views = timing.case.views(ctx, "fp32", (64, 32), 5)
    assert len(views) == 5
    ptrs = {v.data_ptr() for v in views}
    assert len(ptrs) == 5  # distinct memory: each call streams another copy


def test_sparse_24_on_cpu_is_unsupported(ctx):
    if ctx.is_cuda:
        pytest.skip("CPU behaviour")
    m = timing.measure_op(Gemm("q", 16, 128, 64, dtype="fp32", kind="sparse_24", density=0.5), ctx)
    assert m.status == "unsupported" and m.ms is None
    assert "2:4" in m.note
    with pytest.raises(timing.Unsupported):
        timing.verify_op(Gemm("q", 16, 128, 64, dtype="bf16", kind="sparse_24", density=0.5), ctx)


def test_unmeasurable_dtype_is_unsupported(ctx):
    m = timing.measure_op(Gemm("q", 4, 32, 32, dtype="fp8"), ctx)
    assert m.status == "unsupported" and m.ms is None


def test_errors_are_recorded_not_raised(ctx):
    m = timing.measure_op(Elementwise("r", "rotary", 4, 100, dtype="fp32", extra=64), ctx)
    assert m.status == "error" and "head_dim" in m.note


def test_oom_is_marked(ctx, monkeypatch):
    def boom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80 GiB")
    monkeypatch.setattr(timing.measure, "build_case", boom)
    m = timing.measure_op(Gemm("big", 65536, 65536, 65536, dtype="fp32"), ctx)
    assert m.status == "oom" and m.ms is None and "out of memory" in m.note


def test_block_sparse_attention_uses_compiled_flex(ctx):
    op = Attention("bs", 1, 4, 2, 256, 256, 16, block_density=0.5, block_size=64, dtype="fp32")
    err, tol = timing.verify_op(op, ctx)
    assert err < tol
    m = timing.measure_op(op, ctx, repeats=2)
    assert m.status == "ok", m.note
    assert "flex_attention block-sparse" in m.note and "flex-compile failed" not in m.note
    # the share of causal blocks kept is what the op asks for (diagonal blocks always kept)
    table, achieved = timing.attention._block_table(op, "cpu")
    assert achieved == pytest.approx(0.5, abs=0.11)
    assert bool(table.diagonal().all())


def test_flex_compile_failure_falls_back_to_labelled_estimate(ctx, monkeypatch):
    def no_compile(*a, **k):
        def f(*a, **k):
            raise RuntimeError("inductor unavailable")
        return f
    monkeypatch.setattr(timing.attention, "_FLEX", {})
    monkeypatch.setattr(torch, "compile", no_compile)
    op = Attention("bs", 1, 2, 1, 128, 128, 16, block_density=0.5, block_size=64, dtype="fp32")
    m = timing.measure_op(op, ctx, repeats=2)
    assert m.status == "ok" and m.ms > 0
    assert m.note.startswith("flex-compile failed: estimate")


def test_device_peaks_are_measured(ctx):
    p = timing.measure_device_peaks(ctx, "fp32")
    assert p["peak_tflops"] > 0 and p["bandwidth_gbs"] > 0
    assert math.isfinite(p["peak_tflops"]) and p["matmul_n"] >= 1024


# ---------------------------------------------------------------- CUDA only


@pytest.mark.gpu
def test_cuda_graph_timing_and_sparse_24(ctx):
    assert ctx.is_cuda and ctx.method == "cuda-graph"
    op = Gemm("q", 16, 4096, 4096, dtype="bf16")
    m = timing.measure_op(op, ctx)
    assert m.status == "ok" and m.ms > 0 and m.eager_ms > 0
    assert "graph capture failed" not in m.note
    assert m.ms < m.eager_ms  # graph replay carries no per-call launch overhead
    err, tol = timing.verify_op(Gemm("q", 64, 256, 256, dtype="bf16"), ctx)
    assert err < tol
    if ctx.sparse_24:
        sp = Gemm("q", 256, 4096, 4096, dtype="bf16", kind="sparse_24", density=0.5)
        err, tol = timing.verify_op(Gemm("q", 64, 256, 256, dtype="bf16", kind="sparse_24",
                                         density=0.5), ctx)
        assert err < tol
        assert timing.measure_op(sp, ctx).status == "ok"


@pytest.mark.gpu
@pytest.mark.parametrize("op", ATTENTIONS + EWS, ids=lambda o: o.key())
def test_cuda_ops_match_reference_in_bf16(ctx, op):
    from dataclasses import replace

    err, tol = timing.verify_op(replace(op, dtype="bf16"), ctx)
    assert err < tol
