"""profiles/quality/precision.csv: published quality figures of quantization alone (family
"dense") and of pruned-and-quantized models (a family and its sparsity), each cited.  Read with
the csv module only: no pis-tui loader is involved."""

from __future__ import annotations

import csv

import pytest

from pis_tui.families import registry
from pis_tui.model.quant_formats import QUANTIZED
from pis_tui.shipped import profile_path

HEADER = ["precision", "method", "family", "sparsity", "model", "params_b", "metric_kind", "measure",
          "metric", "dense", "quantized", "quality_loss", "secondary", "uncertain", "citation",
          "checked", "note", "protocol"]
METRICS = {"accuracy": "accuracy_drop", "perplexity": "ppl_increase"}


def _read():
    with open(profile_path("quality", "precision.csv"), encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = [dict(zip(header, r)) for r in reader]
    return header, rows


HEADER_READ, ROWS = _read()


def test_header_is_exact_and_rows_are_complete():
    assert HEADER_READ == HEADER
    assert len(ROWS) >= 12
    with open(profile_path("quality", "precision.csv"), encoding="utf-8", newline="") as f:
        for line in list(csv.reader(f))[1:]:
            assert len(line) == len(HEADER), line[:3]


@pytest.mark.parametrize("i", range(len(ROWS)))
def test_each_row_is_valid_and_cited(i):
    r = ROWS[i]
    where = f"row {i + 2}: {r['model']} {r['precision']} {r['method']}"
    assert r["precision"] in QUANTIZED, where
    assert r["family"] in registry.names(), where
    assert r["metric_kind"] in METRICS and r["metric"] == METRICS[r["metric_kind"]], where
    assert r["secondary"] in ("true", "false") and r["uncertain"] in ("true", "false"), where
    assert len(r["citation"]) > 20 and r["model"] and r["method"] and r["measure"], where
    assert float(r["params_b"]) > 0, where
    if r["family"] == "dense":
        assert r["sparsity"] == "", where
    elif r["sparsity"]:
        assert 0.0 < float(r["sparsity"]) < 1.0, where
    else:
        # a pruned figure whose sparsity no source states cannot be placed: kept for reference
        # with no loss (the loader skips it, rather than reading the empty sparsity as 0), and
        # it says why
        assert r["quality_loss"] == "" and "reference only" in r["note"], where
        assert r["uncertain"] == "true", where
        return
    loss = float(r["quality_loss"])
    assert 0.0 <= loss < 1.0, where
    if r["dense"] and r["quantized"]:
        d, q = float(r["dense"]), float(r["quantized"])
        expected = (d - q) / d if r["metric_kind"] == "accuracy" else (q - d) / d
        # a quantized model that scored better is filed as 0 (and says so in its note)
        if expected < 0:
            assert loss == 0.0 and "filed as 0" in r["note"], where
            expected = 0.0
        assert abs(loss - expected) <= 0.002, f"{where}: {loss} vs {expected:.5f}"
    else:
        assert r["note"] or "recovery" in r["measure"] or "kept" in r["measure"], where


def test_the_wanted_kinds_of_rows_are_there():
    dense = [r for r in ROWS if r["family"] == "dense"]
    assert any(r["precision"] == "fp8-row" for r in dense)
    assert any(r["precision"] == "int4-g128" for r in dense)
    pruned = [r for r in ROWS if r["family"] != "dense"]
    assert any(r["sparsity"] and r["quality_loss"] for r in pruned)
    assert {r["family"] for r in pruned} <= set(registry.pruned())
