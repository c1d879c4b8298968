"""One function says which kernel really runs for an op: the estimator prices it, profiling
plans and measures it, validation's op times key on it."""

from dataclasses import replace

from pis_tui.pricing.estimator import Estimator
from pis_tui.device.choose import load_gpu
from pis_tui.model.spec import load_model_spec
from pis_tui.model.ops import Gemm, kernel_of, measuring_form
from pis_tui.profiling.worklist import worklist
from pis_tui.model.scenario import Scenario


def test_kernel_of():
    u = Gemm("q", 16, 256, 128, 4.0, "bf16", kind="unstructured", density=0.5)
    s = Gemm("q", 16, 256, 128, 4.0, "bf16", kind="sparse_24", density=0.5)
    assert kernel_of(u) == replace(u, kind="dense", density=1.0)
    assert kernel_of(s) is s and kernel_of(s, sparse_24=False).kind == "dense"
    assert measuring_form(u).count == 1.0 and measuring_form(u).key() == kernel_of(u).key()


def test_estimator_and_profiling_agree_on_the_kernel():
    spec = load_model_spec("qwen2.5-0.5b")
    planned = worklist(spec, load_gpu("h200-sxm"), Scenario(), ["unstructured"], [0.5])
    assert not any(getattr(o, "kind", "") == "unstructured" for o in planned)
    u = Gemm("gate_proj", 16, 4864, 896, 24.0, "bf16", kind="unstructured", density=0.5)
    dense = kernel_of(u)
    est = Estimator(load_gpu("h200-sxm"), [{"key": dense.key(), "op": dense, "ms": 0.123}])
    p = est.price(u)
    assert p.source == "measured" and p.ms_per_call == 0.123
    assert measuring_form(u).key() in {o.key() for o in planned}
