"""The deterministic, estimate-only benchmarks still reproduce their committed results (a
change to the model that moves them must re-run them: ``python tests/benchmarks/<name>.py``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent / "benchmarks"
#: estimate-only, no timing and no data outside the project
DETERMINISTIC = ("study_table2_check", "tp_llama70b_h200", "h200_eager_fit", "accuracy_quotes")


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_committed_result_is_what_the_code_gives_now(name):
    committed = (BENCH / f"{name}.result.md").read_text(encoding="utf-8").splitlines()
    date = next(i for i, line in enumerate(committed) if line.startswith("- date:"))
    assert committed[date + 1:] == _load(name).body(), (
        f"tests/benchmarks/{name}.result.md is stale: re-run python tests/benchmarks/{name}.py")


def test_the_readme_tp_table_is_the_benchmarks():
    """docs/tensor-parallelism.md's llama-3.1-70b on 8 × h200-sxm tables (fused engine) are the
    committed result's, line for line, and name the command that makes them."""
    readme = (BENCH.parents[1] / "docs" / "tensor-parallelism.md").read_text(encoding="utf-8")
    result = (BENCH / "tp_llama70b_h200.result.md").read_text(encoding="utf-8")
    fused = result.split("## engine fused")[1].split("## engine eager")[0]
    rows = [line for line in fused.splitlines() if line.startswith("| ")]
    assert len(rows) >= 4 + 2 * 8 and all(row in readme for row in rows), \
        "docs/tensor-parallelism.md's TP tables are stale: copy them from tests/benchmarks/tp_llama70b_h200.result.md"
    assert "python tests/benchmarks/tp_llama70b_h200.py" in readme and "**estimated**" in readme


def test_the_docs_quote_median_p90_and_worst_from_the_committed_results():
    """Every accuracy figure the docs quote is its median, p90 and worst, as
    accuracy_quotes.py takes them from the committed results (a median alone reads like a
    bound: "interpolation within 2.8 %" was a median, its p90 11.9 %, its worst 122 %)."""
    import re

    docs = BENCH.parents[1] / "docs"
    pages = {}
    for page, what, src, n, quote in _load("accuracy_quotes").quotes():
        text = pages.setdefault(page, re.sub(r"\s+", " ", (docs / page).read_text(encoding="utf-8")))
        assert quote in text, f"docs/{page} does not quote {what} ({src}) as {quote!r}"


def test_the_study_check_says_which_engine_lengths_and_figures_it_compares():
    text = (BENCH / "study_table2_check.result.md").read_text(encoding="utf-8")
    assert "as quoted by secondary summaries" in text and "not read from the paper" in text
    assert "pis-tui's defaults, prefill 1×1024 and decode batch 16 @ 1024" in text
    assert "the study's own lengths are not known" in text
    summary = [x for x in text.splitlines() if x.startswith("pis-tui (")]
    assert [x.split(" engine")[0] for x in summary] == ["pis-tui (fused", "pis-tui (eager"]
    assert all("p90" in x and "worst" in x and "default lengths" in x for x in summary)
