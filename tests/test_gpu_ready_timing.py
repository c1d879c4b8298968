"""The CUDA paths' logic that needs no GPU, checked on the CPU: FlexAttention tile sizes per
compute capability, random weight pools, the out-of-memory retry, a sticky CUDA error
stopping a profile, and the in-memory store used where duckdb is missing."""

import itertools
import time

import pytest

torch = pytest.importorskip("torch")

from pis_tui import profiling, timing  # noqa: E402
from pis_tui.errors import MeasureError  # noqa: E402
from pis_tui.model.ops import Attention, Gemm  # noqa: E402
from pis_tui.timing.attention import _smem_kib, flex_kernel_options  # noqa: E402


@pytest.fixture
def ctx(device_ctx, monkeypatch):
    """The local device with a 1 MB "cache": small pools, few copies (these tests check logic,
    and a pool past this machine's 300 MB last-level cache takes seconds to fill)."""
    monkeypatch.setattr(device_ctx, "cache_mb", 1.0)
    device_ctx.free()
    yield device_ctx
    device_ctx.free()


CAPS = ["7.0", "7.5", "8.0", "8.6", "8.9", "9.0", "10.0", "12.0"]


@pytest.mark.parametrize("cap,dtype,hd", list(itertools.product(CAPS, ["bf16", "fp16", "fp32"],
                                                                  [64, 96, 128, 256])))
def test_flex_tiles_divide_the_blocks_and_fit_shared_memory(cap, dtype, hd):
    for q_len, group in ((1024, 4), (1, 4), (1, 7), (1, 1), (64, 8)):
        o = flex_kernel_options(cap, dtype, hd, 64, q_len, group)
        # inductor refuses BLOCK_M/BLOCK_N that do not divide the mask's 64-token blocks
        assert 64 % o["BLOCK_M"] == 0 and 64 % o["BLOCK_N"] == 0, o
        assert o["BLOCK_M"] >= 16 and o["BLOCK_N"] >= 16 and o["num_stages"] >= 1
        elem = 4 if dtype == "fp32" else 2
        smem = (o["BLOCK_M"] + o["num_stages"] * 2 * o["BLOCK_N"]) * hd * elem
        major, minor = (int(x) for x in cap.split("."))
        assert smem <= _smem_kib((major, minor)) * 1024, (cap, dtype, hd, o)


def test_flex_tiles_on_hopper_are_what_the_issue_asks():
    # sm_90 bf16 head_dim 128: inductor's default BLOCK_M is 128, which 64-token blocks refuse
    o = flex_kernel_options("9.0", "bf16", 128)
    assert o == {"BLOCK_M": 64, "BLOCK_N": 64, "num_stages": 3, "num_warps": 4}
    # a decode query: flex decoding's rows (q_len × GQA group, at least 16)
    assert flex_kernel_options((9, 0), "bf16", 128, 64, q_len=1, gqa_group=4)["BLOCK_M"] == 16
    assert flex_kernel_options((9, 0), "bf16", 128, 64, q_len=1, gqa_group=32)["BLOCK_M"] == 32
    # 32-token blocks: tiles of 32
    assert flex_kernel_options("9.0", "bf16", 128, 32)["BLOCK_M"] == 32
    # less shared memory (sm_89): a shallower pipeline, same tiles
    o = flex_kernel_options("8.9", "bf16", 128)
    assert o["BLOCK_M"] == 64 and o["num_stages"] == 2
    assert flex_kernel_options(None, "bf16", 128) == {}  # the CPU kernel has no such tiles


def test_cpu_flex_is_compiled_without_gpu_tiles(ctx):
    op = Attention("bs", 1, 4, 2, 128, 128, 16, block_density=0.5, block_size=64, dtype="fp32")
    case = timing.build_case(op, ctx)
    assert "tiles" not in case.note and case.fallback is not None


def test_large_weights_are_random_not_constant(ctx, monkeypatch):
    from pis_tui.timing import case as case_mod

    monkeypatch.setattr(case_mod, "pool_elems", lambda c, d: 1 << 12)  # force the fresh-tensor path
    w = case_mod.views(ctx, "fp32", (300, 1000), 1)[0]
    assert w.shape == (300, 1000)
    assert w.std().item() > 0.5 and w.min().item() < -0.9 and w.max().item() > 0.9
    row = w[0]
    assert row.unique().numel() > 900  # random within a row, not a constant or a short period
    assert abs(w.mean().item()) < 0.05
    sparse = case_mod.views(ctx, "fp32", (300, 1000), 1, density=0.25)[0]
    assert (sparse == 0).float().mean().item() == pytest.approx(0.75, abs=0.05)
    # filling a large tensor is a memory-speed copy on the CPU, not an RNG pass
    big = torch.empty(64 << 20)
    t = time.perf_counter()
    case_mod.fill_random(big, seed=3)
    assert time.perf_counter() - t < 2.0 and big.std().item() > 0.5


def test_an_out_of_memory_is_retried_once_with_fewer_copies(ctx, monkeypatch):
    real = timing.measure.build_case
    calls = []

    def build(op, c, check=False, **kw):
        calls.append(c.max_copies)
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(op, c, check, **kw)
    monkeypatch.setattr(timing.measure, "build_case", build)
    m = timing.measure_op(Gemm("q", 8, 64, 32, dtype="fp32"), ctx, repeats=2)
    assert m.status == "ok" and m.ms > 0
    assert calls == [None, timing.measure.OOM_RETRY_COPIES]
    assert "retried after an out-of-memory" in m.note and ctx.max_copies is None
    # the retry runs with at most that many rotated copies
    ctx.max_copies = 2
    try:
        assert timing.case.copies_for(ctx, 1024, check=False) == 2
    finally:
        ctx.max_copies = None
    assert timing.case.copies_for(ctx, 1024, check=False) > 2


def test_out_of_memory_twice_is_final(ctx, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("CUDA out of memory. Tried to allocate 80.00 GiB")
    monkeypatch.setattr(timing.measure, "build_case", boom)
    m = timing.measure_op(Gemm("big", 64, 64, 64, dtype="fp32"), ctx)
    assert m.status == "oom" and "also after freeing pools" in m.note


@pytest.mark.parametrize("msg,sticky", [
    ("CUDA error: an illegal memory access was encountered", True),
    ("CUDA error: device-side assert triggered", True),
    ("CUDA error: unspecified launch failure", True),
    ("CUDA error: misaligned address", True),
    ("CUDA out of memory. Tried to allocate 2 GiB", False),
    ("mat1 and mat2 shapes cannot be multiplied", False),
])
def test_sticky_cuda_errors_are_recognised(msg, sticky):
    assert timing.measure.is_sticky_cuda_error(msg) is sticky


def test_a_sticky_cuda_error_stops_the_profile_and_keeps_what_was_measured(ctx, monkeypatch, tmp_path):
    from pis_tui.commands._store import MemoryStore

    ops = [Gemm("a", 8, 64, 32, dtype="fp32"), Gemm("b", 8, 96, 32, dtype="fp32"),
           Gemm("c", 8, 128, 32, dtype="fp32")]
    real = timing.measure.build_case

    def build(op, c, check=False, **kw):
        if op.n == 96:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real(op, c, check, **kw)
    monkeypatch.setattr(timing.measure, "build_case", build)
    monkeypatch.setattr(ctx, "kind", "cuda")  # the sticky rule is a CUDA one
    monkeypatch.setattr(timing.measure, "time_cuda",
                        lambda fn, copies, r, w, cap, t: (0.01, 0.02, 0.0, r, ""))
    monkeypatch.setattr(timing.measure, "cuda_alive", lambda: False)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    store = MemoryStore()
    try:
        with pytest.raises(MeasureError, match="unrecoverable error.*1 measurement.*run the same command"):
            profiling.run_profile(ops, ctx, store, calibrate=False, repeats=2)
        got = {m.key: m.status for m in store.get_measurements(ctx.fingerprint)}
        assert got == {ops[0].key(): "ok", ops[1].key(): "error"}  # c never measured
        # a later call in the same process does not touch the GPU
        m = timing.measure_op(ops[2], ctx)
        assert m.status == "error" and "unrecoverable error earlier" in m.note
    finally:
        ctx.sticky_error = None


def test_memory_store_follows_the_cache_rules(tmp_path):
    from pis_tui.commands._store import MemoryStore
    from pis_tui.pricing.measured_table import METHOD_VERSIONS, Measurement, software_versions

    def meas(key, ms, at, sw=None, mv=METHOD_VERSIONS["cpu-wall"]):
        return Measurement(key=key, op={"op_type": "gemm", "dtype": "fp32"}, ms=ms, method="cpu-wall",
                           method_version=mv, fingerprint="cpu:x", software=sw or software_versions(),
                           measured_at=at)
    s = MemoryStore()
    s.put_measurements([meas("k", 1.0, "2026-01-01T00:00:00+00:00"),
                        meas("k", 2.0, "2026-01-02T00:00:00+00:00"),
                        meas("old-torch", 1.0, "2026-01-01", sw={"torch": "1.0"}),
                        meas("old-method", 1.0, "2026-01-01", mv=1)])
    got = s.get_measurements("cpu:x")
    assert [(m.key, m.ms) for m in got] == [("k", 2.0)]
    assert s.get_measurements("cpu:x", "bf16") == [] and s.get_measurements("cpu:y") == []
    s.put_calibration("cpu:x", "fp32", 0.5, 20.0, {"method": "cpu-wall-peaks-v1"})
    assert s.get_calibration("cpu:x", "fp32")["peak_tflops"] == 0.5
    assert s.get_calibration("cpu:x", "bf16") is None
    s.put_validation({"model": "m", "fingerprint": "cpu:x", "strategy": "dense", "sparsity": 0.0,
                      "phase": "decode", "batch": 1, "length": 8, "measured_ms": 1.0})
    assert len(s.get_validations("m")) == 1
    # a JSON store keeps it all between runs
    f = tmp_path / "store.json"
    j = MemoryStore(str(f))
    j.put_measurements(got)
    j.put_calibration("cpu:x", "fp32", 0.5, 20.0)
    again = MemoryStore(str(f))
    assert [m.ms for m in again.get_measurements("cpu:x")] == [2.0]
    assert again.get_calibration("cpu:x", "fp32")["bandwidth_gbs"] == 20.0


def test_open_store_without_duckdb_falls_back_to_memory_with_a_warning(monkeypatch, tmp_path):
    import sys

    from pis_tui.commands import _store
    from pis_tui.errors import UserError

    monkeypatch.setitem(sys.modules, "duckdb", None)
    said = []
    s = _store.open_store(str(tmp_path / "c.duckdb"), on_warning=said.append)
    assert isinstance(s, _store.MemoryStore) and s.in_memory and said == [_store.NO_DUCKDB]
    assert _store.open_store("none").fallback_reason == "--cache none"
    monkeypatch.setenv("PIS_TUI_CACHE", "none")
    assert _store.open_store(None).in_memory
    assert _store.open_store(str(tmp_path / "s.json")).path.endswith("s.json")
    with pytest.raises(UserError, match="folder does not exist"):
        _store.open_store(str(tmp_path / "nope" / "s.json"))
