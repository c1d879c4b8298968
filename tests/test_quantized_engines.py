"""The engines' "quantized" blocks (profiles/kernels/*.json): the kernel each engine runs for a
quantized GEMM, with where that is documented, and the fused engine's kernel for the activation
quantization op ("quant.<gemm>").  Pure JSON and arithmetic: no torch."""

from __future__ import annotations

import math

import pytest

from pis_tui.device.choose import load_gpu
from pis_tui.model.ops import Elementwise, Gemm
from pis_tui.model.scenario import ENGINES
from pis_tui.pricing import engines as execution
from pis_tui.pricing import quantized
from pis_tui.pricing.estimator import Estimator

#: the entries pis_tui.pricing.quantized.kernel_key names, and the activation quantization
ENTRIES = ("fp8", "sparse_fp8", "int4", "sparse_int4", "mxfp4", "fp8_emulated", "act_quant")


@pytest.mark.parametrize("engine", ENGINES)
def test_every_quantized_kernel_is_named_with_its_source(engine):
    q = execution.load(engine).quantized
    assert set(ENTRIES) <= set(q), f"{engine}: missing {set(ENTRIES) - set(q)}"
    for key in ENTRIES:
        entry = q[key]
        assert isinstance(entry["kernel"], str) and len(entry["kernel"]) > 20, f"{engine}:{key}"
        assert isinstance(entry["source"], str) and len(entry["source"]) > 30, f"{engine}:{key}"


def test_the_engines_name_the_kernels_they_really_run():
    eager, fused = execution.load("eager").quantized, execution.load("fused").quantized
    assert "_scaled_mm" in eager["fp8"]["kernel"] and "_weight_int4pack_mm" in eager["int4"]["kernel"]
    assert eager["sparse_int4"]["kernel"].startswith("none")
    assert "cutlass_scaled_mm" in fused["fp8"]["kernel"]
    assert "cutlass_scaled_sparse_mm" in fused["sparse_fp8"]["kernel"]
    assert "Marlin" in fused["int4"]["kernel"] and "Machete" in fused["int4"]["kernel"]
    assert "Sparse-Marlin" in fused["sparse_int4"]["kernel"]
    assert "FP8 Marlin" in fused["fp8_emulated"]["kernel"]
    assert "dynamic_per_token_scaled_fp8_quant" in fused["act_quant"]["kernel"]


@pytest.mark.parametrize("family", ["dense", "static_depth", "low_rank", "semi_structured_24",
                                    "static_depth+low_rank"])
@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_the_fused_engine_finds_one_kernel_for_the_activation_quantization(family, phase):
    """The op list names the op "quant.<gemm>"; the lookup falls back to "quant" under the "*"
    family and phase: one kernel reading the activation and writing fp8."""
    fused = execution.load("fused")
    for gemm in ("q_proj", "gate_proj", "down_proj", "o_proj.A"):
        kernels = fused.kernels(family, phase, f"quant.{gemm}")
        assert kernels is not None and len(kernels) == 1, (family, phase, gemm)
        (k,) = kernels
        assert k.aten == "dynamic_per_token_scaled_fp8_quant"
        assert k.reads == ((1.0, "act"),) and k.writes == ((1.0, "fp8"),)
        assert not execution.is_leaf(k)
    assert "quant" in fused.sources


def test_the_fused_quantization_kernel_is_priced_by_its_bytes():
    """bf16 activations [M, K] read once, fp8 written once: 3 bytes an element over the
    bandwidth share, plus the per-kernel floor (H100: fp8 tensor cores, so it runs)."""
    gpu = load_gpu("h100-sxm")
    est = Estimator(gpu, engine="fused")
    op = Elementwise("quant.q_proj", "act_quant", 512, 4096, 1.0, "bf16")
    expected = (512 * 4096 * 3) / (gpu.bandwidth * est.eff["bandwidth"]) * 1e3 + gpu.launch_overhead_us * 1e-3
    assert math.isclose(est.analytical_ms(op, "dense", "prefill"), expected, rel_tol=1e-9)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("gpu,quant,key", [
    ("h100-sxm", "fp8-row", "fp8"), ("h100-sxm", "int4-g128", "int4"),
    ("h100-sxm", "mxfp4", "mxfp4"), ("a100-80gb", "fp8-row", "fp8_emulated")])
def test_an_unmeasured_quantized_gemm_names_its_engines_kernel(engine, gpu, quant, key):
    device = load_gpu(gpu)
    op = Gemm("q_proj", 16, 4096, 4096, quant=quant)
    assert quantized.kernel_key(op, device) == key
    priced = Estimator(device, engine=engine).price(op)
    assert execution.load(engine).quantized[key]["kernel"] in priced.note
