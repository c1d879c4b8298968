"""The served precision: every family's op list served at it, its kernels' pricing, its memory,
its quality composition, and its command-line spelling."""

from __future__ import annotations

import math

import pytest

from pis_tui import families
from pis_tui.device.gpus import shipped_gpu
from pis_tui.errors import UserError
from pis_tui.families.phase_ops import build_phase_ops
from pis_tui.families.strategy import from_token
from pis_tui.model.ops import Gemm
from pis_tui.model.precision import CHOICES, parse_precision
from pis_tui.model.scenario import Scenario
from pis_tui.model.spec import load_model_spec
from pis_tui.pricing import memory
from pis_tui.pricing.estimator import Estimator
from pis_tui.quality.estimate import QualityEstimate
from pis_tui.quality.precision import PrecisionRow, served

from helpers import run_cli

QUANTIZED = ("fp8-row", "fp8-tensor", "int4-g128", "int4-g32", "mxfp4")


def _ops(model, token, precision="", phase="decode", engine="eager", **kw):
    spec = load_model_spec(model)
    fam, _, s = token.partition("@")
    st = from_token(fam, float(s) if s else None)
    scen = Scenario(precision=precision, engine=engine, **kw)
    return build_phase_ops(spec, st, scen, phase)


def test_names_aliases_and_refusals():
    assert parse_precision("fp8").name == "fp8-row"
    assert parse_precision("int4").name == "int4-g128"
    assert parse_precision(None, "fp32").name == "fp32" and not parse_precision("bf16").quantized
    for bad in ("int5", "int4-g100", "fp4"):
        with pytest.raises(UserError) as e:
            parse_precision(bad)
        assert "\n" not in str(e.value)
    for name in CHOICES:
        parse_precision(name)
    with pytest.raises(UserError):
        Scenario(precision="int4")  # the scenario holds canonical names only


@pytest.mark.parametrize("precision", QUANTIZED)
def test_every_family_and_combination_composes_with_a_precision(precision):
    spec = load_model_spec("llama-3.2-1b")
    moe = load_model_spec("qwen3-30b-a3b")
    p = parse_precision(precision)
    for name in families.names() + families.combo_names():
        for sp in (spec, moe):
            fam = families.get(name)
            parts = fam.parts if fam.is_combo else (fam,)
            if any(x.applies(sp) for x in parts):
                continue
            st = from_token(name, None if name == "dense" else 0.25)
            for phase in ("prefill", "decode"):
                po = build_phase_ops(sp, st, Scenario(precision=precision), phase)
                plain = build_phase_ops(sp, st, Scenario(), phase)
                gemms = [o for o in po.ops if o.op_type in ("gemm", "grouped_gemm")]
                quant = [o for o in gemms if o.quant]
                assert quant, (name, sp.name)
                # lm_head and routers stay in the activation dtype; the rest is quantized
                for o in gemms:
                    keep = o.name == "lm_head" or o.name.endswith("router") or o.name in (
                        "shared_expert_gate", "block_score")
                    assert bool(o.quant) != keep, (name, o.name)
                    if o.quant:
                        assert f"{precision}@" in o.key()
                # W8A8 quantizes activations before (eager: each linear's input)
                aq = [o for o in po.ops if getattr(o, "kind", "") == "act_quant"]
                assert (len(aq) == len(quant)) == bool(p.act_quant), (name, len(aq), len(quant))
                # the same GEMMs, fewer bytes
                assert len(gemms) == len([o for o in plain.ops if o.op_type in ("gemm", "grouped_gemm")])
                assert sum(o.bytes() * o.count for o in quant) < sum(
                    o.bytes() * o.count for o in plain.ops if o.op_type in ("gemm", "grouped_gemm")
                    and o.name in {q.name for q in quant})


def test_fused_quantizes_a_shared_input_once():
    eager = _ops("llama-3.2-1b", "dense", "fp8-row", engine="eager")
    fused = _ops("llama-3.2-1b", "dense", "fp8-row", engine="fused")
    per_layer = lambda po: sum(1 for o in po.ops if getattr(o, "kind", "") == "act_quant")  # noqa: E731
    # q, k, v, o, gate, up, down: 7 inputs quantized eagerly; q/k/v and gate/up share theirs fused
    assert per_layer(eager) == 7 and per_layer(fused) == 4


def test_int4_aligns_what_families_cut_and_refuses_a_model_that_does_not_fit():
    po = _ops("qwen2.5-0.5b", "low_rank@0.25", "int4-g128", phase="prefill")
    ranks = {o.n for o in po.ops if isinstance(o, Gemm) and o.name.endswith(".A")}
    assert ranks and all(r % 128 == 0 for r in ranks), ranks
    assert any("rank alignment" in k for k, _ in po.dims)
    sw = _ops("llama-3.2-1b", "static_width@0.3", "int4-g256")
    down = next(o for o in sw.ops if o.name == "down_proj")
    assert down.k % 256 == 0
    with pytest.raises(UserError) as e:  # qwen2.5-0.5b's hidden size 896 is no multiple of 256
        _ops("qwen2.5-0.5b", "dense", "int4-g256")
    assert "int4-g256" in str(e.value) and "\n" not in str(e.value)


def _speedup(gpu, precision, phase, engine="eager", **kw):
    est = Estimator(shipped_gpu(gpu), engine=engine)
    q = est.estimate(_ops("llama-3.1-8b", "dense", precision, phase, engine, **kw))
    b = est.estimate(_ops("llama-3.1-8b", "dense", "", phase, engine, **kw))
    return b.latency_ms / q.latency_ms, q


def test_weight_only_int4_pays_in_small_decode_and_loses_its_gain_as_the_batch_grows():
    for engine in ("eager", "fused"):
        s1, _ = _speedup("h100-sxm", "int4-g128", "decode", engine, decode_batch=1)
        s64, _ = _speedup("h100-sxm", "int4-g128", "decode", engine, decode_batch=64)
        pre, _ = _speedup("h100-sxm", "int4-g128", "prefill", engine, prefill_batch=4)
        assert s1 > 1.0 and s1 > s64, (engine, s1, s64)
        # compute-bound: the mixed-input kernel is no faster than the dense one (slower eagerly)
        assert pre <= 1.0 + 1e-9 and (engine == "fused" or pre < 1.0), (engine, pre)


def test_fp8_runs_on_fp8_tensor_cores_and_is_emulated_where_there_are_none():
    pre, e = _speedup("h100-sxm", "fp8-row", "prefill", prefill_batch=4)
    assert pre > 1.2  # twice the peak, half the bytes
    assert not any(p.source == "emulated" for p in e.ops)
    slow, e = _speedup("a100-80gb", "fp8-row", "decode")
    assert slow < 1.0  # eager: a dequantization of its own before the bf16 GEMM
    emulated = [p for p in e.ops if p.source == "emulated"]
    assert emulated and all("no fp8 tensor cores" in p.note for p in emulated)
    fused, e = _speedup("a100-80gb", "fp8-row", "decode", "fused", decode_batch=1)
    assert fused > 1.0  # a W8A16 mixed-input kernel reads half the bytes
    assert all(p.ms_per_call == 0 for p in e.ops if getattr(p.op, "kind", "") == "act_quant")


def test_unmeasured_quantized_gemms_name_their_kernel():
    _, e = _speedup("h100-sxm", "int4-g128", "decode", "fused")
    q = next(p for p in e.ops if getattr(p.op, "quant", "") and p.source == "roofline")
    assert "int4-g128" in q.note and "assumed" in q.note


def test_weights_at_the_served_precision_count_their_scales():
    spec = load_model_spec("llama-3.1-8b")
    bf = memory.weight_bytes(_ops("llama-3.1-8b", "dense", "", "prefill").ops, spec, "bf16")
    i4 = memory.weight_bytes(_ops("llama-3.1-8b", "dense", "int4-g128", "prefill").ops, spec, "bf16")
    f8 = memory.weight_bytes(_ops("llama-3.1-8b", "dense", "fp8-row", "prefill").ops, spec, "bf16")
    emb = spec.vocab_size * spec.hidden_size * 2 * 2  # embedding and lm_head stay bf16
    assert math.isclose((i4 - emb) / (bf - emb), (0.5 + 4 / 128) / 2, rel_tol=1e-3)
    assert (f8 - emb) / (bf - emb) == pytest.approx(0.5, rel=1e-3)


def _row(family, loss, sparsity=0.0, precision="int4-g128", model="Llama-3.1-8B"):
    return PrecisionRow(precision, "m", family, sparsity, model, 8.0, "accuracy_drop", loss,
                        False, False, "cite")


def test_quality_at_a_precision_composes_or_takes_a_direct_figure():
    rows = (_row("dense", 0.02), _row("semi_structured_24", 0.05, 0.5))
    pruned = QualityEstimate(0.10, source="prior")
    q = served(pruned, "llama-3.1-8b", "static_depth", 0.25, "int4-g128", rows=rows)
    assert q.source == "composed" and q.value == pytest.approx(1 - 0.9 * 0.98)
    d = served(QualityEstimate(0.0, source="dense"), "llama-3.1-8b", "dense", 0.0, "int4-g128", rows=rows)
    assert d.value == 0.02 and d.source == "prior"
    direct = served(pruned, "llama-3.1-8b", "semi_structured_24", 0.5, "int4-g64", rows=rows)
    assert direct.value == 0.05 and "published pruned and quantized" in direct.note
    other = served(pruned, "qwen2.5-7b", "static_depth", 0.25, "int4-g128", rows=rows)
    assert other.borrowed_from == "Llama-3.1-8B"
    none = served(pruned, "llama-3.1-8b", "static_depth", 0.25, "fp8-row", rows=rows)
    assert none.value is None  # no figure of fp8: no composed figure
    # a pruned-and-quantized model recovered by training stands for the trained protocol only
    from dataclasses import replace

    trained = (rows[0], replace(rows[1], protocol="trained"))
    lora = served(pruned, "llama-3.1-8b", "semi_structured_24", 0.5, "int4-g128", rows=trained)
    assert lora.source == "composed"
    t = served(replace(pruned, protocol="trained"), "llama-3.1-8b", "semi_structured_24", 0.5,
               "int4-g128", rows=trained)
    assert t.value == 0.05


def test_the_command_line_spells_it():
    r = run_cli("sweep", "--model", "llama-3.2-1b", "--gpu", "h100-sxm", "--precision", "int5")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "unknown precision" in r.stderr
    r = run_cli("sweep", "--model", "llama-3.2-1b", "--gpu", "h100-sxm", "--dtype", "fp8",
                "--strategies", "static_depth", "--sparsities", "0.25")
    assert r.returncode == 0 and "read as --precision fp8" in r.stderr and "fp8-row" in r.stdout
    r = run_cli("sweep", "--model", "llama-3.2-1b", "--gpu", "h100-sxm", "--dtype", "bf16",
                "--precision", "fp16")
    assert r.returncode == 2 and "disagree" in r.stderr


def test_int4_keeps_static_widths_heads_whole_where_a_cut_leaves_them_off_the_group():
    # qwen2.5-0.5b: 2 KV groups of 7 heads of 64: one group's o_proj K is 448, no multiple of 128
    po = _ops("qwen2.5-0.5b", "static_width@0.5", "int4-g128")
    o = next(x for x in po.ops if x.name == "o_proj")
    assert o.k == 896 and any("heads not cut" in n for n in po.notes)
    assert _ops("qwen2.5-0.5b", "static_width@0.5", "int4-g64").ops  # 448 = 7 × 64: cut


def test_a_strategy_the_kernel_cannot_run_is_left_out_not_the_whole_plan():
    from pis_tui.decide.deployment import plan
    from pis_tui.model.workload import Targets, single

    # hidden-dim slicing at TP 8: each rank's residual map K = h2 / 8 must fit the int4 group
    r = plan("llama-3.1-8b", "h100-sxm", single("chat", 1024, 256, 4, Targets()),
             strategies=("static_width_hidden", "static_depth"), sparsities=(0.25,), tp=8,
             precision="int4-g128")
    assert any(c.strategy == "static_depth" for c in r.candidates)
    hidden = [c for c in r.candidates if c.strategy == "static_width_hidden"]
    assert hidden or any("left out" in w for w in r.warnings)
