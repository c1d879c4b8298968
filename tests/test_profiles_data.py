"""The data pis-tui ships: model presets (profiles/models) and GPU profiles (profiles/gpus).

Checks that every preset loads through the normal loader with sane shapes, that hand-checked
published values are intact, and that every GPU profile is complete, sourced, and never
swaps dense and 2:4-sparse peaks.  Pure JSON reading: no torch, no transformers.
"""

from __future__ import annotations

import json
import math

import pytest

from pis_tui.device.gpus import gpu_names
from pis_tui.device.choose import load_gpu
from pis_tui.model.spec import load_model_spec, preset_names
from pis_tui.shipped import profile_path

EXPECTED_PRESETS = {
    "llama-3.1-8b", "llama-3.1-70b", "llama-3.2-1b", "llama-3.2-3b", "qwen2.5-0.5b",
    "qwen2.5-7b", "qwen2.5-14b", "qwen3-8b", "qwen3-14b", "mistral-7b-v0.3",
}
EXPECTED_GPUS = {"h100-sxm", "h200-sxm", "a100-80gb", "l40s", "rtx-4090", "rtx-pro-6000", "b200"}
GPU_FIELDS = ("name", "display_name", "kind", "match", "peak_tflops", "sparse_peak_tflops",
              "memory_bandwidth_gbs", "memory_gb", "l2_mb", "sm_count", "sparse_24",
              "efficiency", "sources", "notes")
SOURCED = ("peak_tflops", "memory_bandwidth_gbs", "l2_mb", "sm_count")


def _raw(folder: str, name: str) -> dict:
    with open(profile_path(folder, name + ".json"), encoding="utf-8") as f:
        return json.load(f)


# ------------------------------------------------------------------ model presets


def test_all_expected_presets_ship():
    assert EXPECTED_PRESETS <= set(preset_names())


@pytest.mark.parametrize("name", sorted(EXPECTED_PRESETS))
def test_preset_loads_with_sane_invariants(name):
    raw = _raw("models", name)
    spec = load_model_spec(name)
    assert spec.name == name
    assert raw["_source"].startswith("https://huggingface.co/") and raw["_source"].endswith("/config.json")
    assert spec.source == raw["_source"]
    # the spec mirrors the file, not defaults
    assert spec.num_layers == raw["num_hidden_layers"]
    assert spec.hidden_size == raw["hidden_size"]
    assert spec.intermediate_size == raw["intermediate_size"]
    assert spec.num_heads == raw["num_attention_heads"]
    assert spec.num_kv_heads == raw["num_key_value_heads"]
    assert spec.vocab_size == raw["vocab_size"]
    assert spec.tie_embeddings == raw["tie_word_embeddings"]
    assert spec.head_dim == raw.get("head_dim", raw["hidden_size"] // raw["num_attention_heads"])
    # GQA: query heads split evenly into KV groups
    assert spec.num_heads % spec.num_kv_heads == 0
    assert spec.head_dim > 0 and spec.head_dim % 8 == 0
    # decoder-only, dense, and a real architecture name
    assert any(a.endswith("ForCausalLM") for a in raw["architectures"])
    assert raw["model_type"] in ("llama", "qwen2", "qwen3", "mistral")
    assert raw["hidden_act"] == "silu"


def test_llama_3_1_8b_hand_checked():
    s = load_model_spec("llama-3.1-8b")
    assert (s.num_layers, s.hidden_size, s.intermediate_size) == (32, 4096, 14336)
    assert (s.num_heads, s.num_kv_heads, s.head_dim) == (32, 8, 128)
    assert s.vocab_size == 128256 and s.tie_embeddings is False
    assert s.attention_bias is False
    # published size: 8.03 B parameters (embeddings and lm_head untied)
    assert 8.02e9 < s.total_params() < 8.04e9
    raw = _raw("models", "llama-3.1-8b")
    assert raw["rope_theta"] == 500000.0 and raw["rope_scaling"]["rope_type"] == "llama3"


def test_qwen2_5_0_5b_hand_checked():
    s = load_model_spec("qwen2.5-0.5b")
    assert (s.num_layers, s.hidden_size, s.intermediate_size) == (24, 896, 4864)
    assert (s.num_heads, s.num_kv_heads, s.head_dim) == (14, 2, 64)
    assert s.vocab_size == 151936 and s.tie_embeddings is True
    assert s.attention_bias is True  # Qwen2 has QKV bias (not written in its config)
    # model card: 0.49 B parameters
    assert 0.48e9 < s.total_params() < 0.50e9


@pytest.mark.parametrize("name,head_dim,tied", [("llama-3.2-1b", 64, True), ("llama-3.2-3b", 128, True)])
def test_llama_3_2_explicit_head_dim_and_tied(name, head_dim, tied):
    raw = _raw("models", name)
    assert raw["head_dim"] == head_dim
    s = load_model_spec(name)
    assert s.head_dim == head_dim and s.tie_embeddings is tied


@pytest.mark.parametrize("name,layers,hidden,inter,heads", [
    ("qwen3-8b", 36, 4096, 12288, 32), ("qwen3-14b", 40, 5120, 17408, 40)])
def test_qwen3_shapes(name, layers, hidden, inter, heads):
    s = load_model_spec(name)
    assert (s.num_layers, s.hidden_size, s.intermediate_size, s.num_heads, s.num_kv_heads,
            s.head_dim) == (layers, hidden, inter, heads, 8, 128)
    assert s.qk_norm is True and s.attention_bias is False


def test_mistral_v0_3_vocab():
    assert load_model_spec("mistral-7b-v0.3").vocab_size == 32768


# ------------------------------------------------------------------ GPU profiles


def test_all_expected_gpus_ship():
    assert EXPECTED_GPUS <= set(gpu_names())


@pytest.mark.parametrize("name", sorted(EXPECTED_GPUS))
def test_gpu_profile_complete_and_sourced(name):
    raw = _raw("gpus", name)
    for key in GPU_FIELDS:
        assert key in raw, f"{name}: missing {key}"
    assert raw["name"] == name and raw["kind"] == "gpu"
    assert raw["match"] and all(isinstance(m, str) and m for m in raw["match"])
    for key in SOURCED:
        src = raw["sources"].get(key)
        assert isinstance(src, str) and len(src) > 20, f"{name}: no source for {key}"
    eff = raw["efficiency"]
    from pis_tui.device.gpus import EFFICIENCY_KEYS

    assert set(EFFICIENCY_KEYS) <= set(eff), f"{name}: efficiency lacks {set(EFFICIENCY_KEYS) - set(eff)}"
    for key in EFFICIENCY_KEYS:  # a source per value; a fitted one says what it was fitted to
        e = eff[key]
        assert isinstance(e["source"], str) and len(e["source"]) >= 6, f"{name}: no source for {key}"
        if e["source"] == "fitted":
            assert len(e.get("fitted_to", "")) > 40, f"{name}: {key} fitted to what?"
    for dt in ("bf16", "fp16", "tf32", "fp32", "int8"):
        assert raw["peak_tflops"][dt] > 0, f"{name}: no dense {dt} peak"
    l2 = raw["l2_mb"]
    assert l2["used"] > 0 and l2["datasheet"] > 0
    assert raw["memory_bandwidth_gbs"] > 100 and raw["memory_gb"] > 8
    assert raw["sm_count"] > 0 and 0 < eff["kernel_floor_us"]["value"] < 20

    prof = load_gpu(name)
    assert prof.launch_overhead_us == eff["kernel_floor_us"]["value"]
    assert prof.l2_mb == l2["used"]
    assert prof.bandwidth_gbs == raw["memory_bandwidth_gbs"]
    assert math.isclose(prof.peak("bf16"), raw["peak_tflops"]["bf16"] * 1e12)


@pytest.mark.parametrize("name", sorted(EXPECTED_GPUS))
def test_dense_and_sparse_peaks_never_swapped(name):
    raw = _raw("gpus", name)
    dense, sparse = raw["peak_tflops"], raw["sparse_peak_tflops"]
    assert raw["sparse_24"] == bool(sparse)
    assert "fp32" not in sparse  # no sparse tensor path for plain fp32
    for dt, sv in sparse.items():
        assert dt in dense, f"{name}: sparse {dt} without a dense peak"
        # 2:4 doubles the tensor rate: sparse must be ~2x dense, never equal or below
        assert 1.9 <= sv / dense[dt] <= 2.1, f"{name}: {dt} sparse {sv} vs dense {dense[dt]}"
    # lower precision is never slower on tensor cores; tensor bf16 beats plain fp32
    assert dense["bf16"] >= dense["tf32"] and dense["bf16"] > dense["fp32"]
    if "fp8" in dense:
        assert dense["fp8"] >= dense["bf16"]
    assert load_gpu(name).peak("bf16", sparse=True) > load_gpu(name).peak("bf16")


def test_h100_bf16_is_the_dense_figure():
    # the datasheet prints 1,979 TFLOPS *with sparsity*; the dense peak is half of it
    raw = _raw("gpus", "h100-sxm")
    assert raw["peak_tflops"]["bf16"] == pytest.approx(989.4, abs=1)
    assert raw["sparse_peak_tflops"]["bf16"] == pytest.approx(1979, abs=1)


def test_h200_keeps_both_l2_values():
    l2 = _raw("gpus", "h200-sxm")["l2_mb"]
    assert l2["datasheet"] == 50 and l2["reported_by_torch"] == 60
    assert l2["used"] in (l2["datasheet"], l2["reported_by_torch"])
    assert "estimator uses" in l2["note"]
    assert load_gpu("h200-sxm").l2_mb == l2["used"]


def test_a100_has_no_fp8_peak():
    raw = _raw("gpus", "a100-80gb")
    assert "fp8" not in raw["peak_tflops"] and "fp8" in raw.get("unsupported_dtypes", [])


def test_match_strings_pick_the_right_profile():
    from pis_tui.device.local import _match_profile

    cases = {
        "NVIDIA H200, 560.35.03, 143771 MiB": "h200-sxm",
        "NVIDIA H100 80GB HBM3, 550.54, 81559 MiB": "h100-sxm",
        "NVIDIA A100-SXM4-80GB, 535.1, 81920 MiB": "a100-80gb",
        "NVIDIA L40S, 550.1, 46068 MiB": "l40s",
        "NVIDIA GeForce RTX 4090, 550.1, 24564 MiB": "rtx-4090",
        "NVIDIA RTX PRO 6000 Blackwell Workstation Edition, 575.1, 97887 MiB": "rtx-pro-6000",
        "NVIDIA B200, 570.1, 183359 MiB": "b200",
    }
    for line, expected in cases.items():
        prof = _match_profile(line)
        assert prof is not None and prof.name == expected, line
    assert _match_profile("NVIDIA GeForce GTX 1080, 470.1, 8192 MiB") is None


def test_the_2_4_bandwidth_share_is_fitted_on_the_gpu_whose_row_it_fits():
    """rtx-pro-6000's 2:4 bandwidth share is fitted to the study's Table 2 row measured on that
    GPU (it said "assumed as on h200"): a fitted figure says so and to what, and the row it was
    fitted to is no independent check; h200-sxm, whose own data it never saw, borrows it."""
    eff = _raw("gpus", "rtx-pro-6000")["efficiency"]["sparse24_bandwidth"]
    assert eff["source"] == "fitted"
    assert "Table 2" in eff["fitted_to"] and "study_table2_check.py" in eff["fitted_to"]
    assert "not independent" in eff["fitted_to"] and "secondary summaries" in eff["fitted_to"]
    for name in sorted(EXPECTED_GPUS - {"rtx-pro-6000"}):
        other = _raw("gpus", name)["efficiency"]["sparse24_bandwidth"]
        assert other["source"] != "fitted" and "rtx-pro-6000" in other["source"], name


@pytest.mark.parametrize("name", sorted(EXPECTED_GPUS))
def test_every_gpu_says_which_low_precision_tensor_cores_it_has(name):
    """The quantization block (fp8 / fp4 / int4 tensor cores, with a source) agrees with the peaks:
    fp8 tensor cores iff an fp8 peak, fp4 iff an fp4 peak, an int4 peak only with int4 tensor cores."""
    raw = _raw("gpus", name)
    q = raw["quantization"]
    for key in ("fp8_tensor_cores", "fp4_tensor_cores", "int4_tensor_cores"):
        assert isinstance(q[key], bool), f"{name}: {key}"
    assert isinstance(q["source"], str) and len(q["source"]) > 40
    peaks = raw["peak_tflops"]
    assert q["fp8_tensor_cores"] == ("fp8" in peaks), name
    assert q["fp4_tensor_cores"] == ("fp4" in peaks), name
    if "int4" in peaks:
        assert q["int4_tensor_cores"] and peaks["int4"] >= peaks["int8"], name
        assert "INT4" in raw["sources"]["peak_tflops"], f"{name}: int4 peak without its source"
    if not q["int4_tensor_cores"]:
        assert "int4" not in peaks and "int4" not in raw["sparse_peak_tflops"], name


def test_a100_has_no_fp8_tensor_cores_and_its_fp8_share_says_it_is_unused():
    raw = _raw("gpus", "a100-80gb")
    assert raw["quantization"]["fp8_tensor_cores"] is False and "fp8" not in raw["peak_tflops"]
    assert raw["quantization"]["int4_tensor_cores"] is True and raw["peak_tflops"]["int4"] == 1248
    for block in (raw["efficiency"], raw["efficiency"]["by_engine"]["fused"]):
        assert "unused" in block["fp8_gemm"]["source"] and "emulated" in block["fp8_gemm"]["source"]


@pytest.mark.parametrize("name", sorted(EXPECTED_GPUS))
def test_quantized_kernel_shares_for_both_engines(name):
    """Every GPU gives the quantized kernels' shares for the eager engine (top level: cuBLASLt fp8,
    tinygemm int4) and the fused one (CUTLASS fp8, Marlin / Machete int4), each in [0, 1] with a
    source; the efficiency figures the estimator reads are the profile's, not the defaults."""
    from pis_tui.device.gpus import efficiency, efficiency_sources

    raw = _raw("gpus", name)
    fused = raw["efficiency"]["by_engine"]["fused"]
    prof = load_gpu(name)
    for engine, block in (("eager", raw["efficiency"]), ("fused", fused)):
        eff, srcs = efficiency(prof, engine), efficiency_sources(prof, engine)
        for key in ("fp8_gemm", "w4a16", "w4a16_bandwidth"):
            e = block[key]
            assert 0.0 <= e["value"] <= 1.0, f"{name} {engine}: {key}"
            assert isinstance(e["source"], str) and len(e["source"]) > 40, f"{name} {engine}: {key}"
            assert eff[key] == e["value"] and srcs[key] == e["source"], f"{name} {engine}: {key}"
