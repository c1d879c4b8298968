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


# ------------------------------------------------------------------ acceptance: measured and published

torch = pytest.importorskip("torch")


def _logits(rows):
    return torch.log(torch.tensor(rows, dtype=torch.float64))


def test_greedy_and_sampling_acceptance_are_different_quantities():
    from pis_tui.hf.acceptance import rates_from_logits

    # the same argmax, little overlap of mass: greedy 1, sampling 0.52
    r = rates_from_logits(_logits([[0.51, 0.49]]), _logits([[0.99, 0.01]]))
    assert r.greedy == 1.0 and r.sampling == pytest.approx(0.52)
    # other argmaxes, nearly the same distribution: greedy 0, sampling 0.98
    r = rates_from_logits(_logits([[0.51, 0.49]]), _logits([[0.49, 0.51]]))
    assert r.greedy == 0.0 and r.sampling == pytest.approx(0.98)
    same = rates_from_logits(_logits([[0.2, 0.3, 0.5]] * 4), _logits([[0.2, 0.3, 0.5]] * 4))
    assert same.greedy == 1.0 and same.sampling == pytest.approx(1.0) and same.positions == 4
    # a higher temperature flattens both: their overlap grows
    p, q = _logits([[0.9, 0.05, 0.05]]), _logits([[0.05, 0.9, 0.05]])
    assert rates_from_logits(p, q, 2.0).sampling > rates_from_logits(p, q, 1.0).sampling


def test_a_model_drafting_for_itself_is_always_accepted_and_a_pruned_one_less():
    import copy

    from transformers import LlamaConfig, LlamaForCausalLM

    from pis_tui.hf.acceptance import measure

    torch.manual_seed(0)
    cfg = LlamaConfig(num_hidden_layers=4, hidden_size=32, intermediate_size=64,
                      num_attention_heads=4, num_key_value_heads=2, vocab_size=64)
    dense = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # random init leaves tiny updates: make the layers matter
        for layer in dense.model.layers:
            layer.mlp.down_proj.weight.mul_(8)
    ids = torch.randint(0, 64, (200,))
    me = measure(dense, dense, ids, seq_len=32)
    assert me.greedy == 1.0 and me.sampling == pytest.approx(1.0) and me.positions == 199
    draft = copy.deepcopy(dense)
    draft.model.layers = draft.model.layers[:1]  # an early exit after one layer
    draft.config.num_hidden_layers = 1
    r = measure(dense, draft, ids, seq_len=32)
    assert 0.0 <= r.greedy < 1.0 and 0.0 < r.sampling < 1.0 and r.greedy_se > 0


def test_published_acceptance_follows_the_borrowing_rule():
    from pis_tui.quality.acceptance import AcceptanceRow, published

    def row(fam, s, dec, a, t=0.0, model="Llama-2-7B", trained=False):
        return AcceptanceRow("m", model, 7.0, fam, s, dec, t, 4, a, trained, False, False, "c", "task")

    rows = (row("static_depth", 0.75, "greedy", 0.9, trained=True),
            row("static_depth", 0.75, "greedy", 0.8), row("static_depth", 0.5, "sampling", 0.6, 1.0))
    e = published("llama-2-7b", "static_depth", 0.75, rows=rows)
    assert e.alpha == pytest.approx(0.85) and (e.lo, e.hi) == (0.8, 0.9) and e.upper_bound
    assert e.borrowed_from is None
    other = published("qwen3-8b", "static_depth", 0.7, rows=rows)
    assert other.borrowed_from == "Llama-2-7B" and other.lo == pytest.approx(0.75)
    # greedy and sampling never stand for each other; a sampling figure keeps its temperature
    assert published("llama-2-7b", "static_depth", 0.5, rows=rows).alpha is None
    assert published("llama-2-7b", "static_depth", 0.5, "sampling", 0.7, rows=rows).alpha is None
    assert published("llama-2-7b", "static_depth", 0.5, "sampling", 1.0, rows=rows).alpha == 0.6
    assert published("llama-2-7b", "static_width", 0.75, rows=rows).source == "none"


# ------------------------------------------------------------------ the plan's candidates

def _plan(**kw):
    from pis_tui.decide.deployment import SpecOptions, plan
    from pis_tui.decide.speculative import GAMMAS
    from pis_tui.families.strategy import from_token
    from pis_tui.model.workload import Targets, single
    from pis_tui.quality.model import build_quality_model

    opts = SpecOptions(tuple(from_token("static_depth", s) for s in (0.5, 0.75)), GAMMAS,
                       alpha=kw.pop("alpha", None))
    wl = single("chat", 1024, 256, kw.pop("concurrency", 1), Targets())
    return plan("llama-3.1-8b", "h100-sxm", wl, strategies=("static_depth",), sparsities=(0.25,),
                quality=build_quality_model(), speculative=opts, **kw)


def test_speculation_is_lossless_and_pays_while_decode_is_memory_bound():
    from pis_tui.decide.deployment import recommend_plan

    r = _plan(alpha=0.9)
    spec = [c for c in r.candidates if c.speculation is not None]
    assert len(spec) == 2 and all(c.quality.value == 0.0 and c.quality.source == "lossless" for c in spec)
    deep = max(spec, key=lambda c: c.sparsity)
    s = deep.speculation
    assert s.shares_weights and s.draft_weights_bytes == 0 and s.draft_kv_bytes_per_token == 0
    assert deep.e2e_ms < r.dense.e2e_ms  # a cheap draft at α 0.9, batch 1
    assert s.gamma in dict(s.gammas) and min(ms for _, ms in s.gammas) == pytest.approx(dict(s.gammas)[s.gamma])
    # the gain falls with the batch and turns into a loss: the batch where it stops paying
    gains = [d / sp for _, sp, d, _ in s.by_batch]
    assert gains[0] > 1.0 and gains[-1] < gains[0]
    # a dearer draft accepted less often stops paying at some batch
    half = min((c for c in _plan(alpha=0.6).candidates if c.speculation is not None),
               key=lambda c: c.sparsity).speculation
    assert half.breakeven_batch is not None
    for b, sp, d, _ in half.by_batch:
        assert (sp < d) == (b < half.breakeven_batch), (b, sp, d)
    # a budget of 0 can now recommend something other than dense
    rec = recommend_plan(r, 0.0)
    assert rec.best is not None and rec.best.speculation is not None
    # α given: the interval is the timing's own (the draft step and the verification against
    # the dense step, roofline-priced here), not zero wide
    pt = rec.points[rec.best.key]
    assert pt.speedup_lo < pt.speedup < pt.speedup_hi


def test_alphas_range_widens_the_interval_and_a_trained_drafts_alpha_is_flagged():
    from pis_tui.decide.deployment import recommend_plan

    r = _plan()  # published α: LayerSkip's (trained: an upper bound) for the 75 % draft
    rec = recommend_plan(r, 0.0)
    deep = max((c for c in r.candidates if c.speculation is not None), key=lambda c: c.sparsity)
    assert deep.speculation.acceptance.upper_bound
    assert "flagged" in rec.excluded.get(deep.key, "")
    rec = recommend_plan(r, 0.0, include_flagged=True)
    pt = rec.points[deep.key]
    assert pt.speedup_lo < pt.speedup < pt.speedup_hi
    assert "alpha_upper_bound" in pt.flags


def test_the_plan_command_spells_drafts_and_refuses_bad_ones():
    from helpers import run_cli

    r = run_cli("plan", "--model", "llama-3.1-8b", "--gpu", "h100-sxm", "--strategies", "static_depth",
                "--sparsities", "0.25", "--concurrency", "1", "--alpha", "0.9", "--budget", "0")
    assert r.returncode == 0 and "▶ speculative" in r.stdout, r.stdout[:600]
    assert "stops paying at batch" in r.stdout or "pays up to the memory limit" in r.stdout
    r = run_cli("plan", "--model", "llama-3.1-8b", "--gpu", "h100-sxm", "--strategies", "static_depth",
                "--sparsities", "0.25", "--drafts", "none")
    assert r.returncode == 0 and "speculative" not in r.stdout
    for bad, needle in ((("--drafts", "static_depth"), "family@sparsity"),
                        (("--alpha", "1.5"), "--alpha"), (("--gammas", "0,2"), "--gammas"),
                        (("--decoding", "sampling", "--temperature", "0"), "temperature")):
        r = run_cli("plan", "--model", "llama-3.1-8b", "--gpu", "h100-sxm", *bad)
        assert r.returncode == 2 and needle in r.stderr and r.stderr.strip().count("\n") == 0, r.stderr


def test_measured_alpha_is_read_at_the_asked_sparsity_newest_first_and_below_one():
    from pis_tui.quality.acceptance import MAX_ALPHA, from_measured

    rows = [{"strategy": "static_depth", "sparsity": 0.3, "greedy_acceptance": 0.7,
             "greedy_acceptance_se": 0.01, "positions": 100, "measured_at": "2026-12-01T00:00:00"},
            {"strategy": "static_depth", "sparsity": 0.3, "greedy_acceptance": 1.0,
             "greedy_acceptance_se": 0.0, "positions": 20, "measured_at": "2026-12-02T00:00:00"}]
    e = from_measured(rows, "static_depth", 0.3)
    assert e.alpha == MAX_ALPHA and e.source == "measured" and e.n_points == 20  # newest, clamped
    assert from_measured(rows, "static_depth", 0.3125) is None  # the asked sparsity, not achieved


def test_a_precision_without_a_quality_figure_leaves_speculation_without_one():
    r = _plan(alpha=0.8, precision="mxfp4")
    dense = r.dense
    spec = [c for c in r.candidates if c.speculation is not None]
    assert dense.quality.value is None and spec and all(c.quality.value is None for c in spec)


def test_drafts_may_be_combinations_but_not_dense():
    from helpers import run_cli

    r = run_cli("plan", "--model", "llama-3.1-8b", "--gpu", "h100-sxm", "--strategies", "static_depth",
                "--sparsities", "0.25", "--concurrency", "1", "--alpha", "0.8",
                "--drafts", "static_depth@0.5+static_width@0.25")
    assert r.returncode == 0 and "static_depth 50% + static_width 25% draft" in r.stdout
    r = run_cli("plan", "--model", "llama-3.1-8b", "--gpu", "h100-sxm", "--drafts", "dense@0.3")
    assert r.returncode == 2 and "no draft of itself" in r.stderr
