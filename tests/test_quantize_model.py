"""pis_tui.hf.quantize: a real model's linears replaced by quantized ones running the real
kernels (int4 weight-only through _weight_int4pack_mm_for_cpu, fp8 W8A8 through _scaled_mm),
exactly the linears the op list at that precision quantizes.

Tiny random models (4 layers, hidden 128) built as validate builds them; fp8 is checked for
correctness only (on a CPU _scaled_mm is a slow reference loop: 2 layers)."""

import copy

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from pis_tui import validation as v  # noqa: E402
from pis_tui.errors import UserError  # noqa: E402
from pis_tui.families.phase_ops import build_phase_ops  # noqa: E402
from pis_tui.families.strategy import Strategy  # noqa: E402
from pis_tui.hf.quantize import is_quantized_linear, quantize_model  # noqa: E402
from pis_tui.model.scenario import Scenario  # noqa: E402
from helpers import tiny_config  # noqa: E402


tiny = tiny_config


IDS = torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(3))


def logits(model, ids=IDS):
    with torch.inference_mode():
        return model(input_ids=ids, use_cache=False).logits


def rel(a, b) -> float:
    """‖a − b‖ / ‖b‖ in float64."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


def dequantized_reference(plain, quantized, names):
    """``plain`` (an unquantized copy) in float64 with each quantized linear's weight replaced
    by the weight its kernel multiplies by (dequantized in float64)."""
    ref = copy.deepcopy(plain).double()
    for name in names:
        ref.get_submodule(name).weight.data = quantized.get_submodule(name).dequantized()
    return ref


def plain_at(family, precision, monkeypatch, cfg=None):
    """The unquantized model with the widths a model quantized at ``precision`` has (its
    low-rank ranks aligned to the group): the build with the quantization step left out."""
    import pis_tui.validation.build as build

    with monkeypatch.context() as m:
        m.setattr(build, "_quantize", lambda built: None)
        return v.build_model(cfg or tiny(), Strategy(family, 0.5), precision=precision)


@pytest.mark.parametrize("family,precision", [("dense", "int4-g128"), ("low_rank", "int4-g64")])
def test_int4_logits_match_the_float64_dequantized_model_and_the_plain_one_loosely(
        family, precision, monkeypatch):
    plain = plain_at(family, precision, monkeypatch).model
    qm = copy.deepcopy(plain)
    q = quantize_model(qm, precision, keep_codes=True)
    y_q, y_plain = logits(qm), logits(plain)
    y_ref = logits(dequantized_reference(plain, qm, q["quantized"]))
    assert rel(y_q, y_ref) < 1e-4  # the kernel computes what the dequantized weights say
    # 4-bit weights of random (not outlier-free, not trained) matrices: about 18 % off the
    # plain model's logits, never equal to them
    assert 1e-3 < rel(y_q, y_plain) < 0.3
    # bytes of the linears replaced: 4 B a weight before, 4 bits and an fp32 scale and zero
    # per group after (the fp32 model's scales are fp32)
    g = int(precision.split("-g")[1])
    w = sum(plain.get_submodule(n).weight.numel() for n in q["quantized"])
    bias = sum(4 * plain.get_submodule(n).bias.numel() for n in q["quantized"]
               if plain.get_submodule(n).bias is not None)
    assert q["bytes_before"] == 4 * w + bias
    assert q["bytes_after"] == w // 2 + 8 * w // g + bias
    assert q["kernel"] == "aten._weight_int4pack_mm_for_cpu"


@pytest.mark.parametrize("family", ["dense", "low_rank", "static_width_hidden", "dynamic_depth",
                                    "static_depth", "static_width"])
def test_the_linears_quantized_are_the_gemms_the_op_list_quantizes(family):
    """As many quantized modules of each shape as the op list at the precision has quantized
    GEMMs (both factors of a low-rank linear, the residual maps; not the lm_head nor the
    routers), and the rest kept."""
    p = "int4-g64"
    b = v.build_model(tiny(), Strategy(family, 0.5), precision=p)
    ops = build_phase_ops(b.spec, Strategy(family, 0.5), Scenario(dtype="fp32", precision=p),
                          "prefill").ops
    want, kept = {}, {}
    for o in ops:
        if o.op_type == "gemm":
            d = want if o.quant else kept
            d[(o.n, o.k)] = d.get((o.n, o.k), 0) + o.count
    have = {}
    for m in b.model.modules():
        if is_quantized_linear(m):
            have[(m.out_features, m.in_features)] = have.get((m.out_features, m.in_features), 0) + 1
    assert have == want
    plain = [m for m in b.model.modules() if isinstance(m, torch.nn.Linear)]
    assert sorted((m.out_features, m.in_features) for m in plain) == \
        sorted(s for s, c in kept.items() for _ in range(int(c)))
    n = int(sum(want.values()))
    assert len(b.quantized["quantized"]) == n and b.notes[-1].startswith(f"{p}: {n} linears")
    assert torch.isfinite(logits(b.model)).all()


def test_low_rank_ranks_are_aligned_to_the_group_as_the_op_list_aligns_them():
    from pis_tui.validation.build import pruned_dims
    from pis_tui.hf.config import raw_config

    raw, spec = raw_config(tiny(hidden_size=256, intermediate_size=768))
    s = Strategy("low_rank", 0.5)
    plain, g32 = pruned_dims(spec, s).ranks, pruned_dims(spec, s, precision="int4-g32").ranks
    assert plain != g32 and all(r % 32 == 0 for r in g32.values())
    ops = build_phase_ops(spec, s, Scenario(dtype="fp32", precision="int4-g32"), "prefill").ops
    assert {o.name[:-2]: o.n for o in ops if o.name.endswith(".A")} == g32


def _one_line(e) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_a_shape_the_int4_kernel_cannot_take_is_one_line_naming_the_module_and_a_group(
        monkeypatch):
    b = plain_at("dense", "", monkeypatch, cfg=tiny(intermediate_size=320))
    before = [type(m).__name__ for m in b.model.modules()]
    with pytest.raises(UserError) as e:
        quantize_model(b.model, "int4")  # int4-g128: down_proj's K = 320
    msg = _one_line(e)
    assert "model.layers.0.mlp.down_proj is 128×320" in msg and "int4-g64" in msg
    assert [type(m).__name__ for m in b.model.modules()] == before  # nothing was changed
    with pytest.raises(UserError) as e:
        quantize_model(torch.nn.Sequential(torch.nn.Linear(64, 8)), "int4-g32")
    assert "0 is 8×64" in _one_line(e) and "N a multiple of 16" in str(e.value)


def test_an_moe_model_and_an_unkernelled_precision_are_refused():
    class Experts(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gate_up_proj = torch.nn.Parameter(torch.zeros(4, 64, 32))
            self.q = torch.nn.Linear(32, 32)

    with pytest.raises(UserError) as e:
        quantize_model(Experts(), "int4-g32")
    assert "gate_up_proj is a 3-D expert weight" in _one_line(e)
    for name, words in (("mxfp4", "estimated only"), ("bf16", "not a quantized precision"),
                        ("int4-g48", "int4 group size")):
        with pytest.raises(UserError) as e:
            quantize_model(torch.nn.Linear(32, 32), name)
        assert words in _one_line(e)


@pytest.mark.parametrize("precision", ["fp8", "fp8-tensor"])
def test_fp8_modules_compute_their_quantized_product_and_the_model_runs(precision, monkeypatch):
    """Correctness only (the CPU's _scaled_mm is a reference loop, never timed): each module
    equals its own float64 product of the quantized operands, the model stays near the
    plain one, and fp8-tensor's static activation scale is set once by the first input."""
    cfg = tiny(num_hidden_layers=2)
    plain = plain_at("dense", "", monkeypatch, cfg=cfg).model
    qm = copy.deepcopy(plain)
    q = quantize_model(qm, precision)
    assert q["kernel"] == "aten._scaled_mm" and len(q["quantized"]) == 14
    y_q, y_plain = logits(qm), logits(plain)
    assert 1e-4 < rel(y_q, y_plain) < 0.2
    lin = qm.get_submodule("model.layers.0.mlp.down_proj")
    x = torch.randn(3, 5, 384)
    with torch.inference_mode():
        assert rel(lin(x), lin.reference(x)) < 1e-5
    if precision == "fp8-tensor":
        s = float(lin.input_scale)
        assert s > 0 and lin.calibrated
        with torch.inference_mode():
            lin(10 * x)  # a larger input later: the static scale stays
        assert float(lin.input_scale) == s


# ------------------------------------------------------------------ validate --precision

from helpers import run_cli  # noqa: E402


@pytest.mark.parametrize("args,msg", [
    (["--precision", "fp8"], "cpu has no fp8 GEMM kernel"),
    (["--precision", "mxfp4"], "no kernel for it"),
    (["--precision", "int4-g48"], "int4 group size"),
    (["--precision", "int4", "--tp", "2"], "not offered with --tp"),
    (["--precision", "bf16", "--dtype", "fp32"], "disagree"),
    (["--model", "qwen3-30b-a3b", "--precision", "int4"], "mixture-of-experts"),
])
def test_cli_validate_precision_refusals_are_one_line(args, msg, tmp_path):
    r = run_cli("validate", "--strategy", "static_depth", "--sparsity", "0.5", *args,
                "--json", str(tmp_path / "x.json"))
    assert r.returncode == 2, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and msg in lines[0], r.stderr
    assert not (tmp_path / "x.json").exists()


def test_the_probe_clones_of_a_quantized_model_fit_the_group_and_are_quantized():
    """The dispatch probe's tiny clones at int4-g128: every K a multiple of 128, low rank
    still factorising (through rank 128), every linear the op list quantizes quantized."""
    from pis_tui.hf.config import raw_config
    from pis_tui.validation.probe import PROBE_STRATEGIES, tiny_clone

    raw, spec = raw_config(tiny())
    traw, tspec = tiny_clone(raw, spec, "int4-g128")
    assert (tspec.hidden_size, tspec.intermediate_size, tspec.head_dim) == (384, 384, 64)
    assert tiny_clone(raw, spec)[1].hidden_size == 64  # unquantized: as before
    for fam, s in PROBE_STRATEGIES:
        b = v.build_model(traw, Strategy(fam, s, align=8), precision="int4-g128")
        if fam == "low_rank":
            assert b.dims.ranks and set(b.dims.ranks.values()) == {128}
        assert b.quantized["quantized"] and torch.isfinite(logits(b.model, IDS % 64)).all()


@pytest.mark.slow
def test_validate_at_int4_times_quantized_models_and_the_quantization_itself(tmp_path):
    """validate --precision int4-g64 on a tiny model: the rows compare quantized models
    (predicted at the precision), each carries its case's quantized dense vs unquantized
    dense, and the cache keeps them apart from unquantized rows."""
    from pis_tui.cache import Cache

    built = []
    import pis_tui.validation.compare as cmp

    real = cmp.build_from_spec

    def spy(*a, **kw):
        b = real(*a, **kw)
        built.append((a[2].family, kw.get("precision", ""), b.quantized is not None))
        return b

    cmp.build_from_spec = spy
    try:
        with Cache.open(str(tmp_path / "c.duckdb")) as cache:
            rows = v.validate(tiny(), [Strategy("static_depth", 0.5)], ("decode",),
                              decode_batches=(1,), context_len=24, repeats=2, warmup=0,
                              cache=cache, max_rounds=1, probe_overhead=False,
                              precision="int4-g64")
            stored = cache.get_validations()
    finally:
        cmp.build_from_spec = real
    assert built == [("dense", "int4-g64", True), ("dense", "", False),
                     ("static_depth", "int4-g64", True)]
    (row,) = rows
    d = row.to_dict()
    assert d["precision"] == "int4-g64"
    q = d["quantization"]
    assert q["precision"] == "int4-g64" and q["unquantized"] == "fp32"
    # the quantized dense model is this row's dense model; its prediction at the precision
    assert q["predicted_ms"] == d["dense_predicted_ms"]
    assert q["predicted_speedup"] == pytest.approx(q["dense_predicted_ms"] / q["predicted_ms"],
                                                   rel=1e-4)
    assert q["measured_ms"] > 0 and q["dense_measured_ms"] > 0
    assert any("int4-g64: " in n and "linears through aten._weight_int4pack_mm_for_cpu" in n
               for n in row.notes)
    s = v.accuracy_summary(rows)["quantization"]
    assert s["cases"] == 1
    assert len(stored) == 1 and stored[0]["fingerprint"].endswith(" int4-g64")
