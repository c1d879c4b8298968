"""Measured quality: real pruning per family on tiny random models, perplexity, `pis-tui quality`.

Everything is built from configs (no download): a 4-layer Llama and a 4-layer Qwen2 (hidden
64, intermediate 256, 4 heads, 2 KV heads, vocab 128) and a word-level tokenizer.
"""

from __future__ import annotations

import copy
import json
import math
import threading

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from pis_tui.hf import perplexity as P  # noqa: E402
from pis_tui.hf.calibration import calibrate  # noqa: E402
from pis_tui.hf.layout import ATTN_LINEARS, MLP_LINEARS, decoder_layers, decoder_linears  # noqa: E402
from pis_tui.hf.structured import width_targets  # noqa: E402
from pis_tui.families.prune import apply, apply_combo  # noqa: E402
from pis_tui.errors import UserError  # noqa: E402

LAYERS, HIDDEN, INTER, HEADS, KV, VOCAB = 4, 64, 256, 4, 2, 128
HEAD_DIM = HIDDEN // HEADS
WORDS = ("the a of and to in is it that was for on with as by at from this be or an are not but have "
         "model prune layer head token").split()


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny matmuls: one thread is faster and immune to a busy machine's oversubscription."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _config(kind: str):
    from transformers import LlamaConfig, Qwen2Config

    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config}[kind]
    return cls(num_hidden_layers=LAYERS, hidden_size=HIDDEN, intermediate_size=INTER,
               num_attention_heads=HEADS, num_key_value_heads=KV, vocab_size=VOCAB,
               max_position_embeddings=512, tie_word_embeddings=False)


def _model(kind: str):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1234)
    m = AutoModelForCausalLM.from_config(_config(kind))
    # random init leaves tiny updates; scale the residual writers so layers matter
    with torch.no_grad():
        for layer in m.model.layers:
            layer.self_attn.o_proj.weight.mul_(8)
            layer.mlp.down_proj.weight.mul_(8)
    return m.eval()


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def setup(request):
    m = _model(request.param)
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, VOCAB, (400,), generator=g)
    cal = calibrate(m, P.calibration_windows(ids[:192], 64))
    return request.param, m, ids[192:], cal


def _logits(m, ids):
    with torch.no_grad():
        return m(input_ids=ids[None, :64], use_cache=False).logits


# ------------------------------------------------------------------------------- calibration

def test_calibration_collects_block_influence_and_norms(setup):
    _, m, _, cal = setup
    assert cal.n_tokens == 192
    assert len(cal.layer_bi) == LAYERS and all(0 < b < 2 for b in cal.layer_bi)
    assert all(0 <= b < 2 for b in cal.attn_bi + cal.mlp_bi)
    assert len(cal.in_sqsum) == LAYERS * 7
    assert cal.in_sqsum["layers.0.mlp.down_proj"].shape == (INTER,)
    assert cal.in_sqsum["layers.2.self_attn.o_proj"].shape == (HEADS * HEAD_DIM,)


# ------------------------------------------------------------------------------- static_depth

@pytest.mark.parametrize("s", [0.125, 0.25, 0.5])
def test_static_depth_drops_least_influential_layers(setup, s, tmp_path):
    kind, m0, ids, cal = setup
    m = copy.deepcopy(m0)
    r = apply(m, "static_depth", s, cal)
    k = math.floor(s * LAYERS + 0.5)
    assert len(m.model.layers) == LAYERS - k == m.config.num_hidden_layers
    assert r.achieved_sparsity == k / LAYERS
    expected = sorted(sorted(range(LAYERS), key=lambda i: cal.layer_bi[i])[:k])
    assert r.details["dropped_layers"] == expected
    kept = [i for i in range(LAYERS) if i not in expected]
    assert all(torch.equal(m.model.layers[j].mlp.up_proj.weight, m0.model.layers[i].mlp.up_proj.weight)
               for j, i in enumerate(kept))
    assert [layer.self_attn.layer_idx for layer in m.model.layers] == list(range(LAYERS - k))
    out = _logits(m, ids)
    assert out.shape == (1, 64, VOCAB) and torch.isfinite(out).all()
    if s == 0.5:  # the pruned model saves and reloads as a smaller model
        from transformers import AutoModelForCausalLM

        m.save_pretrained(tmp_path)
        back = AutoModelForCausalLM.from_pretrained(tmp_path, local_files_only=True).eval()
        assert len(back.model.layers) == LAYERS - k
        assert torch.allclose(_logits(back, ids), out, atol=1e-5)


def test_static_depth_sublayer_granularity(setup):
    _, m0, ids, cal = setup
    m = copy.deepcopy(m0)
    r = apply(m, "static_depth", 0.25, cal, granularity="sublayer")
    assert r.achieved_sparsity == 2 / (2 * LAYERS)
    blocks = sorted([(cal.attn_bi[i], i, "attn") for i in range(LAYERS)]
                    + [(cal.mlp_bi[i], i, "mlp") for i in range(LAYERS)])[:2]
    assert sorted(r.details["dropped_blocks"]) == sorted((i, k) for _, i, k in blocks)
    skipped = sum((type(layer.self_attn).__name__ == "SkippedAttention")
                  + (type(layer.mlp).__name__ == "SkippedMLP") for layer in m.model.layers)
    assert skipped + 2 * (LAYERS - len(m.model.layers)) == 2
    assert torch.isfinite(_logits(m, ids)).all()


# ------------------------------------------------------------------------------- static_width

def test_width_targets_match_llama_8b():
    assert width_targets(8, 14336, 0.25) == (6, 10752)
    assert width_targets(8, 14336, 0.5) == (4, 7168)
    assert width_targets(2, 4864, 0.25) == (2, 3712)  # 2 KV groups: 0% or 50% only
    assert width_targets(2, 256, 0.9) == (1, 24)


@pytest.mark.parametrize("s", [0.25, 0.5])
def test_static_width_slices_heads_and_channels(setup, s, tmp_path):
    kind, m0, ids, cal = setup
    m = copy.deepcopy(m0)
    r = apply(m, "static_width", s, cal)  # tiny: align 8
    groups, ch = width_targets(KV, INTER, s, 8)
    q_heads = groups * (HEADS // KV)
    assert ch == round((1 - s) * INTER / 8) * 8 and ch < INTER
    for i, layer in enumerate(m.model.layers):
        a, f = layer.self_attn, layer.mlp
        assert a.q_proj.weight.shape == (q_heads * HEAD_DIM, HIDDEN)
        assert a.k_proj.weight.shape == a.v_proj.weight.shape == (groups * HEAD_DIM, HIDDEN)
        assert a.o_proj.weight.shape == (HIDDEN, q_heads * HEAD_DIM)
        assert a.o_proj.in_features == q_heads * HEAD_DIM
        assert f.gate_proj.weight.shape == f.up_proj.weight.shape == (ch, HIDDEN)
        assert f.down_proj.weight.shape == (HIDDEN, ch)
        if kind == "qwen2":
            assert a.q_proj.bias.shape == (q_heads * HEAD_DIM,)
        # the kept channels are those of largest activation norm, in order
        imp = cal.in_sqsum[f"layers.{i}.mlp.down_proj"]
        top = torch.sort(torch.topk(imp, ch).indices).values
        assert torch.equal(f.gate_proj.weight, m0.model.layers[i].mlp.gate_proj.weight[top])
    c = m.config
    assert (c.num_attention_heads, c.num_key_value_heads, c.intermediate_size, c.head_dim) == \
        (q_heads, groups, ch, HEAD_DIM)
    assert 0 < r.achieved_sparsity < 1
    out = _logits(m, ids)
    assert torch.isfinite(out).all()
    from transformers import AutoModelForCausalLM

    m.save_pretrained(tmp_path)
    back = AutoModelForCausalLM.from_pretrained(tmp_path, local_files_only=True).eval()
    assert torch.allclose(_logits(back, ids), out, atol=1e-5)


def test_static_width_align_parameter(setup):
    _, m0, _, cal = setup
    m = copy.deepcopy(m0)
    apply(m, "static_width", 0.3, cal, align=64)
    assert m.model.layers[0].mlp.gate_proj.out_features == 192
    assert m.config.intermediate_size == 192


# ------------------------------------------------------------------------------- Wanda

def test_semi_structured_24_pattern(setup):
    _, m0, ids, cal = setup
    m = copy.deepcopy(m0)
    r = apply(m, "semi_structured_24", 0.25, cal)  # always 2:4 whatever is asked
    assert r.achieved_sparsity == pytest.approx(0.5)
    for name, lin in decoder_linears(m).items():
        w = lin.weight.reshape(lin.out_features, -1, 4)
        assert ((w != 0).sum(-1) <= 2).all(), name
        assert ((w == 0).sum(-1) >= 2).all(), name
    # the kept two are those of largest |W|·‖X‖ (checked on one linear)
    name = "layers.1.mlp.up_proj"
    w0 = decoder_linears(m0)[name].weight
    score = (w0.abs() * cal.in_norm(name).float()[None, :]).reshape(w0.shape[0], -1, 4)
    kept = decoder_linears(m)[name].weight.reshape(w0.shape[0], -1, 4) != 0
    top = torch.zeros_like(kept).scatter_(-1, score.topk(2, dim=-1).indices, True)
    assert torch.equal(kept, top)
    assert torch.isfinite(_logits(m, ids)).all()


@pytest.mark.parametrize("s", [0.3, 0.5])
def test_unstructured_per_row_sparsity(setup, s):
    _, m0, ids, cal = setup
    m = copy.deepcopy(m0)
    r = apply(m, "unstructured", s, cal)
    for name, lin in decoder_linears(m).items():
        k_in = lin.in_features
        zeros = (lin.weight == 0).sum(1)
        assert (zeros == math.floor(s * k_in + 0.5)).all(), name
    assert r.achieved_sparsity == pytest.approx(s, abs=0.01)
    assert torch.isfinite(_logits(m, ids)).all()


# ------------------------------------------------------------------------------- low_rank

@pytest.mark.parametrize("s", [0.25, 0.5])
def test_low_rank_ranks_as_asked(setup, s):
    _, m0, ids, cal = setup
    m = copy.deepcopy(m0)
    r = apply(m, "low_rank", s, None)
    layer = m.model.layers[0]
    for part, names in (("self_attn", ATTN_LINEARS), ("mlp", MLP_LINEARS)):
        for n in names:
            mod = getattr(getattr(layer, part), n)
            w = getattr(getattr(m0.model.layers[0], part), n).weight.detach()
            n_out, k_in = w.shape
            want = max(8, math.floor((1 - s) * n_out * k_in / (n_out + k_in) / 8 + 0.5) * 8)
            assert want % 8 == 0
            assert type(mod).__name__ == "LowRankLinear"
            assert mod.rank == want == r.details["ranks"][f"layers.0.{part}.{n}"]
            assert mod.first.weight.shape == (want, k_in) and mod.second.weight.shape == (n_out, want)
            # the best rank-r approximation (Eckart–Young): error = tail singular values
            approx = (mod.second.weight @ mod.first.weight).detach()
            sv = torch.linalg.svdvals(w)
            assert torch.linalg.norm(w - approx) == pytest.approx(float(sv[want:].norm()), rel=1e-3)
    assert r.achieved_sparsity > 0
    out = _logits(m, ids)
    assert torch.isfinite(out).all()
    # a shared SVD cache (one decomposition for every sparsity) gives the same model
    cache: dict = {}
    apply(copy.deepcopy(m0), "low_rank", 0.2, None, svd_cache=cache)
    assert len(cache) == LAYERS * 7
    m2 = copy.deepcopy(m0)
    apply(m2, "low_rank", s, None, svd_cache=cache)
    assert torch.allclose(_logits(m2, ids), out, atol=1e-5)


# ------------------------------------------------------------------------------- dynamic families

@pytest.mark.parametrize("s", [0.25, 0.5])
def test_dynamic_depth_skips_asked_share(setup, s):
    _, m0, ids, _ = setup
    m = copy.deepcopy(m0)
    r = apply(m, "dynamic_depth", s, None)
    zero_tokens = []
    h = m.model.layers[1].mlp.register_forward_hook(
        lambda mod, a, out: zero_tokens.append(int((out.abs().sum(-1) == 0).sum())))
    out = _logits(m, ids)
    h.remove()
    assert r.tracker.share() == pytest.approx(s)
    assert r.final_achieved() == pytest.approx(s)
    assert r.tracker.total == 2 * LAYERS * 64
    assert zero_tokens == [int(s * 64)]
    assert not torch.allclose(out, _logits(m0, ids))
    r.tracker.remove()
    assert torch.allclose(_logits(m, ids), _logits(m0, ids))


def test_block_sparse_attention(setup):
    _, m0, ids, _ = setup
    dense = _logits(m0, ids)
    m = copy.deepcopy(m0)
    apply(m, "dynamic_sparse_attention", 0.0, None, block=16)
    assert torch.allclose(_logits(m, ids), dense, atol=1e-4)  # s = 0 is plain causal attention
    m = copy.deepcopy(m0)
    r = apply(m, "dynamic_sparse_attention", 0.5, None, block=16)
    out = _logits(m, ids)
    # 4 blocks of 16: keep floor(0.5·(i+1) + 0.5) of i+1 causal blocks → 1, 1, 2, 2 of 10
    assert r.final_achieved() == pytest.approx(0.4)
    assert torch.isfinite(out).all() and not torch.allclose(out, dense, atol=1e-4)
    # the first block only sees itself: its logits are unchanged
    assert torch.allclose(out[:, :16], dense[:, :16], atol=1e-4)


def test_unsupported_and_unknown():
    with pytest.raises(UserError, match="SliceGPT"):
        apply(None, "static_width_hidden", 0.25, None)
    with pytest.raises(UserError, match="unknown strategy"):
        apply(None, "magic", 0.25, None)
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=32))
    with pytest.raises(UserError, match="Llama-layout"):
        apply(gpt2, "low_rank", 0.25, None)


# ------------------------------------------------------------------------------- perplexity

def test_windows_score_every_token_once():
    for n, L, stride in [(1000, 64, None), (1000, 64, 16), (50, 64, None), (129, 64, 63), (2, 8, None)]:
        wins = P.make_windows(n, L, stride)
        scored = [t for w in wins for t in range(w.score_from, w.end)]
        assert scored == list(range(1, n))
        assert all(w.end - w.begin <= L and w.begin < w.score_from for w in wins)


def test_perplexity_finite_deterministic_and_exact(setup):
    _, m, ids, _ = setup
    seen = []
    a = P.perplexity(m, ids.tolist(), seq_len=64, batch_size=2, on_progress=lambda d, t: seen.append((d, t)))
    b = P.perplexity(m, ids, seq_len=64, batch_size=1)
    assert math.isfinite(a.ppl) and a.ppl > 1
    assert a.ppl == pytest.approx(b.ppl, rel=1e-6)
    assert a.n_tokens == len(ids) - 1 and seen[-1] == (a.n_windows, a.n_windows)
    # one window: equals the model's own mean loss over the sequence
    with torch.no_grad():
        loss = m(input_ids=ids[None, :50], labels=ids[None, :50]).loss
    one = P.perplexity(m, ids[:50], seq_len=64)
    assert one.nll == pytest.approx(float(loss), rel=1e-5)
    ev = threading.Event()
    ev.set()
    with pytest.raises(P.Cancelled):
        P.perplexity(m, ids, seq_len=64, cancel=ev)
    with pytest.raises(UserError):
        P.perplexity(m, [5], seq_len=64)


# ------------------------------------------------------------------------------- CLI

def _save_tiny(d):
    _model("llama").save_pretrained(d)
    _save_tokenizer(d)


def _save_tokenizer(d):
    """A word-level tokenizer of WORDS saved into ``d``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "[BOS]": 1, "[EOS]": 2}
    for w in WORDS:
        vocab[w] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", bos_token="[BOS]",
                            eos_token="[EOS]").save_pretrained(d)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-llama")
    _save_tiny(d)
    import random

    rnd = random.Random(3)
    text = d / "text.txt"
    text.write_text(" ".join(rnd.choice(WORDS) for _ in range(700)) + "\n", encoding="utf-8")
    return d


def test_cli_quality_table_and_json(tiny_dir, tmp_path, capsys):
    from pis_tui.cli import main

    out_json = tmp_path / "q.json"
    rc = main(["quality", "--model", str(tiny_dir), "--text", str(tiny_dir / "text.txt"),
               "--strategies", "static_depth,static_width,semi_structured_24,unstructured,low_rank,"
               "dynamic_depth,dynamic_sparse_attention,static_width_hidden",
               "--sparsities", "0.25,0.5", "--seq-len", "64", "--json", str(out_json),
               "--cache", str(tmp_path / "c.duckdb")])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "Measured quality" in cap.out and "static_depth" in cap.out and "unsupported" in cap.out
    doc = json.loads(out_json.read_text())
    assert doc["quality_metric"] == "ppl_increase" and doc["model"] == tiny_dir.name
    rows = doc["results"]
    pairs = {(r["strategy"], r["sparsity"]) for r in rows}
    assert ("semi_structured_24", 0.5) in pairs and ("semi_structured_24", 0.25) not in pairs
    assert len(rows) == 6 * 2 + 1
    for r in rows:
        for k in ("model", "strategy", "sparsity", "achieved_sparsity", "ppl_dense", "ppl_pruned",
                  "ppl_increase", "text_sha256", "n_tokens"):
            assert k in r
        assert r["ppl_increase"] == pytest.approx((r["ppl_pruned"] - r["ppl_dense"]) / r["ppl_dense"])
        assert math.isfinite(r["ppl_pruned"]) and r["n_tokens"] > 100
    assert doc["unsupported"][0]["strategy"] == "static_width_hidden"
    from pis_tui.cache import Cache

    with Cache.open(str(tmp_path / "c.duckdb")) as c:
        stored = c.get_quality_results(model=tiny_dir.name)
    assert len(stored) == len(rows)
    assert {(r["strategy"], r["sparsity"]) for r in stored} == pairs
    assert all(r["text_sha256"] == doc["text"]["sha256"] for r in stored)
    depth = {r["sparsity"]: r["achieved_sparsity"] for r in rows if r["strategy"] == "static_depth"}
    assert depth == {0.25: 0.25, 0.5: 0.5}
    # the same text measured twice gives the same dense perplexity
    rc = main(["quality", "--model", str(tiny_dir), "--text", str(tiny_dir / "text.txt"),
               "--strategies", "static_depth", "--sparsities", "0.25", "--seq-len", "64", "--json", "-"])
    cap = capsys.readouterr()
    assert rc == 0
    again = json.loads(cap.out)
    assert again["ppl_dense"] == pytest.approx(doc["ppl_dense"], rel=1e-9)


def test_measured_quality_rows():
    from pis_tui.commands.quality import ROW_KEYS, measured_quality_rows

    rows = measured_quality_rows("m", [("static_depth", 0.25, 0.25, 12.0)], 10.0, "ab", 99)
    assert tuple(rows[0]) == ROW_KEYS
    assert rows[0]["ppl_increase"] == pytest.approx(0.2)


def _bad_dirs(tmp_path, tiny_dir):
    import shutil

    no_tok = tmp_path / "no-tok"
    no_tok.mkdir()
    shutil.copy(tiny_dir / "config.json", no_tok / "config.json")
    moe = tmp_path / "moe"
    moe.mkdir()
    cfg = json.loads((tiny_dir / "config.json").read_text())
    (moe / "config.json").write_text(json.dumps(dict(cfg, num_local_experts=8, model_type="mixtral")))
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"],
                                                  "num_hidden_layers": 2, "hidden_size": 64,
                                                  "num_attention_heads": 4, "intermediate_size": 128,
                                                  "vocab_size": 100}))
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    return no_tok, moe, bert, empty


def test_cli_bad_inputs(tiny_dir, tmp_path, capsys):
    from pis_tui.cli import main

    no_tok, moe, bert, empty = _bad_dirs(tmp_path, tiny_dir)
    text = str(tiny_dir / "text.txt")
    cases = [
        (["--model", str(tmp_path / "nope"), "--text", text], "no such directory"),
        (["--model", str(tiny_dir), "--text", str(tmp_path / "nope.txt")], "no such file"),
        (["--model", str(tiny_dir), "--text", str(empty)], "empty"),
        (["--model", str(no_tok), "--text", text], "no tokenizer"),
        (["--model", str(moe), "--text", text], "needs at least one expert"),
        (["--model", str(bert), "--text", text], "decoder-only"),
        (["--model", str(tiny_dir), "--text", text, "--strategies", "magic"], "unknown strategy"),
        (["--model", str(tiny_dir), "--text", text, "--sparsities", "1.5"], "outside"),
        (["--model", str(tiny_dir), "--text", text, "--json", str(tmp_path / "no" / "x.json")], "does not exist"),
    ]
    for argv, needle in cases:
        rc = main(["quality", "--strategies", "static_depth", "--sparsities", "0.5"] + argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2, (argv, err)
        assert len(err) == 1 and needle in err[0], (argv, err)


def test_a_combination_is_pruned_part_by_part(setup):
    """Depth then width: the width part is calibrated on the model depth left (its layers
    renumbered), so both cuts are real; the achieved sparsity composes."""
    _, m, ids, cal = setup
    mm = copy.deepcopy(m)
    calls = []

    def recal(model):
        calls.append(len(decoder_layers(model)))
        return calibrate(model, P.calibration_windows(ids[:128], 64))

    res = apply_combo(mm, "static_depth+static_width",
                              (("static_depth", 0.25), ("static_width", 0.5)), cal, recalibrate=recal)
    layers = decoder_layers(mm)
    assert calls == [3] and len(layers) == 3  # recalibrated once, on the 3 layers depth kept
    assert layers[0].self_attn.k_proj.out_features == 1 * HEAD_DIM  # 2 KV groups → 1
    a = [p["achieved"] for p in res.details["parts"]]
    assert res.final_achieved() == pytest.approx(1 - (1 - a[0]) * (1 - a[1]))
    assert math.isfinite(P.perplexity(mm, ids, seq_len=64).ppl)
    # width then low rank factorises the sliced linears
    mm = copy.deepcopy(m)
    apply_combo(mm, "static_width+low_rank", (("static_width", 0.5), ("low_rank", 0.5)), cal,
                        recalibrate=recal)
    q = decoder_layers(mm)[0].self_attn.q_proj
    assert q.in_features == HIDDEN and q.out_features == HIDDEN // 2 and q.rank < HIDDEN // 2
    with pytest.raises(UserError, match="give each part's sparsity"):
        apply_combo(copy.deepcopy(m), "static_depth+static_width", (("static_depth", 0.25),), cal)


def test_cli_quality_measures_the_real_combined_model(tiny_dir, tmp_path, capsys):
    from pis_tui.cli import main

    cache = str(tmp_path / "c.duckdb")
    rc = main(["quality", "--model", str(tiny_dir), "--text", str(tiny_dir / "text.txt"),
               "--strategies", "static_depth,static_width,static_depth@0.25+static_width@0.5",
               "--sparsities", "0.25,0.5", "--seq-len", "64", "--json", "-", "--cache", cache])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    doc = json.loads(cap.out)
    combo = next(r for r in doc["results"] if "+" in r["strategy"])
    assert combo["strategy"] == "static_depth@0.25+static_width@0.5"
    assert combo["sparsity"] == pytest.approx(1 - 0.75 * 0.5)
    # recommend with the measured perplexity: the combined model's own figure, not composed
    rc = main(["sweep", "--model", str(tiny_dir), "--gpu", "h200-sxm", "--quality", "measured",
               "--strategies", "static_depth+static_width", "--combo-sparsities", "0.25,0.5",
               "--cache", cache, "--json", "-"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    pts = [r for r in json.loads(cap.out)["results"] if r["parts"]]
    mine = [r for r in pts if [p["sparsity"] for p in r["parts"]] == [0.25, 0.5]]
    assert mine and all(r["quality_source"] == "measured" and r["quality_flags"]["composed"] is None
                        and r["quality_loss"] == pytest.approx(combo["ppl_increase"], abs=1e-6) for r in mine)
    others = [r for r in pts if r not in mine]
    assert others and all(r["quality_source"] == "composed" for r in others)
