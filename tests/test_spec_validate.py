"""Self-speculative decoding run for real (pis_tui.validation.speculative): the early-exit draft
is the dense model's first layers, the verification and rollback keep the cache right, and the
iterations and tokens add up.  A tiny random Llama (4 layers, hidden 64, vocab 128).

A forced α checks the cost model's *cost*, not the outputs: the committed drafted tokens are
the draft's argmax, which may differ from the dense model's, so the outputs equal the dense
greedy decode's only at α = 0 (each iteration commits the verification's own argmax) and
with greedy acceptance (a drafted token kept only when it is the dense argmax) at batch 1.
"""

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from pis_tui.decide import speculative as sp  # noqa: E402
from pis_tui.errors import UserError  # noqa: E402
from pis_tui.validation import speculative as vs  # noqa: E402

L, E = 4, 2


@pytest.fixture(scope="module")
def cfg():
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=L,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                       max_position_embeddings=512, initializer_range=0.3,
                       tie_word_embeddings=False)


@pytest.fixture(scope="module")
def dense(cfg):
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)  # every layer its own weights (an early exit of the wrong layers shows)
    m = LlamaForCausalLM(cfg).eval()
    vs.use_spec_attention(m)
    return m


@pytest.fixture(scope="module")
def prompt():
    return torch.randint(0, 128, (3, 10), generator=torch.Generator().manual_seed(1))


def test_the_draft_is_the_model_truncated_to_its_first_layers(cfg, dense, prompt):
    """The early exit over the dense model's cache gives the logits a separately built model of
    its first E layers gives over its own cache; the weights are the dense model's own."""
    import copy

    from transformers import DynamicCache, LlamaForCausalLM

    short_cfg = copy.deepcopy(cfg)
    short_cfg.num_hidden_layers = E
    short = LlamaForCausalLM(short_cfg).eval()
    missing, _ = short.load_state_dict(dense.state_dict(), strict=False)
    assert not missing
    vs.use_spec_attention(short)
    draft = vs.EarlyExitDraft(dense, E)
    assert all(a is b for a, b in zip(draft._short, list(dense.model.layers)[:E]))  # no copy
    nxt = torch.tensor([[5], [7], [9]])
    with torch.inference_mode():
        pre = vs.prefill(dense, prompt)  # the dense model's prefill: all 4 layers' KV
        cache, _ = pre.fresh()
        got = [draft(nxt, cache, 1), draft(nxt + 1, cache, 1)]  # two steps, cache appended
        own = DynamicCache(config=short_cfg)
        short(input_ids=prompt, cache=own, use_cache=True)
        want = [short(input_ids=nxt, cache=own, use_cache=True).logits[:, -1:],
                short(input_ids=nxt + 1, cache=own, use_cache=True).logits[:, -1:]]
        full = dense(input_ids=nxt, cache=pre.fresh()[0], use_cache=True).logits[:, -1:]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got[0], full, atol=1e-3)  # not the dense model
    assert [layer.get_seq_length() for layer in cache.layers] == [12, 12, 10, 10]
    assert len(dense.model.layers) == L  # the swap is undone


def test_alpha_zero_commits_the_verifications_argmax_and_keeps_the_dense_outputs(dense, prompt):
    O, g = 12, 3
    lens = []
    run = vs.run_speculative(dense, prompt, O, g, 0.0, draft_layers=E,
                             on_iteration=lambda c, it: lens.append(
                                 [layer.get_seq_length() for layer in c.layers]))
    ref = vs.run_dense(dense, prompt, O)
    assert run.iterations == O and run.tokens == [O] * 3
    assert all(it.accepted == (0, 0, 0) for it in run.steps)
    assert run.outputs == ref.outputs
    # each iteration keeps the last committed token's position only: P + i on every layer
    assert lens == [[10 + i] * L for i in range(1, O + 1)]
    assert [it.cache_len for it in run.steps] == list(range(11, 11 + O))


def test_greedy_acceptance_at_batch_1_keeps_the_dense_outputs(dense, prompt):
    run = vs.run_speculative(dense, prompt[:1], 16, 3, None, draft_layers=E)
    ref = vs.run_dense(dense, prompt[:1], 16)
    assert run.outputs[0][:16] == ref.outputs[0]


def test_a_high_alpha_adds_up(dense, prompt):
    """Forced α 0.9: each sequence's tokens are the sum of its n_b + 1, the loop stops when the
    last has O, the cache grows by max n_b + 1 an iteration; the outputs are not the dense
    model's (the committed drafted tokens are the draft's argmax): not checked."""
    O, g = 20, 4
    lens = []
    run = vs.run_speculative(dense, prompt, O, g, 0.9, seed=3, draft_layers=E,
                             on_iteration=lambda c, it: lens.append(
                                 {layer.get_seq_length() for layer in c.layers}))
    again = vs.run_speculative(dense, prompt, O, g, 0.9, seed=3, draft_layers=E)
    assert [it.accepted for it in again.steps] == [it.accepted for it in run.steps]  # seeded
    for b in range(3):
        assert run.tokens[b] == sum(it.accepted[b] + 1 for it in run.steps)
        assert len(run.outputs[b]) == run.tokens[b]
    assert min(run.tokens) >= O
    before = [sum(it.accepted[b] + 1 for it in run.steps[:-1]) for b in range(3)]
    assert min(before) < O  # not one iteration too many
    n, want = 10, []
    for it in run.steps:
        n += max(it.accepted) + 1
        want.append({n})
    assert lens == want and [it.cache_len for it in run.steps] == [min(w) for w in want]
    assert run.iterations < O  # several tokens an iteration
    assert all(0 <= a <= g for it in run.steps for a in it.accepted)
    assert run.draft_step_ms > 0 and run.verify_ms > 0 and run.rollback_ms >= 0
    assert run.decode_ms >= sum(it.draft_ms + it.verify_ms for it in run.steps)


def test_the_draft_layers_and_bad_runs():
    assert vs.draft_layers_of(8, 0.75) == 2 and vs.draft_layers_of(4, 0.5) == 2
    with pytest.raises(UserError, match="at least one"):
        vs.draft_layers_of(4, 0.9)
    with pytest.raises(UserError, match="drops no layer"):
        vs.draft_layers_of(4, 0.1)
    with pytest.raises(UserError, match="outside"):
        vs._check_run(4, 2, 1.0)
    with pytest.raises(UserError, match="at least 1"):
        vs._check_run(4, 0, 0.5)


def test_the_prediction_is_the_cost_model_over_the_realised_iterations(monkeypatch):
    """predict_speculative: iterations × (γ·draft step + verification), dense O × step, with the
    plan's context averaging; the op times stubbed (each phase's price a function of its
    scenario)."""
    from pis_tui.model.spec import load_preset_config, spec_from_config
    from pis_tui.validation import compare

    spec = spec_from_config({k: v for k, v in load_preset_config("llama-3.2-1b").items()
                             if not k.startswith("_")}, "llama")

    class Est:
        def __init__(self, ms):
            self.latency_ms = ms

    def fake(spec_, strat, scen, phase, times):
        base = 10.0 if strat.family == "dense" else 4.0
        return Est(base * scen.decode_tokens + 0.01 * scen.context_len)

    monkeypatch.setattr(compare, "predict", fake)
    p = vs.predict_speculative(spec, 0.75, 4, 32, 16, 3, 0.8, 7, None)
    ctx = 0.01 * (32 + 47) / 2
    assert p.draft_step_ms == pytest.approx(4 + ctx)
    assert p.verify_ms == pytest.approx(40 + ctx)
    assert p.spec_decode_ms == pytest.approx(7 * (3 * (4 + ctx) + 40 + ctx))
    assert p.dense_decode_ms == pytest.approx(16 * (10 + ctx))
    assert p.expected_iterations == pytest.approx(sp.batch_iterations(0.8, 3, 16, 4))
    assert p.speedup == pytest.approx(p.dense_decode_ms / p.spec_decode_ms)


@pytest.mark.parametrize("args,needle", [
    (["--alpha", "1"], "outside [0, 1)"),
    (["--alpha", "-0.1"], "outside [0, 1)"),
    (["--alpha", "x"], "must be a number"),
    (["--gamma", "0"], "--gamma"),
    (["--draft-sparsity", "0.95", "--layers", "4"], "at least one"),
    (["--draft-sparsity", "1.5"], "outside (0, 1)"),
    (["--decode-batch", "0"], "must be positive"),
    (["--output-len", "0"], "--output-len"),
    (["--dtype", "fp16"], "fp32 or bf16"),
    (["--model", "qwen3-30b-a3b"], "dense models"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, args, needle):
    from pis_tui.cli import main

    code = main(["validate-speculative", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("pis-tui: error:") and needle in err[0]


def test_cli_end_to_end_with_the_op_times_stubbed(capsys, tmp_path, monkeypatch):
    """The whole command on a tiny config: the real runs, the op measurements and the dispatch
    probe stubbed (tests/benchmarks/validate_speculative_cpu.py runs them for real)."""
    from pis_tui.cli import main
    from pis_tui.validation import compare
    from pis_tui.validation.op_times import OpTimes

    class Est:
        def __init__(self, ms):
            self.latency_ms = ms

    monkeypatch.setattr(compare, "_probe_overheads", lambda *a, **k: None)
    monkeypatch.setattr(OpTimes, "ensure", lambda self, ops: None)
    monkeypatch.setattr(OpTimes, "unstable", lambda self, ops: [])
    monkeypatch.setattr(compare, "predict", lambda spec, strat, scen, ph, times: Est(
        (1.0 if strat.family == "dense" else 0.5) * scen.decode_tokens))
    d = tmp_path / "tiny"
    d.mkdir()
    d.joinpath("config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 256,
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
        "max_position_embeddings": 512, "tie_word_embeddings": False}))
    out = tmp_path / "r.json"
    code = main(["validate-speculative", "--model", str(d), "--draft-sparsity", "0.5",
                 "--gamma", "2", "--alpha", "0.5", "--prompt-len", "8", "--output-len", "8",
                 "--decode-batch", "1,2", "--repeats", "2", "--json", str(out), "--cache", "none"])
    text = capsys.readouterr().out
    assert code == 0
    doc = json.loads(out.read_text())
    rows = doc["rows"]
    assert [x["batch"] for x in rows] == [1, 2]
    for x in rows:
        assert x["spec_measured_ms"] > 0 and x["dense_measured_ms"] > 0 and x["draft_layers"] == 2
        assert x["predicted_speedup"] == pytest.approx(8.0 / (x["iterations"] * (2 * 0.5 + 3)))
        assert x["error"] == pytest.approx(x["predicted_speedup"] / x["measured_speedup"] - 1, abs=1e-5)
        assert x["tokens_min"] >= 8
    assert doc["summary"]["n"] == 2 and "p90" in text and "worst" in text
    assert "speculative vs dense decode" in text
