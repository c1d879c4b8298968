"""Decode speedup against decode batch (`pis-tui batch`, pis_tui.decide.batch_curve)."""

from __future__ import annotations

import json

import pytest

from pis_tui.decide.batch_curve import batch_curve
from pis_tui.decide.sweep import make_estimator
from pis_tui.device.choose import load_gpu
from pis_tui.families.strategy import Strategy
from pis_tui.model.moe import balanced_distinct
from pis_tui.model.scenario import Scenario
from pis_tui.model.spec import load_model_spec
from test_cli import call


def test_an_moe_curve_says_the_experts_each_batch_touches():
    spec = load_model_spec("qwen3-30b-a3b")
    gpu = load_gpu("h200-sxm")
    est = make_estimator(gpu, "bf16", None)
    curve = batch_curve(spec, est, Scenario(context_len=1024), [Strategy("static_depth", 0.5)],
                        (1, 4, 16, 64))
    want = [balanced_distinct(128, 8, b) for b in (1, 4, 16, 64)]
    assert curve.experts_touched == pytest.approx(want)
    # the dense step grows with the experts it reads; half the layers halves it at every batch
    assert curve.dense_ms == sorted(curve.dense_ms)
    assert all(1.8 < s < 2.05 for s in curve.speedups["static_depth 50%"])


def test_a_dense_model_has_no_experts_column(capsys):
    code, out, _ = call(capsys, "batch", "--model", "llama-3.1-8b", "--gpu", "h200-sxm",
                        "--batches", "1,64", "--strategies", "static_width@0.25", "--json", "-")
    assert code == 0
    d = json.loads(out)
    assert d["batches"] == [1, 64] and "experts_touched" not in d
    assert list(d["speedups"]) == ["static_width 25%"]


@pytest.mark.parametrize("args,msg", [(["--batches", "0,4"], "1…"), (["--batches", "x"], "whole numbers"),
                                      (["--strategies", "static_depth"], "family@sparsity")])
def test_bad_batch_arguments_are_one_line(capsys, args, msg):
    code, _, err = call(capsys, "batch", "--model", "llama-3.1-8b", "--gpu", "h200-sxm", *args)
    assert code == 2 and msg in err and err.count("\n") == 1
