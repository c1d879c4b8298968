"""Recording a real transformers MoE model's routing (pis_tui.hf.routing_record) and the
`pis-tui routing` command: tiny configs (2–3 layers, hidden 64), random weights."""

import json
import statistics

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from pis_tui.cli import main
from pis_tui.errors import UserError
from pis_tui.hf import routing_record as rr

BASE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=256, max_position_embeddings=512)
#: each MoE class of transformers 5 at its smallest: E 8, k 2
TINY = {
    "qwen3_moe": dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, head_dim=16),
    "qwen2_moe": dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
                      shared_expert_intermediate_size=64),
    "mixtral": dict(num_local_experts=8, num_experts_per_tok=2),
    "olmoe": dict(num_experts=8, num_experts_per_tok=2, eos_token_id=None, pad_token_id=None),
    "granitemoe": dict(num_local_experts=8, num_experts_per_tok=2),
}
BLOCK = {"qwen3_moe": "mlp", "qwen2_moe": "mlp", "mixtral": "mlp", "olmoe": "mlp",
         "granitemoe": "block_sparse_moe"}


def raw(model_type, **over):
    return {"model_type": model_type, **BASE, **TINY[model_type], **over}


@pytest.fixture(scope="module")
def models():
    return {mt: rr.build_random(raw(mt), seed=0) for mt in TINY}


def call(capsys, *args):
    try:
        code = main(["routing", *args])
    except SystemExit as e:  # argparse's usage errors
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


# ------------------------------------------------------------------ finding the blocks


@pytest.mark.parametrize("mt", list(TINY))
def test_every_moe_class_is_found_and_runs_grouped_mm(models, mt):
    m = models[mt]
    blocks = rr.moe_blocks(m)
    assert [i for i, _ in blocks] == [0, 1]
    assert all(b is m.model.layers[i].get_submodule(BLOCK[mt]) for i, b in blocks)
    assert m.config._experts_implementation == "grouped_mm"


def test_dense_layers_among_moe_ones_are_skipped():
    m = rr.build_random(raw("qwen3_moe", num_hidden_layers=4, mlp_only_layers=[1]), seed=0)
    assert [i for i, _ in rr.moe_blocks(m)] == [0, 2, 3]
    m = rr.build_random(raw("qwen2_moe", num_hidden_layers=4, decoder_sparse_step=2), seed=0)
    assert [i for i, _ in rr.moe_blocks(m)] == [1, 3]
    d = rr.record(m, prefill_ids=rr.random_ids((1, 16), 256, 0))
    assert d["moe_layers"] == 2 and d["layer_ids"] == [1, 3] and len(d["layers"]) == 2


def test_a_dense_model_has_no_routing_to_record():
    from transformers import AutoConfig, AutoModelForCausalLM

    m = AutoModelForCausalLM.from_config(AutoConfig.for_model("qwen3", **BASE, head_dim=16))
    assert rr.moe_blocks(m) == []
    with pytest.raises(UserError, match="dense model"):
        rr.RoutingRecorder(m)


# ------------------------------------------------------------------ counting


@pytest.mark.parametrize("mt", list(TINY))
def test_counts_are_each_tokens_k_experts(models, mt):
    ids = rr.random_ids((2, 24), 256, 1)
    d = rr.record(models[mt], prefill_ids=ids, decode_prompts=rr.random_ids((3, 8), 256, 2),
                  decode_steps=2)
    assert (d["experts"], d["top_k"], d["moe_layers"], d["model_type"]) == (8, 2, 2, mt)
    pre, dec = d["phases"]["prefill"], d["phases"]["decode"]
    assert (pre["tokens"], pre["sequences"]) == (48, 2)
    assert (dec["tokens"], dec["sequences"], dec["steps"]) == (6, 3, 2)
    for ph in (pre, dec):
        assert len(ph["layers"]) == 2
        for counts in ph["layers"]:
            assert len(counts) == 8 and sum(counts) == ph["tokens"] * 2
            assert all(isinstance(c, int) and 0 <= c <= ph["tokens"] for c in counts)
    assert d["layers"] == pre["layers"]
    rr.check(json.loads(rr.dumps(d)))  # the text written is the record


@pytest.mark.parametrize("mt", list(TINY))
def test_the_counts_are_what_the_router_picked(models, mt):
    """The experts pre-hook and the router fallback see the same ids (and a by-hand top-k of
    the router's logits agrees with both)."""
    m = models[mt]
    ids = rr.random_ids((1, 32), 256, 4)
    a = rr.record(m, prefill_ids=ids, decode_prompts=ids[:, :8].repeat(2, 1), decode_steps=2)
    b = rr.record(m, prefill_ids=ids, decode_prompts=ids[:, :8].repeat(2, 1), decode_steps=2,
                  method="router")
    assert a["phases"] == b["phases"]
    # by hand: the router's logits of the first MoE layer's input, top-2
    block = rr.moe_blocks(m)[0][1]
    seen = []
    h = block.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    with torch.no_grad():
        m(input_ids=ids, use_cache=False)
    h.remove()
    x = seen[0].reshape(-1, seen[0].shape[-1])
    logits = torch.nn.functional.linear(x, rr.router_of(block).weight)
    by_hand = torch.bincount(logits.topk(2, dim=-1).indices.reshape(-1), minlength=8).tolist()
    assert a["phases"]["prefill"]["layers"][0] == by_hand


def test_recording_leaves_the_outputs_unchanged(models):
    m = models["qwen3_moe"]
    ids = rr.random_ids((2, 16), 256, 5)
    with torch.no_grad():
        before = m(input_ids=ids).logits
    with rr.RoutingRecorder(m) as rec:
        rec.phase = "prefill"
        with torch.no_grad():
            during = m(input_ids=ids).logits
    with torch.no_grad():
        after = m(input_ids=ids).logits
    assert torch.equal(before, during) and torch.equal(before, after)
    assert rec.methods == ["experts", "experts"]
    assert all(not b.experts._forward_pre_hooks for _, b in rr.moe_blocks(m))  # hooks removed


def test_nothing_is_counted_outside_a_phase(models):
    m = models["mixtral"]
    with rr.RoutingRecorder(m) as rec:
        with torch.no_grad():
            m(input_ids=rr.random_ids((1, 8), 256, 0))
    assert rec.counts("prefill") is None


def test_decode_counts_the_steps_not_the_prompt(models):
    m = models["olmoe"]
    d = rr.record(m, decode_prompts=rr.random_ids((4, 16), 256, 6), decode_steps=3)
    assert "prefill" not in d["phases"]
    dec = d["phases"]["decode"]
    assert dec["tokens"] == 12 and all(sum(c) == 24 for c in dec["layers"])
    assert d["layers"] == dec["layers"]


def test_router_fallback_for_experts_that_take_no_indices():
    """An experts module whose forward takes no top_k_index: the router's output is read
    (the integer ids, or the top-k of logits-only routers)."""
    nn = torch.nn

    class Router(nn.Module):
        def __init__(self, ids_out):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(4, 8))
            self.ids_out = ids_out

        def forward(self, x):
            logits = x @ self.weight.T
            return (logits, logits.topk(2, dim=-1).indices) if self.ids_out else logits

    class Experts(nn.Module):
        def __init__(self):
            super().__init__()
            self.num_experts = 4

        def forward(self, x, routing):
            return x

    class Block(nn.Module):
        def __init__(self, ids_out):
            super().__init__()
            self.gate, self.experts = Router(ids_out), Experts()

        def forward(self, x):
            r = self.gate(x)
            return self.experts(x, r)

    class Layer(nn.Module):
        def __init__(self, mlp):
            super().__init__()
            self.mlp = mlp

        def forward(self, x):
            return self.mlp(x)

    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([Layer(Block(True)), Layer(nn.Linear(8, 8)),
                                         Layer(Block(False))])

        def forward(self, x):
            for layer in self.layers:
                x = layer(x)
            return x

    toy = Toy()
    x = torch.randn(5, 8)
    assert [i for i, _ in rr.moe_blocks(toy)] == [0, 2]
    rec = rr.RoutingRecorder(toy)
    rec.top_k = 2  # a logits-only router does not say its k
    with rec:
        rec.phase = "prefill"
        toy(x)
    assert rec.methods == ["router", "router"]
    want = torch.bincount((x @ toy.layers[0].mlp.gate.weight.T).topk(2, -1).indices.reshape(-1),
                          minlength=4).tolist()
    assert rec.counts("prefill")[0] == want and rec.tokens("prefill") == 5
    assert sum(rec.counts("prefill")[1]) == 10


def test_one_sequences_prefill_routes_unevenly():
    """The tokens of one sequence share their attention context, so a random-weight model's
    router does not pick independently per token: the counts spread more than independent
    balanced routing would (binomial variance T·(k/E)(1 − k/E)), and the busiest expert gets
    more than its even share."""
    m = rr.build_random(raw("qwen3_moe", num_experts=16), seed=0)
    T, k, E = 256, 2, 16
    d = rr.record(m, prefill_ids=rr.random_ids((1, T), 256, 0))
    binomial = T * (k / E) * (1 - k / E)
    spread = [statistics.pvariance(c) / binomial for c in d["phases"]["prefill"]["layers"]]
    assert statistics.mean(spread) > 1
    assert rr.phase_stats(d["phases"]["prefill"])["max_over_mean"] > 1


# ------------------------------------------------------------------ the file


def _record():
    layers = [[3, 1, 0, 4], [2, 2, 2, 2]]
    return {"format": rr.FORMAT, "model": "m", "model_type": "qwen3_moe", "experts": 4,
            "top_k": 2, "moe_layers": 2, "source": "s", "text": "t", "layers": layers,
            "phases": {"prefill": {"layers": layers, "tokens": 4, "sequences": 1},
                       "decode": {"layers": [[1, 1, 1, 1], [0, 2, 2, 0]], "tokens": 2,
                                  "sequences": 2, "steps": 1}}}


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(format="x"), "format"),
    (lambda d: d.update(top_k=5), "top_k"),
    (lambda d: d["phases"]["prefill"]["layers"][0].append(0), "layer 0 has 5 counts"),
    (lambda d: d["phases"]["decode"]["layers"][1].__setitem__(0, 1), "sum to 5"),
    (lambda d: d["phases"]["decode"].update(steps=2), "is not 2 sequences × 2 steps"),
    (lambda d: d.update(layers=[[1, 1, 1, 1]]), "'layers' must equal"),
    (lambda d: d["phases"].update(warmup={}), "unknown phase"),
    (lambda d: d.update(moe_layers=3), "3 lists"),
    (lambda d: d["phases"]["prefill"].update(tokens=0), "tokens=0"),
    (lambda d: d["phases"]["prefill"]["layers"][0].__setitem__(0, 2.5), "integers"),
])
def test_a_bad_record_is_one_line(change, message):
    d = json.loads(json.dumps(_record()))
    rr.check(d)
    change(d)
    with pytest.raises(UserError, match=message) as e:
        rr.check(d)
    assert "\n" not in str(e.value)


def test_a_record_with_one_phase_is_valid(tmp_path):
    d = _record()
    del d["phases"]["prefill"]
    d["layers"] = d["phases"]["decode"]["layers"]
    p = rr.write(d, tmp_path / "h.json")
    assert rr.load(p) == d
    assert '    [1, 1, 1, 1],' in p.read_text()  # a layer's counts on one line


# ------------------------------------------------------------------ the command


def _config(tmp_path, model_type="granitemoe", **over):
    p = tmp_path / "config.json"
    p.write_text(json.dumps(raw(model_type, **over)))
    return p


def test_the_command_writes_a_record(capsys, tmp_path):
    out = tmp_path / "h.json"
    code, stdout, err = call(capsys, "--model", str(_config(tmp_path)), "--prompt-len", "32",
                             "--batch", "2", "--decode-batch", "4", "--decode-steps", "2",
                             "--out", str(out))
    assert code == 0, err
    d = rr.load(out)
    assert d["phases"]["prefill"]["tokens"] == 64 and d["phases"]["decode"]["tokens"] == 8
    assert d["text"].startswith("random token ids (seed 0)")
    assert "random weights (seed 0)" in d["source"] and "grouped_mm" in d["source"]
    lines = stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith("prefill: 64 tokens")
    assert lines[1].startswith("decode: 8 tokens") and "max/mean tokens per expert" in lines[1]
    assert "experts never used" in lines[0]


def test_the_command_reduces_layers_and_records_one_phase(capsys, tmp_path):
    out = tmp_path / "h.json"
    code, _, err = call(capsys, "--model", str(_config(tmp_path, "qwen3_moe",
                                                       num_hidden_layers=3)),
                             "--layers", "2", "--phase", "prefill", "--prompt-len", "16",
                             "--out", str(out))
    assert code == 0, err
    d = rr.load(out)
    assert list(d["phases"]) == ["prefill"] and d["moe_layers"] == 2
    assert "2 of 3 layers" in d["source"]


def test_the_command_reads_real_weights_and_a_text(capsys, tmp_path):
    """A local model directory: its weights are loaded (the counts are the saved model's) and
    --text goes through its tokenizer."""
    tokenizers = pytest.importorskip("tokenizers")
    from transformers import PreTrainedTokenizerFast

    m = rr.build_random(raw("granitemoe"), seed=3)
    mdir = tmp_path / "model"
    m.save_pretrained(mdir)
    words = ["[UNK]"] + [f"w{i}" for i in range(255)]
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)},
                                                           unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(mdir)
    text = tmp_path / "t.txt"
    ids = [(i * 37) % 255 + 1 for i in range(200)]
    text.write_text(" ".join(f"w{i - 1}" for i in ids))
    out = tmp_path / "h.json"
    code, _, err = call(capsys, "--model", str(mdir), "--text", str(text), "--prompt-len", "64",
                        "--decode-batch", "3", "--decode-prompt-len", "16", "--out", str(out))
    assert code == 0, err
    d = rr.load(out)
    assert d["source"].endswith(f"weights from {mdir}") and d["text"].startswith("file t.txt")
    want = rr.record(m, prefill_ids=torch.tensor([ids[:64]]))
    assert d["phases"]["prefill"]["layers"] == want["phases"]["prefill"]["layers"]
    code, _, err = call(capsys, "--model", str(mdir), "--text", str(text), "--prompt-len", "300",
                        "--out", str(out))
    assert code == 2 and "200 tokens" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("args, message", [
    (["--model", "/no/such/config.json"], "no such file"),
    (["--model", "qwen2.5-0.5b"], "dense model"),
    (["--model", "{cfg}", "--out", "/no/such/dir/h.json"], "does not exist"),
    (["--model", "{cfg}", "--out", "{tmp}"], "is a directory"),
    (["--model", "{cfg}", "--prompt-len", "0"], "must be positive"),
    (["--model", "{cfg}", "--decode-batch", "x"], "must be an integer"),
    (["--model", "{cfg}", "--seed", "-1"], "--seed"),
    (["--model", "{cfg}", "--layers", "3"], "has 2 layers"),
    (["--model", "{cfg}", "--text", "/no/such.txt"], "no such file"),
    (["--model", "{cfg}", "--text", "{cfg}"], "needs the model's tokenizer"),
    (["--model", "{cfg}", "--out", ""], "empty path"),
])
def test_bad_input_is_one_line_exit_2(capsys, tmp_path, args, message):
    cfg = _config(tmp_path)
    args = [a.format(cfg=cfg, tmp=tmp_path) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "h.json")]
    code, _, err = call(capsys, *args)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "h.json").exists()


def test_a_model_that_does_not_fit_is_refused_before_it_is_built(capsys, tmp_path, monkeypatch):
    from pis_tui.validation import memory_check

    monkeypatch.setattr(memory_check, "available_bytes", lambda device="cpu": (1e5, "a test"))
    monkeypatch.setattr(rr, "build_random", lambda *a, **k: pytest.fail("built anyway"))
    code, _, err = call(capsys, "--model", str(_config(tmp_path)),
                        "--out", str(tmp_path / "h.json"))
    assert code == 2 and "lower --layers" in err and "a test" in err
