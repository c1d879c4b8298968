"""Quantized GEMMs and the activation quantization timed through torch's real kernels
(pis_tui.timing.quantized): int4 on this CPU (aten._weight_int4pack_mm_for_cpu) checked against
the float64 product of the dequantized operands, fp8 refused with its one line (a CPU's
_scaled_mm is a reference loop) but its case checked on a tiny shape, act_quant timed, the
kernel recorded on the measurement and named by the estimator.  Small shapes: seconds."""

import dataclasses
from dataclasses import replace

import pytest

torch = pytest.importorskip("torch")

from pis_tui import timing  # noqa: E402
from pis_tui.hf.quant_kernels import quantize_int4  # noqa: E402
from pis_tui.model.ops import Elementwise, Gemm, GroupedGemm  # noqa: E402
from pis_tui.timing import quantized  # noqa: E402
from pis_tui.timing.measure import verify_case  # noqa: E402

CPU_INT4 = "aten._weight_int4pack_mm_for_cpu"


@pytest.fixture(scope="module")
def ctx(device_ctx):
    if device_ctx.is_cuda:
        pytest.skip("CPU kernels (tests/gpu/test_cuda_quant.py has CUDA's)")
    return device_ctx


def _int4(m, group, dtype):
    return Gemm("q", m, 256, 512, dtype=dtype, quant=f"int4-g{group}")


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("m,group", [(1, 32), (16, 128)])
def test_int4_is_measured_and_matches_its_dequantized_reference(ctx, dtype, m, group):
    op = _int4(m, group, dtype)
    assert f"int4-g{group}@int4pack_mm:" in op.key()
    err, tol = timing.verify_op(op, ctx)
    assert err < tol, (err, tol)
    # the kernel's accumulation only: fp32 ~4e-7, bf16 output rounding ~2e-3
    assert err < (1e-5 if dtype == "fp32" else 5e-3), err
    meas = timing.measure_op(op, ctx, repeats=2, target_ms=1.0, max_op_s=1.0)
    assert meas.status == "ok" and meas.ms > 0, meas.note
    assert meas.conditions["kernel"] == CPU_INT4
    assert CPU_INT4 in meas.note and "rotated copies" in meas.note, meas.note
    assert meas.key == op.key()


def test_a_wrong_int4_kernel_fails_the_check(ctx, monkeypatch):
    """Codes off by one in the packed weight (the reference keeps the right ones): the check
    is far past the tolerance, so the tolerance catches a wrong kernel, not just noise."""
    real = quantize_int4

    def off_by_one(w, group, act_dtype=None, keep_codes=False):
        q = real(w, group, act_dtype, keep_codes=True)
        bad = (q.codes + 1).clamp(max=15)
        q.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(bad, 1)
        return q

    monkeypatch.setattr(quantized, "quantize_int4", off_by_one)
    for dtype in ("fp32", "bf16"):
        err, tol = timing.verify_op(_int4(16, 128, dtype), ctx)
        assert err > 5 * tol, (dtype, err, tol)


def test_a_broken_reference_fails_the_check(ctx):
    case = quantized.quantized_case(_int4(16, 128, "fp32"), ctx, check=True)
    good = case.ref
    case.ref = lambda: good() * 1.01  # a scale 1 % off
    err, tol = verify_case(_int4(16, 128, "fp32"), case)
    assert err > tol


def test_int4_shapes_the_kernel_cannot_run_are_unsupported_in_one_line(ctx):
    for op, words in ((Gemm("q", 4, 256, 96, dtype="fp32", quant="int4-g64"), "multiple of the group (64)"),
                      (Gemm("q", 4, 200, 512, dtype="fp32", quant="int4-g128"), "N = 200 is not a multiple of 16")):
        m = timing.measure_op(op, ctx)
        assert m.status == "unsupported" and words in m.note and "\n" not in m.note, m.note


def test_fp8_on_this_cpu_is_unsupported_with_the_reason(ctx):
    for q in ("fp8-row", "fp8-tensor"):
        m = timing.measure_op(Gemm("q", 16, 256, 512, dtype="bf16", quant=q), ctx)
        assert m.status == "unsupported" and m.ms is None
        assert "no fp8 GEMM kernel" in m.note and "reference loop" in m.note, m.note
        assert "Traceback" not in m.note and "\n" not in m.note
        with pytest.raises(timing.Unsupported, match="no fp8 GEMM kernel"):
            timing.verify_op(Gemm("q", 16, 256, 512, dtype="bf16", quant=q), ctx)


@pytest.mark.parametrize("quant,dtype", [("fp8-row", "bf16"), ("fp8-tensor", "bf16"), ("fp8-tensor", "fp16")])
def test_the_fp8_case_computes_its_reference(ctx, quant, dtype):
    """The fp8 case built on this CPU anyway (torch's reference loop: a tiny shape): the
    activations quantized once, _scaled_mm against the float64 product of the dequantized
    operands."""
    op = Gemm("q", 16, 32, 32, dtype=dtype, quant=quant)
    case = quantized.quantized_case(op, ctx, check=True, reference_loop=True)
    assert case.conditions == {"kernel": "aten._scaled_mm"} and "reference loop" in case.note
    err, tol = verify_case(op, case)
    assert err < tol and err < 5e-3, (err, tol)


def test_fp8_row_wise_writes_bf16_only(ctx):
    op = Gemm("q", 16, 32, 32, dtype="fp32", quant="fp8-row")
    with pytest.raises(timing.Unsupported, match="writes bf16, not fp32"):
        quantized.quantized_case(op, ctx, check=True, reference_loop=True)


@pytest.mark.parametrize("extra", [0, 1])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_act_quant_is_measured_and_matches_its_reference(ctx, extra, dtype):
    op = Elementwise("quant.q_proj", "act_quant", 37, 1024, dtype=dtype, extra=extra)
    err, tol = timing.verify_op(op, ctx)
    assert err < tol, (err, tol)
    m = timing.measure_op(op, ctx, repeats=2, target_ms=1.0, max_op_s=1.0)
    assert m.status == "ok" and m.ms > 0, m.note
    assert ("per-token" if extra == 0 else "per-tensor") in m.note


def test_a_wrong_fp8_cast_fails_the_act_quant_check(ctx, monkeypatch):
    """e5m2 instead of e4m3 (one mantissa bit fewer): a few % off everywhere."""
    from pis_tui.hf import quant_kernels as qk

    def e5m2(x, static_scale=None):
        q, s = qk.act_quant(x, static_scale)
        return q.float().to(torch.float8_e5m2), s

    monkeypatch.setattr(quantized, "act_quant", e5m2)
    err, tol = timing.verify_op(Elementwise("q", "act_quant", 37, 1024, dtype="fp32"), ctx)
    assert err > 5 * tol, (err, tol)


def test_e4m3_rounding_reference_agrees_with_torch_cast():
    v = torch.cat([torch.linspace(-448, 448, 20001, dtype=torch.float64),
                   torch.tensor([0.0, 2.0 ** -9, 2.0 ** -10, 3 * 2.0 ** -10, 1.0625, 1.1875])])
    want = v.float().to(torch.float8_e4m3fn).double()
    assert torch.equal(quantized.fp8_e4m3_round(v), want)


def test_mxfp4_and_quantized_grouped_gemms_are_unsupported_in_one_line(ctx):
    m = timing.measure_op(Gemm("q", 16, 256, 512, dtype="bf16", quant="mxfp4"), ctx)
    assert m.status == "unsupported" and m.note == "mxfp4 has no torch kernel: estimated only"
    g = GroupedGemm("experts", 8, 2.0, 4.0, 4.0, 64, 64, dtype="bf16", top_k=2, quant="int4-g32")
    m = timing.measure_op(g, ctx)
    assert m.status == "unsupported" and "grouped" in m.note and "\n" not in m.note, m.note


def test_the_device_says_which_precisions_it_measures(ctx):
    assert ctx.precisions == ("int4-g32", "int4-g64", "int4-g128", "int4-g256")
    assert ctx.device_info()["precisions"] == list(ctx.precisions)
    assert quantized.measurable_precision(ctx, "int4") is None
    assert quantized.measurable_precision(ctx, "int4-g64", "bf16") is None
    assert quantized.measurable_precision(ctx, "bf16") is None
    why = quantized.measurable_precision(ctx, "fp8")
    assert why and "no fp8 GEMM kernel" in why and "\n" not in why
    assert quantized.measurable_precision(ctx, "fp8-tensor") == why
    assert quantized.measurable_precision(ctx, "mxfp4") == "mxfp4 has no torch kernel: estimated only"
    assert "group size" in quantized.measurable_precision(ctx, "int4-g48")


def test_the_kernel_survives_the_rounds_and_is_named_when_priced(ctx):
    """conditions["kernel"] is carried by the rounds a profile combines (what the cache
    stores) and the estimator prices the record as measured, naming the kernel."""
    from pis_tui.device.local import local_device
    from pis_tui.pricing.estimator import Estimator
    from pis_tui.profiling.rounds import combine_rounds

    op = _int4(16, 128, "bf16")
    m = timing.measure_op(op, ctx, repeats=2, target_ms=1.0, max_op_s=1.0)
    rounds = [replace(m, ms=m.ms * f) for f in (1.0, 1.02, 1.01)]
    combined = combine_rounds(rounds)
    assert combined.conditions["kernel"] == CPU_INT4
    rec = {"key": op.key(), "op": dataclasses.asdict(op), "ms": 0.05, "status": "ok",
           "conditions": {"kernel": combined.conditions["kernel"]}}
    p = Estimator(local_device(), measurements=[rec]).price(op)
    assert p.source == "measured" and p.ms_per_call == pytest.approx(0.05)
    assert f"kernel {CPU_INT4}" in p.note, p.note
    p = Estimator(local_device(), measurements=[combined.to_dict()]).price(op)
    assert p.source == "measured" and f"kernel {CPU_INT4}" in p.note, p.note
