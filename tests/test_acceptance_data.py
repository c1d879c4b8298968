"""profiles/quality/acceptance.csv: published acceptance figures for self-speculative drafts.

Checks the header, the families, the ranges of alpha and mean_accepted, and that every derived alpha
reproduces its row's mean_accepted through the i.i.d. formula of Leviathan et al. (2023):

    mean_accepted = (1 - alpha^(gamma+1)) / (1 - alpha)

mean_accepted counts the bonus token (the token the dense model adds at every verification), which is
what that formula gives: with alpha = 0 it is 1, the autoregressive step.  Pure CSV reading.
"""

from __future__ import annotations

import csv

import pytest

from pis_tui import families
from pis_tui.shipped import profile_path

HEADER = ("method,model,params_b,draft_family,draft_sparsity,draft,shares_weights,draft_trained,task,decoding,"
          "temperature,gamma,alpha,mean_accepted,alpha_from,speedup_reported,secondary,uncertain,"
          "citation,checked,note").split(",")
PATH = profile_path("quality", "acceptance.csv")


def _rows() -> list[dict]:
    with open(PATH, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def expected_accepted(alpha: float, gamma: int) -> float:
    """Mean tokens per verification (bonus included) for gamma drafted tokens, i.i.d. acceptance alpha."""
    return (1 - alpha ** (gamma + 1)) / (1 - alpha)


def test_header_exact():
    with open(PATH, newline="", encoding="utf-8") as f:
        assert next(csv.reader(f)) == HEADER


def test_has_rows_and_shape():
    rows = _rows()
    assert len(rows) >= 12
    for r in rows:
        assert None not in r, f"extra field in {r['method']}"
        assert all(v is not None for v in r.values()), f"short row: {r['method']}"


def test_families_valid():
    allowed = set(families.names()) | {"other"}
    for r in _rows():
        assert r["draft_family"] in allowed, r["draft_family"]


def test_flags_and_enums():
    for r in _rows():
        assert r["decoding"] in ("greedy", "sampling")
        assert r["alpha_from"] in ("reported", "derived", "")
        for col in ("shares_weights", "draft_trained", "secondary", "uncertain"):
            assert r[col] in ("true", "false"), (col, r[col])
        t = float(r["temperature"])
        if r["decoding"] == "greedy":
            assert t == 0
        else:
            assert t > 0
        if r["draft_family"] in ("static_depth", "dynamic_depth"):
            assert r["shares_weights"] == "true"


def test_numeric_ranges():
    for r in _rows():
        float(r["params_b"])
        if r["draft_sparsity"]:
            assert 0 < float(r["draft_sparsity"]) < 1
        if r["gamma"]:
            assert int(r["gamma"]) >= 1
        if r["alpha"]:
            assert 0 < float(r["alpha"]) < 1, r["alpha"]
        if r["mean_accepted"]:
            assert float(r["mean_accepted"]) >= 1, r["mean_accepted"]
        if r["speedup_reported"]:
            assert float(r["speedup_reported"]) > 0


def test_alpha_from_matches_columns():
    for r in _rows():
        if r["alpha_from"] == "":
            assert r["alpha"] == "", r["method"]
        else:
            assert r["alpha"] != "", r["method"]
        if r["alpha_from"] == "derived":
            assert r["gamma"] and r["mean_accepted"], r["method"]


@pytest.mark.parametrize("row", [r for r in _rows() if r["alpha_from"] == "derived"],
                         ids=lambda r: f"{r['method']}|{r['task']}|{r['temperature']}|{r['gamma']}")
def test_derived_alpha_reproduces_mean_accepted(row):
    got = expected_accepted(float(row["alpha"]), int(row["gamma"]))
    assert got == pytest.approx(float(row["mean_accepted"]), abs=0.02)
    # mean_accepted counts the bonus token: at most gamma + 1
    assert float(row["mean_accepted"]) <= int(row["gamma"]) + 1


def test_formula_counts_bonus_token():
    assert expected_accepted(0.0, 5) == 1.0          # nothing accepted: the dense model's own token
    assert expected_accepted(0.999999, 4) == pytest.approx(5.0, abs=1e-4)


def test_every_row_cited():
    for r in _rows():
        assert r["citation"].strip(), r["method"]
        if r["secondary"] == "true":
            assert "secondary" in r["citation"], r["method"]


def test_static_depth_has_greedy_and_sampling():
    decodings = {r["decoding"] for r in _rows() if r["draft_family"] == "static_depth" and r["alpha"]}
    assert {"greedy", "sampling"} <= decodings
