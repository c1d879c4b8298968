"""Self-speculative decoding's cost model: expected tokens, the static batch's slowest sequence,
the verification's op list."""

from __future__ import annotations

import random

import pytest

from pis_tui.decide.speculative import (alpha_from_mean, batch_iterations, expected_tokens,
                                        spec_timing, tokens_pmf)


def test_expected_tokens_is_leviathans_formula_and_matches_the_pmf():
    assert expected_tokens(0.8, 4) == pytest.approx(3.3616)
    assert expected_tokens(0.0, 4) == 1.0
    for a, g in ((0.5, 1), (0.7, 3), (0.95, 8)):
        pmf = tokens_pmf(a, g)
        assert sum(pmf) == pytest.approx(1.0)
        assert sum(j * p for j, p in enumerate(pmf, start=1)) == pytest.approx(expected_tokens(a, g))
    with pytest.raises(ValueError):
        expected_tokens(1.0, 4)


def _simulate(a, g, tokens, batch, n, rng):
    total = 0
    for _ in range(n):
        worst = 0
        for _ in range(batch):
            got = its = 0
            while got < tokens:
                j = 1
                while j <= g and rng.random() < a:
                    j += 1
                got += j
                its += 1
            worst = max(worst, its)
        total += worst
    return total / n


@pytest.mark.parametrize("a,g,tokens,batch", [(0.8, 4, 64, 1), (0.8, 4, 64, 8), (0.6, 3, 32, 16)])
def test_the_static_batch_waits_for_its_slowest_sequence(a, g, tokens, batch):
    exact = batch_iterations(a, g, tokens, batch)
    sim = _simulate(a, g, tokens, batch, 1500, random.Random(1))
    assert exact == pytest.approx(sim, rel=0.02)
    # the mean sequence needs about tokens / E[X]; the batch's slowest more
    assert batch_iterations(a, g, tokens, 1) <= exact
    assert batch_iterations(a, g, tokens, 1) == pytest.approx(tokens / expected_tokens(a, g), rel=0.08)


def test_alpha_from_mean_inverts_the_formula():
    for a, g in ((0.3, 2), (0.8, 4), (0.93, 6)):
        assert alpha_from_mean(expected_tokens(a, g), g) == pytest.approx(a, abs=1e-9)
    with pytest.raises(ValueError):
        alpha_from_mean(6.0, 4)


def test_an_iteration_costs_gamma_drafts_and_one_verification():
    t = spec_timing(0.8, 4, 64, 1, draft_step_ms=2.0, verify_ms=10.0)
    assert t.iteration_ms == 18.0 and t.decode_ms == pytest.approx(18.0 * t.iterations)
    assert t.tpot_ms(64) < 10.0 * 1.0  # faster than one dense step (10 ms) a token
