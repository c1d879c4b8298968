"""What the dispatch-mode tracers share (:mod:`pis_tui.hf.architecture_trace`,
:mod:`pis_tui.validation.kernel_trace`): which aten ops launch no kernel, the tensors of an
op's arguments, and a tensor dtype's short name.  torch is imported inside the functions."""

from __future__ import annotations

#: aten ops that launch no kernel (views, allocations without a fill)
NO_KERNEL = frozenset({
    "view", "_unsafe_view", "expand", "transpose", "t", "permute", "unsqueeze", "squeeze",
    "slice", "select", "as_strided", "alias", "detach", "split", "chunk", "unbind", "narrow",
    "lift_fresh", "empty", "_reshape_alias", "split_with_sizes", "empty_strided", "empty_like",
    "_local_scalar_dense", "item", "is_nonzero", "sym_size", "sym_stride", "sym_numel",
})


def tensors(x) -> list:
    """The tensors in ``x`` (a tensor, or lists, tuples and dicts of them)."""
    import torch

    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in tensors(v)]
    if isinstance(x, dict):
        return [t for v in x.values() for t in tensors(v)]
    return []


def dtype_name(dt, act) -> str:
    """``act`` for the activation dtype, else fp32, fp16, bf16, int64, int32 or bool."""
    if dt == act:
        return "act"
    return {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "int64": "int64",
            "int32": "int32", "bool": "bool"}.get(str(dt).replace("torch.", ""), "fp32")
