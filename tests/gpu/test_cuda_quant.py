"""On a CUDA GPU: quantized GEMMs through their real kernels (pis_tui.timing.quantized), each
checked against the float64 product of its dequantized operands and timed through a CUDA graph:
int4 weight-only through tinygemm (aten._weight_int4pack_mm) on 4096×4096 at M = 1, 16, 128
beside the bf16 GEMM of the same shape, fp8 W8A8 row-wise through _scaled_mm (SM 8.9+; skipped
with fp8_kernel_on's reason elsewhere), and the activation quantization (act_quant).

What a run tells: the times go to ``$PIS_GPU_RESULTS/quant-kernels.json`` and one line of
``quant-kernels.txt`` (tinygemm's share of bf16 at each M), which tests/gpu/run.sh adds to the
summary."""

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from pis_tui import timing  # noqa: E402
from pis_tui.hf.quant_kernels import FP8_KERNEL, fp8_kernel_on, int4_kernel_name  # noqa: E402
from pis_tui.model.ops import Elementwise, Gemm  # noqa: E402

pytestmark = pytest.mark.gpu
SIZE = 4096
INT4_MS = (1, 16, 128)


@pytest.fixture(scope="module")
def ctx(device_ctx):
    return device_ctx


@pytest.fixture(scope="module")
def report(ctx):
    """What the module measured, written when it ends (where the GPU script asks for it)."""
    rows: dict = {"device": ctx.display_name, "capability": ctx.capability,
                  "precisions": list(ctx.precisions), "int4": [], "fp8": [], "act_quant": []}
    yield rows
    out = os.environ.get("PIS_GPU_RESULTS")
    if not out:
        return
    Path(out, "quant-kernels.json").write_text(json.dumps(rows, indent=1))
    parts = [f"M={r['m']} {r['int4_ms']:.4g} ms vs bf16 {r['bf16_ms']:.4g} ms ({r['share']:.0%})"
             for r in rows["int4"]]
    kernel = rows["int4"][0]["kernel"] if rows["int4"] else "not measured"
    line = f"quant kernels on {ctx.display_name}, {SIZE}×{SIZE}: int4-g128 ({kernel}) " + "; ".join(parts)
    if rows["fp8"]:
        line += "; " + "; ".join(f"fp8-row M={r['m']} {r['fp8_ms']:.4g} ms ({r['share']:.0%} of bf16)"
                                 for r in rows["fp8"])
    elif rows.get("fp8_skipped"):
        line += f"; fp8 not measured ({rows['fp8_skipped']})"
    if rows["act_quant"]:
        line += "; " + "; ".join(f"act_quant e{r['extra']} {r['rows']}×{SIZE} {r['ms']:.4g} ms"
                                 for r in rows["act_quant"])
    Path(out, "quant-kernels.txt").write_text(line + "\n")


def _graph_timed(m, kernel=None):
    assert m.status == "ok", m.note
    assert "graph_capture" not in m.conditions and "graph capture failed" not in m.note, m.note
    if kernel:
        assert m.conditions.get("kernel") == kernel and kernel in m.note, (m.conditions, m.note)
    assert m.ms < m.eager_ms, (m.ms, m.eager_ms)


@pytest.mark.parametrize("m", INT4_MS)
def test_int4_tinygemm_matches_its_reference_and_replays_in_a_graph(ctx, report, m):
    op = Gemm("q", m, SIZE, SIZE, dtype="bf16", quant="int4-g128")
    if ctx.precision_unmeasurable(op.quant, op.dtype):
        pytest.skip(ctx.precision_unmeasurable(op.quant, op.dtype))
    err, tol = timing.verify_op(op, ctx)
    assert err < tol, (err, tol)
    q = timing.measure_op(op, ctx)
    _graph_timed(q, int4_kernel_name("cuda"))
    assert "rotated copies" in q.note  # 8.5 MiB of packed weights a copy: rotated past L2
    d = timing.measure_op(replace(op, quant=""), ctx)
    assert d.status == "ok", d.note
    report["int4"].append({"m": m, "kernel": q.conditions["kernel"], "int4_ms": q.ms, "int4_eager_ms": q.eager_ms, "bf16_ms": d.ms,
                           "bf16_eager_ms": d.eager_ms, "share": q.ms / d.ms, "int4_note": q.note})
    if m == 1:  # a quarter of the bytes to stream at a memory-bound shape
        assert q.ms < d.ms, (q.ms, d.ms)


@pytest.mark.parametrize("group", [32, 64, 256])
def test_int4_groups_match_their_reference(ctx, group):
    op = Gemm("q", 16, 256, 512, dtype="bf16", quant=f"int4-g{group}")
    if ctx.precision_unmeasurable(op.quant, op.dtype):
        pytest.skip(ctx.precision_unmeasurable(op.quant, op.dtype))
    err, tol = timing.verify_op(op, ctx)
    assert err < tol, (group, err, tol)


def test_int4_refuses_fp16_on_tinygemm_in_one_line(ctx):
    m = timing.measure_op(Gemm("q", 16, 256, 512, dtype="fp16", quant="int4-g128"), ctx)
    assert m.status == "unsupported" and "bf16" in m.note and "\n" not in m.note, m.note


@pytest.mark.parametrize("quant", ["fp8-row", "fp8-tensor"])
def test_fp8_scaled_mm_matches_its_reference_and_replays_in_a_graph(ctx, report, quant):
    why = fp8_kernel_on(ctx.torch_device)
    if why:
        report["fp8_skipped"] = why
        m = timing.measure_op(Gemm("q", 16, SIZE, SIZE, dtype="bf16", quant=quant), ctx)
        assert m.status == "unsupported" and m.note == why
        pytest.skip(why)
    err, tol = timing.verify_op(Gemm("q", 16, 256, 512, dtype="bf16", quant=quant), ctx)
    assert err < tol, (err, tol)
    op = Gemm("q", 16, SIZE, SIZE, dtype="bf16", quant=quant)
    q = timing.measure_op(op, ctx)
    _graph_timed(q, FP8_KERNEL)
    if quant == "fp8-row":
        d = timing.measure_op(replace(op, quant=""), ctx)
        assert d.status == "ok", d.note
        report["fp8"].append({"m": op.m, "fp8_ms": q.ms, "bf16_ms": d.ms, "share": q.ms / d.ms,
                              "note": q.note})


@pytest.mark.parametrize("extra", [0, 1], ids=["dynamic", "static"])
def test_act_quant_matches_its_reference_and_replays_in_a_graph(ctx, report, extra):
    err, tol = timing.verify_op(Elementwise("quant.q", "act_quant", 37, 1024, dtype="bf16", extra=extra), ctx)
    assert err < tol, (err, tol)
    m = timing.measure_op(Elementwise("quant.q", "act_quant", 16, SIZE, dtype="bf16", extra=extra), ctx)
    _graph_timed(m)
    report["act_quant"].append({"extra": extra, "rows": 16, "ms": m.ms, "eager_ms": m.eager_ms})
