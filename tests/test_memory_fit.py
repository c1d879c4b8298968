"""Does the dense model fit on the device: weights + KV cache per phase, hand-checked."""

import pytest

from pis_tui.decide.sweep import sweep
from pis_tui.present.export import load_schema, to_dict
from pis_tui.device.choose import load_gpu
from pis_tui.pricing.memory import footprint, kv_bytes_per_token
from pis_tui.model.spec import load_model_spec
from pis_tui.model.scenario import Scenario


def test_llama8b_on_h200_fits_with_hand_computed_sizes():
    spec, dev = load_model_spec("llama-3.1-8b"), load_gpu("h200-sxm")
    f = footprint(spec, dev, Scenario(1, 1024, 16, 1024, "bf16"))
    # 8.03 B parameters in bf16; KV: 2 (K, V) × 32 layers × 8 KV heads × 128 × 2 bytes per token
    assert f["weights_gb"] == pytest.approx(spec.total_params() * 2 / 1e9, rel=1e-3)
    assert 15.5 < f["weights_gb"] < 16.5
    assert kv_bytes_per_token(spec, "bf16") == 2 * 32 * 8 * 128 * 2 == 131072
    assert f["kv_cache_gb"]["decode"] == pytest.approx(16 * 1024 * 131072 / 1e9, rel=1e-3)
    assert f["fits"] == {"prefill": True, "decode": True} and f["warnings"] == []
    # fp8 weights are one byte each; the KV cache stays 16-bit
    f8 = footprint(spec, dev, Scenario(1, 1024, 16, 1024, "fp8"))
    assert f8["weights_gb"] == pytest.approx(f["weights_gb"] / 2, rel=1e-3)
    assert f8["kv_cache_gb"] == f["kv_cache_gb"]


def test_what_does_not_fit_is_said():
    big = footprint(load_model_spec("llama-3.1-70b"), load_gpu("rtx-4090"), Scenario(dtype="bf16"))
    assert big["fits"] == {"prefill": False, "decode": False}
    assert len(big["warnings"]) == 1 and "weights alone are 141 GB of 24 GB" in big["warnings"][0]
    long = footprint(load_model_spec("llama-3.1-8b"), load_gpu("h200-sxm"),
                     Scenario(1, 1024, 15, 1 << 20, "bf16"))
    assert long["fits"] == {"prefill": True, "decode": False}
    assert "decode does not fit" in long["warnings"][0] and "2062 GB" in long["warnings"][0]
    tight = footprint(load_model_spec("llama-3.1-8b"), load_gpu("h200-sxm"),
                      Scenario(1, 1024, 64, 14000, "bf16"))  # 16 + 117 GB: 95 % of 141 GB
    assert tight["fits"]["decode"] is True and len(tight["warnings"]) == 1
    assert "decode barely fits" in tight["warnings"][0] and "= 134 GB of 141 GB" in tight["warnings"][0]


def test_sweep_and_export_carry_it():
    r = sweep("llama-3.1-70b", "rtx-4090", strategies=("dense", "static_depth"), sparsities=(0.5,))
    assert r.warnings and "does not fit" in r.warnings[0]
    d = to_dict(r)
    import jsonschema

    jsonschema.validate(d, load_schema())
    assert d["memory"]["fits"]["decode"] is False and d["memory"]["device_gb"] == 24
