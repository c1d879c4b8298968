"""Grouped GEMMs measured: steps drawn from the routing, grouped_mm checked against a float64 loop,
the key, the consistency rule, pricing from measurements and neighbours, the worklist's T grid."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import pytest

torch = pytest.importorskip("torch")

from pis_tui import timing  # noqa: E402
from pis_tui.device.local import local_device  # noqa: E402
from pis_tui.model import moe  # noqa: E402
from pis_tui.model.ops import GroupedGemm, op_from_dict, work_shape  # noqa: E402
from pis_tui.pricing.estimator import Estimator  # noqa: E402
from pis_tui.profiling.rounds import consistency_violations  # noqa: E402
from pis_tui.pricing.measured_table import Measurement  # noqa: E402
from pis_tui.timing import grouped  # noqa: E402

E, K = 16, 4


def gop(tokens: int, routing: str = "balanced", n: int = 64, k: int = 32, dtype: str = "fp32",
        experts: int = E, top_k: int = K) -> GroupedGemm:
    r = moe.routing(routing, experts)
    st = moe.mean_step(tokens, top_k, r)
    return GroupedGemm("experts_gate_up", experts, st.distinct, st.routed_rows, st.padded_rows, n, k,
                       1.0, dtype, top_k=top_k, tokens=tokens, routing=r.id, shares=r.shares)


@pytest.fixture(scope="module")
def ctx():
    c = timing.open_device("local")
    yield c
    c.free()


def test_a_drawn_step_gives_each_token_k_distinct_experts():
    g = torch.Generator().manual_seed(3)
    shares = moe.routing("powerlaw:1.5", E).layer(0)
    for tokens in (1, 3, 50):
        c = grouped.draw_counts(tokens, K, shares, g)
        assert int(c.sum()) == tokens * K
        assert int(c.max()) <= tokens  # an expert at most once per token
    one = grouped.draw_counts(1, K, shares, g)
    assert int((one > 0).sum()) == K


def test_draws_follow_the_inclusion_law():
    """Over many drawn tokens each expert's rate is its inclusion probability q_e, and the mean
    distinct experts of a step of T tokens is the law's Σ 1 − (1 − q_e)^T."""
    shares = moe.routing("powerlaw:1.2", E).layer(0)
    q = moe.inclusion(list(shares), K)
    g = torch.Generator().manual_seed(0)
    big = grouped.draw_counts(20000, K, shares, g).double() / 20000
    assert big.tolist() == pytest.approx(q, abs=0.015)
    touched = [int((grouped.draw_counts(3, K, shares, g) > 0).sum()) for _ in range(400)]
    assert sum(touched) / len(touched) == pytest.approx(moe.distinct_experts(3, K, shares), abs=0.15)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_grouped_mm_matches_a_float64_loop(ctx, dtype):
    err, tol = timing.verify_op(gop(24, "powerlaw:1.0", dtype=dtype), ctx)
    assert err < tol


def test_the_reference_check_can_fail(ctx, monkeypatch):
    real = grouped._loop

    def wrong(x, wt, offs):
        out = real(x, wt, offs)
        return out * 1.5 if x.dtype == torch.float64 else out

    monkeypatch.setattr(grouped, "_loop", wrong)
    err, tol = timing.verify_op(gop(24), ctx)
    assert err > tol


def test_measured_over_drawn_steps(ctx):
    m = timing.measure_op(gop(8), ctx)
    assert m.status == "ok" and m.ms > 0
    assert f"over {grouped.DRAWS} drawn steps" in m.note and "law" in m.note
    assert m.key.startswith("ggemm:dense:fp32:E16:k4:T8:balanced:64x32")
    back = op_from_dict(json.loads(json.dumps(m.op)))  # the cache's round trip
    assert back == gop(8) and back.shares == gop(8).shares


def test_a_missing_grouped_kernel_runs_the_host_loop_and_says_so(ctx, monkeypatch):
    def no_kernel(*a, **kw):
        raise NotImplementedError("grouped_mm: no kernel for this device")

    monkeypatch.setattr(torch.nn.functional, "grouped_mm", no_kernel, raising=False)
    case = grouped.grouped_gemm_case(gop(8), ctx, check=False)
    assert not case.capturable and "per-group loop" in case.note and "host-synced" in case.note
    err, tol = timing.verify_op(gop(8), ctx)
    assert err < tol


def test_misaligned_widths_are_unsupported(ctx):
    m = timing.measure_op(gop(4, n=62, k=30, dtype="bf16"), ctx)
    assert m.status == "unsupported" and "16-byte" in m.note


def test_the_key_names_what_the_steps_are_drawn_from(tmp_path):
    assert gop(8).key() != gop(16).key()
    assert gop(8).key() != gop(8, "powerlaw:1.0").key()
    h = tmp_path / "r.json"
    h.write_text(json.dumps({"layers": [[1] * E]}))
    a = gop(8, str(h)).key()
    h.write_text(json.dumps({"layers": [[2] * (E - 1) + [9]]}))
    assert gop(8, str(h)).key() != a  # an edited file is another routing (re-read: mtime)


def test_a_recorded_file_gives_each_phase_its_own_routing(tmp_path):
    h = tmp_path / "rec.json"
    pre = [[8] + [0] * (E - 1), [0] * (E - 1) + [8]]
    dec = [[1] * E, [1] * E]
    h.write_text(json.dumps({"format": moe.HISTOGRAM_FORMAT, "layers": pre,
                             "phases": {"prefill": {"layers": pre}, "decode": {"layers": dec}}}))
    p = moe.routing(str(h), E, moe_layers=2, phase="prefill")
    d = moe.routing(str(h), E, moe_layers=2, phase="decode")
    assert p.id != d.id and p.id.startswith("rec:prefill#") and d.id.startswith("rec:decode#")
    assert d.layer(0) == tuple([1 / E] * E)
    # the layers each route their own way: the mean layer is priced
    st = moe.mean_step(16, 1, p)
    assert st.distinct == pytest.approx(1.0)  # every token of a layer goes to its one expert
    assert moe.mean_step(16, 1, d).distinct > 10


def test_a_bad_phase_section_is_one_line(tmp_path):
    from pis_tui.errors import UserError

    h = tmp_path / "bad.json"
    h.write_text(json.dumps({"layers": [[1] * E], "phases": {"decode": {"layers": [[1] * 3]}}}))
    with pytest.raises(UserError, match="decode layer 0 has 3 counts"):
        moe.routing(str(h), E, phase="decode")


def test_fewer_tokens_slower_is_inconsistent():
    def meas(op, ms):
        return Measurement(key=op.key(), op=asdict(op), ms=ms, status="ok")

    small, big = gop(4), gop(32)
    assert work_shape(asdict(small))[0] == work_shape(asdict(big))[0]
    bad = consistency_violations([meas(small, 2.0), meas(big, 1.0)])
    assert [a.key for a, _ in bad] == [small.key()]
    assert consistency_violations([meas(small, 1.0), meas(big, 2.0)]) == []
    # another routing is another class: never compared
    assert consistency_violations([meas(gop(4, "powerlaw:2"), 2.0), meas(big, 1.0)]) == []


def _rec(op, ms):
    return {"key": op.key(), "op": asdict(op), "ms": ms, "status": "ok", "spread": 0.01,
            "conditions": {}}


def test_priced_measured_then_interpolated_in_tokens():
    dev = local_device()
    est = Estimator(dev, [_rec(gop(4), 1.0), _rec(gop(64), 4.0)])
    p = est.price(gop(4))
    assert p.source == "measured" and p.ms_per_call == 1.0
    mid = est.price(gop(16))
    assert mid.source == "interpolated" and 1.0 < mid.ms_per_call < 4.0
    # out of reach (more than 2x past the measured T) and another routing: not interpolated
    assert est.price(gop(512)).source == "roofline"
    assert est.price(gop(16, "powerlaw:1.0")).source == "roofline"


def test_the_fused_engine_does_not_price_grouped_mm_as_its_kernel():
    est = Estimator(local_device(), [_rec(gop(4), 1.0)], engine="fused")
    p = est.price(gop(4))
    assert p.source == "roofline" and "fused-MoE" in p.note


def test_an_unstable_measurement_falls_back_to_its_neighbours():
    bad = {**_rec(gop(16), 9.0), "status": "unstable", "conditions": {"unstable": ["rounds"]}}
    est = Estimator(local_device(), [_rec(gop(4), 1.0), _rec(gop(64), 4.0), bad])
    p = est.price(gop(16))
    assert p.source == "interpolated" and p.ms_per_call < 4.0


def test_the_worklist_adds_a_token_grid_for_grouped_gemms():
    from pis_tui.model.scenario import Scenario
    from pis_tui.model.spec import load_model_spec
    from pis_tui.profiling.worklist import worklist_detailed

    spec = load_model_spec("granite-3.1-1b-a400m")
    items = worklist_detailed(spec, local_device(), Scenario(prefill_batch=1, prompt_len=64,
                                                             decode_batch=16, context_len=64,
                                                             dtype="fp32"),
                              strategies=["static_depth"], sparsities=[0.25])
    gg = [i.op for i in items if isinstance(i.op, GroupedGemm)]
    ts = sorted({o.tokens for o in gg if o.n == 1024})
    assert 16 in ts and 64 in ts  # the sweep's own steps (decode 16, prefill 64)
    assert {1, 2, 4, 8, 32} <= set(ts)  # the T grid below the largest
    assert all(o.shares for o in gg)


def test_routings_that_spread_rows_alike_share_a_measurement(tmp_path):
    """A grouped GEMM's cost ignores which expert gets which rows: a permuted histogram, or one
    differing by sampling noise, is measured at the same profile (the nearest power law)."""
    import random

    rng = random.Random(0)
    base = [int(1000 * (i + 1) ** -1.0) for i in range(E)]
    perm = base[:]
    rng.shuffle(perm)
    noisy = [max(0, c + rng.randint(-3, 3)) for c in base]
    ids = []
    for i, counts in enumerate((base, perm, noisy)):
        h = tmp_path / f"h{i}.json"
        h.write_text(json.dumps({"layers": [counts]}))
        ids.append(moe.measured_profile(moe.routing(str(h), E))[0])
    assert ids[0] == ids[1] == ids[2] == "powerlaw:1"
    h = tmp_path / "flat.json"
    h.write_text(json.dumps({"layers": [[100 + (i % 3) for i in range(E)]]}))
    assert moe.measured_profile(moe.routing(str(h), E))[0] == "balanced"


def test_a_measurement_at_the_profile_is_scaled_to_the_steps_own_experts(tmp_path):
    """The op keeps its own routing's law (experts touched); the measurement, taken at the
    profile, is scaled by the roofline ratio of the two."""
    from pis_tui.model.ops import measuring_form

    h = tmp_path / "two.json"
    h.write_text(json.dumps({"layers": [[1, 1] + [0] * (E - 2)]}))  # only two experts ever used
    r = moe.routing(str(h), E)
    pid, prof = moe.measured_profile(r)
    st = moe.mean_step(2, 1, r)
    op = GroupedGemm("experts_gate_up", E, st.distinct, st.routed_rows, st.padded_rows, 64, 32,
                     1.0, "fp32", top_k=1, tokens=2, routing=pid, shares=prof)
    meas = measuring_form(op)
    assert meas.key() == op.key() and meas.groups != op.groups
    est = Estimator(local_device(), [_rec(meas, 2.0)])
    p = est.price(op)
    want = 2.0 * est._grouped_roofline(op) / est._grouped_roofline(meas)
    assert p.source == "measured" and p.ms_per_call == pytest.approx(want)
    assert "scaled by the roofline" in p.note
