"""Shipped measured tables are read one way: format and method version checked, calibration used,
a table that cannot be used is one warning naming the file (never a silent nothing)."""

import json
from dataclasses import asdict, replace

import pytest

from pis_tui.pricing import measured_table
from pis_tui import shipped as profiles
from pis_tui.decide.sweep import make_estimator, sweep
from pis_tui.device.choose import load_gpu
from pis_tui.pricing.measured_table import FORMAT, METHOD_VERSIONS
from pis_tui.model.ops import Gemm


@pytest.fixture
def measured_dir(tmp_path, monkeypatch):
    real = profiles.profile_path

    def fake(*parts):
        return tmp_path.joinpath(*parts[1:]) if parts and parts[0] == "measured" else real(*parts)
    monkeypatch.setattr(profiles, "profile_path", fake)
    measured_table.load_shipped.cache_clear()
    yield tmp_path
    measured_table.load_shipped.cache_clear()


def _table(method_version=None, **over):
    op = Gemm("x", 16, 4096, 4096, 1.0, "bf16")
    d = {"format": FORMAT, "device": {"name": "H200", "fingerprint": "cuda:NVIDIA_H200"},
         "software": {"torch": "2.11.0", "cuda": "13.0"}, "method": "cuda-graph",
         "method_version": METHOD_VERSIONS["cuda-graph"] if method_version is None else method_version,
         "date": "2026-12-01T00:00:00+00:00",
         "calibration": {"bf16": {"peak_tflops": 700.0, "bandwidth_gbs": 4000.0}},
         "entries": [{"key": op.key(), "op": asdict(op), "ms": 0.02, "status": "ok"}]}
    d.update(over)
    return d, op


def _gpu(name):
    return replace(load_gpu("h200-sxm"), measured_table=name)


@pytest.mark.parametrize("content, why", [
    ("{not json", "malformed JSON"),
    (json.dumps({"format": "other"}), "not a pis-tui measured table"),
    (json.dumps(_table(method_version=0)[0]), "timed with cuda-graph v0"),
])
def test_a_table_that_cannot_be_used_is_one_warning_naming_the_file(measured_dir, content, why):
    (measured_dir / "bad.json").write_text(content)
    res = sweep("qwen2.5-0.5b", _gpu("bad.json"), strategies=["static_depth"], sparsities=[0.5])
    warn = [w for w in res.warnings if "measured table not used" in w]
    assert len(warn) == 1 and "bad.json" in warn[0] and why in warn[0]
    assert "shipped" not in res.source_summary()


def test_a_missing_table_is_a_warning_too(measured_dir):
    res = sweep("qwen2.5-0.5b", _gpu("absent.json"), strategies=["static_depth"], sparsities=[0.5])
    assert any("absent.json" in w and "cannot read" in w for w in res.warnings)


def test_a_good_table_prices_its_ops_as_shipped_and_lends_its_calibration(measured_dir):
    d, op = _table()
    (measured_dir / "h200.json").write_text(json.dumps(d))
    warnings = []
    est = make_estimator(_gpu("h200.json"), "bf16", warnings=warnings)
    assert warnings == []
    p = est.price(op)
    assert p.source == "shipped" and p.ms_per_call == pytest.approx(0.02)
    assert est.peak("bf16") == pytest.approx(700e12) and est.bandwidth("bf16") == pytest.approx(4000e9)
