"""`pis-tui plan`: workloads, the pruned model's memory, TPOT over the growing context, the batch
search, the ranking, the export and the CLI, checked against figures computed by hand."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import jsonschema
import pytest

from pis_tui.pricing import memory as memory_fit
from pis_tui.cli import main
from pis_tui.decide.sweep import make_estimator, sweep
from pis_tui.errors import UserError
from pis_tui.present.export import load_schema, plan_csv, plan_dict, to_dict
from pis_tui.device.choose import load_gpu
from pis_tui.device.gpus import profile_from_dict
from pis_tui.model.spec import load_model_spec
from pis_tui.decide.deployment import _edge, mean_step, plan, recommend_plan
from pis_tui.pricing.estimates import PhaseEstimate
from pis_tui.quality.estimate import QualityEstimate
from pis_tui.model.scenario import Scenario
from pis_tui.families.strategy import Strategy
from pis_tui.families.phase_ops import build_phase_ops
from pis_tui.model.workload import PRESETS, RequestClass, Targets, Workload, parse_mix, single

from helpers import ROOT

LLAMA = load_model_spec("llama-3.1-8b")
H200 = load_gpu("h200-sxm")


def call(capsys, *args):
    try:
        code = main(list(args))
    except SystemExit as e:  # argparse's own checks (types, choices)
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def prefill_ops(strategy: str, sparsity: float = 0.0, prompt_len: int = 1024, dtype: str = "bf16"):
    return build_phase_ops(LLAMA, Strategy(strategy, sparsity), Scenario(1, prompt_len, 1, prompt_len, dtype),
                           "prefill").ops


# --------------------------------------------------------------------------- memory by hand

def test_kv_bytes_per_token_by_hand():
    # K and V × 32 layers × 8 KV heads × head_dim 128 × 2 bytes (bf16)
    assert memory_fit.kv_bytes_per_token_of(prefill_ops("dense"), "bf16") == 2 * 32 * 8 * 128 * 2 == 131072
    # static depth 25 %: floor(0.25·32 + 0.5) = 8 layers dropped, 24 keep their cache
    assert memory_fit.kv_bytes_per_token_of(prefill_ops("static_depth", 0.25), "bf16") == 2 * 24 * 8 * 128 * 2
    # static width 12.5 %: 8 − floor(0.125·8 + 0.5) = 7 KV groups
    assert memory_fit.kv_bytes_per_token_of(prefill_ops("static_width", 0.125), "bf16") == 2 * 32 * 7 * 128 * 2
    # the others keep the dense cache (dynamic depth: every layer's KV exists for attention)
    for fam, s in (("low_rank", 0.5), ("semi_structured_24", 0.5), ("unstructured", 0.5),
                   ("dynamic_depth", 0.5), ("dynamic_sparse_attention", 0.5)):
        assert memory_fit.kv_bytes_per_token_of(prefill_ops(fam, s), "bf16") == 131072, fam
    # 8-bit weights keep a 16-bit cache (memory_fit's rule)
    assert memory_fit.kv_bytes_per_token_of(prefill_ops("dense", dtype="fp8"), "fp8") == 131072
    assert memory_fit.kv_bytes_per_token(LLAMA, "bf16") == 131072


def test_weights_of_the_pruned_model_by_hand():
    layer = 4096 * (4096 + 2 * 1024) + 4096 * 4096 + 3 * 4096 * 14336  # q,k,v + o + gate,up,down
    emb = 128256 * 4096  # untied: embedding and lm_head
    assert layer == 218_103_808 and emb == 525_336_576
    dense = memory_fit.weight_bytes(prefill_ops("dense"), LLAMA, "bf16")
    assert dense == (32 * layer + 2 * emb) * 2 == 16_059_990_016  # the 16.06 GB of memory_fit
    assert dense == pytest.approx(memory_fit.footprint(LLAMA, H200, Scenario())["weights_gb"] * 1e9, rel=1e-4)
    assert memory_fit.weight_bytes(prefill_ops("static_depth", 0.25), LLAMA, "bf16") == (24 * layer + 2 * emb) * 2
    # unstructured zeros are stored: as dense
    assert memory_fit.weight_bytes(prefill_ops("unstructured", 0.5), LLAMA, "bf16") == dense
    # 2:4: the kept half in bf16 plus 2 bits of metadata per kept value (= 0.5625 of dense)
    assert memory_fit.weight_bytes(prefill_ops("semi_structured_24"), LLAMA, "bf16") == \
        pytest.approx(32 * layer * 2 * 0.5625 + 2 * emb * 2)
    # fp8: one byte a weight
    assert memory_fit.weight_bytes(prefill_ops("dense", dtype="fp8"), LLAMA, "fp8") == dense / 2


def test_activation_rule_and_the_largest_batch_that_fits_by_hand():
    # prefill of one 1024-token prompt: SiLU·mul reads gate and up and writes their product,
    # 3 × 1024 × 14336 × 2 bytes, the largest working set of one op
    assert memory_fit.activation_bytes(prefill_ops("dense"), "bf16") == 3 * 1024 * 14336 * 2 == 88_080_384
    r = plan(LLAMA, H200, single("chat"), strategies=("static_depth",), sparsities=(0.25,))
    d = r.dense.classes[0]
    # decode at batch 1: the lm_head's input and logits, (4096 + 128256) × 2 bytes
    assert d.activation_bytes == {"prefill": 88_080_384, "decode": (4096 + 128256) * 2}
    # a chat sequence: max(KV of 1024 tokens + prefill activations, KV of 1280 + decode's)
    assert d.per_sequence_bytes == max(1024 * 131072 + 88_080_384, 1280 * 131072 + 264_704) == 222_298_112
    # usable: 141 GB (decimal) × 0.9 = 126.9e9 bytes; (126.9e9 − 16,059,990,016) // 222,298,112
    assert r.usable_bytes == pytest.approx(126.9e9)
    assert d.max_sequences == (126_900_000_000 - 16_059_990_016) // 222_298_112 == 498
    # pruning frees weight memory and KV per token: more sequences fit
    p = r.candidate("static_depth", 0.25).classes[0]
    per = max(1024 * 98304 + 88_080_384, 1280 * 98304 + 264_704)
    assert p.max_sequences == int((126.9e9 - (24 * 218_103_808 + 2 * 525_336_576) * 2) // per) == 605
    assert memory_fit.max_sequences(10.0, 11.0, 1.0) == 0 and memory_fit.max_sequences(10.0, 2.0, 3.0) == 2


# --------------------------------------------------------------------------- TPOT over the context

def test_tpot_mean_over_the_context_by_hand():
    affine = lambda c: 2.0 + 0.01 * c  # noqa: E731
    m = mean_step(affine, 100, 50)  # contexts 100 … 149
    assert m.method == "affine" and m.contexts == (100, 101, 124, 148, 149)
    assert m.ms == pytest.approx((3.0 + 3.49) / 2, rel=1e-12)
    assert m.ms == pytest.approx(sum(affine(c) for c in range(100, 150)) / 50, rel=1e-12)
    few = mean_step(affine, 100, 4)  # O ≤ 9: every context
    assert few.method == "every" and few.contexts == (100, 101, 102, 103)
    assert few.ms == pytest.approx((3.0 + 3.01 + 3.02 + 3.03) / 4)
    # a cost in steps of 64 tokens: not affine, though its ends and middle lie on one line
    step = lambda c: 1.0 + (c // 64)  # noqa: E731
    assert step(1152) == (step(1024) + step(1280)) / 2
    s = mean_step(step, 1024, 257)
    assert s.method == "sampled" and len(s.contexts) == 9 and s.contexts[0] == 1024 and s.contexts[-1] == 1280
    assert s.ms == pytest.approx(sum(step(c) for c in range(1024, 1281)) / 257, rel=0.05)
    assert mean_step(lambda c: 5.0, 10, 1).ms == 5.0


def brute_tpot(strategy: Strategy, batch: int, P: int, O: int) -> float:
    est = make_estimator(H200, "bf16")
    return sum(est.estimate(build_phase_ops(LLAMA, strategy, Scenario(1, P, batch, c, "bf16"), "decode")).latency_ms
               for c in range(P, P + O)) / O


def test_plan_tpot_is_the_mean_decode_step_and_e2e_composes():
    wl = Workload("t", (RequestClass("t", 512, 64, 16),))
    r = plan(LLAMA, H200, wl, strategies=("dynamic_sparse_attention", "dynamic_depth"), sparsities=(0.5,))
    d = r.dense.classes[0].at_concurrency
    # GEMMs do not change with the context, attention grows linearly: exact from the endpoints
    assert d.tpot_method == "affine"
    assert d.tpot_ms == pytest.approx(brute_tpot(Strategy("dense"), 16, 512, 64), rel=1e-9)
    # TTFT: the prefill of the 16 prompts at once, as the sweep prices it
    sw = sweep(LLAMA, H200, Scenario(16, 512, 16, 512, "bf16"), strategies=("dynamic_depth",),
               sparsities=(0.5,))
    assert d.ttft_ms == pytest.approx(sw.dense("prefill").latency_ms, rel=1e-12)
    assert d.e2e_ms == pytest.approx(d.ttft_ms + 64 * d.tpot_ms)
    assert d.throughput_tok_s == pytest.approx(16 * 64 / d.e2e_ms * 1e3)
    assert d.decode_tok_s == pytest.approx(16 / d.tpot_ms * 1e3)
    # block-sparse attention keeps ceil((1−s)·blocks) of a context: steps, so sampled
    a = r.candidate("dynamic_sparse_attention", 0.5).classes[0].at_concurrency
    assert a.tpot_method == "sampled" and len(a.tpot_contexts) == 9
    assert a.tpot_ms == pytest.approx(brute_tpot(Strategy("dynamic_sparse_attention", 0.5), 16, 512, 64), rel=0.01)
    # dynamic depth routes across the batch it is planned for: priced at batch 16, not 1
    g = r.candidate("dynamic_depth", 0.5).classes[0]
    assert g.at_concurrency.ttft_ms == pytest.approx(
        sw.estimate_for("dynamic_depth", 0.5, "prefill").latency_ms, rel=1e-12)
    assert g.at_concurrency.tpot_ms == pytest.approx(brute_tpot(Strategy("dynamic_depth", 0.5), 16, 512, 64), rel=1e-9)
    assert g.at_concurrency.tpot_ms != pytest.approx(brute_tpot(Strategy("dynamic_depth", 0.5), 1, 512, 64), rel=0.01)


def test_batch_search_takes_the_largest_batch_that_fits_and_meets_the_targets():
    free = plan(LLAMA, H200, single("chat"), strategies=())
    d = free.dense.classes[0]
    assert d.at_max_batch.batch == d.max_sequences == 498  # no targets: the memory limit
    est = make_estimator(H200, "bf16")

    def tpot_at(batch):  # the affine rule: the mean of the first and last decode steps
        return sum(est.estimate(build_phase_ops(LLAMA, Strategy("dense"), Scenario(1, 1024, batch, c, "bf16"),
                                                "decode")).latency_ms for c in (1024, 1279)) / 2

    tpot = 1.25 * tpot_at(1)  # a target some batches above 1 meet, whatever the GPU figures
    r = plan(LLAMA, H200, single("chat", targets=Targets(None, tpot)), strategies=())
    k = r.dense.classes[0]
    b = k.at_max_batch.batch
    assert 1 < b < 498 and k.at_max_batch.tpot_ms <= tpot
    assert tpot_at(b) <= tpot < tpot_at(b + 1)
    # a target nothing meets even at batch 1: no batch, and why
    none = plan(LLAMA, H200, single("chat", targets=Targets(None, 0.5)), strategies=())
    assert none.dense.classes[0].at_max_batch is None
    assert "even one request misses the targets: TPOT" in none.dense.classes[0].why_no_batch
    assert none.dense.throughput_tok_s is None


@pytest.mark.parametrize("name,f", [
    ("affine", lambda b: 0.013 * b - 0.5),                  # edge at 38
    ("steps", lambda b: 0.2 * ((b + 7) // 8) - 0.9),        # tile-like steps: edge at 32
    ("convex", lambda b: (b / 100.0) ** 3 - 0.2),           # edge at 58
    ("concave", lambda b: (b / 400.0) ** 0.3 - 0.5),        # edge at 49
    ("flat then wall", lambda b: -1.0 if b <= 411 else 5.0),
])
def test_edge_finds_what_a_scan_finds_in_few_tries(name, f):
    tries = []

    def slack(b):
        tries.append(b)
        return f(b)

    hi = 498
    want = max(b for b in range(1, hi) if f(b) <= 0)
    assert _edge(slack, 1, hi, f(1), f(hi)) == want
    assert len(tries) <= 3 * 9  # never more than about three bisections' tries (log2 497 < 9)
    if name == "affine":  # on a line: the first try lands on the edge, the second confirms it
        assert tries == [want, want + 1]


def test_the_plans_memo_prices_an_op_as_the_estimator_does():
    # a kernel met again (the same GEMM at another context) keeps its uncertainty, its
    # measured-under-load flag and its launches: the memo changes the speed, not the figures
    from pis_tui.decide.deployment import _Pricer

    est = make_estimator(H200, "bf16")
    pricer = _Pricer(LLAMA, "bf16", est)
    s = Strategy("static_width", 0.25)
    for c in (1024, 1100, 1279):
        got = pricer.estimate(s, "decode", 16, c)
        want = est.estimate(build_phase_ops(LLAMA, s, Scenario(1, c, 16, c, "bf16"), "decode"))
        assert got.ops == want.ops and got.latency_ms == want.latency_ms
        assert all(p.kernels is not None for p in got.ops if p.op.op_type != "overhead")
        assert all(p.uncertainty > 0 for p in got.ops if p.op.op_type == "gemm")


def test_prices_each_kernel_once():
    est = make_estimator(H200, "bf16")
    calls = []
    inner = est.price
    est.price = lambda op, *a: calls.append((op.key(), op.name) + a) or inner(op, *a)
    r = plan(LLAMA, H200, single("chat", targets=Targets(2000.0, 20.0)), estimator=est)
    assert len(calls) == len(set(calls)) == r.priced_kernels
    assert est.price.__name__ == "<lambda>"  # the caller's estimator is left as it was


# --------------------------------------------------------------------------- ranking

class FakeEstimator:
    """Latency from a per-candidate speed factor: prefill 10 µs a token, decode 5 ms + 1 µs per
    cached token of the batch; both divided by the factor (so the end-to-end gain is it)."""

    def __init__(self, speed: dict):
        self.speed = speed

    def estimate(self, po):
        s = po.strategy
        f = self.speed.get((s.family, s.sparsity), 1.0)
        head = next(o for o in po.ops if o.name == "lm_head")
        att = next(o for o in po.ops if o.op_type == "attention")
        ms = (0.01 * head.m * att.q_len if po.phase == "prefill" else 5.0 + 0.001 * head.m * att.kv_len) / f
        return PhaseEstimate(s.family, s.sparsity, po.achieved_sparsity, po.phase, (), ms, 1.0, "roofline")


class FakeQuality:
    metric, protocol = "accuracy_drop", "lora"

    def __init__(self, loss: dict, extrapolated=()):
        self.loss = loss
        self.extrapolated = set(extrapolated)

    def estimate(self, model, strategy, sparsity):
        v = self.loss.get(strategy)
        return QualityEstimate(v, source="prior" if v is not None else "none",
                               extrapolated=strategy in self.extrapolated)


def ranked_plan(objective="latency", budget=0.10, targets=Targets(), width_speed=1.495,
                allow_extrapolated=True):
    speed = {("static_depth", 0.25): 1.50, ("static_width", 0.25): width_speed, ("low_rank", 0.25): 2.0,
             ("unstructured", 0.25): 3.0}
    loss = {"static_depth": 0.05, "static_width": 0.02, "low_rank": 0.20}
    r = plan(LLAMA, H200, single("chat", targets=targets),
             strategies=("static_depth", "static_width", "low_rank", "unstructured"), sparsities=(0.25,),
             quality=FakeQuality(loss, extrapolated={"static_depth"}), estimator=FakeEstimator(speed))
    return r, recommend_plan(r, budget, objective, allow_extrapolated)


def test_ranking_within_the_budget_with_the_tie_rule():
    from pis_tui.decide.deployment import gain

    r, rec = ranked_plan()
    assert gain(r.candidate("static_depth", 0.25), r.dense, "latency") == pytest.approx(1.50)
    # 1.495× is within 1 % of 1.50×: a tie, broken by the lower loss (pareto's rule)
    assert rec.best.strategy == "static_width" and rec.runner_up.strategy == "static_depth"
    assert [c.strategy for c in rec.ranked] == ["static_width", "static_depth", "dense"]
    assert "over the 10.0% loss budget" in rec.why_not(r.candidate("low_rank", 0.25))
    # the fastest of all has no quality figure: never recommended
    assert rec.status(r.candidate("unstructured", 0.25)) == "no quality"
    assert rec.reason.startswith("static_width 25%: 1.50× end-to-end latency")
    assert "runner-up static_depth 25%: 1.50× at 5.0%" in rec.reason
    # a wider budget lets the 2× one in
    assert recommend_plan(r, 0.25, "latency", True).best.strategy == "low_rank"
    # out of the tie, the faster wins; its extrapolated quality is said
    r2, rec2 = ranked_plan(width_speed=1.40)
    assert rec2.best.strategy == "static_depth" and "[quality extrapolated]" in rec2.reason
    assert [f.strategy for f in rec2.frontier] == ["dense", "static_width", "static_depth"]


def test_extrapolated_quality_is_not_ranked_unless_allowed():
    """static_depth's (fake) quality is extrapolated: without --allow-extrapolated it is shown
    with the reason and never ranked, so the 1.40× static_width wins."""
    r, rec = ranked_plan(width_speed=1.40, allow_extrapolated=False)
    sd = r.candidate("static_depth", 0.25)
    assert rec.best.strategy == "static_width" and sd not in rec.ranked
    assert rec.status(sd) == "extrapolated" and "--allow-extrapolated" in rec.why_not(sd)
    _, allowed = ranked_plan(width_speed=1.40, allow_extrapolated=True)
    assert allowed.best.strategy == "static_depth"


def test_dense_wins_a_tie_and_nothing_meeting_the_targets_is_a_result():
    speed = {("static_depth", 0.25): 1.005}
    r = plan(LLAMA, H200, single("chat"), strategies=("static_depth",), sparsities=(0.25,),
             quality=FakeQuality({"static_depth": 0.01}), estimator=FakeEstimator(speed))
    rec = recommend_plan(r, 0.10)
    assert rec.best.strategy == "dense" and rec.reason.startswith("keep the dense model")
    assert rec.runner_up is None and "the fastest pruned one is static_depth 25%: 1.00×" in rec.reason
    _, none = ranked_plan(targets=Targets(ttft_ms=1.0))
    assert none.best is None and none.ranked == ()
    assert none.reason.startswith("nothing within 10.0% loss meets the targets: the lowest TTFT")
    assert "against 1 ms" in none.reason


def test_throughput_uses_the_memory_pruning_frees():
    r, rec = ranked_plan(objective="throughput")
    d, w = r.dense.classes[0], r.candidate("static_width", 0.25).classes[0]
    assert w.max_sequences > d.max_sequences  # fewer KV heads and weights: more sequences
    assert d.at_max_batch.batch == d.max_sequences and w.at_max_batch.batch == w.max_sequences
    assert rec.best is not None and rec.best.throughput_tok_s > r.dense.throughput_tok_s


def test_mix_weights_the_classes_by_hand():
    wl = parse_mix("chat:0.7,rag:0.3")
    assert wl.shares == pytest.approx((0.7, 0.3)) and wl.main.name == "chat"
    r = plan(LLAMA, H200, wl, strategies=())
    chat, rag = r.dense.classes
    assert r.dense.e2e_ms == pytest.approx(0.7 * chat.at_concurrency.e2e_ms + 0.3 * rag.at_concurrency.e2e_ms)
    busy = 0.7 * chat.at_max_batch.e2e_ms / chat.at_max_batch.batch + 0.3 * rag.at_max_batch.e2e_ms / rag.at_max_batch.batch
    assert r.dense.throughput_tok_s == pytest.approx((0.7 * 256 + 0.3 * 256) / busy * 1e3)
    assert r.dense.max_sequences == rag.max_sequences < chat.max_sequences


def test_dense_70b_does_not_fit_on_one_h200_but_pruned_ones_do():
    r = plan("llama-3.1-70b", H200, single("chat"), strategies=("static_depth",), sparsities=(0.5,),
             quality=FakeQuality({"static_depth": 0.2}))
    assert r.dense.max_sequences == 0 and "does not fit" in r.warnings[0]
    rec = recommend_plan(r, 0.3, "throughput")
    assert rec.best.strategy == "static_depth" and rec.status(r.dense) == "too big"
    assert "where dense serves no batch" in rec.reason and rec.best.max_sequences > 0


# --------------------------------------------------------------------------- workloads

def test_workload_presets_and_bad_input():
    assert (PRESETS["chat"].prompt_len, PRESETS["chat"].output_len, PRESETS["chat"].concurrency) == (1024, 256, 32)
    w = single("rag", output_len=64)
    assert w.classes[0].prompt_len == 8192 and w.classes[0].output_len == 64 and "custom" in w.name
    for bad, needle in ((lambda: single("nope"), "unknown workload preset 'nope'; choose from chat, rag, summarize"),
                        (lambda: parse_mix("chat:0,rag:0"), "weights sum to 0"),
                        (lambda: parse_mix("chat:-1"), "must be a number ≥ 0"),
                        (lambda: parse_mix("chat:0.5,chat:0.5"), "names 'chat' twice"),
                        (lambda: RequestClass("x", -5, 10, 1), "prompt len must be a positive integer"),
                        (lambda: Targets(ttft_ms=0), "cannot be met by any model"),
                        (lambda: Targets(tpot_ms=-3), "cannot be met by any model")):
        with pytest.raises(UserError, match=needle.replace("(", r"\(").replace(")", r"\)")):
            bad()


def test_mix_file(tmp_path):
    f = tmp_path / "traffic.csv"
    f.write_text("name,weight,prompt_len,output_len,concurrency\nchat,3,,,\nlong,1,16384,128,4\n")
    wl = parse_mix(str(f))
    assert [c.name for c in wl.classes] == ["chat", "long"] and wl.shares == pytest.approx((0.75, 0.25))
    assert wl.classes[0].prompt_len == 1024 and wl.classes[1].prompt_len == 16384
    f.write_text("name,weight,prompt_len\nlong,1,100\n")
    with pytest.raises(UserError, match="output_len is missing"):
        parse_mix(str(f))


def test_readme_states_the_presets():
    text = (ROOT / "docs" / "planning.md").read_text(encoding="utf-8")
    for name, c in PRESETS.items():
        assert f"| `{name}` | {c.prompt_len:,} | {c.output_len:,} | {c.concurrency} |" in text, name


# --------------------------------------------------------------------------- export and CLI

def test_plan_json_and_csv_validate(capsys, tmp_path):
    out, cs = tmp_path / "plan.json", tmp_path / "plan.csv"
    code, stdout, err = call(capsys, "plan", "--model", "llama-3.1-8b", "--gpu", "h200-sxm",
                             "--mix", "chat:0.7,rag:0.3", "--ttft-ms", "3000", "--objective", "throughput",
                             "--json", str(out), "--csv", str(cs))
    assert code == 0, err
    data = json.loads(out.read_text())
    jsonschema.validate(data, load_schema())
    p = data["plan"]
    assert p["objective"] == "throughput" and p["workload"]["targets"]["ttft_ms"] == 3000
    assert p["recommended"]["strategy"] != "dense" and "static batching" in p["rules"]["serving_model"]
    assert p["memory"]["usable_gb"] == pytest.approx(126.9) and p["memory"]["units"].startswith("decimal")
    assert data["scenario"]["prefill"] == {"batch": 32, "prompt_len": 1024}  # the main class, per phase
    ranks = [c["rank"] for c in p["candidates"] if c["feasible"]]
    assert sorted(ranks) == list(range(1, len(ranks) + 1))
    rows = list(csv.DictReader(io.StringIO(cs.read_text())))
    assert len(rows) == 2 * len(p["candidates"]) and {r["class"] for r in rows} == {"chat", "rag"}
    assert sum(r["recommended"] == "True" for r in rows) == 2
    assert "recommended" in stdout and "runner-up" in stdout


def test_plan_dict_validates_when_nothing_is_recommended():
    r, rec = ranked_plan(targets=Targets(ttft_ms=1.0))
    sw = sweep(LLAMA, H200, strategies=("static_depth",), sparsities=(0.25,))
    d = to_dict(sw, {}, plan_dict(r, rec))
    jsonschema.validate(d, load_schema())
    assert d["plan"]["recommended"] is None and d["plan"]["reason"].startswith("nothing")
    assert plan_csv(r, rec).count("\n") == len(r.candidates) + 1


def test_cli_nothing_meets_the_targets_is_exit_0(capsys):
    code, out, err = call(capsys, "plan", "--model", "llama-3.1-8b", "--gpu", "h200-sxm", "--tpot-ms", "0.01",
                          "--strategies", "static_depth", "--sparsities", "0.25")
    assert code == 0, err
    assert "✗ nothing within 10.0% loss meets the targets" in out


@pytest.mark.parametrize("args,needle", [
    (("--prompt-len=-4",), "prompt length must be positive"),
    (("--dtype", "fp64"), "unknown dtype 'fp64'"),
    (("--budget", "150%"), "outside [0, 1]"),
    (("--mix", "chat:0,rag:0"), "weights sum to 0"),
    (("--workload", "nope"), "unknown workload preset 'nope'"),
    (("--mix", "nope:1"), "unknown workload preset 'nope'"),
    (("--ttft-ms", "0"), "cannot be met by any model"),
    (("--tpot-ms", "fast"), "must be a number of milliseconds"),
    (("--mix", "chat:1", "--workload", "rag"), "not both"),
    (("--mix", "chat:1", "--concurrency", "4"), "with --mix"),
    (("--objective", "cost"), "invalid choice"),
])
def test_cli_bad_input_is_one_line_exit_2(capsys, args, needle):
    code, _, err = call(capsys, "plan", "--model", "llama-3.1-8b", "--gpu", "h200-sxm", *args)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err


def test_plan_never_imports_torch_textual_or_transformers(tmp_path):
    probe = ("import sys; from pis_tui.cli import main; "
             f"rc = main(['plan', '--model', 'llama-3.1-8b', '--gpu', 'h200-sxm', '--json', {str(tmp_path / 'p.json')!r}]); "
             "bad = [m for m in ('textual', 'torch', 'transformers', 'plotext') if m in sys.modules]; "
             "print('IMPORTED', bad, file=sys.stderr); sys.exit(rc or (3 if bad else 0))")
    p = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "IMPORTED []" in p.stderr


def test_a_device_without_memory_figures_fits_nothing():
    dev = profile_from_dict({"name": "x", "display_name": "X", "kind": "gpu", "peak_tflops": {"bf16": 100.0},
                             "memory_bandwidth_gbs": 1000.0, "memory_gb": 0.0, "l2_mb": 10.0, "sm_count": 10})
    r = plan(LLAMA, dev, single("chat"), strategies=())
    assert r.dense.max_sequences == 0 and r.dense.throughput_tok_s is None
